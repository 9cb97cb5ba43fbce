"""The ready file a started agent writes for whoever started it (tests, the bench,
the chaos harness, the example): written atomically, because the starter polls for
the file and reads it as soon as it exists; a plain write could be read half done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_ready_file"]


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(info))
    partial.replace(path)
