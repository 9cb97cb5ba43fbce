"""The sans-I/O leader (coordinator/core/leader.py), driven by hand as the runtime node
and the simulator drive it: what goes in, what ``take_ready`` says to do.

The contract every driver relies on: each ticket is answered exactly once (at once,
after its proposal's results, or NOT_LEADER when leadership ends first); nothing is
read from applied state before the leader caught up with its term; an undecided
round is resolved through the log only."""

from __future__ import annotations

from coordinator.core.entries import (
    Abort,
    BeginTxn,
    Entry,
    PresumeAbort,
    RecordVotes,
    RequestCommit,
    Vote,
)
from coordinator.core.errors import ErrorCode
from coordinator.core.leader import (
    NOT_LEADER,
    Answer,
    Leader,
    ProposeResult,
    ProposeStatus,
    Ready,
)
from coordinator.core.limits import Limits
from coordinator.core.messages import Prepare, VoteReply
from coordinator.core.state import CoordinatorState
from coordinator.core.types import Decision


def state_with(*entries: Entry) -> CoordinatorState:
    state = CoordinatorState(Limits())
    for entry in entries:
        assert state.apply(entry).error is None
    return state


def begin(txn_id: str, *participants: str) -> BeginTxn:
    return BeginTxn(
        txn_id=txn_id, session_id="s", participants=participants, timeout_ms=1000, now_ms=1
    )


def leading(state: CoordinatorState, *, caught_up: bool = True) -> Leader:
    leader = Leader()
    leader.start_term(3, state)
    if caught_up:
        leader.on_caught_up()
    return leader


def applied(state: CoordinatorState, entries: tuple[Entry, ...]) -> tuple[ProposeResult, ...]:
    """Apply a proposal's entries as the log would, with their results."""
    return tuple(ProposeResult(ProposeStatus.APPLIED, state.apply(e)) for e in entries)


def only_answer(ready: Ready) -> Answer:
    assert len(ready.answers) == 1, ready
    return ready.answers[0]


def test_a_node_that_does_not_lead_answers_every_ticket_not_leader() -> None:
    state = state_with(begin("t1", "a"))
    leader = Leader()
    leader.write(1, Abort(round_id="t1", reason="", now_ms=2), state)
    leader.commit(2, RequestCommit(txn_id="t1", now_ms=2), begin("t1", "a"), state, 2)
    leader.outcome_query(3, "t1", "a", state, 2)
    ready = leader.take_ready()
    assert {a.ticket: a.results for a in ready.answers} == {
        1: (NOT_LEADER,),
        2: (NOT_LEADER, NOT_LEADER),
        3: (NOT_LEADER,),
    }
    assert not ready.proposals and not ready.sends and not leader.serves_reads


def test_a_write_it_can_tell_would_be_refused_is_never_proposed() -> None:
    state = state_with()
    leader = leading(state)
    leader.write(7, RequestCommit(txn_id="nope", now_ms=2), state)
    answer = only_answer(leader.take_ready())
    assert answer.refused is not None and answer.refused.code is ErrorCode.NOT_FOUND
    assert not leader.take_ready().proposals


def test_a_write_is_answered_with_its_result_once_applied() -> None:
    state = state_with()
    leader = leading(state)
    leader.write(1, begin("t1", "a"), state)
    ready = leader.take_ready()
    assert [(p.entries, p.ticket, p.answered) for p in ready.proposals] == [
        ((begin("t1", "a"),), 1, 1)
    ]
    assert not ready.answers  # nothing before the results
    leader.on_proposed(1, applied(state, ready.proposals[0].entries), state)
    answer = only_answer(leader.take_ready())
    assert answer.outcome().status is ProposeStatus.APPLIED
    leader.on_proposed(1, (NOT_LEADER,), state)  # answered once: a second result is ignored
    assert not leader.take_ready()


