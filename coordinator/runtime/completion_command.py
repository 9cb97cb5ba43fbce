"""`concord completion bash|zsh`: a shell completion script, made by shtab from the
same argparse parser the command line uses, so it never falls behind a new flag.

    concord completion bash > ~/.local/share/bash-completion/completions/concord
    concord completion zsh > "${fpath[1]}/_concord"   # any directory on $fpath
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHELLS = ("bash", "zsh")


def configure_completion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete for")


def _paths_complete_as_files(parser: argparse.ArgumentParser) -> None:
    """A flag that takes a path (``type=Path``) completes file names."""
    import shtab

    for action in parser._actions:  # argparse offers no public walk of its actions
        if action.type is Path:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _paths_complete_as_files(sub)


def run_completion(args: argparse.Namespace) -> int:
    import shtab

    from coordinator.runtime.cli import build_parser

    parser = build_parser()  # every command with its arguments
    _paths_complete_as_files(parser)
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0
