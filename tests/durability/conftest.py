"""A LazyFS mount per test (simulations/tier2/lazyfs.py): unmounted, and its process
stopped by PID, whatever the test did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.tier2.lazyfs import LazyFs, unavailable_reason


@pytest.fixture
def lazyfs(tmp_path: Path) -> Iterator[LazyFs]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"these tests need FUSE: {reason}", pytrace=False)
    fs = LazyFs(tmp_path / "disk", tmp_path / "mnt")
    fs.mount()
    try:
        yield fs
    finally:
        fs.close()
