"""The leader's outbox: what it sends, when it retries, what it proposes.

The outbox reads applied state only; these tests drive the state with entries and
ask the outbox what should be in flight at a given ``now_ms`` (no sleeping: time is
just a number passed in).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from coordinator.core.entries import (
    Abort,
    Ack,
    BeginRound,
    BeginSaga,
    BeginTxn,
    Entry,
    RecordAcks,
    RecordVotes,
    RegisterParticipant,
    RequestCommit,
    SagaStepSpec,
    Timeout,
    Vote,
)
from coordinator.core.limits import Limits
from coordinator.core.messages import AckReply, Decide, Prepare, Refused, VoteReply
from coordinator.core.outbox import Due, Outbox, unregistered_reason
from coordinator.core.state import CoordinatorState, Phase
from coordinator.core.types import Decision, Kind

LIMITS = Limits(retry_backoff_initial_ms=50, retry_backoff_max_ms=400, entry_batch_max=256)
TERM = 7


def apply_all(state: CoordinatorState, *entries: Entry) -> None:
    for entry in entries:
        applied = state.apply(entry)
        assert applied.error is None, applied.error


def voting_txn(
    state: CoordinatorState, txn_id: str, participants: tuple[str, ...], *, timeout_ms: int = 10_000
) -> None:
    apply_all(
        state,
        BeginTxn(
            txn_id=txn_id,
            session_id="s1",
            participants=participants,
            timeout_ms=timeout_ms,
            now_ms=0,
        ),
        RequestCommit(txn_id=txn_id, now_ms=0),
    )


def vote(round_id: str, participant_id: str, yes: bool = True, now_ms: int = 1) -> RecordVotes:
    return RecordVotes(
        votes=(Vote(round_id=round_id, participant_id=participant_id, yes=yes),), now_ms=now_ms
    )


def ack(round_id: str, participant_id: str, now_ms: int = 2) -> RecordAcks:
    return RecordAcks(acks=(Ack(round_id=round_id, participant_id=participant_id),), now_ms=now_ms)


def checkpoint_round(round_id: str, participants: tuple[str, ...]) -> BeginRound:
    return BeginRound(
        round_id=round_id,
        kind=Kind.CHECKPOINT,
        session_id="",
        participants=participants,
        checkpoint_id="cp1",
        label="",
        timeout_ms=1000,
        now_ms=0,
    )


def addressees(due: Due) -> list[tuple[str, str, str]]:
    return [(type(m).__name__, m.round_id, m.participant_id) for m in due.sends]


# ------------------------------------------------------------------ what is sent


def test_prepare_goes_to_every_participant_that_has_not_voted() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "b", "c"))
    apply_all(state, vote("t1", "b"))

    due = Outbox(LIMITS).poll(state, now_ms=5, term=TERM)

    assert due.sends == (
        Prepare(round_id="t1", kind=Kind.TXN, participant_id="a", session_id="s1", term=TERM),
        Prepare(round_id="t1", kind=Kind.TXN, participant_id="c", session_id="s1", term=TERM),
    )
    assert due.proposals == ()


def test_nothing_is_sent_for_a_transaction_still_enlisting() -> None:
    state = CoordinatorState(LIMITS)
    apply_all(
        state, BeginTxn(txn_id="t1", session_id="", participants=("a",), timeout_ms=100, now_ms=0)
    )
    assert Outbox(LIMITS).poll(state, now_ms=5, term=TERM) == Due(sends=(), proposals=())


def test_decide_goes_to_every_participant_that_has_not_acknowledged() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "b", "c"))
    apply_all(state, vote("t1", "a"), vote("t1", "b", yes=False), ack("t1", "c"))

    due = Outbox(LIMITS).poll(state, now_ms=5, term=TERM)

    assert due.sends == (
        Decide(
            round_id="t1", kind=Kind.TXN, participant_id="a", decision=Decision.ABORT, term=TERM
        ),
        Decide(
            round_id="t1", kind=Kind.TXN, participant_id="b", decision=Decision.ABORT, term=TERM
        ),
    )


def test_rollback_messages_carry_the_checkpoint_and_label() -> None:
    state = CoordinatorState(LIMITS)
    apply_all(
        state,
        BeginRound(
            round_id="r1",
            kind=Kind.ROLLBACK,
            session_id="s1",
            participants=("a",),
            checkpoint_id="cp1",
            label="bad tool call",
            timeout_ms=1000,
            now_ms=0,
        ),
    )
    outbox = Outbox(LIMITS)
    assert outbox.poll(state, now_ms=1, term=TERM).sends == (
        Prepare(
            round_id="r1",
            kind=Kind.ROLLBACK,
            participant_id="a",
            session_id="s1",
            checkpoint_id="cp1",
            label="bad tool call",
            term=TERM,
        ),
    )
    apply_all(state, vote("r1", "a"))
    assert outbox.poll(state, now_ms=2, term=TERM).sends == (
        Decide(
            round_id="r1",
            kind=Kind.ROLLBACK,
            participant_id="a",
            decision=Decision.COMMIT,
            checkpoint_id="cp1",
            term=TERM,
        ),
    )


def test_a_waiting_round_sends_nothing_until_its_participants_are_free() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a",))
    apply_all(state, checkpoint_round("r1", ("a",)))
    assert state.rounds["r1"].phase is Phase.WAITING
    outbox = Outbox(LIMITS)
    assert addressees(outbox.poll(state, now_ms=1, term=TERM)) == [("Prepare", "t1", "a")]
    apply_all(state, vote("t1", "a"), ack("t1", "a"))
    assert addressees(outbox.poll(state, now_ms=2, term=TERM)) == [("Prepare", "r1", "a")]


# ------------------------------------------------------------------ participants never registered


def registered(state: CoordinatorState, *participants: str) -> None:
    apply_all(
        state,
        *(
            RegisterParticipant(participant_id=p, endpoint=f"127.0.0.1:{i + 1}", now_ms=0)
            for i, p in enumerate(participants)
        ),
    )


def test_a_round_needing_an_unregistered_participant_is_aborted_naming_it() -> None:
    state = CoordinatorState(LIMITS)
    registered(state, "a")
    voting_txn(state, "t1", ("a", "x"))
    outbox = Outbox(LIMITS, registry=True)

    due = outbox.poll(state, now_ms=5, term=TERM)
    # No Prepare to anyone: the round cannot commit unless x registers in time.
    assert due.sends == ()
    abort = Abort(round_id="t1", reason="participant 'x' is not registered", now_ms=5)
    assert due.proposals == (abort,)
    # Retried with backoff until applied, like a timeout.
    assert outbox.poll(state, now_ms=6, term=TERM).proposals == ()
    assert outbox.poll(state, now_ms=55, term=TERM).proposals == (replace(abort, now_ms=55),)

    apply_all(state, abort)
    rnd = state.get("t1")
    assert rnd is not None and rnd.decision_reason == "participant 'x' is not registered"


def test_the_reason_names_as_many_unregistered_participants_as_the_limit_allows() -> None:
    """A reason over ``reason_bytes_max`` would get the Abort refused: the round would
    wait for its timeout again."""
    state = CoordinatorState(LIMITS)
    names = tuple(f"{i:02d}" + "x" * 120 for i in range(16))
    voting_txn(state, "t1", names)
    (abort,) = Outbox(LIMITS, registry=True).poll(state, now_ms=5, term=TERM).proposals
    assert isinstance(abort, Abort)
    assert len(abort.reason.encode()) <= LIMITS.reason_bytes_max
    assert abort.reason.startswith(f"participants {names[0]!r}, {names[1]!r}")
    assert abort.reason.endswith(" more are not registered")
    apply_all(state, abort)
    assert unregistered_reason(["a", "b"], 40) == "participants 'a', 'b' are not registered"
    assert unregistered_reason(["a", "b"], 39) == "2 participants are not registered"
    assert unregistered_reason(["a", "b"], 5) == "2 par"


def test_without_the_registry_an_unregistered_participant_is_prepared_as_before() -> None:
    """The default, for models that address participants directly (the simulator)."""
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "x"))
    due = Outbox(LIMITS).poll(state, now_ms=5, term=TERM)
    assert addressees(due) == [("Prepare", "t1", "a"), ("Prepare", "t1", "x")]
    assert due.proposals == ()


def test_an_abort_is_acknowledged_for_a_participant_that_never_registered() -> None:
    """It never got a Prepare, so it has nothing to apply: the round can end."""
    state = CoordinatorState(LIMITS)
    registered(state, "a")
    voting_txn(state, "t1", ("a", "x"))
    apply_all(state, Abort(round_id="t1", reason="participant 'x' is not registered", now_ms=1))
    outbox = Outbox(LIMITS, registry=True)

    due = outbox.poll(state, now_ms=10, term=TERM)
    assert addressees(due) == [("Decide", "t1", "a")]  # nothing is sent towards x
    outbox.on_reply(AckReply(round_id="t1", participant_id="a"))
    assert outbox.poll(state, now_ms=59, term=TERM).proposals == ()  # acks share an entry
    (entry,) = outbox.poll(state, now_ms=60, term=TERM).proposals
    assert entry == RecordAcks(
        acks=(Ack(round_id="t1", participant_id="a"), Ack(round_id="t1", participant_id="x")),
        now_ms=60,
    )
    apply_all(state, entry)
    rnd = state.get("t1")
    assert rnd is not None and rnd.phase is Phase.DONE


def test_a_participant_registered_by_now_gets_its_decide() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "x"))
    apply_all(state, Abort(round_id="t1", reason="given up", now_ms=1))
    registered(state, "a", "x")
    due = Outbox(LIMITS, registry=True).poll(state, now_ms=10, term=TERM)
    assert addressees(due) == [("Decide", "t1", "a"), ("Decide", "t1", "x")]
    assert due.proposals == ()


def test_a_saga_is_not_aborted_for_an_unregistered_participant() -> None:
    state = CoordinatorState(LIMITS)
    apply_all(
        state,
        BeginSaga(
            saga_id="s1",
            session_id="",
            steps=(SagaStepSpec(participant_id="u", action="book"),),
            step_timeout_ms=1_000,
            now_ms=0,
        ),
    )
    due = Outbox(LIMITS, registry=True).poll(state, now_ms=1, term=TERM)
    assert addressees(due) == [("ExecuteStep", "s1", "u")]
    assert due.proposals == ()


# ------------------------------------------------------------------ retries


def send_times(outbox: Outbox, state: CoordinatorState, until_ms: int) -> list[int]:
    """Poll every millisecond; return the times at which something was sent."""
    return [now for now in range(until_ms) if outbox.poll(state, now_ms=now, term=TERM).sends]


def test_retries_back_off_exponentially_up_to_the_maximum() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a",))

    times = send_times(Outbox(LIMITS), state, until_ms=2_000)

    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert times[0] == 0
    assert gaps[:4] == [50, 100, 200, 400]
    assert set(gaps[3:]) == {LIMITS.retry_backoff_max_ms}


def test_each_participant_has_its_own_backoff() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "b"))
    outbox = Outbox(LIMITS)
    assert addressees(outbox.poll(state, now_ms=0, term=TERM)) == [
        ("Prepare", "t1", "a"),
        ("Prepare", "t1", "b"),
    ]
    assert outbox.poll(state, now_ms=49, term=TERM).sends == ()
    assert len(outbox.poll(state, now_ms=50, term=TERM).sends) == 2


def test_a_decision_is_sent_at_once_whatever_the_prepare_backoff() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "b"))
    outbox = Outbox(LIMITS)
    outbox.poll(state, now_ms=0, term=TERM)
    apply_all(state, vote("t1", "a", yes=False, now_ms=10))
    assert addressees(outbox.poll(state, now_ms=10, term=TERM)) == [
        ("Decide", "t1", "a"),
        ("Decide", "t1", "b"),
    ]


# ------------------------------------------------------------------ timeouts


def test_a_timeout_is_proposed_once_the_deadline_passes_and_retried_until_applied() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a",), timeout_ms=1_000)
    outbox = Outbox(LIMITS)

    assert outbox.poll(state, now_ms=999, term=TERM).proposals == ()
    assert outbox.poll(state, now_ms=1_000, term=TERM).proposals == (
        Timeout(round_id="t1", now_ms=1_000),
    )
    # The proposal may have been lost (leader change): it is retried, with backoff.
    assert outbox.poll(state, now_ms=1_001, term=TERM).proposals == ()
    assert outbox.poll(state, now_ms=1_050, term=TERM).proposals == (
        Timeout(round_id="t1", now_ms=1_050),
    )

    apply_all(state, Timeout(round_id="t1", now_ms=1_050))
    due = outbox.poll(state, now_ms=1_051, term=TERM)
    assert due.proposals == ()
    assert addressees(due) == [("Decide", "t1", "a")]


def test_no_timeout_is_proposed_for_a_decided_round() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a",), timeout_ms=100)
    apply_all(state, vote("t1", "a"))
    assert Outbox(LIMITS).poll(state, now_ms=10_000, term=TERM).proposals == ()


# ------------------------------------------------------------------ replies


def test_replies_are_batched_into_entries_of_at_most_entry_batch_max() -> None:
    limits = Limits(entry_batch_max=2)
    state = CoordinatorState(limits)
    participants = ("a", "b", "c", "d", "e")
    voting_txn(state, "t1", participants)
    outbox = Outbox(limits)
    for participant_id in participants:
        outbox.on_reply(VoteReply(round_id="t1", participant_id=participant_id, yes=True))

    proposals = outbox.poll(state, now_ms=30, term=TERM).proposals

    assert [len(p.votes) for p in proposals if isinstance(p, RecordVotes)] == [2, 2, 1]
    assert {p.now_ms for p in proposals} == {30}
    apply_all(state, *proposals)
    assert state.rounds["t1"].decision is Decision.COMMIT

    for participant_id in participants:
        outbox.on_reply(AckReply(round_id="t1", participant_id=participant_id))
    proposals = outbox.poll(state, now_ms=40, term=TERM).proposals
    assert [len(p.acks) for p in proposals if isinstance(p, RecordAcks)] == [2, 2, 1]
    apply_all(state, *proposals)
    assert state.rounds["t1"].phase is Phase.DONE


def test_repeated_replies_cost_no_entry() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "b"))
    apply_all(state, vote("t1", "a"))
    outbox = Outbox(LIMITS)

    # Already applied, or repeated within one poll: one vote, for b only.
    outbox.on_reply(VoteReply(round_id="t1", participant_id="a", yes=True))
    outbox.on_reply(VoteReply(round_id="t1", participant_id="b", yes=True))
    outbox.on_reply(VoteReply(round_id="t1", participant_id="b", yes=True))
    # Replies about rounds that are unknown or not in the phase they answer.
    outbox.on_reply(VoteReply(round_id="ghost", participant_id="a", yes=True))
    outbox.on_reply(AckReply(round_id="t1", participant_id="a"))
    outbox.on_reply(AckReply(round_id="ghost", participant_id="a"))

    assert outbox.poll(state, now_ms=5, term=TERM).proposals == (
        RecordVotes(votes=(Vote(round_id="t1", participant_id="b", yes=True),), now_ms=5),
    )
    # Flushed: the same replies are not proposed twice.
    assert outbox.poll(state, now_ms=6, term=TERM).proposals == ()

    apply_all(state, vote("t1", "b"), ack("t1", "a"))
    outbox.on_reply(AckReply(round_id="t1", participant_id="a"))
    outbox.on_reply(VoteReply(round_id="t1", participant_id="b", yes=True))
    assert outbox.poll(state, now_ms=7, term=TERM).proposals == ()


def test_the_first_reply_within_a_poll_is_the_one_proposed() -> None:
    # A participant's vote is durable, so a second, different reply is a bug on its
    # side; the state machine would refuse it anyway, the outbox need not propose it.
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a",))
    outbox = Outbox(LIMITS)
    outbox.on_reply(VoteReply(round_id="t1", participant_id="a", yes=False, reason="no stock"))
    outbox.on_reply(VoteReply(round_id="t1", participant_id="a", yes=True))
    (proposal,) = outbox.poll(state, now_ms=5, term=TERM).proposals
    assert isinstance(proposal, RecordVotes)
    assert proposal.votes == (
        Vote(round_id="t1", participant_id="a", yes=False, reason="no stock"),
    )


def test_refusals_are_counted_as_a_sign_of_being_deposed() -> None:
    outbox = Outbox(LIMITS)
    outbox.on_reply(Refused(round_id="t1", participant_id="a", term_seen=9, reason="stale"))
    assert outbox.refusals == 1
    assert outbox.poll(CoordinatorState(LIMITS), now_ms=0, term=TERM) == Due(sends=(), proposals=())


# ------------------------------------------------------------------ a new leader


def test_a_new_leader_resends_everything_at_once() -> None:
    state = CoordinatorState(LIMITS)
    voting_txn(state, "t1", ("a", "b"), timeout_ms=100)
    voting_txn(state, "t2", ("c",), timeout_ms=10_000)
    apply_all(state, vote("t2", "c"))
    old_leader = Outbox(LIMITS)
    old_leader.poll(state, now_ms=0, term=TERM)
    assert old_leader.poll(state, now_ms=10, term=TERM) == Due(sends=(), proposals=())

    due = Outbox(LIMITS).poll(state, now_ms=100, term=TERM + 1)

    assert addressees(due) == [
        ("Prepare", "t1", "a"),
        ("Prepare", "t1", "b"),
        ("Decide", "t2", "c"),
    ]
    assert {m.term for m in due.sends} == {TERM + 1}
    assert due.proposals == (Timeout(round_id="t1", now_ms=100),)


# ---------------------------------------------------------------------- sagas


def _saga(state: CoordinatorState) -> None:
    from coordinator.core.entries import BeginSaga, SagaStepSpec

    steps = tuple(
        SagaStepSpec(participant_id=p, action=a, payload=a.encode())
        for p, a in (("flights", "book"), ("payments", "charge"), ("hotels", "book"))
    )
    apply_all(
        state,
        BeginSaga(saga_id="g", session_id="", steps=steps, step_timeout_ms=1_000, now_ms=0),
    )


def test_a_saga_runs_one_step_at_a_time_and_compensates_in_reverse() -> None:
    from coordinator.core.messages import CompensateStep, ExecuteStep, StepReply
    from coordinator.core.types import StepOutcome

    state, outbox = CoordinatorState(LIMITS), Outbox(LIMITS)
    _saga(state)
    (send,) = outbox.poll(state, 0, TERM).sends
    assert send == ExecuteStep(
        round_id="g", step=0, participant_id="flights", action="book", payload=b"book", term=TERM
    )

    def reply(step: int, who: str, outcome: StepOutcome, now_ms: int, result: bytes = b"") -> Due:
        outbox.on_reply(
            StepReply(round_id="g", step=step, participant_id=who, outcome=outcome, result=result)
        )
        due = outbox.poll(state, now_ms, TERM)
        apply_all(state, *due.proposals)
        return due

    # RUNNING is an answer to wait on, never a proposal.
    assert reply(0, "flights", StepOutcome.RUNNING, 10).proposals == ()
    reply(0, "flights", StepOutcome.DONE, 20, result=b"FL-1")
    repeat = reply(0, "flights", StepOutcome.DONE, 21)
    assert repeat.proposals == ()  # a repeat costs no entry
    (send,) = repeat.sends
    assert isinstance(send, ExecuteStep) and (send.step, send.participant_id) == (1, "payments")
    reply(1, "payments", StepOutcome.DONE, 40)
    reply(2, "hotels", StepOutcome.FAILED, 50)
    rnd = state.get("g")
    assert rnd is not None and rnd.phase is Phase.DECIDED and rnd.decision is Decision.ABORT
    # Step 2 failed (no effect): payments is undone first, flights only after it.
    (send,) = outbox.poll(state, 60, TERM).sends
    assert isinstance(send, CompensateStep) and (send.step, send.participant_id) == (1, "payments")
    reply(1, "payments", StepOutcome.ESCALATED, 70)
    assert outbox.poll(state, 10_000, TERM).sends == ()  # held for the operator
    from coordinator.core.entries import ResolveStep

    apply_all(state, ResolveStep(saga_id="g", step=1, note="by hand", now_ms=80))
    (send,) = outbox.poll(state, 10_001, TERM).sends
    assert isinstance(send, CompensateStep) and send.step == 0 and send.result == b"FL-1"
    reply(0, "flights", StepOutcome.COMPENSATED, 10_010)
    # Compensation over: the decision goes to every participant, like a transaction's.
    sends = outbox.poll(state, 10_020, TERM).sends
    assert sorted((type(s).__name__, s.participant_id) for s in sends) == [
        ("Decide", "flights"),
        ("Decide", "hotels"),
        ("Decide", "payments"),
    ]
    for who in ("flights", "hotels", "payments"):
        outbox.on_reply(AckReply(round_id="g", participant_id=who))
    apply_all(state, *outbox.poll(state, 10_030, TERM).proposals)
    assert rnd.phase is Phase.DONE and outbox.poll(state, 20_000, TERM).sends == ()


def test_a_saga_step_past_its_deadline_is_timed_out() -> None:
    state, outbox = CoordinatorState(LIMITS), Outbox(LIMITS)
    _saga(state)
    assert not any(isinstance(p, Timeout) for p in outbox.poll(state, 999, TERM).proposals)
    assert Timeout(round_id="g", now_ms=1_000) in outbox.poll(state, 1_000, TERM).proposals


def test_a_completed_saga_is_acknowledged_like_a_transaction() -> None:
    from coordinator.core.entries import RecordStepReports, StepReport
    from coordinator.core.types import StepOutcome

    state, outbox = CoordinatorState(LIMITS), Outbox(LIMITS)
    _saga(state)
    reports = tuple(
        StepReport(saga_id="g", step=i, participant_id=p, outcome=StepOutcome.DONE)
        for i, p in enumerate(("flights", "payments", "hotels"))
    )
    for report in reports:
        apply_all(state, RecordStepReports(reports=(report,), now_ms=1))
    sends = outbox.poll(state, 2, TERM).sends
    assert {(type(s).__name__, s.participant_id) for s in sends} == {
        ("Decide", "flights"),
        ("Decide", "payments"),
        ("Decide", "hotels"),
    }


def test_acks_wait_to_share_an_entry_up_to_the_delay_or_the_batch_size() -> None:
    limits = Limits(ack_flush_delay_ms=50, entry_batch_max=3)
    state, outbox = CoordinatorState(limits), Outbox(limits)
    for txn_id in ("t1", "t2", "t3", "t4"):
        voting_txn(state, txn_id, ("a",))
        apply_all(state, vote(txn_id, "a"))
    outbox.on_reply(AckReply(round_id="t1", participant_id="a"))
    assert outbox.poll(state, 100, TERM).proposals == ()
    outbox.on_reply(AckReply(round_id="t2", participant_id="a"))
    assert outbox.poll(state, 149, TERM).proposals == ()
    (entry,) = outbox.poll(state, 150, TERM).proposals  # 50 ms after the first was seen
    assert isinstance(entry, RecordAcks) and [a.round_id for a in entry.acks] == ["t1", "t2"]
    apply_all(state, entry)
    for txn_id in ("t3", "t4"):
        outbox.on_reply(AckReply(round_id=txn_id, participant_id="a"))
    assert outbox.poll(state, 151, TERM).proposals == ()
    outbox.on_reply(AckReply(round_id="t1", participant_id="a"))  # a repeat: filtered
    (entry,) = outbox.poll(state, 152, TERM).proposals  # a full batch goes at once
    assert [a.round_id for a in entry.acks] == ["t3", "t4"]


def test_a_checkpoint_rounds_acks_are_proposed_at_once() -> None:
    """Its participants are BUSY for commits until it is done: no waiting there."""
    state, outbox = CoordinatorState(LIMITS), Outbox(LIMITS)
    apply_all(state, checkpoint_round("c1", ("a",)), vote("c1", "a"))
    outbox.on_reply(AckReply(round_id="c1", participant_id="a"))
    (entry,) = outbox.poll(state, 5, TERM).proposals
    apply_all(state, entry)
    assert state.rounds["c1"].phase is Phase.DONE


def test_a_decide_already_acknowledged_is_not_resent_while_its_ack_waits() -> None:
    """Acks wait up to ack_flush_delay_ms; the Decide retry timer must not fire for
    participants whose ack is in hand (that would double the messages under load)."""
    limits = Limits(ack_flush_delay_ms=500, retry_backoff_initial_ms=50)
    state, outbox = CoordinatorState(limits), Outbox(limits)
    voting_txn(state, "t1", ("a", "b"))
    apply_all(state, vote("t1", "a"), vote("t1", "b"))
    assert addressees(outbox.poll(state, 0, TERM)) == [("Decide", "t1", "a"), ("Decide", "t1", "b")]
    outbox.on_reply(AckReply(round_id="t1", participant_id="a"))
    assert addressees(outbox.poll(state, 100, TERM)) == [("Decide", "t1", "b")]  # b only
