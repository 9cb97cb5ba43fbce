"""Session-wide: the test run never reads or writes the user's own `concord` context
(coordinator/runtime/context.py): a `cluster up` run on this machine must not point
the tests' commands at it, and the tests' must not replace it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CONTEXT_DIR = Path(tempfile.mkdtemp(prefix="concord-test-context-"))
os.environ["CONCORD_CONTEXT"] = str(_CONTEXT_DIR / "context.toml")
os.environ.pop("CONCORD_COORDINATORS", None)
