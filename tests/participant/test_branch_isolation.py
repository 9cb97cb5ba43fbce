"""Serializable branches through a real Participant (LMDB, gRPC on port 0); the test
plays the leader. Each test is an anomaly that the isolation rules must prevent."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from participant_fakes import eventually, run
from test_participant_service import Leader, decide, prepare

from coordinator.core.messages import VoteReply
from coordinator.core.types import Decision
from participant_sdk import (
    BranchClosed,
    LockConflict,
    Participant,
    ParticipantOptions,
    StoreLimitError,
    StoreLimits,
    Version,
)
from participant_sdk.isolation import NEVER_WRITTEN


def vote(replies: list[object], txn_id: str) -> VoteReply:
    [reply] = [r for r in replies if isinstance(r, VoteReply) and r.round_id == txn_id]
    return reply


async def commit(p: Participant, leader: Leader, txn_id: str, writes: dict[str, bytes]) -> None:
    branch = p.begin(txn_id)
    for key, value in writes.items():
        branch.put(key, value)
    assert vote(await leader.send(1, prepare(txn_id)), txn_id).yes
    await leader.send(1, decide(txn_id, Decision.COMMIT))


def test_two_read_modify_writes_of_one_key_cannot_both_commit(tmp_path: Path) -> None:
    """The issue's lost update: both read stock=10 and write stock-1."""

    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            await commit(p, leader, "init", {"stock": b"10"})
            first, second = p.begin("o1"), p.begin("o2")
            for branch in (first, second):
                branch.put("stock", str(int(branch.get("stock") or b"0") - 1).encode())
            assert first.reads == {"stock": Version(1, "init")}
            assert vote(await leader.send(1, prepare("o1")), "o1").yes
            # o2 read the same version: o1 holds the key until its decision
            no = vote(await leader.send(1, prepare("o2")), "o2")
            assert not no.yes and no.reason == "conflict: 'stock' is locked by in-doubt txn 'o1'"
            await leader.send(1, decide("o1", Decision.COMMIT))
            assert p.state.get("stock") == b"9"

            # after o1's commit, a branch that read before it sees its read changed
            late = p.begin("o3")
            late.put("stock", str(int(late.get("stock") or b"0") - 1).encode())
            await commit(p, leader, "o4", {"stock": b"5"})
            no = vote(await leader.send(1, prepare("o3")), "o3")
            assert no.reason == "conflict: 'stock' changed since read (by txn 'o4')"
            assert p.state.get("stock") == b"5"
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_a_branch_reads_its_own_writes_first(tmp_path: Path) -> None:
    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            await commit(p, leader, "init", {"a/1": b"1", "a/2": b"2", "n": b"10"})
            branch = p.begin("t")
            branch.put("a/3", b"3")
            branch.delete("a/1")
            branch.add("n", -4)
            assert branch.get("a/3") == b"3"
            assert branch.get("a/1") is None
            assert branch.get("n") == b"6"
            assert branch.items("a/") == [("a/2", b"2"), ("a/3", b"3")]
            # its own writes are not reads: only n (read through the add) and the scan
            assert set(branch.reads) == {"n"}
            assert branch.scans == {"a/": 1}
            assert vote(await leader.send(1, prepare("t")), "t").yes
            await leader.send(1, decide("t", Decision.COMMIT))
            assert p.state.items() == [("a/2", b"2"), ("a/3", b"3"), ("n", b"6")]
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_write_skew_through_a_scan_is_prevented(tmp_path: Path) -> None:
    """On-call: at least one doctor must stay. Each branch sees two on call and takes
    itself off: without the scan check both would commit and nobody would be left."""

    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            await commit(p, leader, "init", {"oncall/alice": b"1", "oncall/bob": b"1"})
            for txn_id, doctor in (("t-alice", "alice"), ("t-bob", "bob")):
                branch = p.begin(txn_id)
                assert len(branch.items("oncall/")) == 2
                branch.delete(f"oncall/{doctor}")
            assert vote(await leader.send(1, prepare("t-alice")), "t-alice").yes
            no = vote(await leader.send(1, prepare("t-bob")), "t-bob")
            assert no.reason == (
                "conflict: 'oncall/bob' is under 'oncall/', scanned by in-doubt txn 't-alice'"
            )
            await leader.send(1, decide("t-alice", Decision.COMMIT))
            assert p.state.items("oncall/") == [("oncall/bob", b"1")]
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_a_phantom_insert_after_a_scan_votes_no(tmp_path: Path) -> None:
    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            counter = p.begin("count")
            counter.put("total", str(len(counter.items("order/"))).encode())
            await commit(p, leader, "insert", {"order/1": b"x"})
            no = vote(await leader.send(1, prepare("count")), "count")
            assert no.reason == (
                "conflict: 'order/1' under scanned 'order/' changed since the scan "
                "(by txn 'insert')"
            )
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_concurrent_adds_commit_within_their_bound(tmp_path: Path) -> None:
    """Ten orders of one widget against a stock of 7, all in doubt at once: seven YES,
    three NO by the bound, and the stock ends at zero, never below."""

    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            await commit(p, leader, "init", {"stock": b"7"})
            ids = [f"order-{i}" for i in range(10)]
            for txn_id in ids:
                p.begin(txn_id).add("stock", -1, min=0)
            replies = await leader.send(1, *(prepare(t) for t in ids))
            votes = [vote(replies, t) for t in ids]
            assert sum(v.yes for v in votes) == 7
            assert {v.reason for v in votes if not v.yes} == {
                "bound: 'stock' would go below min=0 (7 committed, -7 in doubt, -1 here)"
            }
            yes = [v.round_id for v in votes if v.yes]
            await leader.send(1, *(decide(t, Decision.COMMIT) for t in yes))
            assert p.state.get("stock") == b"0"
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_a_lease_makes_the_long_step_win(tmp_path: Path) -> None:
    now = [1000.0]

    async def body() -> None:
        p = Participant(
            "p1",
            tmp_path / "p1",
            [],
            options=ParticipantOptions(lock_lease_ms=5_000, clock=lambda: now[0]),
        )
        await p.start()
        leader = Leader(p.port)
        try:
            await commit(p, leader, "init", {"plan": b"v1"})
            slow = p.begin("slow")
            assert slow.get_for_update("plan") == b"v1"
            quick = p.begin("quick")
            with pytest.raises(LockConflict, match="'plan' is locked by txn 'slow'"):
                quick.lock("plan")
            quick.put("plan", b"quick")  # optimistic: refused at its Prepare instead
            no = vote(await leader.send(1, prepare("quick")), "quick")
            assert no.reason == "conflict: 'plan' is locked by active txn 'slow' (lease)"
            slow.put("plan", b"v2")
            assert vote(await leader.send(1, prepare("slow")), "slow").yes

            # a lease ends: a branch that never votes does not hold its keys forever
            idle = p.begin("idle")
            idle.lock("other")
            now[0] += 5.0
            p.begin("next").lock("other")
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_held_reads_survive_a_restart(tmp_path: Path) -> None:
    """A YES branch's reads stay locked while it is in doubt, across a restart: a write
    to a key it read must wait for its decision."""

    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            await commit(p, leader, "init", {"rate": b"1.10", "order": b""})
            reader = p.begin("reader")
            reader.put("order", b"at " + (reader.get("rate") or b""))
            assert vote(await leader.send(1, prepare("reader")), "reader").yes
        finally:
            await leader.close()
            await p.stop()

        again = Participant("p1", tmp_path / "p1", [])
        await again.start()
        leader = Leader(again.port)
        try:
            again.begin("writer").put("rate", b"1.20")
            no = vote(await leader.send(1, prepare("writer")), "writer")
            assert no.reason == "conflict: 'rate' is locked by in-doubt txn 'reader'"
            await leader.send(1, decide("reader", Decision.COMMIT))
            again.begin("writer2").put("rate", b"1.20")
            assert vote(await leader.send(1, prepare("writer2")), "writer2").yes
        finally:
            await leader.close()
            await again.stop()

    run(body())


