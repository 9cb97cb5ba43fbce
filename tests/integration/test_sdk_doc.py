"""Every ```python block of docs/sdk.md runs, in order, in one namespace: the manual's
snippets start a real local cluster and embed real participants, as a reader would."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_snippet_runs_and_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "sdk_doc"}
    printed = io.StringIO()
    try:
        for number, code in enumerate(blocks(), 1):
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"{DOC.name} block {number}", "exec"), namespace)
    finally:  # a failed block must not leave the cluster or the agents running
        for name in ("inventory", "wallet"):
            stop = getattr(namespace.get(name), "stop_in_thread", None)
            if stop is not None:
                stop()
        cluster = namespace.get("cluster")
        if cluster is not None:
            cluster.stop()  # type: ignore[attr-defined]
    # Each "print(x)  # y" in the doc printed y, in order.
    promised = [
        line.split("#", 1)[1].strip()
        for code in blocks()
        for line in code.splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]
    assert printed.getvalue().splitlines() == promised
