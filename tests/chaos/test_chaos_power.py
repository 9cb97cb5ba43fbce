"""`concord chaos run --nemesis power`: every data dir on a LazyFS disk, power cuts of the
leader, a random node and a participant right after it voted YES. With the code as it
is the history is valid; with every LMDB environment opened without syncs (the planted
bug of issue 14, planted in every child process through ``sitecustomize``), the same run
is not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coordinator.runtime.cli import main
from simulations.tier2 import lazyfs

RUN = ["chaos", "run", "--workload=bank", "--nemesis=power", "--time=40", "--seed=3"]

_UNSYNCED_LMDB = """\
import lmdb
_open = lmdb.open
lmdb.open = lambda *args, **kwargs: _open(*args, **{**kwargs, "sync": False, "metasync": False})
"""


def _power_kinds(results: dict) -> set[str]:  # type: ignore[type-arg]
    return {f["kind"] for f in results["faults"] if f["kind"].startswith("power-")}


def _no_mount_left(out: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        left = [line.split()[1] for line in mounts if str(out) in line]
    assert not left, f"mounts left behind: {left}"


def test_without_fuse_the_power_nemesis_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lazyfs, "unavailable_reason", lambda: "LazyFS needs FUSE (test)")
    assert main(["chaos", "run", "--nemesis=kill,power", "--out=/nonexistent/x"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--nemesis power: LazyFS needs FUSE (test)" in lines[0], lines


@pytest.mark.integration
def test_a_short_power_run_is_valid(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    code = main([*RUN, f"--out={out}"])
    results = json.loads((out / "results.json").read_text())
    failed = {k: v["examples"][:3] for k, v in results["checkers"].items() if not v["valid"]}
    assert results["valid"], failed
    assert code == 0
    assert _power_kinds(results), f"no power cut in {results['faults']}"
    _no_mount_left(out)
    # A clean unmount at the end: each data dir is where it always is, whole.
    for name in ("c1", "c2", "c3", "p1", "p2", "p3", "p4"):
        assert any((out / "cluster" / name).iterdir()), f"{name}'s data dir is empty"


@pytest.mark.integration
def test_a_power_run_catches_lmdb_without_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(_UNSYNCED_LMDB)
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(planted), inherited])))
    out = tmp_path / "chaos"

    code = main([*RUN, f"--out={out}"])

    results = json.loads((out / "results.json").read_text())
    assert _power_kinds(results), f"no power cut in {results['faults']}"
    assert not results["valid"], "LMDB without sync went unnoticed"
    assert code == 1
    _no_mount_left(out)
