"""The `concord` command line.

Each subcommand is one entry in ``COMMANDS``: a function that adds its arguments to
its subparser and a function that runs it and returns the exit code. ``main`` parses,
looks the command up and calls it; nothing else lives here.

A bad flag or a missing argument is the user's mistake, not ours: it ends with exit
code 2 and one line on stderr, never a traceback or a usage dump.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import NoReturn

DISTRIBUTION = "concord-txn"
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line could not be parsed."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting, so that
    ``main`` can report the problem in one line (and tests can call ``main``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def _run_version(args: argparse.Namespace) -> int:
    del args
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    print(f"concord {version}")
    return 0


def _configure_sim(parser: argparse.ArgumentParser) -> None:
    from simulations import runner

    runner.configure(parser)


def _run_sim(args: argparse.Namespace) -> int:
    from simulations import runner

    return runner.run(args)


def _lazy(name: str) -> Command:
    """A command from coordinator.runtime.commands, imported only when used (start-up
    of `concord sim` and `concord version` stays free of grpc and pysyncobj)."""

    def configure(parser: argparse.ArgumentParser) -> None:
        from coordinator.runtime import commands

        getattr(commands, f"configure_{name}")(parser)

    def run(args: argparse.Namespace) -> int:
        from coordinator.runtime import commands

        code: int = getattr(commands, f"run_{name}")(args)
        return code

    return Command(help=_HELP[name], configure=configure, run=run)


_HELP = {
    "serve": "run one coordinator node",
    "cluster": "run a local cluster (cluster up)",
    "status": "show the cluster's leader, term and members",
    "txn": "list transactions, or show one (txn list, txn show ID)",
}

COMMANDS: dict[str, Command] = {
    "version": Command(
        help="print the installed Concord version", configure=_no_arguments, run=_run_version
    ),
    "sim": Command(
        help="run the deterministic tier-1 simulator over many seeds, or replay one",
        configure=_configure_sim,
        run=_run_sim,
    ),
    **{name: _lazy(name) for name in _HELP},
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="concord",
        description="Concord: a Raft-replicated transaction coordinator for agents.",
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name, command in COMMANDS.items():
        command.configure(subparsers.add_parser(name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"{error} (see 'concord --help')", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command].run(args)
    except BrokenPipeError:
        # The reader went away (``concord sim --trace | head``): not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