def test_applied_waits_for_the_decision_here(tmp_path: Path) -> None:
    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            p.begin("t").put("k", b"v")
            assert vote(await leader.send(1, prepare("t")), "t").yes
            with pytest.raises(TimeoutError, match="not decided here"):
                await p.applied("t", timeout_s=0.05)
            seen: list[object] = []
            waiter = threading.Thread(target=lambda: seen.append(p.wait_applied("t", 10)))
            waiter.start()
            await leader.send(1, decide("t", Decision.COMMIT))
            waiter.join(10)
            assert seen == [Decision.COMMIT]
            assert p.state.get("k") == b"v"
            assert await p.applied("never-here") is None
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_reads_are_bounded(tmp_path: Path) -> None:
    async def body() -> None:
        limits = StoreLimits(reads_per_branch_max=2)
        p = Participant("p1", tmp_path / "p1", [], options=ParticipantOptions(limits=limits))
        await p.start()
        try:
            branch = p.begin("t")
            branch.get("a")
            branch.items("b/")
            branch.get("a")  # read before: not counted again
            with pytest.raises(StoreLimitError, match="reads_per_branch_max=2"):
                branch.get("c")
        finally:
            await p.stop()

    run(body())


def test_abandoned_work_is_given_up_with_its_locks(tmp_path: Path) -> None:
    """An initiator that dies before it commits never sends a Prepare: the branch must
    not hold its keys (or keep tombstones) forever."""
    now = [1000.0]

    async def body() -> None:
        p = Participant(
            "p1",
            tmp_path / "p1",
            [],
            options=ParticipantOptions(
                clock=lambda: now[0],
                active_branch_ms_max=60_000,
                lock_lease_ms=3_600_000,
                tick_interval_s=0.01,
            ),
        )
        await p.start()
        try:
            abandoned = p.begin("abandoned")
            abandoned.get_for_update("k")
            now[0] += 61.0
            await eventually(lambda: p.record("abandoned") is not None)
            record = p.record("abandoned")
            assert record is not None and "active_branch_ms_max=60000" in record.reason
            with pytest.raises(BranchClosed):
                abandoned.put("k", b"late")
            p.begin("next").lock("k")
        finally:
            await p.stop()

    run(body())


def test_a_branch_lost_in_a_restart_is_not_continued_empty(tmp_path: Path) -> None:
    """A step reads, the process restarts, a later step goes on with the branch: it must
    be told the branch is gone, not given an empty one whose Prepare would vote on a
    write computed from a read nobody checks."""

    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        try:
            p.begin("t").get("balance")
            assert p.branch("t").reads == {"balance": NEVER_WRITTEN}
        finally:
            await p.stop()
        again = Participant("p1", tmp_path / "p1", [])
        await again.start()
        try:
            with pytest.raises(BranchClosed, match="not open here"):
                again.branch("never-begun-here")
            # stop() gave up the branch for good: neither continued nor begun afresh
            with pytest.raises(BranchClosed):
                again.branch("t")
            with pytest.raises(BranchClosed, match="already aborted"):
                again.begin("t")
        finally:
            await again.stop()

    run(body())
