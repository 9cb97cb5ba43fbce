"""Journal and snapshot formats are checked when a node starts: one of another format is
refused with one line naming both formats (never read as if it were this one's); a
snapshot written before snapshots carried a format mark is format 1. (Log entries carry
their own schema version: tests/test_codec.py; backup files theirs:
tests/replication/test_backup.py.)"""

from __future__ import annotations

import gzip
import io
import json
import pickle
from pathlib import Path
from typing import Any

import lmdb
import pytest

from coordinator.core.limits import Limits
from coordinator.core.state import CoordinatorState, Round
from coordinator.replication import journal, raft_patch
from coordinator.replication.backup import capture, decode, encode, seed_data_dir
from coordinator.replication.journal import JOURNAL_FORMAT, SNAPSHOT_FORMAT
from coordinator.replication.node import (
    JOURNAL_DIR,
    SNAPSHOT_FILE,
    NodeAddress,
    ProposeStatus,
    ReplicatedCoordinator,
    ReplicationError,
    _StateMachine,
)
from tests.replication.helpers import (
    addresses,
    begin,
    config,
    propose_wait,
    round_ids,
    wait_until,
)
from tests.replication.test_snapshot_pickle import _format_1


def _run_once(root: Path, nodes: tuple[NodeAddress, ...]) -> None:
    with ReplicatedCoordinator(config(nodes, "n0", root)) as node:
        wait_until(node.leader_ready, "n0 to lead")
        assert propose_wait(node, begin("t0")).status is ProposeStatus.APPLIED


def test_a_journal_of_another_format_is_refused_with_one_line(tmp_path: Path) -> None:
    nodes = addresses(1)
    _run_once(tmp_path, nodes)
    env = lmdb.open(str(tmp_path / "n0" / JOURNAL_DIR), max_dbs=2)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        identity = json.loads(bytes(txn.get(b"identity", db=meta)))
        assert identity["format"] == JOURNAL_FORMAT
        identity["format"] = JOURNAL_FORMAT + 1
        txn.put(b"identity", json.dumps(identity).encode(), db=meta)
    env.close()
    with pytest.raises(ReplicationError) as raised:
        ReplicatedCoordinator(config(nodes, "n0", tmp_path))
    message = str(raised.value)
    assert f"is journal format {JOURNAL_FORMAT + 1}; this concord reads format 1 only" in message
    assert "\n" not in message


def _seeded(tmp_path: Path, change: Any) -> tuple[NodeAddress, ...]:
    """A data dir seeded from a backup of a one-node cluster, then its snapshot's state
    machine data changed by ``change``."""
    with ReplicatedCoordinator(config(addresses(1), "n0", tmp_path / "source")) as node:
        wait_until(node.leader_ready, "n0 to lead")
        assert propose_wait(node, begin("t0")).status is ProposeStatus.APPLIED
        backup = decode(encode(capture(node)))
    members = (NodeAddress(node_id="r0", raft=addresses(1)[0].raft, grpc="127.0.0.1:0"),)
    seed_data_dir(backup, tmp_path / "r0", "r0", members)
    snapshot = tmp_path / "r0" / SNAPSHOT_FILE
    state, last, before_last, cluster = pickle.loads(gzip.decompress(snapshot.read_bytes()))
    assert state[1]["snapshot_format"] == SNAPSHOT_FORMAT
    change(state[1])
    snapshot.write_bytes(gzip.compress(pickle.dumps((state, last, before_last, cluster))))
    return members


def test_a_snapshot_of_another_format_is_refused_with_one_line(tmp_path: Path) -> None:
    members = _seeded(tmp_path, lambda machine: machine.update(snapshot_format=3))
    with pytest.raises(ReplicationError) as raised:
        ReplicatedCoordinator(config(members, "r0", tmp_path))
    message = str(raised.value)
    assert "is snapshot format 3; this concord reads formats 1, 2 only" in message
    assert "\n" not in message


def test_a_snapshot_without_a_format_mark_is_format_1(tmp_path: Path) -> None:
    members = _seeded(tmp_path, lambda machine: machine.pop("snapshot_format"))
    with ReplicatedCoordinator(config(members, "r0", tmp_path)) as node:
        wait_until(node.leader_ready, "r0 to lead")
        assert round_ids(node) == {"t0"}


def test_a_format_1_snapshot_restores_and_is_rewritten_as_format_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot as format 1 wrote it (pickle's own form of every round, protocol 2, no
    mark) starts a node with its rounds; the node marks what it writes as format 2. The
    file is unpickled once at start: pysyncobj takes what the journal's check read."""
    second_reads: list[object] = []
    stock = raft_patch._stock_deserialize
    monkeypatch.setattr(
        raft_patch, "_stock_deserialize", lambda s: second_reads.append(s) or stock(s)
    )
    members = _seeded(tmp_path, lambda machine: machine.pop("snapshot_format"))
    snapshot = tmp_path / "r0" / SNAPSHOT_FILE
    dump = pickle.loads(gzip.decompress(snapshot.read_bytes()))
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, 2)
    pickler.dispatch_table = {Round: _format_1}  # type: ignore[assignment]
    pickler.dump(dump)
    assert b"_round_from_fields" not in buffer.getvalue()
    snapshot.write_bytes(gzip.compress(buffer.getvalue()))
    with ReplicatedCoordinator(config(members, "r0", tmp_path)) as node:
        wait_until(node.leader_ready, "r0 to lead")
        assert round_ids(node) == {"t0"}
        assert node.snapshot_carrier.snapshot_format == SNAPSHOT_FORMAT == 2
    assert second_reads == []


def test_a_snapshot_changed_after_the_check_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.gz"
    path.write_bytes(b"one")
    journal._preloaded[str(path)] = (journal._file_key(path), "dump")
    assert journal.take_preloaded_snapshot(str(path)) == "dump"
    assert journal.take_preloaded_snapshot(str(path)) is None  # taken once
    journal._preloaded[str(path)] = (journal._file_key(path), "dump")
    path.write_bytes(b"other")
    assert journal.take_preloaded_snapshot(str(path)) is None


def test_an_installed_snapshot_keeps_a_format_this_version_cannot_read() -> None:
    """A snapshot a (newer) leader installs: a readable format is written as this
    version's from then on; an unknown one keeps its mark, so a restart refuses it."""
    machine = _StateMachine(Limits(), None)
    machine._deserialize({"state": CoordinatorState(), "snapshot_format": 1})
    assert machine.snapshot_format == SNAPSHOT_FORMAT
    machine._deserialize({"state": CoordinatorState(), "snapshot_format": SNAPSHOT_FORMAT + 1})
    assert machine.snapshot_format == SNAPSHOT_FORMAT + 1
