"""The runnable examples the docs point at actually run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from examples import sdk_quickstart

pytestmark = pytest.mark.integration


def test_sdk_quickstart(tmp_path: Path) -> None:
    lines = asyncio.run(sdk_quickstart.main(tmp_path))
    assert lines[0] == "alice: committed"
    assert lines[1].startswith("bob: aborted everywhere") and "already taken" in lines[1]
