"""The simulated bank: its participant keeps versions, holds and applies branches as
the real store does and votes through the production isolation check; its history
feeds the serializability checker; the isolation checkers are each shown to fail on
each planted isolation bug."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coordinator.core.messages import Decide, Prepare
from coordinator.core.types import Decision, Kind
from participant_sdk.core import (
    ApplyBranch,
    HoldBranch,
    LocalState,
    RestoreCheckpoint,
    Step,
    TakeCheckpoint,
)
from participant_sdk.isolation import Add, BranchWork, Version
from simulations import checkers
from simulations import history as h
from simulations.history import History
from simulations.participant import GENESIS, Read, SimParticipant, Stage
from simulations.planted import PLANTED
from simulations.serializability import Observed, check_serializable
from simulations.world import Plant, SimConfig, World, run_seed

# ---------------------------------------------------------------------- the participant


def _participant() -> tuple[World, SimParticipant]:
    world = World(0, SimConfig(faults=False), Plant(), None)
    return world, world.participants["p0"]


def test_the_simulated_disk_is_the_sdk_store_and_a_crash_keeps_what_was_synced() -> None:
    """The participant writes through the SDK's own ``StoreWriter`` into a store whose
    commits stay unsynced until ``sync``: a crash keeps what was synced and loses the
    rest; a restart rebuilds the lock table from the held footprints, as
    ``Participant.start`` does; applies and restores version keys as the store does."""
    _, p = _participant()
    assert p.memory.version("acct/0") == GENESIS and p.memory.commit_seq == GENESIS.seq
    opening = p.memory.balances()

    held = BranchWork(reads={"acct/2": GENESIS}, writes={"acct/1": Add(delta=1)}, scans={"a": 1})
    p.work["t1"] = held
    p._write(Step(actions=(HoldBranch(txn_id="t1"),)))
    p.sync()
    p.work["t2"] = BranchWork(writes={"acct/0": b"7"})
    p._write(Step(actions=(HoldBranch(txn_id="t2"),)))  # never synced
    assert set(p.store.held_footprints()) == {"t1", "t2"}
    p.crash()
    p.restart()
    assert p.store.held_footprints() == {"t1": held.footprint()}
    assert p.locks.prepared == {"t1": held.footprint()}

    p._write(Step(actions=(ApplyBranch(txn_id="t1"),)))
    assert p.memory.balances()["acct/1"] == opening["acct/1"] + 1
    assert p.memory.version("acct/1") == Version(GENESIS.seq + 1, "t1")
    assert p.locks.prepared == {} and p.store.held_footprints() == {}

    p._write(Step(actions=(TakeCheckpoint(checkpoint_id="cp", label="cp"),)))
    p.work["t3"] = BranchWork(writes={"acct/0": b"1", "new": b"x"})
    p._write(Step(actions=(HoldBranch(txn_id="t3"),)))
    p._write(Step(actions=(ApplyBranch(txn_id="t3"),)))
    p._write(Step(actions=(RestoreCheckpoint(checkpoint_id="cp"),)))  # new versions
    restored = Version(p.memory.commit_seq, "rollback:cp")
    assert p.memory.version("acct/0") == restored and p.memory.version("new") == restored
    assert p.memory.balances() == {**opening, "acct/1": opening["acct/1"] + 1}
    assert p.memory.get("new") is None
    p.crash()  # none of it was synced
    p.restart()
    assert p.memory.balances() == opening and p.memory.commit_seq == GENESIS.seq


def _prepare(p: SimParticipant, txn_id: str) -> tuple[bool, str]:
    prepare = Prepare(
        round_id=txn_id, kind=Kind.TXN, participant_id="p0", session_id="bank", term=1
    )
    p.on_message("c0", prepare)
    record = p.core.records[txn_id]
    return record.voted_yes, record.reason


def _commit(p: SimParticipant, txn_id: str) -> None:
    decide = Decide(
        round_id=txn_id, kind=Kind.TXN, participant_id="p0", decision=Decision.COMMIT, term=1
    )
    p.on_message("c0", decide)
    assert p.core.records[txn_id].state is LocalState.COMMITTED


def _rmw(p: SimParticipant, txn_id: str, key: str, value: bytes, lease: bool = False) -> None:
    p.on_message("client0", Read(1, txn_id, keys=(key,), lease=lease))
    p.on_message("client0", Stage(2, txn_id, ((key, value),)))


def test_the_vote_is_the_production_isolation_check() -> None:
    """Two branches read acct/0 at one version and write it: the second is refused
    while the first is in doubt, and after the first commits its read is stale; a
    leased key refuses others until the branch votes."""
    _, p = _participant()
    _rmw(p, "t1", "acct/0", b"90")
    _rmw(p, "t2", "acct/0", b"80")
    _rmw(p, "t3", "acct/0", b"70")
    assert _prepare(p, "t1") == (True, "")
    yes, reason = _prepare(p, "t2")
    assert not yes and reason == "conflict: 'acct/0' is locked by in-doubt txn 't1'"
    _commit(p, "t1")
    assert p.memory.state["acct/0"] == b"90" and p.locks.prepared == {}
    yes, reason = _prepare(p, "t3")
    assert not yes and reason == "conflict: 'acct/0' changed since read (by txn 't1')"

    _rmw(p, "t4", "acct/1", b"1", lease=True)
    _rmw(p, "t5", "acct/1", b"2")  # reads fine, but the key is leased to t4
    yes, reason = _prepare(p, "t5")
    assert not yes and "locked by active txn 't4' (lease)" in reason
    assert _prepare(p, "t4") == (True, "")
    p.on_message("client0", Stage(3, "t6", (("acct/2", Add(delta=-101, min=0)),), begin=True))
    yes, reason = _prepare(p, "t6")
    assert not yes and reason.startswith("bound: 'acct/2' would go below min=0")


def test_a_stage_that_read_nothing_here_does_not_begin_a_branch() -> None:
    """A read-modify-write whose reads were lost (a restart) must not stage blind."""
    _, p = _participant()
    p.on_message("client0", Stage(1, "t1", (("acct/0", b"5"),)))
    assert "t1" not in p.work and "t1" not in p.core.active


def test_work_sent_before_a_restart_is_not_delivered_to_the_new_incarnation() -> None:
    world, p = _participant()
    world.loop.now_ms = 100
    p.crash()
    world.loop.now_ms = 200
    p.restart()
    p.on_message("client0", Read(1, "t1", keys=("acct/0",), sent_ms=150))
    assert "t1" not in p.work
    p.on_message("client0", Read(2, "t1", keys=("acct/0",), sent_ms=200))
    assert p.work["t1"].reads == {"acct/0": GENESIS}


# ---------------------------------------------------------------------- the history


def _history(rows: list[tuple[int, str, str, str, str, dict[str, str]]]) -> History:
    clock = {"now": 0}
    history = History(lambda: clock["now"])
    for time_ms, kind, node, round_id, value, extra in rows:
        clock["now"] = time_ms
        history.record(kind, node, round_id, value, **extra)
    return history


def _committed(txn_id: str, at: int) -> tuple[int, str, str, str, str, dict[str, str]]:
    return (at, h.DECIDED, "c0", txn_id, "COMMIT", {})


ADD = {"writes": "acct/0", "adds": "acct/0"}


def test_two_adds_applied_in_opposite_orders_are_serializable() -> None:
    """Adds commute: a1 and a2 both add to acct/0 at p0 and p1, applied in opposite
    orders. Their sequence numbers alone, without knowing they commute, would make a
    write cycle."""
    rows = [
        (1, h.HELD, "p0", "a1", "", ADD),
        (1, h.HELD, "p1", "a1", "", ADD),
        (1, h.HELD, "p0", "a2", "", ADD),
        (1, h.HELD, "p1", "a2", "", ADD),
        _committed("a1", 2),
        _committed("a2", 2),
        (3, h.APPLIED, "p0", "a1", "5", ADD),
        (3, h.APPLIED, "p1", "a2", "7", ADD),
        (4, h.APPLIED, "p0", "a2", "6", ADD),
        (4, h.APPLIED, "p1", "a1", "8", ADD),
    ]
    assert checkers.serializable(_history(rows)) == []
    naive = [
        Observed(txn_id="a1", committed=True, writes={("p0", "acct/0"): 5, ("p1", "acct/0"): 8}),
        Observed(txn_id="a2", committed=True, writes={("p0", "acct/0"): 6, ("p1", "acct/0"): 7}),
    ]
    assert check_serializable(naive)[0].startswith("G0 write cycle")


def test_an_add_overwritten_by_a_stale_read_modify_write_is_caught() -> None:
    """t3 read acct/0 at a1's version, then a2 added to it, then t3 wrote a value
    computed without a2's delta: a2's add is lost (t3 is anti-dependent on every add
    after the version it read)."""
    rmw = {"reads": "acct/0@2:a1", "writes": "acct/0"}
    rows = [
        (1, h.HELD, "p0", "a1", "", ADD),
        _committed("a1", 2),
        (3, h.APPLIED, "p0", "a1", "2", ADD),
        (4, h.HELD, "p0", "a2", "", ADD),
        (4, h.HELD, "p0", "t3", "", rmw),
        _committed("a2", 5),
        _committed("t3", 5),
        (6, h.APPLIED, "p0", "a2", "4", ADD),
        (7, h.APPLIED, "p0", "t3", "5", {"writes": "acct/0"}),
    ]
    [anomaly] = checkers.serializable(_history(rows))
    assert anomaly.startswith("G-single") and "t3 -rw-> a2" in anomaly


def test_a_rollback_breaks_the_version_chain_without_inventing_edges() -> None:
    rows = [
        (1, h.HELD, "p0", "t1", "", {"reads": "acct/0@1:genesis", "writes": "acct/0"}),
        _committed("t1", 2),
        (3, h.APPLIED, "p0", "t1", "2", {"writes": "acct/0"}),
        (4, h.RESTORED, "p0", "", "cp", {"changed": "acct/0", "seq": "3"}),
        (5, h.HELD, "p0", "t2", "", {"reads": "acct/0@3:rollback:cp", "writes": "acct/0"}),
        _committed("t2", 6),
        (7, h.APPLIED, "p0", "t2", "4", {"writes": "acct/0"}),
    ]
    assert checkers.serializable(_history(rows)) == []
    [t1, t2] = sorted(checkers.observed(_history(rows)), key=lambda o: o.txn_id)
    assert t2.reads == {("p0", "acct/0"): Version(3, "rollback:cp")}
    assert t1.writes == {("p0", "acct/0"): 2} and t2.writes == {("p0", "acct/0"): 4}


def test_an_aborted_transaction_is_observed_with_what_each_branch_read() -> None:
    """A YES names its branch when it holds it, a NO when it refuses it."""
    why = "conflict: 'acct/0' changed since read (by txn 't0')"
    rows = [
        (1, h.HELD, "p1", "t1", "", {"reads": "acct/1@1:genesis", "writes": "acct/1"}),
        (1, h.VOTED, "p0", "t1", "no", {"of": "TXN", "why": why, "reads": "acct/0@1:genesis"}),
        (2, h.DECIDED, "c0", "t1", "ABORT", {}),
    ]
    [t1] = checkers.observed(_history(rows))
    assert not t1.committed
    assert t1.reads == {("p0", "acct/0"): GENESIS, ("p1", "acct/1"): GENESIS}
    assert t1.writes == {("p1", "acct/1"): None}


def test_a_committed_audit_must_see_the_whole_total() -> None:
    rows = [
        (1, h.SNAPSHOT, "client0", "t1", "900", {"accounts": "9", "by": "scan"}),
        (1, h.SNAPSHOT, "client0", "t2", "880", {"accounts": "9", "by": "keys"}),
        (1, h.SNAPSHOT, "client0", "t3", "870", {"accounts": "9", "by": "keys"}),
        _committed("t1", 2),
        _committed("t2", 2),
        (2, h.DECIDED, "c0", "t3", "ABORT", {}),
    ]
    world = SimpleNamespace(history=_history(rows), expected_total=900)
    [bad] = checkers.audits_see_the_total(world)  # type: ignore[arg-type]
    assert bad.startswith("t2: committed, but saw a total of 880 != 900")


# ---------------------------------------------------------------------- planted bugs

NEW_CHECKERS = ("serializable", "conserved total", "audits see the total")
SEEDS_MAX = 20


@pytest.mark.parametrize("bug", ["skip-read-validation", "release-locks-early"])
def test_each_isolation_checker_catches_each_isolation_bug(bug: str) -> None:
    """Each of the three checkers on its own catches the bug within the bound."""
    caught: set[str] = set()
    for seed in range(SEEDS_MAX):
        violations = run_seed(seed, plant=PLANTED[bug]).violations
        caught |= {c for c in NEW_CHECKERS if any(v.startswith(f"{c}: ") for v in violations)}
        if caught == set(NEW_CHECKERS):
            return
    pytest.fail(f"{bug}: only {sorted(caught)} caught it in {SEEDS_MAX} seeds")
