"""The identity the `concord` command line dials the cluster with.

From ``--tls-dir DIR`` or ``CONCORD_TLS_DIR`` (the one operator certificate there, or
else the one client certificate), or ``CONCORD_TLS_CA``/``CERT``/``KEY``. Without any,
plaintext: enough for a cluster started with ``--insecure``, refused by one with TLS.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from coordinator.runtime.cli import CommandError
from coordinator.security.identity import Role
from coordinator.security.transport import Transport, TransportError

__all__ = ["add_tls_dir", "cli_transport"]


def add_tls_dir(parser: argparse.ArgumentParser) -> None:
    """``--tls-dir``; ``cli.main`` puts it in the environment for ``cli_transport``."""
    parser.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="dial as the operator (or client) certificate in DIR (env CONCORD_TLS_DIR)",
    )


def cli_transport() -> Transport:
    """The command line's identity; a certificate problem is the user's to fix, so it
    ends the command in one line (``CommandError``), never a traceback."""
    directory = os.environ.get("CONCORD_TLS_DIR", "")
    try:
        if directory and not any(os.environ.get(f"CONCORD_TLS_{p}") for p in ("CA", "CERT", "KEY")):
            try:
                return Transport.from_dir(directory, Role.OPERATOR)
            except TransportError as as_operator:
                try:
                    return Transport.from_dir(directory, Role.CLIENT)
                except TransportError:
                    raise as_operator from None
        return Transport.from_env(Role.OPERATOR, "") or Transport.insecure()
    except TransportError as error:
        raise CommandError(str(error)) from None
