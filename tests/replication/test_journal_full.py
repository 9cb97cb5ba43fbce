"""A write the journal cannot store is never acknowledged.

Before: a full LMDB map raised inside the group commit after the queued writes had
been taken off the queue; the node logged MapFullError, went on answering (the
entries were in its memory), and a later flush wrote later entries: "gap in the log"
at the next start. Now a failed flush keeps its writes, fails the journal for good,
and the node stops before another tick, with one CRITICAL line; a map allowed to grow
grows instead."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import pytest

from coordinator.core.entries import BeginSaga, SagaStepSpec
from coordinator.replication.journal import JournalWriteError, LmdbJournal
from coordinator.replication.node import ProposeStatus, ReplicatedCoordinator
from tests.replication.helpers import (
    addresses,
    config,
    leader_of,
    propose_wait,
    round_ids,
    wait_until,
)

SMALL_MAP = 256 << 10
LARGE_MAP = 8 << 20
PAYLOAD = b"x" * 30_000  # a valid saga step payload (step_payload_bytes_max is 64 KiB)
PROPOSALS_MAX = 200  # far more than a small map holds: the loop is bounded


def saga(index: int) -> BeginSaga:
    step = SagaStepSpec(participant_id="p1", action="book", payload=PAYLOAD)
    return BeginSaga(
        saga_id=f"s{index}", session_id="", steps=(step,), step_timeout_ms=60_000, now_ms=index
    )


def critical_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]


def test_a_full_journal_stops_the_node_and_acknowledges_nothing_it_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = addresses(1)
    node_id = nodes[0].node_id
    applied: list[str] = []
    node = ReplicatedCoordinator(
        config(
            nodes, node_id, tmp_path, journal_map_bytes=SMALL_MAP, journal_map_bytes_max=SMALL_MAP
        )
    )
    try:
        leader_of({node_id: node})
        for index in range(PROPOSALS_MAX):
            result = propose_wait(node, saga(index), timeout_s=10.0)
            if result.status is not ProposeStatus.APPLIED:
                break
            assert result.applied is not None and result.applied.error is None
            applied.append(f"s{index}")
        else:
            pytest.fail(f"{PROPOSALS_MAX} proposals of 30 KB fit a {SMALL_MAP}-byte map")
        # Not acknowledged as applied: maybe applied, for all the caller knows.
        assert result.status is ProposeStatus.UNKNOWN
        lost = f"s{index}"
        assert applied, "the map held nothing at all"
        # One CRITICAL line naming the problem, and the node stopped.
        lines = critical_lines(caplog)
        assert len(lines) == 1, lines
        assert "stops" in lines[0] and "full" in lines[0] and "MapFullError" in lines[0]
        assert node.failure is not None and "raft-journal" in node.failure
        assert not node.is_leader() and node.leader_id() is None
        assert propose_wait(node, saga(10_000)).status is ProposeStatus.NOT_LEADER
        assert len(critical_lines(caplog)) == 1  # said once
    finally:
        node.close()

    # Restarted with a larger map: everything acknowledged is there, and the write
    # that failed is not (it was never durable, and never acknowledged).
    node = ReplicatedCoordinator(
        config(
            nodes, node_id, tmp_path, journal_map_bytes=LARGE_MAP, journal_map_bytes_max=LARGE_MAP
        )
    )
    try:
        leader_of({node_id: node})
        held = node.read(lambda state: set(state.rounds))
        assert set(applied) <= held, sorted(set(applied) - held)
        assert lost not in held
        after = propose_wait(node, saga(20_000))
        assert after.status is ProposeStatus.APPLIED
    finally:
        node.close()
    assert len(critical_lines(caplog)) == 1


def test_a_full_map_grows_up_to_its_bound(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    nodes = addresses(1)
    node_id = nodes[0].node_id
    count = 2 * SMALL_MAP // len(PAYLOAD)  # twice what the first map holds
    node = ReplicatedCoordinator(
        config(
            nodes, node_id, tmp_path, journal_map_bytes=SMALL_MAP, journal_map_bytes_max=LARGE_MAP
        )
    )
    try:
        leader_of({node_id: node})
        for index in range(count):
            assert propose_wait(node, saga(index), timeout_s=10.0).status is ProposeStatus.APPLIED
        assert node.failure is None
    finally:
        node.close()
    grown = [r.getMessage() for r in caplog.records if "grown to" in r.getMessage()]
    assert grown and "map full at" in grown[0]
    assert critical_lines(caplog) == []
    node = ReplicatedCoordinator(config(nodes, node_id, tmp_path, journal_map_bytes=SMALL_MAP))
    try:
        leader_of({node_id: node})
        assert node.read(lambda state: len(state.rounds)) == count
    finally:
        node.close()


def test_a_failed_flush_keeps_its_writes_and_leaves_no_gap(tmp_path: Path) -> None:
    identity = {"node_id": "n1", "members": ["n1"]}
    dump = tmp_path / "snapshot"
    journal = LmdbJournal(tmp_path / "j", identity=identity, dump_path=dump, map_bytes=SMALL_MAP)
    durable = 0
    with pytest.raises(JournalWriteError, match="full at its bound") as raised:
        for index in range(1, PROPOSALS_MAX):
            journal.add(PAYLOAD, index, 1)
            journal.flush()
            durable = index
    assert journal.failure == str(raised.value)
    # Failed for good: a later flush refuses at once, even with nothing new queued.
    with pytest.raises(JournalWriteError):
        journal.flush()
    journal._destroy()
    reopened = LmdbJournal(tmp_path / "j", identity=identity, dump_path=dump, map_bytes=LARGE_MAP)
    try:
        assert [entry[1] for entry in reopened.entries()] == list(range(1, durable + 1))
        reopened.add(PAYLOAD, durable + 1, 1)
        reopened.flush()
    finally:
        reopened._destroy()


def test_a_leader_whose_journal_fills_steps_aside_and_the_cluster_keeps_every_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three nodes; the leader's map is small, its followers' large. When the leader
    cannot store a write it stops; a follower is elected and holds every entry that
    was acknowledged as applied; the old leader, restarted with a larger map, catches
    up with all of them."""
    nodes = addresses(3)
    small, *others = (n.node_id for n in nodes)

    def start(node_id: str, map_bytes: int) -> ReplicatedCoordinator:
        return ReplicatedCoordinator(
            config(
                nodes,
                node_id,
                tmp_path,
                journal_map_bytes=map_bytes,
                journal_map_bytes_max=map_bytes,
            )
        )

    running = {small: start(small, SMALL_MAP)}
    applied: list[str] = []
    try:
        running.update({node_id: start(node_id, LARGE_MAP) for node_id in others})
        make_lead(running, small)
        for index in range(PROPOSALS_MAX):
            result = propose_wait(running[small], saga(index), timeout_s=10.0)
            if result.status is not ProposeStatus.APPLIED:
                break
            applied.append(f"s{index}")
        else:
            pytest.fail(f"{PROPOSALS_MAX} proposals of 30 KB fit a {SMALL_MAP}-byte map")
        assert result.status is ProposeStatus.UNKNOWN
        assert running[small].failure is not None
        survivors = {k: v for k, v in running.items() if k != small}
        new = leader_of(survivors, timeout_s=10.0)
        # The new leader applies everything before its own term's first entry.
        assert propose_wait(new, saga(30_000)).status is ProposeStatus.APPLIED
        for node in survivors.values():
            wait_until(lambda n=node: set(applied) <= round_ids(n), "every commit", 10.0)
        running.pop(small).close()
        running[small] = start(small, LARGE_MAP)
        wait_until(
            lambda: {*applied, "s30000"} <= round_ids(running[small]), "the restarted node", 10.0
        )
    finally:
        for node in running.values():
            node.close()
    lines = critical_lines(caplog)
    assert len(lines) == 1 and small in lines[0], lines


def make_lead(running: dict[str, ReplicatedCoordinator], node_id: str) -> None:
    """Hand leadership to ``node_id`` (Raft TimeoutNow), asking again while it is
    refused (the target must be fully caught up); bounded."""
    deadline = time.monotonic() + 20.0
    while not running[node_id].is_leader():
        if time.monotonic() > deadline:
            raise AssertionError(f"{node_id} never took the leadership")
        leader = leader_of(running)
        if leader is running[node_id]:
            return
        answered = threading.Event()
        leader.transfer_leadership(node_id, lambda sent, done=answered: done.set())
        answered.wait(2.0)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: running[node_id].is_leader(), f"{node_id} to lead", 1.0)
