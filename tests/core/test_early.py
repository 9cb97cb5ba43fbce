"""Early Prepare (coordinator/core/early.py): when the leader may ask for a commit's
votes before the commit is in the log, and how the votes it hears are gathered."""

from __future__ import annotations

from coordinator.core.early import EarlyPlan, EarlyVotes, plan_early_prepare
from coordinator.core.entries import (
    Abort,
    BeginRound,
    BeginTxn,
    Entry,
    PresumeAbort,
    RecordVotes,
    RequestCommit,
)
from coordinator.core.limits import Limits
from coordinator.core.messages import Refused, TxnAction, VoteReply
from coordinator.core.state import CoordinatorState, Phase
from coordinator.core.types import Decision, Kind


def state_with(*entries: Entry, limits: Limits | None = None) -> CoordinatorState:
    state = CoordinatorState(limits or Limits())
    for entry in entries:
        applied = state.apply(entry)
        assert applied.error is None, applied.error
    return state


def begin(txn_id: str, *participants: str) -> BeginTxn:
    return BeginTxn(
        txn_id=txn_id, session_id="s", participants=participants, timeout_ms=1000, now_ms=1
    )


def test_an_unknown_txn_is_prepared_early_only_with_its_begin_at_hand() -> None:
    state = state_with()
    assert state.early_prepare_set("t1", ("a", "b", "a")) == ("a", "b")
    assert state.early_prepare_set("t1", None) == ()
    assert state.early_prepare_set("t1", ()) == ()  # nothing to prepare: the normal path


def test_an_active_txn_is_prepared_with_its_applied_participants() -> None:
    state = state_with(begin("t1", "a"))
    # The log's participants count, not the ones a (stale) begin names.
    assert state.early_prepare_set("t1", ("a", "z")) == ("a",)


def test_a_txn_past_active_is_never_prepared_early() -> None:
    state = state_with(begin("t1", "a"), RequestCommit(txn_id="t1", now_ms=2))
    assert state.get("t1").phase is Phase.VOTING  # type: ignore[union-attr]
    assert state.early_prepare_set("t1", ("a",)) == ()
    state = state_with(PresumeAbort(round_id="t2", now_ms=1))
    assert state.early_prepare_set("t2", ("a",)) == ()


def test_participants_held_by_a_rollback_round_are_not_prepared_early() -> None:
    rollback = BeginRound(
        round_id="r1",
        kind=Kind.ROLLBACK,
        session_id="s",
        participants=("b",),
        checkpoint_id="cp",
        label="why",
        timeout_ms=1000,
        now_ms=1,
    )
    state = state_with(rollback)
    assert state.early_prepare_set("t1", ("a", "b")) == ()  # BUSY, which a client retries
    assert state.early_prepare_set("t1", ("a",)) == ("a",)


def test_no_early_prepare_without_room_for_the_txn() -> None:
    state = state_with(begin("t1", "a"), limits=Limits(rounds_inflight_max=1))
    assert state.early_prepare_set("t2", ("a",)) == ()
    too_many = tuple(f"p{i}" for i in range(Limits().participants_per_round_max + 1))
    assert state_with().early_prepare_set("t3", too_many) == ()


def test_no_early_prepare_for_a_caller_out_of_room() -> None:
    mine = BeginTxn(
        txn_id="t1", session_id="", participants=("a",), timeout_ms=1000, now_ms=1, owner="c/1"
    )
    state = state_with(mine, limits=Limits(rounds_inflight_per_caller_max=1))
    assert state.early_prepare_set("t2", ("a",), owner="c/1") == ()
    assert state.early_prepare_set("t2", ("a",), owner="c/2") == ("a",)
    assert state.early_prepare_set("t2", ("a",)) == ("a",)


def test_votes_settle_when_all_answered_or_one_says_no_or_refuses() -> None:
    votes, prepares = EarlyVotes.start("t1", EarlyPlan(("a", "b"), "s"), term=7)
    assert [(p.participant_id, p.term, p.kind) for p in prepares] == [
        ("a", 7, Kind.TXN),
        ("b", 7, Kind.TXN),
    ]
    assert not votes.on_reply(VoteReply(round_id="t1", participant_id="a", yes=True))
    assert not votes.on_reply(VoteReply(round_id="t1", participant_id="a", yes=True))  # dup
    assert votes.on_reply(VoteReply(round_id="t1", participant_id="b", yes=True))
    assert [v.participant_id for v in votes.collected()] == ["a", "b"]

    votes, _ = EarlyVotes.start("t2", EarlyPlan(("a", "b"), "s"), term=7)
    assert votes.on_reply(VoteReply(round_id="t2", participant_id="b", yes=False, reason="no"))
    assert [(v.participant_id, v.yes) for v in votes.collected()] == [("b", False)]

    votes, _ = EarlyVotes.start("t3", EarlyPlan(("a",), "s"), term=7)
    assert votes.on_reply(Refused(round_id="t3", participant_id="a", term_seen=9, reason="old"))
    assert votes.collected() == ()


