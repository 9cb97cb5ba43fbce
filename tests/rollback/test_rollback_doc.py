"""Every ```python block of docs/rollback.md runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "rollback.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_snippets() -> None:
    assert len(blocks()) >= 5


def test_every_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "rollback_doc"}
    try:
        for number, code in enumerate(blocks(), 1):
            exec(compile(code, f"{DOC.name} block {number}", "exec"), namespace)
    finally:
        for name in ("store", "effects"):
            closer = getattr(namespace.get(name), "close", None)
            if closer is not None:
                closer()
