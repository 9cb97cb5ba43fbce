"""Configuration and data-dir problems are one clear ReplicationError, never a traceback
and never a silent wipe; a node with the wrong secret cannot join."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.replication.node import (
    JOURNAL_DIR,
    SNAPSHOT_FILE,
    ProposeStatus,
    ReplicatedCoordinator,
    ReplicationError,
)
from tests.replication.helpers import addresses, begin, config, leader_of, propose_wait


def _single(tmp_path: Path, **knobs: object) -> ReplicatedCoordinator:
    nodes = addresses(1)
    return ReplicatedCoordinator(config(nodes, "n0", tmp_path, **knobs))


@pytest.mark.parametrize("secret", ["", None])
def test_missing_secret_is_refused_before_anything_starts(tmp_path: Path, secret: object) -> None:
    with pytest.raises(ReplicationError, match="CONCORD_SECRET"):
        _single(tmp_path, secret=secret)
    assert not (tmp_path / "n0").exists()


def test_wrong_secret_cannot_join(tmp_path: Path) -> None:
    nodes = addresses(3)
    started = [
        ReplicatedCoordinator(config(nodes, "n0", tmp_path, secret="right")),
        ReplicatedCoordinator(config(nodes, "n1", tmp_path, secret="right")),
        ReplicatedCoordinator(config(nodes, "n2", tmp_path, secret="wrong")),
    ]
    try:
        good = {"n0": started[0], "n1": started[1]}
        leader = leader_of(good)
        for i in range(5):
            assert propose_wait(leader, begin(f"t{i}")).status is ProposeStatus.APPLIED
        intruder = started[2]
        # Give it many heartbeat periods to (wrongly) catch up; nothing may arrive.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert intruder.read(lambda s: s.applied_count) == 0
            assert not intruder.is_leader()
            time.sleep(0.02)
        assert not any(m.reachable for m in intruder.status().members if m.node_id != "n2")
    finally:
        for coordinator in started:
            coordinator.close()


def test_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    nodes = addresses(2)
    ReplicatedCoordinator(config(nodes, "n0", tmp_path)).close()
    (tmp_path / "n1").symlink_to(tmp_path / "n0")
    with pytest.raises(ReplicationError, match=r"belongs to node 'n0'.*own data dir") as error:
        ReplicatedCoordinator(config(nodes, "n1", tmp_path))
    assert str(tmp_path / "n1") in str(error.value)


def test_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    _single(tmp_path).close()
    other_cluster = addresses(3)
    with pytest.raises(ReplicationError, match="belongs to node 'n0' of cluster"):
        ReplicatedCoordinator(config(other_cluster, "n0", tmp_path))


def test_corrupt_journal_is_refused(tmp_path: Path) -> None:
    _single(tmp_path).close()
    (tmp_path / "n0" / JOURNAL_DIR / "data.mdb").write_bytes(b"not lmdb" * 1000)
    with pytest.raises(ReplicationError, match=f"{tmp_path / 'n0' / JOURNAL_DIR}.*no valid LMDB"):
        _single(tmp_path)


@pytest.mark.parametrize("keep_bytes", [0, 4096])
def test_an_empty_or_truncated_journal_is_refused_not_started_empty(
    tmp_path: Path, keep_bytes: int
) -> None:
    """An empty journal would start as a new member: no term, no vote, no log."""
    node = _single(tmp_path)
    try:
        leader = leader_of({"n0": node})
        for i in range(20):
            assert propose_wait(leader, begin(f"t{i}")).status is ProposeStatus.APPLIED
    finally:
        node.close()
    journal = tmp_path / "n0" / JOURNAL_DIR / "data.mdb"
    with journal.open("r+b") as f:
        f.truncate(keep_bytes)
    with pytest.raises(ReplicationError, match=r"data\.mdb (is empty|is truncated|has no valid)"):
        _single(tmp_path)
    assert journal.stat().st_size == keep_bytes


def test_corrupt_snapshot_is_refused(tmp_path: Path) -> None:
    _single(tmp_path).close()
    (tmp_path / "n0" / SNAPSHOT_FILE).write_bytes(b"garbage")
    with pytest.raises(ReplicationError, match=f"snapshot {tmp_path / 'n0' / SNAPSHOT_FILE}"):
        _single(tmp_path)


def test_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    nodes = addresses(2)
    first = ReplicatedCoordinator(config(nodes, "n0", tmp_path))
    try:
        with pytest.raises(ReplicationError, match="in use by another running node"):
            ReplicatedCoordinator(config(nodes, "n0", tmp_path))
    finally:
        first.close()
