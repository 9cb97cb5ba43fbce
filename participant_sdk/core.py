"""The participant's protocol core: branches, the barrier, fencing and round votes.

Theory of operation
-------------------
A participant keeps one durable *record* per round it has taken part in (a
transaction branch, a rollback round or a checkpoint round):

    (no record) -> ACTIVE (txn work staged, memory only) -> PREPARED (voted YES)
                                                          -> COMMITTED | ABORTED

Every handler returns a ``Step``: records to persist, actions on the agent's own
state (apply or discard a branch, take, drop or restore a checkpoint) and the reply.
The caller must make ``persist`` and ``actions`` durable in one atomic write (fsync)
*before* it sends ``reply`` (rule 1): a YES that is sent but not durable could be
forgotten by a crash, and the participant would then abort alone.

The records are the *barrier* (rule 5): a repeated Prepare or Decide gets the same
answer and changes nothing; an ABORT that arrives before any Prepare is an *empty
rollback* that leaves an ABORTED record, so a late Prepare votes NO and late work is
refused; a Decide for a round already finished is acknowledged without acting.

A branch that voted YES may never abort alone (rule 3): it waits for the decision or
asks for it (``in_doubt``). One that has not voted may abort alone.

Fencing (rule 6): the participant remembers, durably, the highest coordinator term it
has seen and refuses any message from an older term. Decisions come only from the
replicated log, so an older leader can only repeat what is true; fencing keeps a
deposed leader that still believes it leads from driving this participant at all,
which matters once a finished record has been forgotten (bounded retention): its
stale Prepare could otherwise resurrect a round that ended long ago.

Saga steps have records of their own, keyed by (saga, step), with the same barrier:

    (no record) -> RUNNING (intent durable, action started) -> DONE | FAILED
    RUNNING | DONE -> COMPENSATING -> COMPENSATED | ESCALATED
    (no record) -> COMPENSATED (a barrier: the step never ran, and now never will)
    DONE -> COMPLETED, ESCALATED -> SETTLED (the saga is over: the record may go)

The intent is made durable before the action runs, so a crash in the middle leaves a
RUNNING record: a repeated ExecuteStep runs the action again with the same
idempotency key, and a CompensateStep compensates it with ``outcome_known=False``.
The action and its compensation run outside the core (``RunStep``,
``RunCompensation``); their results come back through ``step_finished`` and
``compensation_finished``. Until then, messages for that step are answered RUNNING.

Rounds and transactions exclude each other here too, as on the coordinator: while a
rollback or checkpoint round is prepared, transaction prepares vote NO; while a
transaction is in doubt, rollback and checkpoint prepares vote NO. A global checkpoint
is therefore a consistent cut.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from coordinator.core.messages import (
    AckReply,
    CompensateStep,
    Decide,
    ExecuteStep,
    FromParticipant,
    Prepare,
    Refused,
    StepReply,
    VoteReply,
)
from coordinator.core.types import Decision, Kind, StepOutcome
from participant_sdk.steps import (
    FINAL_STEP_STATES,
    SAGA_OVER,
    STEP_OUTCOMES,
    Action,
    ApplyBranch,
    BranchClosed,
    DiscardBranch,
    DropCheckpoint,
    ForgetRecord,
    ForgetStep,
    HoldBranch,
    LocalState,
    MustAsk,
    Persist,
    RestoreCheckpoint,
    RoundRecord,
    RunCompensation,
    RunStep,
    Step,
    StepRecord,
    StepState,
    TakeCheckpoint,
    TermRecord,
    step_key,
)

__all__ = [
    "DECIDED_STATE",
    "DECISION_ACTIONS",
    "FINAL_STEP_STATES",
    "SAGA_OVER",
    "STEP_OUTCOMES",
    "Action",
    "ApplyBranch",
    "BranchClosed",
    "DiscardBranch",
    "DropCheckpoint",
    "ForgetRecord",
    "ForgetStep",
    "HoldBranch",
    "LocalState",
    "MustAsk",
    "ParticipantCore",
    "Persist",
    "RestoreCheckpoint",
    "RoundRecord",
    "RunCompensation",
    "RunStep",
    "Step",
    "StepRecord",
    "StepState",
    "TakeCheckpoint",
    "TermRecord",
    "VoteFn",
    "step_key",
]


# The agent's answer to a Prepare: (yes, reason).
VoteFn = Callable[[Prepare], tuple[bool, str]]

# What each decision does to the agent's state, by kind: the one place that says it.
DECISION_ACTIONS: dict[tuple[Kind, Decision], Callable[[RoundRecord], tuple[Action, ...]]] = {
    (Kind.TXN, Decision.COMMIT): lambda r: (ApplyBranch(txn_id=r.round_id),),
    (Kind.TXN, Decision.ABORT): lambda r: (DiscardBranch(txn_id=r.round_id),),
    (Kind.ROLLBACK, Decision.COMMIT): lambda r: (RestoreCheckpoint(checkpoint_id=r.checkpoint_id),),
    (Kind.ROLLBACK, Decision.ABORT): lambda r: (),
    (Kind.CHECKPOINT, Decision.COMMIT): lambda r: (),
    (Kind.CHECKPOINT, Decision.ABORT): lambda r: (DropCheckpoint(checkpoint_id=r.checkpoint_id),),
}

DECIDED_STATE = {Decision.COMMIT: LocalState.COMMITTED, Decision.ABORT: LocalState.ABORTED}


@dataclass
class ParticipantCore:
    participant_id: str
    # Finished records are kept at least this long: longer than the coordinator's
    # retention plus the longest message delay, so a duplicate cannot find them gone.
    record_retention_ms: int = 300_000
    term_seen: int = 0
    records: dict[str, RoundRecord] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)
    steps: dict[str, StepRecord] = field(default_factory=dict)
    # The PREPARED records (in doubt), kept apart: every Prepare checks them, and
    # ``records`` holds every finished round for ``record_retention_ms`` too.
    _prepared: dict[str, RoundRecord] = field(default_factory=dict)
    # Steps whose action or compensation runs in this process right now.
    running: set[str] = field(default_factory=set)
    _finished: deque[tuple[int, str]] = field(default_factory=deque)
    _finished_steps: deque[tuple[int, str]] = field(default_factory=deque)

    @classmethod
    def recover(
        cls,
        participant_id: str,
        records: list[RoundRecord],
        term_seen: int,
        *,
        steps: list[StepRecord] | None = None,
        record_retention_ms: int = 300_000,
    ) -> ParticipantCore:
        """Rebuild from durable records after a restart. ACTIVE work was never durable:
        it is simply gone, and a later Prepare for it votes NO. A step left RUNNING or
        COMPENSATING was interrupted: the next message for it runs it again."""
        core = cls(participant_id, record_retention_ms=record_retention_ms, term_seen=term_seen)
        for record in sorted(records, key=lambda r: r.updated_ms):
            core._set_record(record)
            if record.state is not LocalState.PREPARED:
                core._finished.append((record.updated_ms, record.round_id))
        for step in sorted(steps or (), key=lambda r: r.updated_ms):
            core.steps[step.key] = step
            if step.state in FINAL_STEP_STATES:
                core._finished_steps.append((step.updated_ms, step.key))
        return core

    # ------------------------------------------------------------------ local API

    def begin_branch(self, txn_id: str) -> None:
        record = self.records.get(txn_id)
        if record is not None:
            raise BranchClosed(f"txn {txn_id!r} is already {record.state.value.lower()} here")
        self.active.add(txn_id)

    def outcome_decide(self, round_id: str, decision: Decision) -> Decide | None:
        """The cluster's answer to an outcome query, as the ``Decide`` to take
        (``on_decide``) for a round in doubt here; None when nothing waits for it. It
        carries the term already seen: the answer is from the cluster, never fenced."""
        record = self.records.get(round_id)
        if record is None or record.state is not LocalState.PREPARED:
            return None
        return Decide(
            round_id=round_id,
            kind=record.kind,
            participant_id=self.participant_id,
            decision=decision,
            checkpoint_id=record.checkpoint_id,
            term=self.term_seen,
        )

    def abort_alone(self, txn_id: str, now_ms: int, reason: str) -> Step:
        """Abort a branch that has not voted YES (the agent gave up, or restarted)."""
        record = self.records.get(txn_id)
        if record is not None:
            if record.state is LocalState.PREPARED:
                raise MustAsk(f"txn {txn_id!r} voted yes: only the coordinator can abort it")
            return Step()
        self.active.discard(txn_id)
        aborted = RoundRecord(
            round_id=txn_id, kind=Kind.TXN, state=LocalState.ABORTED, voted_yes=False, reason=reason
        )
        return replace(
            self._finish(aborted, now_ms, actions=(DiscardBranch(txn_id=txn_id),)), reply=None
        )

    def in_doubt(self) -> list[RoundRecord]:
        """Rounds voted YES with no decision known here: ask the cluster for them."""
        return list(self._prepared.values())

    def expire(self, now_ms: int) -> Step:
        """Forget finished records older than the retention: storage stays bounded."""
        forgotten = []
        while self._finished and self._finished[0][0] + self.record_retention_ms <= now_ms:
            _, round_id = self._finished.popleft()
            record = self.records.get(round_id)
            if (
                record is not None
                and record.state is not LocalState.PREPARED
                and record.updated_ms <= now_ms
            ):
                del self.records[round_id]
                self._prepared.pop(round_id, None)
                forgotten.append(ForgetRecord(round_id=round_id))
        forgotten_steps: list[Persist] = []
        while (
            self._finished_steps and self._finished_steps[0][0] + self.record_retention_ms <= now_ms
        ):
            _, key = self._finished_steps.popleft()
            step = self.steps.get(key)
            if step is not None and step.state in FINAL_STEP_STATES and step.updated_ms <= now_ms:
                del self.steps[key]
                forgotten_steps.append(ForgetStep(key=key))
        return Step(persist=(*forgotten, *forgotten_steps))

    # ------------------------------------------------------------------ messages

    def runs_prepare_action(self, msg: Prepare) -> bool:
        """Whether the action a Prepare carries (a one-shot transaction) is to be run
        before it is voted on: not for a Prepare already answered (the record answers
        it, result included) nor for one fenced off (an older term than one seen)."""
        return (
            bool(msg.action) and msg.round_id not in self.records and (msg.term >= self.term_seen)
        )

    def on_prepare(self, msg: Prepare, now_ms: int, vote: VoteFn, result: str = "") -> Step:
        """``result``: what the Prepare's action returned (one-shot), kept with a YES."""
        fenced, term = self._fence(msg.round_id, msg.term)
        if fenced is not None:
            return fenced
        record = self.records.get(msg.round_id)
        if record is not None:
            # The barrier: a repeated Prepare gets the answer already made durable.
            return Step(persist=term, reply=self._vote_reply(record))
        refusal = self._conflicting_round(msg.kind)
        if msg.kind is Kind.TXN and msg.round_id not in self.active:
            refusal = (
                "no work for this transaction here (never begun, lost in a restart, or aborted)"
            )
        if refusal:
            yes, reason = False, refusal
        else:
            yes, reason = vote(msg)
        self.active.discard(msg.round_id)
        if not yes:
            record = RoundRecord(
                round_id=msg.round_id,
                kind=msg.kind,
                state=LocalState.ABORTED,
                voted_yes=False,
                reason=reason,
                checkpoint_id=msg.checkpoint_id,
                updated_ms=now_ms,
            )
            discard = (DiscardBranch(txn_id=msg.round_id),) if msg.kind is Kind.TXN else ()
            return self._finish(record, now_ms, actions=discard, extra=term)
        record = RoundRecord(
            round_id=msg.round_id,
            kind=msg.kind,
            state=LocalState.PREPARED,
            voted_yes=True,
            reason=reason,
            checkpoint_id=msg.checkpoint_id,
            updated_ms=now_ms,
            result=result,
        )
        self._set_record(record)
        hold: tuple[Action, ...] = ()
        if msg.kind is Kind.TXN:
            hold = (HoldBranch(txn_id=msg.round_id),)
        elif msg.kind is Kind.CHECKPOINT:
            hold = (TakeCheckpoint(checkpoint_id=msg.checkpoint_id, label=msg.label),)
        return Step(persist=(*term, record), actions=hold, reply=self._vote_reply(record))

    def on_decide(self, msg: Decide, now_ms: int) -> Step:
        """A decision from the leader, or the answer to an in-doubt query."""
        fenced, term = self._fence(msg.round_id, msg.term)
        if fenced is not None:
            return fenced
        ack = AckReply(round_id=msg.round_id, participant_id=self.participant_id)
        if msg.kind is Kind.SAGA:
            # The saga is over: its steps here are final and may be forgotten.
            settled = [
                self._keep_step(replace(s, state=SAGA_OVER[s.state]), now_ms)
                for s in self.steps.values()
                if s.saga_id == msg.round_id and s.state in SAGA_OVER
            ]
            return Step(persist=(*term, *settled), reply=ack)
        record = self.records.get(msg.round_id)
        if record is None:
            if msg.round_id in self.active:
                if msg.decision is Decision.COMMIT:
                    return self._violation(msg, "commit of a branch that never voted yes", term)
                self.active.discard(msg.round_id)
            if msg.kind is Kind.TXN and msg.decision is Decision.ABORT:
                # Empty rollback: remember the abort so late work and prepares are refused.
                aborted = RoundRecord(
                    round_id=msg.round_id,
                    kind=Kind.TXN,
                    state=LocalState.ABORTED,
                    voted_yes=False,
                    reason="aborted before prepare",
                    updated_ms=now_ms,
                )
                return self._finish(
                    aborted,
                    now_ms,
                    actions=(DiscardBranch(txn_id=msg.round_id),),
                    extra=term,
                    reply=ack,
                )
            # Never voted here, or finished and forgotten long ago: nothing to do.
            return Step(persist=term, reply=ack)
        if record.state is LocalState.PREPARED:
            decided = replace(record, state=DECIDED_STATE[msg.decision], updated_ms=now_ms)
            actions = DECISION_ACTIONS[(record.kind, msg.decision)](record)
            voided: tuple[RoundRecord, ...] = ()
            if record.kind is Kind.ROLLBACK and msg.decision is Decision.COMMIT:
                voided = self._void_active(msg.round_id, now_ms)
                actions = (*actions, *(DiscardBranch(txn_id=r.round_id) for r in voided))
            return self._finish(decided, now_ms, actions=actions, extra=(*term, *voided), reply=ack)
        if DECIDED_STATE[msg.decision] is not record.state:
            return self._violation(
                msg,
                f"decision {msg.decision.value} but this participant is {record.state.value}",
                term,
            )
        return Step(persist=term, reply=ack)

    # ------------------------------------------------------------------ saga steps

    def on_execute(self, msg: ExecuteStep, now_ms: int) -> Step:
        fenced, term = self._fence(msg.round_id, msg.term)
        if fenced is not None:
            return fenced
        key = step_key(msg.round_id, msg.step)
        record = self.steps.get(key)
        if record is None:
            record = StepRecord(
                saga_id=msg.round_id,
                step=msg.step,
                action=msg.action,
                payload=msg.payload,
                state=StepState.RUNNING,
                updated_ms=now_ms,
            )
            self.steps[key] = record
        elif record.state is not StepState.RUNNING or key in self.running:
            # The barrier: what is durably known (a compensated step never runs).
            return Step(persist=term, reply=self._step_reply(record))
        # New, or interrupted by a crash: run it (again, under the same idempotency key).
        self.running.add(key)
        run = RunStep(saga_id=msg.round_id, step=msg.step, action=msg.action, payload=msg.payload)
        return Step(persist=(*term, record), actions=(run,), reply=self._step_reply(record))

    def step_finished(
        self, saga_id: str, step: int, *, ok: bool, result: bytes, reason: str, now_ms: int
    ) -> Step:
        """The action of a RunStep returned (``ok``) or raised. Persist, then report."""
        key = step_key(saga_id, step)
        self.running.discard(key)
        record = self.steps.get(key)
        if record is None or record.state is not StepState.RUNNING:
            return Step()  # compensated meanwhile? impossible while running: nothing to do
        state = StepState.DONE if ok else StepState.FAILED
        done = replace(
            record, state=state, result=result if ok else b"", reason=reason, returned=ok
        )
        done = self._keep_step(done, now_ms)
        return Step(persist=(done,), reply=self._step_reply(done))

    def step_outcome_unknown(self, saga_id: str, step: int) -> Step:
        """The action could not tell whether it had its effect: nothing is recorded
        (the step stays RUNNING) and the next ExecuteStep runs it again."""
        self.running.discard(step_key(saga_id, step))
        return Step()

    def on_compensate(self, msg: CompensateStep, now_ms: int) -> Step:
        fenced, term = self._fence(msg.round_id, msg.term)
        if fenced is not None:
            return fenced
        key = step_key(msg.round_id, msg.step)
        record = self.steps.get(key)
        if record is None:
            barrier = StepRecord(
                saga_id=msg.round_id,
                step=msg.step,
                action=msg.action,
                payload=msg.payload,
                state=StepState.COMPENSATED,
                reason="never ran here",
                ran=False,
            )
            barrier = self._keep_step(barrier, now_ms)
            return Step(persist=(*term, barrier), reply=self._step_reply(barrier))
        if key in self.running:
            return Step(persist=term, reply=self._step_reply(record))  # wait for it
        if record.state is StepState.FAILED:
            undone = self._keep_step(
                replace(record, state=StepState.COMPENSATED, reason="failed: nothing to undo"),
                now_ms,
            )
            return Step(persist=(*term, undone), reply=self._step_reply(undone))
        if record.state in (StepState.RUNNING, StepState.DONE, StepState.COMPENSATING):
            compensating = replace(record, state=StepState.COMPENSATING, updated_ms=now_ms)
            self.steps[key] = compensating
            self.running.add(key)
            run = RunCompensation(
                saga_id=msg.round_id,
                step=msg.step,
                action=record.action,
                payload=record.payload,
                result=record.result,
                outcome_known=record.returned,
            )
            return Step(
                persist=(*term, compensating),
                actions=(run,),
                reply=self._step_reply(compensating),
            )
        return Step(persist=term, reply=self._step_reply(record))  # COMPENSATED, ESCALATED

    def compensation_finished(
        self, saga_id: str, step: int, *, ok: bool, reason: str, now_ms: int
    ) -> Step:
        """The compensation of a RunCompensation succeeded (``ok``), or gave up after
        its retries: ESCALATED, for an operator."""
        key = step_key(saga_id, step)
        self.running.discard(key)
        record = self.steps.get(key)
        if record is None or record.state is not StepState.COMPENSATING:
            return Step()
        state = StepState.COMPENSATED if ok else StepState.ESCALATED
        done = self._keep_step(replace(record, state=state, reason=reason), now_ms)
        return Step(persist=(done,), reply=self._step_reply(done))

    def _keep_step(self, record: StepRecord, now_ms: int) -> StepRecord:
        record = replace(record, updated_ms=now_ms)
        self.steps[record.key] = record
        if record.state in FINAL_STEP_STATES:
            self._finished_steps.append((now_ms, record.key))
        return record

    def _step_reply(self, record: StepRecord) -> StepReply:
        outcome = STEP_OUTCOMES[record.state]
        return StepReply(
            round_id=record.saga_id,
            step=record.step,
            participant_id=self.participant_id,
            outcome=outcome,
            reason=record.reason,
            result=record.result if outcome is StepOutcome.DONE else b"",
        )

    # ------------------------------------------------------------------ mechanics

    def _fence(self, round_id: str, term: int) -> tuple[Step | None, tuple[Persist, ...]]:
        if term < self.term_seen:
            refused = Refused(
                round_id=round_id,
                participant_id=self.participant_id,
                term_seen=self.term_seen,
                reason=f"stale coordinator term {term} < {self.term_seen}",
            )
            return Step(reply=refused), ()
        if term > self.term_seen:
            self.term_seen = term
            return None, (TermRecord(term=term),)
        return None, ()

    def _set_record(self, record: RoundRecord) -> None:
        self.records[record.round_id] = record
        if record.state is LocalState.PREPARED:
            self._prepared[record.round_id] = record
        else:
            self._prepared.pop(record.round_id, None)

    def _conflicting_round(self, kind: Kind) -> str:
        for record in self._prepared.values():
            if record.state is LocalState.PREPARED:
                if kind is Kind.TXN and record.kind is not Kind.TXN:
                    return f"{record.kind.value.lower()} round {record.round_id!r} is under way"
                if kind is not Kind.TXN and record.kind is Kind.TXN:
                    return f"txn {record.round_id!r} is in doubt"
        return ""

    def _vote_reply(self, record: RoundRecord) -> VoteReply:
        return VoteReply(
            round_id=record.round_id,
            participant_id=self.participant_id,
            yes=record.voted_yes,
            reason=record.reason,
            result=record.result.encode(),
        )

    def _void_active(self, rollback_id: str, now_ms: int) -> tuple[RoundRecord, ...]:
        """Work staged against the state a rollback reverts is void: each branch still
        active ends aborted, and is remembered so, so that neither a late begin of the
        same transaction nor its Prepare can carry on work that read the state from
        before the rollback (a fresh branch would read, and validate, the state after
        it, while the agent acts on what it read before)."""
        voided = []
        for txn_id in sorted(self.active):
            aborted = RoundRecord(
                round_id=txn_id,
                kind=Kind.TXN,
                state=LocalState.ABORTED,
                voted_yes=False,
                reason=f"rolled back by {rollback_id!r} before it voted",
                updated_ms=now_ms,
            )
            self._set_record(aborted)
            self._finished.append((now_ms, txn_id))
            voided.append(aborted)
        self.active.clear()
        return tuple(voided)

    def _finish(
        self,
        record: RoundRecord,
        now_ms: int,
        *,
        actions: tuple[Action, ...] = (),
        extra: tuple[Persist, ...] = (),
        reply: FromParticipant | None = None,
    ) -> Step:
        record = replace(record, updated_ms=now_ms)
        self._set_record(record)
        self._finished.append((now_ms, record.round_id))
        if reply is None:
            reply = self._vote_reply(record)
        return Step(persist=(*extra, record), actions=actions, reply=reply)

    def _violation(self, msg: Decide, what: str, term: tuple[Persist, ...]) -> Step:
        refused = Refused(
            round_id=msg.round_id,
            participant_id=self.participant_id,
            term_seen=self.term_seen,
            reason=what,
        )
        return Step(persist=term, reply=refused, violation=f"{msg.round_id!r}: {what}")
