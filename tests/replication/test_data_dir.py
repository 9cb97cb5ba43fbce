"""Configuration and data-dir problems are one clear ReplicationError, never a traceback
and never a silent wipe; a node with the wrong secret cannot join."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from coordinator.replication import raft_patch
from coordinator.replication.node import (
    JOURNAL_DIR,
    SNAPSHOT_FILE,
    ProposeStatus,
    ReplicatedCoordinator,
    ReplicationError,
)
from tests.replication.helpers import (
    addresses,
    begin,
    config,
    leader_of,
    propose_wait,
    wait_until,
)


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


def _raw_connection(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_by_peer(sock: socket.socket, payload: bytes) -> bool:
    """Send ``payload`` in pieces; True once the node has closed the connection."""
    try:
        for start in range(0, len(payload), 1 << 16):
            sock.sendall(payload[start : start + (1 << 16)])
        # No shutdown: the node must close because of what it read, not because of EOF.
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_a_huge_raft_frame_is_refused_at_its_header(tmp_path: Path) -> None:
    """Anyone who reaches the Raft port: a 64 MB frame announced, then garbage. The node
    drops the connection after the header, not after buffering 64 MB, and keeps
    leading; a frame that fails authentication is dropped and logged once."""
    nodes = addresses(1)
    node = ReplicatedCoordinator(config(nodes, "n0", tmp_path))
    try:
        leader = leader_of({"n0": node})
        raft = nodes[0].raft
        before = dict(raft_patch.connections_dropped)
        with _raw_connection(raft) as sock:
            header = struct.pack("i", 64 << 20)
            assert _closed_by_peer(sock, header + b"\0" * (1 << 20))
        with _raw_connection(raft) as sock:
            frame = b"not encrypted with the secret" * 10
            assert _closed_by_peer(sock, struct.pack("i", len(frame)) + frame)
        dropped = raft_patch.connections_dropped
        assert dropped["frame_too_large"] == before.get("frame_too_large", 0) + 1
        # counted by the raft thread just after it closed the connection: wait for it
        wait_until(
            lambda: dropped["not_authenticated"] == before.get("not_authenticated", 0) + 1,
            "the failed authentication to be counted",
        )
        assert propose_wait(leader, begin("after")).status is ProposeStatus.APPLIED
    finally:
        node.close()
