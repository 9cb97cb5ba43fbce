"""The SDK's one public surface: ``participant_sdk.__all__`` holds every name a user
needs, the package ships its annotations (PEP 561), and the examples and manuals use
nothing else of the SDK or of the coordinator's protocol packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import participant_sdk

REPO = Path(__file__).resolve().parents[2]
# What users read and copy: they must import the SDK through its public surface.
USER_CODE = [
    *sorted((REPO / "examples").rglob("*.py")),
    REPO / "docs" / "sdk.md",
    REPO / "docs" / "rollback.md",
    REPO / "simulations" / "tier2" / "agent.py",
    REPO / "tests" / "integration" / "kv_agent.py",
]
# An SDK submodule, or the coordinator's types, identity or ready-file helpers.
PRIVATE_IMPORT = re.compile(
    r"^\s*from (participant_sdk\.\w+|coordinator\.(core|security)\b[\w.]*"
    r"|coordinator\.runtime\.readyfile) import",
    re.M,
)


def test_every_public_name_resolves_and_the_list_is_sorted() -> None:
    names = participant_sdk.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    missing = [name for name in names if not hasattr(participant_sdk, name)]
    assert missing == []
    for needed in ("Decision", "Participant", "ConcordClient", "write_ready_file", "Role"):
        assert needed in names


def test_the_manual_lists_every_public_name_in_its_api_section() -> None:
    manual = (REPO / "docs" / "sdk.md").read_text()
    section = manual.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| "))
    listed = set(re.findall(r"`(\w+)`", table))
    assert sorted(set(participant_sdk.__all__) - listed) == []
    assert sorted(listed - set(participant_sdk.__all__)) == []


def test_user_code_imports_only_the_public_surface() -> None:
    found = [
        f"{path.relative_to(REPO)}: {match.group(0).strip()}"
        for path in USER_CODE
        for match in PRIVATE_IMPORT.finditer(path.read_text())
    ]
    assert found == []


def test_the_package_ships_py_typed() -> None:
    assert (REPO / "participant_sdk" / "py.typed").is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["participant_sdk"]
