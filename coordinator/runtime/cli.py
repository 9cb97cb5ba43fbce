"""The `concord` command line.

Each subcommand is one entry in ``COMMANDS``: a function that adds its arguments to
its subparser and a function that runs it and returns the exit code. ``main`` parses,
looks the command up and calls it; nothing else lives here.

A bad flag or a missing argument is the user's mistake, not ours: it ends with exit
code 2 and one line on stderr, never a traceback or a usage dump.

What the commands print may carry text from others (transaction ids, vote reasons,
audit details): control characters in it are written escaped (``\x1b``), so no peer
can move the cursor, clear the screen or forge a line on an operator's terminal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from coordinator.runtime import context

DISTRIBUTION = "concord-txn"
EXIT_USAGE = 2  # a user mistake: every command ends with it, after one line on stderr


def fail(message: str, prog: str = "concord") -> int:
    """Report a user mistake in one line on stderr; the command returns what this
    returns (``EXIT_USAGE``)."""
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_USAGE


class UsageError(Exception):
    """The command line could not be parsed."""


class CommandError(Exception):
    """A user mistake found while a command runs (a missing certificate directory, say):
    ``main`` reports it in one line, exit code 2."""


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
    from importlib import metadata  # here: 50 ms that every other command would pay

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    print(f"concord {version}")
    return 0


def _lazy(module: str, name: str, help: str) -> Command:
    """A command whose code lives in ``module`` (``configure_<name>``/``run_<name>``),
    imported only when that command is used: `concord sim` stays free of grpc and
    pysyncobj, and a new command is one row in ``_MODULE_COMMANDS``."""

    def configure(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(module), f"configure_{name}")(parser)

    def run(args: argparse.Namespace) -> int:
        code: int = getattr(importlib.import_module(module), f"run_{name}")(args)
        return code

    return Command(help=help, configure=configure, run=run)


_RUNTIME = "coordinator.runtime.commands"
_OPERATOR = "coordinator.runtime.operator_commands"
# command -> (module holding configure_<command>/run_<command>, help)
_MODULE_COMMANDS = {
    "sim": (
        "simulations.runner",
        "run the deterministic tier-1 simulator over many seeds, or replay one",
    ),
    "serve": (_RUNTIME, "run one coordinator node"),
    "config": (_RUNTIME, "check a node's config file and print the settings it gives"),
    "health": (
        "coordinator.runtime.health_command",
        "ask a node, by its own settings, whether it serves (grpc health; container checks)",
    ),
    "cluster": (_OPERATOR, "run a local cluster (cluster up), or move its leadership"),
    "status": (_OPERATOR, "show the cluster's leader, term, nodes, lag and in-doubt rounds"),
    "txn": (_OPERATOR, "list, show, abort or retry transactions and rounds"),
    "audit": (_OPERATOR, "export or verify the hash-chained audit log"),
    "backup": (_OPERATOR, "write a consistent backup of the cluster's state, from the leader"),
    "restore": (_OPERATOR, "seed a new node's empty data dir from a backup file"),
    "checkpoints": (
        "participant_sdk.rollback_cli",
        "inspect a participant's agent checkpoints offline (checkpoints list|show --data-dir)",
    ),
    "effects": (
        "participant_sdk.rollback_cli",
        "inspect a participant's effect log offline (effects list|escalations --data-dir)",
    ),
    "checkpoint": (
        "coordinator.runtime.round_commands",
        "take a global checkpoint of a session's agents (a consistent cut)",
    ),
    "rollback": (
        "coordinator.runtime.round_commands",
        "revert a session's agents to a global checkpoint, by their vote",
    ),
    "chaos": ("simulations.tier2.cli", "real processes under faults (chaos run, chaos report)"),
    "certs": (
        "coordinator.runtime.certs_commands",
        "make a development CA and the cluster's certificates (certs init|issue|check)",
    ),
    "bench": (
        "coordinator.bench.command",
        "measure committed transactions/s, latency and failover on a local cluster",
    ),
    "completion": (
        "coordinator.runtime.completion_command",
        "print a shell completion script (concord completion bash|zsh)",
    ),
}

COMMANDS: dict[str, Command] = {
    "version": Command(
        help="print the installed Concord version", configure=_no_arguments, run=_run_version
    ),
    **{name: _lazy(module, name, help) for name, (module, help) in _MODULE_COMMANDS.items()},
}


# Commands that talk to a running cluster: they find it, and its certificates, through
# the context (coordinator/runtime/context.py) when no flag or variable says.
_DIALLING = frozenset({"status", "txn", "audit", "cluster", "checkpoint", "rollback"})


def _dials_the_cluster(args: argparse.Namespace) -> bool:
    return args.command in _DIALLING and getattr(args, "cluster_command", "") != "up"


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Every command is listed; only ``chosen`` (or all, when None) gets its arguments,
    so a command's imports are paid only by that command. A ``chosen`` that names no
    command gives none its arguments: `concord --help` lists the commands without
    importing any of them."""
    parser = _Parser(
        prog="concord",
        description="Concord: a Raft-replicated transaction coordinator for agents.",
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help)
        if chosen is None or name == chosen:
            command.configure(subparser)
    return parser


# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides
# that can make a line read differently from what it is.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    return _UNSAFE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


class _SafeStream:
    """A text stream whose writes are ``terminal_safe``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return int(self._stream.write(terminal_safe(text)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def unescaped(stream: Any) -> Any:
    """The stream under ``main``'s escaping, for output of our own that moves the
    cursor on purpose (`concord sim`'s progress line) and carries no peer's text."""
    return stream._stream if isinstance(stream, _SafeStream) else stream


def main(argv: Sequence[str] | None = None) -> int:
    if not isinstance(sys.stdout, _SafeStream):
        sys.stdout = _SafeStream(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, _SafeStream):
        sys.stderr = _SafeStream(sys.stderr)  # type: ignore[assignment]
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):  # as `concord version`
        return _run_version(argparse.Namespace())
    chosen = next((a for a in argv if not a.startswith("-")), None)
    # No command named: only the command list can be asked for (--help) or be wrong.
    parser = build_parser(chosen if chosen in COMMANDS else "")
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"{error} (see 'concord --help')", file=sys.stderr)
        return EXIT_USAGE
    tls_dir = getattr(args, "tls_dir", None)
    if tls_dir is None and _dials_the_cluster(args):
        tls_dir = context.default_tls_dir()  # the certificates `cluster up` made
        if tls_dir is not None and not tls_dir.is_dir():
            return fail(
                f"the context {context.path()} names TLS directory {tls_dir}, which does not "
                "exist (its cluster was removed?): run `concord cluster up` again, remove "
                "the file, or give --tls-dir and --coordinators"
            )
    if tls_dir is not None and args.command != "serve":
        # The command line's own identity (coordinator/runtime/cli_tls.py).
        os.environ["CONCORD_TLS_DIR"] = str(tls_dir)
    try:
        return COMMANDS[args.command].run(args)
    except CommandError as error:
        return fail(str(error))
    except BrokenPipeError:
        # The reader went away (``concord sim --trace | head``): not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    # `python -m coordinator.runtime.cli`: run the importable copy of this module, the
    # one command modules import, so the CommandError they raise is the one caught.
    from coordinator.runtime import cli

    sys.exit(cli.main())
