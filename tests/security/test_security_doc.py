"""Every ```python block of docs/security.md runs, in order, in one namespace, and each
``print(x)  # y`` prints y."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_every_snippet_runs_and_prints_what_it_says() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    namespace: dict[str, object] = {"__name__": "security_doc"}
    printed = io.StringIO()
    for number, code in enumerate(blocks, 1):
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{DOC.name} block {number}", "exec"), namespace)
    promised = [
        line.split("#", 1)[1].strip()
        for code in blocks
        for line in code.splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]
    assert printed.getvalue().splitlines() == promised
