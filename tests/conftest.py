"""Session-wide: the test run never reads or writes the user's own `concord` context
(coordinator/runtime/context.py): a `cluster up` run on this machine must not point
the tests' commands at it, and the tests' must not replace it.

And Ctrl-C works in the processes the tests start: a test run started as a background
job of a non-interactive shell (`scripts/test &` in a script) inherits SIGINT ignored,
and so would every process it starts, so a test that stops a program with SIGINT, as
a user's Ctrl-C would, waited for it in vain (the travel example ran on, and its
test failed after 180 s). The tests' children get SIGINT's default."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_CONTEXT_DIR = Path(tempfile.mkdtemp(prefix="concord-test-context-"))
os.environ["CONCORD_CONTEXT"] = str(_CONTEXT_DIR / "context.toml")
os.environ.pop("CONCORD_COORDINATORS", None)
