"""Both cores paired over a fake link that drops, duplicates and reorders messages.

Hypothesis drives one ``CoordinatorState`` + ``Outbox`` (the leader) and two
``ParticipantCore``s (each with a fake disk it can crash back to) through
interleavings no hand-written script would try: lost proposals, a new leader, a
deposed leader that keeps sending, crashes, in-doubt queries, aborts and timeouts.
Log replication is modelled as "a proposal is applied, or lost": the only thing the
cores may rely on (rules 1, 9).

What must hold in every interleaving:

- agreement: no round is COMMITTED at one participant and ABORTED at another (or at
  the same one, ever: the records a participant has persisted are remembered here);
- a participant applies only the decision the coordinator applied;
- a decision never changes once applied, and every ``Decided`` matches it;
- no participant ever sees a decision that contradicts what it durably knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordinator.core.entries import Abort, BeginRound, BeginTxn, Entry, PresumeAbort, RequestCommit
from coordinator.core.limits import Limits
from coordinator.core.messages import Decide, FromParticipant, Prepare, ToParticipant
from coordinator.core.outbox import Outbox
from coordinator.core.state import CoordinatorState
from coordinator.core.types import Decision, Kind
from participant_sdk.core import (
    ForgetRecord,
    LocalState,
    MustAsk,
    ParticipantCore,
    RoundRecord,
    Step,
    TermRecord,
)

PARTICIPANTS = ("p1", "p2")
# Faults and aborts are drawn as often as progress; most of them are made to do
# nothing so that enough rounds get as far as voting and deciding.
RARELY = st.integers(0, 3).map(lambda n: n == 0)
LIMITS = Limits(
    timeout_ms_min=10,
    retry_backoff_initial_ms=5,
    retry_backoff_max_ms=40,
    retention_ms=2_000,
    entry_batch_max=2,
)
FINAL = {LocalState.COMMITTED: Decision.COMMIT, LocalState.ABORTED: Decision.ABORT}


@dataclass
class Disk:
    records: dict[str, RoundRecord] = field(default_factory=dict)
    term: int = 0

    def write(self, step: Step) -> None:
        for item in step.persist:
            match item:
                case TermRecord():
                    self.term = item.term
                case RoundRecord():
                    self.records[item.round_id] = item
                case ForgetRecord():
                    del self.records[item.round_id]


@dataclass(frozen=True)
class InFlight:
    to_participant: str  # "" when the message goes to the coordinator
    message: ToParticipant | FromParticipant


class TwoPhaseOverALossyLink(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = CoordinatorState(LIMITS)
        self.term = 1
        self.leader = Outbox(LIMITS)
        self.deposed: tuple[Outbox, int] | None = None
        self.now_ms = 0
        self.cores = {p: ParticipantCore(p) for p in PARTICIPANTS}
        self.disks = {p: Disk() for p in PARTICIPANTS}
        self.network: list[InFlight] = []
        self.refuse: set[tuple[str, str]] = set()  # (participant, round) the agent votes NO
        self.round_ids: list[str] = []
        self.txn_ids: list[str] = []
        self.branches: list[tuple[str, str]] = []  # (participant, txn) begun by the agent
        # History: survives forgetting, on both sides.
        self.decisions: dict[str, Decision] = {}
        self.outcomes: dict[str, dict[str, Decision]] = {}

    # ------------------------------------------------------------------ coordinator side

    def apply(self, entry: Entry) -> None:
        applied = self.state.apply(entry)
        for decided in applied.decided:
            earlier = self.decisions.setdefault(decided.round_id, decided.decision)
            assert earlier is decided.decision, f"{decided.round_id} decided twice"

    @rule(
        participants=st.sets(st.sampled_from(PARTICIPANTS)),
        timeout_ms=st.integers(100, 3_000),
        commit_at_once=st.booleans(),
    )
    def begin_txn(self, participants: set[str], timeout_ms: int, commit_at_once: bool) -> None:
        txn_id = f"t{len(self.round_ids)}"
        self.round_ids.append(txn_id)
        self.txn_ids.append(txn_id)
        self.apply(
            BeginTxn(
                txn_id=txn_id,
                session_id="s",
                participants=tuple(sorted(participants)),
                timeout_ms=timeout_ms,
                now_ms=self.now_ms,
            )
        )
        for participant_id in sorted(participants):
            self.cores[participant_id].begin_branch(txn_id)
            self.branches.append((participant_id, txn_id))
        if commit_at_once:
            self.apply(RequestCommit(txn_id=txn_id, now_ms=self.now_ms))

    @rule(
        kind=st.sampled_from([Kind.ROLLBACK, Kind.CHECKPOINT]),
        participants=st.sets(st.sampled_from(PARTICIPANTS), min_size=1),
        timeout_ms=st.integers(100, 3_000),
        act=RARELY,
    )
    def begin_round(self, kind: Kind, participants: set[str], timeout_ms: int, act: bool) -> None:
        if not act:
            return
        round_id = f"r{len(self.round_ids)}"
        self.round_ids.append(round_id)
        self.apply(
            BeginRound(
                round_id=round_id,
                kind=kind,
                session_id="s",
                participants=tuple(sorted(participants)),
                checkpoint_id=f"cp-{round_id}",
                label="",
                timeout_ms=timeout_ms,
                now_ms=self.now_ms,
            )
        )

    @precondition(lambda self: self.txn_ids)
    @rule(data=st.data())
    def request_commit(self, data: st.DataObject) -> None:
        txn_id = data.draw(st.sampled_from(self.txn_ids))
        self.apply(RequestCommit(txn_id=txn_id, now_ms=self.now_ms))

    @precondition(lambda self: self.round_ids)
    @rule(data=st.data(), act=RARELY)
    def abort(self, data: st.DataObject, act: bool) -> None:
        round_id = data.draw(st.sampled_from(self.round_ids))
        if act:
            self.apply(Abort(round_id=round_id, reason="initiator", now_ms=self.now_ms))

    # Mostly replicated: a lost proposal is interesting, but progress must happen too.
    @rule(elapsed_ms=st.integers(0, 60), replicated=st.sampled_from([True, True, True, False]))
    def leader_polls(self, elapsed_ms: int, replicated: bool) -> None:
        """Time passes; the leader sends what is due and proposes entries, which are
        either all applied or (the leader lost them) all lost."""
        self.now_ms += elapsed_ms
        due = self.leader.poll(self.state, self.now_ms, self.term)
        self.network.extend(InFlight(m.participant_id, m) for m in due.sends)
        if replicated:
            for proposal in due.proposals:
                self.apply(proposal)

    @rule(rounds_of_messages=st.integers(1, 20))
    def settle(self, rounds_of_messages: int) -> None:
        """A healthy cluster and link for a while, so that rounds also get to finish."""
        for _ in range(rounds_of_messages):
            self.leader_polls(elapsed_ms=10, replicated=True)
            self.deliver_everything_in_order()

    @precondition(lambda self: self.deposed is not None)
    @rule()
    def deposed_leader_polls(self) -> None:
        """Rule 9: the old leader still believes it leads. It reads applied state (it
        cannot decide anything), and its messages carry its old term."""
        assert self.deposed is not None
        outbox, term = self.deposed
        due = outbox.poll(self.state, self.now_ms, term)
        self.network.extend(InFlight(m.participant_id, m) for m in due.sends)

    @rule(act=RARELY)
    def new_leader(self, act: bool) -> None:
        if not act:
            return
        self.deposed = (self.leader, self.term)
        self.term += 1
        self.leader = Outbox(LIMITS)

    # ------------------------------------------------------------------ participant side

    @precondition(lambda self: self.round_ids)
    @rule(participant_id=st.sampled_from(PARTICIPANTS), data=st.data(), act=RARELY)
    def agent_will_vote_no(self, participant_id: str, data: st.DataObject, act: bool) -> None:
        if act:
            self.refuse.add((participant_id, data.draw(st.sampled_from(self.round_ids))))

    @precondition(lambda self: self.branches)
    @rule(data=st.data(), act=RARELY)
    def agent_aborts_alone(self, data: st.DataObject, act: bool) -> None:
        participant_id, txn_id = data.draw(st.sampled_from(self.branches))
        if not act:
            return
        try:
            step = self.cores[participant_id].abort_alone(txn_id, self.now_ms, "gave up")
        except MustAsk:
            return
        self.write(participant_id, step)

    @rule(participant_id=st.sampled_from(PARTICIPANTS), act=RARELY)
    def participant_crashes(self, participant_id: str, act: bool) -> None:
        if not act:
            return
        disk = self.disks[participant_id]
        self.cores[participant_id] = ParticipantCore.recover(
            participant_id, list(disk.records.values()), disk.term
        )

    @rule(participant_id=st.sampled_from(PARTICIPANTS))
    def participant_asks_about_its_doubts(self, participant_id: str) -> None:
        """The in-doubt query: an unknown round is presumed aborted (rule 3)."""
        for record in self.cores[participant_id].in_doubt():
            if self.state.get(record.round_id) is None:
                self.apply(PresumeAbort(round_id=record.round_id, now_ms=self.now_ms))
            rnd = self.state.get(record.round_id)
            if rnd is not None and rnd.decision is not None:
                decide = Decide(
                    round_id=rnd.round_id,
                    kind=rnd.kind,
                    participant_id=participant_id,
                    decision=rnd.decision,
                    checkpoint_id=rnd.checkpoint_id,
                    term=self.term,
                )
                self.network.append(InFlight(participant_id, decide))

    def write(self, participant_id: str, step: Step) -> None:
        assert not step.violation, step.violation
        self.disks[participant_id].write(step)
        for item in step.persist:
            if isinstance(item, RoundRecord) and item.state in FINAL:
                outcome = FINAL[item.state]
                seen = self.outcomes.setdefault(item.round_id, {})
                assert seen.setdefault(participant_id, outcome) is outcome, (
                    f"{participant_id} flipped {item.round_id}"
                )
                if item.voted_yes:
                    # Only a decision can finish a YES vote, and it must be the applied one.
                    assert self.decisions.get(item.round_id) is outcome, (
                        f"{participant_id} {item.state.value} {item.round_id}, "
                        f"coordinator decided {self.decisions.get(item.round_id)}"
                    )
        if step.reply is not None:
            self.network.append(InFlight("", step.reply))

    # ------------------------------------------------------------------ the link

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        self._deliver(data.draw(st.integers(0, len(self.network) - 1)))

    def _deliver(self, index: int) -> None:
        flight = self.network.pop(index)
        message = flight.message
        if not flight.to_participant:
            self.leader.on_reply(message)  # type: ignore[arg-type]
            return
        core = self.cores[flight.to_participant]
        if isinstance(message, Prepare):
            refused = (flight.to_participant, message.round_id) in self.refuse
            step = core.on_prepare(
                message, self.now_ms, lambda _: (False, "agent said no") if refused else (True, "")
            )
        else:
            assert isinstance(message, Decide)
            step = core.on_decide(message, self.now_ms)
        self.write(flight.to_participant, step)

    @rule()
    def deliver_everything_in_order(self) -> None:
        """A healthy link for a moment: every message in flight, in order."""
        in_flight, self.network = self.network, []
        for flight in in_flight:
            self.network.append(flight)
            self._deliver(len(self.network) - 1)

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.network.append(data.draw(st.sampled_from(self.network)))

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def participants_agree(self) -> None:
        for round_id, outcomes in self.outcomes.items():
            assert len(set(outcomes.values())) <= 1, f"{round_id}: {outcomes}"

    @invariant()
    def applied_decisions_never_change(self) -> None:
        for rnd in self.state.rounds.values():
            if rnd.decision is not None:
                assert self.decisions[rnd.round_id] is rnd.decision

    @invariant()
    def memory_matches_disk(self) -> None:
        for participant_id, core in self.cores.items():
            assert core.records == self.disks[participant_id].records


TwoPhaseOverALossyLink.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_two_phase_over_a_lossy_link = TwoPhaseOverALossyLink.TestCase