def test_a_commit_prepares_early_and_goes_into_the_log_with_the_votes() -> None:
    state = state_with()
    leader = leading(state)
    leader.commit(5, RequestCommit(txn_id="t1", now_ms=10), begin("t1", "a", "b"), state, 10)
    ready = leader.take_ready()
    assert [type(m) for m in ready.sends] == [Prepare, Prepare] and not ready.proposals
    assert leader.is_committing("t1")
    leader.on_reply(VoteReply(round_id="t1", participant_id="a", yes=True), 20)
    assert not leader.take_ready()  # still waiting for b
    leader.on_reply(VoteReply(round_id="t1", participant_id="b", yes=True), 30)
    (proposal,) = leader.take_ready().proposals
    assert proposal.ticket == 5 and proposal.answered == 2
    assert proposal.entries[:2] == (begin("t1", "a", "b"), RequestCommit(txn_id="t1", now_ms=30))
    assert proposal.entries[2] == RecordVotes(
        votes=(
            Vote(round_id="t1", participant_id="a", yes=True),
            Vote(round_id="t1", participant_id="b", yes=True),
        ),
        now_ms=30,
    )
    leader.on_proposed(5, applied(state, proposal.entries)[:2], state)
    state.apply(proposal.entries[2])
    answer = only_answer(leader.take_ready())
    assert answer.outcome().status is ProposeStatus.APPLIED and not leader.is_committing("t1")


def test_early_votes_that_do_not_all_come_go_in_at_the_deadline() -> None:
    state = state_with()
    leader = leading(state)
    leader.commit(5, RequestCommit(txn_id="t1", now_ms=10), begin("t1", "a", "b"), state, 10)
    leader.take_ready()
    leader.on_reply(VoteReply(round_id="t1", participant_id="a", yes=True), 20)
    leader.tick(state, 50)
    assert not [p for p in leader.take_ready().proposals if p.ticket == 5]
    leader.tick(state, 10_000)
    (proposal,) = [p for p in leader.take_ready().proposals if p.ticket == 5]
    votes = proposal.entries[-1]
    assert isinstance(votes, RecordVotes) and [v.participant_id for v in votes.votes] == ["a"]
    assert leader.stats.early_commits == 1 and leader.stats.early_commits_short == 1


def test_losing_leadership_answers_a_commit_still_collecting_votes_not_leader() -> None:
    state = state_with()
    leader = leading(state)
    leader.commit(5, RequestCommit(txn_id="t1", now_ms=10), begin("t1", "a"), state, 10)
    leader.take_ready()
    leader.stop()
    answer = only_answer(leader.take_ready())
    assert answer.results == (NOT_LEADER, NOT_LEADER) and not leader.is_committing("t1")


def test_an_outcome_query_is_answered_from_applied_state_once_decided() -> None:
    state = state_with(begin("t1", "a"), Abort(round_id="t1", reason="x", now_ms=2))
    leader = leading(state)
    leader.outcome_query(1, "t1", "a", state, 3)
    assert only_answer(leader.take_ready()).decision is Decision.ABORT


def test_an_unknown_round_is_presumed_aborted_through_the_log_only() -> None:
    state = state_with()
    leader = leading(state)
    leader.outcome_query(1, "t9", "a", state, 3)
    ready = leader.take_ready()
    assert not ready.answers
    (proposal,) = ready.proposals
    assert proposal.entries == (PresumeAbort(round_id="t9", now_ms=3),)
    leader.on_proposed(1, applied(state, proposal.entries), state)
    assert only_answer(leader.take_ready()).decision is Decision.ABORT


def test_a_round_it_is_committing_is_not_resolved_behind_its_back() -> None:
    state = state_with(begin("t1", "a"))
    leader = leading(state)
    leader.commit(5, RequestCommit(txn_id="t1", now_ms=10), None, state, 10)
    leader.take_ready()
    leader.outcome_query(6, "t1", "a", state, 11)
    answer = only_answer(leader.take_ready())
    assert answer.ticket == 6 and answer.decision is None and not answer.results


def test_before_it_caught_up_a_new_leader_reads_nothing_from_applied_state() -> None:
    # Its applied state may lag what earlier leaders did: no reads, no outbox, no
    # early Prepare, no admission (applying decides).
    state = state_with(begin("t1", "a"), RequestCommit(txn_id="t1", now_ms=2))
    leader = leading(state, caught_up=False)
    assert not leader.serves_reads
    leader.tick(state, 5_000)
    leader.commit(5, RequestCommit(txn_id="t2", now_ms=10), begin("t2", "a"), state, 10)
    leader.write(6, RequestCommit(txn_id="unknown", now_ms=10), state)
    ready = leader.take_ready()
    assert not ready.sends and not ready.answers
    assert [p.ticket for p in ready.proposals] == [5, 6]
    leader.on_caught_up()
    assert leader.serves_reads
    leader.tick(state, 5_000)
    assert [type(m) for m in leader.take_ready().sends] == [Prepare]  # the outbox resumes t1