def test_the_commit_batch_decides_in_one_apply() -> None:
    """What the leader proposes on the early path: begin, commit and votes, in order."""
    votes, _ = EarlyVotes.start("t1", EarlyPlan(("a", "b"), "s"), term=1)
    for participant_id in ("a", "b"):
        votes.on_reply(VoteReply(round_id="t1", participant_id=participant_id, yes=True))
    state = state_with(
        begin("t1", "a", "b"),
        RequestCommit(txn_id="t1", now_ms=2),
        RecordVotes(votes=votes.collected(), now_ms=2),
    )
    assert state.get("t1").decision is Decision.COMMIT  # type: ignore[union-attr]


def test_a_begin_after_a_presumed_abort_finds_the_txn_aborted() -> None:
    """A participant asked about an early Prepare whose commit never reached the log:
    the commit that arrives later (begin along) is answered ABORT, never started."""
    state = state_with(
        PresumeAbort(round_id="t1", now_ms=1),
        begin("t1", "a"),
        RequestCommit(txn_id="t1", now_ms=2),
    )
    rnd = state.get("t1")
    assert rnd is not None and rnd.decision is Decision.ABORT and rnd.participants == []


def test_a_tombstone_from_before_its_reason_changed_still_stops_a_late_begin() -> None:
    """Tombstones keep the reason they were written with (a snapshot taken by an
    earlier version holds the old text): a late begin still finds the txn aborted."""
    state = state_with(PresumeAbort(round_id="t1", now_ms=1))
    tombstone = state.get("t1")
    assert tombstone is not None
    tombstone.decision_reason = "presumed abort: unknown round"  # as written before
    applied = state.apply(begin("t1", "a"))
    assert applied.error is None and tombstone.participants == []
    assert tombstone.decision is Decision.ABORT


def test_an_outcome_query_resolves_through_the_log() -> None:
    """Unknown: presumed abort. ACTIVE and asked by one of its participants: that
    participant voted on an early Prepare whose commit never reached the log, so the
    txn is aborted now rather than at its timeout. Anything else: answered as is."""
    state = state_with(begin("t1", "a", "b"))
    assert state.entry_for_outcome_query("zz", "a", 5) == PresumeAbort(round_id="zz", now_ms=5)
    lost = state.entry_for_outcome_query("t1", "a", 5)
    assert isinstance(lost, Abort) and lost.round_id == "t1"
    assert state.entry_for_outcome_query("t1", "client", 5) is None  # not a participant
    applied = state.apply(lost)
    assert applied.error is None
    rnd = state.get("t1")
    assert rnd is not None and rnd.decision is Decision.ABORT
    # The reason names who asked, and why that aborts it: what the client is told.
    assert rnd.decision_reason == (
        "presumed abort: participant 'a' asked about it before its commit reached the log"
    )

    voting = state_with(begin("t2", "a"), RequestCommit(txn_id="t2", now_ms=2))
    assert voting.entry_for_outcome_query("t2", "a", 5) is None  # the outbox drives it


def test_a_one_shot_commit_prepares_early_with_each_participants_action() -> None:
    """The begin the commit carries names an action per participant: each early
    Prepare carries its own, and a YES keeps the action's result for the log."""
    reserve = TxnAction(participant_id="a", action="reserve", payload=b'{"qty": 2}')
    begin = BeginTxn(
        txn_id="t1",
        session_id="s",
        participants=("a", "b"),
        timeout_ms=1000,
        now_ms=1,
        actions=(reserve,),
    )
    plan = plan_early_prepare(state_with(), "t1", begin)
    assert plan.participants == ("a", "b") and dict(plan.actions) == {"a": reserve}
    votes, prepares = EarlyVotes.start("t1", plan, term=3)
    assert [(p.participant_id, p.action, p.payload) for p in prepares] == [
        ("a", "reserve", b'{"qty": 2}'),
        ("b", "", b""),
    ]
    votes.on_reply(VoteReply(round_id="t1", participant_id="a", yes=True, result=b'{"left": 1}'))
    votes.on_reply(VoteReply(round_id="t1", participant_id="b", yes=True))
    assert [(v.participant_id, v.result) for v in votes.collected()] == [
        ("a", b'{"left": 1}'),
        ("b", b""),
    ]
