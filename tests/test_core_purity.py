"""The protocol cores are pure: no clock, randomness, threads, disk or network.

Both cores must replay identically from the same inputs (simulation seeds, Raft log
replay on every replica), so they may import only a small allow-list of the standard
library and each other's ``coordinator.core`` modules. This is checked on the source
(``ast``), so a forbidden import fails here even if it sits in a branch never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CORE_DIR = REPO_ROOT / "coordinator" / "core"
# The participant's core: its handlers, and the records and actions they return.
PARTICIPANT_CORE = (
    REPO_ROOT / "participant_sdk" / "core.py",
    REPO_ROOT / "participant_sdk" / "steps.py",
)

ALLOWED_STDLIB = frozenset(
    {
        "__future__",
        "dataclasses",
        "enum",
        "typing",
        "collections",
        "heapq",
        "itertools",
        "functools",
        "bisect",
        "abc",
        "math",
    }
)
ALLOWED_PACKAGES = ("coordinator.core", "participant_sdk.steps")
# Named so the failure message says why, and so nobody "fixes" a failure by adding
# one of these to the allow-list without noticing what it means.
FORBIDDEN = frozenset(
    {
        "grpc",
        "pysyncobj",
        "lmdb",
        "time",
        "random",
        "asyncio",
        "threading",
        "socket",
        "os",
        "datetime",
        "uuid",
    }
)


def _is_allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top in FORBIDDEN:
        return False
    return top in ALLOWED_STDLIB or any(
        module == package or module.startswith(package + ".") for package in ALLOWED_PACKAGES
    )


def impure_imports(source: str, filename: str = "<source>") -> list[str]:
    """Imports in ``source`` outside the allow-list, as ``file:line: module``.

    A relative import (``from . import x``) is refused too: it would resolve outside
    ``coordinator.core`` when used in participant_sdk/core.py, and absolute imports
    keep the allow-list check simple.
    """
    problems: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                problems.append(f"{filename}:{node.lineno}: relative import")
                continue
            modules = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            problems.append(f"{filename}:{node.lineno}: dynamic __import__")
            continue
        else:
            continue
        problems.extend(f"{filename}:{node.lineno}: {m}" for m in modules if not _is_allowed(m))
    return problems


def core_files() -> list[Path]:
    files = sorted(CORE_DIR.rglob("*.py"))
    return files + [path for path in PARTICIPANT_CORE if path.exists()]


def test_coordinator_core_has_files() -> None:
    assert any(path.parent == CORE_DIR for path in core_files()), CORE_DIR


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_core_module_is_pure(path: Path) -> None:
    problems = impure_imports(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)))
    assert not problems, "core modules must stay free of I/O, clocks and randomness:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from datetime import datetime",
        "import grpc",
        "from pysyncobj import SyncObj",
        "import lmdb",
        "from random import Random",
        "import asyncio, threading",
        "from uuid import uuid4",
        "import socket",
        "import json",  # not forbidden by name, but not on the allow-list either
        "from coordinator.replication import codec",
        "from coordinator.corex import thing",
        "from . import entries",
        "def f():\n    import time\n    return time.monotonic()",  # hidden in a function
        "mod = __import__('time')",
    ],
)
def test_checker_catches_planted_import(source: str) -> None:
    assert impure_imports(source), f"checker missed: {source!r}"


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "from dataclasses import dataclass, field",
        "import enum\nfrom typing import Final",
        "from collections import deque\nimport heapq, itertools, functools, bisect, math",
        "from collections.abc import Mapping",
        "from abc import ABC",
        "from coordinator.core.entries import BeginTxn",
        "from coordinator.core import types",
        "import coordinator.core.limits",
    ],
)
def test_checker_allows_the_allow_list(source: str) -> None:
    assert impure_imports(source) == []
