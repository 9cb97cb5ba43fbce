"""Known bugs, planted one at a time, that the simulator must catch.

Each is a small subclass of a real part, so the product code carries no bug flags. A
checker that cannot catch its planted bug within a bounded number of seeds is a
defect (tests/simulation/test_planted_bugs.py).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import fields, replace
from typing import Any

from coordinator.core.early import EarlyVotes
from coordinator.core.entries import StepReport, Timeout, Vote
from coordinator.core.leader import Leader, ProposeResult, ProposeStatus
from coordinator.core.messages import CompensateStep, Decide, FromParticipant, Prepare, VoteReply
from coordinator.core.outbox import Due, Outbox
from coordinator.core.state import (
    STEP_MAY_HAVE_RUN,
    CoordinatorState,
    Decided,
    Phase,
    Round,
    StepStatus,
)
from coordinator.core.types import Decision, Kind, StepOutcome
from participant_sdk.core import (
    DiscardBranch,
    LocalState,
    MustAsk,
    ParticipantCore,
    Persist,
    RestoreCheckpoint,
    RoundRecord,
    RunCompensation,
    RunStep,
    Step,
    StepRecord,
    StepState,
    VoteFn,
    step_key,
)
from participant_sdk.isolation import BranchWork, Footprint, LockTable
from participant_sdk.storage.writer import StoreWriter
from participant_sdk.store import MemoryStore
from simulations.cluster import CoordinatorNode, SimCluster
from simulations.participant import SimParticipant
from simulations.workload import ABORTED, SimClient
from simulations.world import Plant


class DecidesBeforeAllVotes(CoordinatorState):
    """Commits as soon as the votes applied so far are all YES, missing ones ignored."""

    def _all_voted_yes(self, rnd: Round) -> bool:
        return bool(rnd.votes)


class EarlyVotesPresumeYes(EarlyVotes):
    """When the early wait ends, counts every participant that did not answer as YES."""

    def collected(self) -> tuple[Vote, ...]:
        silent = tuple(
            Vote(round_id=self.txn_id, participant_id=p, yes=True) for p in sorted(self.waiting)
        )
        return (*self.votes, *silent)


class TimeoutOverridesDecision(CoordinatorState):
    """Lets a late Timeout entry abort a round that was already decided."""

    def _timeout(self, entry: Timeout, decided: list[Decided], notes: list[str]) -> None:
        rnd = self.rounds.get(entry.round_id)
        if rnd is not None and rnd.phase is Phase.DECIDED and rnd.decision is Decision.COMMIT:
            rnd.decision = Decision.ABORT
            decided.append(
                Decided(
                    round_id=rnd.round_id,
                    kind=rnd.kind,
                    decision=Decision.ABORT,
                    reason="timed out",
                )
            )
            return
        super()._timeout(entry, decided, notes)


class ForwardRound(Round):
    """A saga round that picks the next step to compensate first to last."""

    def next_compensation(self) -> int | None:
        for index in range(self.compensate_from + 1):
            if self.steps[index].status in STEP_MAY_HAVE_RUN:
                return index
        return None


class CompensatesInOrder(CoordinatorState):
    """Undoes an aborted saga's steps in the order they ran, not in reverse."""

    def _create(self, rnd: Round) -> None:
        if rnd.kind is Kind.SAGA:
            rnd = ForwardRound(**{f.name: getattr(rnd, f.name) for f in fields(Round)})
        super()._create(rnd)


class LateStepCompletes(CoordinatorState):
    """Completes a saga whose last step reports done after the saga was aborted
    (it timed out, or the client cancelled it, while the step ran)."""

    def _record_step_report(
        self, report: StepReport, decided: list[Decided], notes: list[str]
    ) -> None:
        super()._record_step_report(report, decided, notes)
        rnd = self.rounds.get(report.saga_id)
        if (
            rnd is not None
            and rnd.kind is Kind.SAGA
            and rnd.decision is Decision.ABORT
            and rnd.phase is Phase.DECIDED
            and report.outcome is StepOutcome.DONE
            and all(s.status is StepStatus.DONE for s in rnd.steps)
        ):
            rnd.decision = Decision.COMMIT
            decided.append(
                Decided(
                    round_id=rnd.round_id,
                    kind=rnd.kind,
                    decision=Decision.COMMIT,
                    reason="all steps done",
                )
            )


class SendsDecisionBeforeApplied(Outbox):
    """Sends COMMIT the moment every YES reply has arrived, before the votes are applied."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yes: dict[str, set[str]] = {}

    def on_reply(self, reply: FromParticipant) -> None:
        super().on_reply(reply)
        if isinstance(reply, VoteReply) and reply.yes:
            self._yes.setdefault(reply.round_id, set()).add(reply.participant_id)

    def poll(self, state: CoordinatorState, now_ms: int, term: int) -> Due:
        due = super().poll(state, now_ms, term)
        early = []
        for rnd in state.open_rounds():
            yes = self._yes.get(rnd.round_id, set()) | set(rnd.votes)
            if rnd.phase is Phase.VOTING and yes.issuperset(rnd.participants):
                early += [
                    Decide(
                        round_id=rnd.round_id,
                        kind=rnd.kind,
                        participant_id=p,
                        decision=Decision.COMMIT,
                        checkpoint_id=rnd.checkpoint_id,
                        term=term,
                    )
                    for p in rnd.participants
                ]
        return replace(due, sends=(*due.sends, *early))


class NeverRetries(Outbox):
    """Sends each Prepare and Decide once: a lost message stalls its round forever."""

    def _due(self, key: tuple[str, str, str], now_ms: int, live: set[tuple[str, str, str]]) -> bool:
        first = key not in self._retries
        super()._due(key, now_ms, live)
        return first


class ServesReadsBeforeCaughtUp(Leader):
    """Answers reads as soon as it is elected, from whatever it had applied by then."""

    @property
    def serves_reads(self) -> bool:
        return self.term is not None


class DrivesBeforeCaughtUp(Leader):
    """Drives participants from its applied state as soon as it is elected, before
    the entry of its term has applied (its state may lag what earlier leaders did)."""

    def tick(self, state: CoordinatorState, now_ms: int) -> None:
        caught_up, self.caught_up = self.caught_up, self.term is not None
        try:
            super().tick(state, now_ms)
        finally:
            self.caught_up = caught_up


class AnswersUnknownAsAbort(Leader):
    """Answers an outcome query about a round it does not know with ABORT at once,
    without a PresumeAbort entry in the log."""

    def outcome_query(
        self, ticket: int, round_id: str, participant_id: str, state: CoordinatorState, now_ms: int
    ) -> None:
        if self.term is not None and state.get(round_id) is None:
            self._answer(ticket, decision=Decision.ABORT)
            return
        super().outcome_query(ticket, round_id, participant_id, state, now_ms)


class DecidesOnEarlyVotes(Leader):
    """Sends COMMIT as soon as every early vote is YES, before the commit request and
    its votes are in the log."""

    def _propose_early(self, txn_id: str, now_ms: int) -> None:
        commit = self._early[txn_id]
        super()._propose_early(txn_id, now_ms)
        votes = commit.votes.collected()
        if self.term is None or len(votes) < commit.participants or not all(v.yes for v in votes):
            return
        self._sends.extend(
            Decide(
                round_id=txn_id,
                kind=Kind.TXN,
                participant_id=vote.participant_id,
                decision=Decision.COMMIT,
                checkpoint_id="",
                term=self.term,
            )
            for vote in votes
        )


class JournalSkipsSync(SimCluster):
    """A Raft journal that acknowledges entries without syncing them (as LMDB opened
    with ``sync=False``): only the operating system's writeback makes them durable."""

    def sync_journal(self, node: CoordinatorNode) -> None:
        pass


class AbortsAloneAfterYes(ParticipantCore):
    """Gives up on an in-doubt branch by itself instead of asking the cluster."""

    def abort_alone(self, txn_id: str, now_ms: int, reason: str) -> Step:
        record = self.records.get(txn_id)
        if record is not None and record.state is LocalState.PREPARED:
            aborted = RoundRecord(
                round_id=txn_id,
                kind=record.kind,
                state=LocalState.ABORTED,
                voted_yes=True,
                reason=reason,
                updated_ms=now_ms,
            )
            discard = (DiscardBranch(txn_id=txn_id),)
            return replace(self._finish(aborted, now_ms, actions=discard), reply=None)
        return super().abort_alone(txn_id, now_ms, reason)


class VotesYesWithoutRecord(ParticipantCore):
    """Sends its YES without writing the PREPARED record that promises it: a crash
    before the decision forgets the vote."""

    def on_prepare(self, msg: Prepare, now_ms: int, vote: VoteFn, result: str = "") -> Step:
        step = super().on_prepare(msg, now_ms, vote, result)
        kept = tuple(
            p
            for p in step.persist
            if not (isinstance(p, RoundRecord) and p.state is LocalState.PREPARED)
        )
        return replace(step, persist=kept)


class ForgetsInDoubtAtRestart(ParticipantCore):
    """Rebuilt after a restart without the rounds it voted YES on and has no decision
    for: it no longer knows it is in doubt."""

    @classmethod
    def recover(
        cls, participant_id: str, records: list[RoundRecord], *args: Any, **kwargs: Any
    ) -> ParticipantCore:
        decided = [r for r in records if r.state is not LocalState.PREPARED]
        return super().recover(participant_id, decided, *args, **kwargs)


class IgnoresFencing(ParticipantCore):
    """Obeys any coordinator, however old its term."""

    def _fence(self, round_id: str, term: int) -> tuple[Step | None, tuple[Persist, ...]]:
        return super()._fence(round_id, max(term, self.term_seen))


class CompensatesStepsThatNeverRan(ParticipantCore):
    """Takes a CompensateStep for a step it has no record of as proof that the step
    ran (no barrier): it runs the compensation, as though the outcome were known."""

    def on_compensate(self, msg: CompensateStep, now_ms: int) -> Step:
        key = step_key(msg.round_id, msg.step)
        if key not in self.steps and msg.term >= self.term_seen:
            self.steps[key] = StepRecord(
                saga_id=msg.round_id,
                step=msg.step,
                action=msg.action,
                payload=msg.payload,
                state=StepState.DONE,
                returned=True,
                updated_ms=now_ms,
            )
        return super().on_compensate(msg, now_ms)


class ForgetsInterruptedSteps(ParticipantCore):
    """After a restart, believes the actions it was running still run: an interrupted
    step is answered RUNNING for ever, neither rerun nor compensated."""

    @classmethod
    def recover(cls, *args: Any, **kwargs: Any) -> ParticipantCore:
        core = super().recover(*args, **kwargs)
        interrupted = (StepState.RUNNING, StepState.COMPENSATING)
        core.running |= {key for key, s in core.steps.items() if s.state in interrupted}
        return core


class TreatsUnknownAsFailure(SimClient):
    """Reports a commit whose outcome it did not hear as failed (and would retry anew)."""

    def outcome_of(
        self, txn_id: str, begun_ms: int, commit: ProposeResult | None
    ) -> Generator[Any, Any, str]:
        if commit is not None and commit.status is ProposeStatus.UNKNOWN:
            return ABORTED
        return (yield from super().outcome_of(txn_id, begun_ms, commit))


class RepliesBeforeSync(SimParticipant):
    """Answers before its write is synced; a crash in between loses what it said."""

    sync_before_reply = False


class StoreSkipsSync(SimParticipant):
    """The participant's store acknowledges writes it never synced (LMDB opened with
    ``sync=False``): only the operating system's writeback makes them durable."""

    def sync(self) -> None:
        pass


class _PartialRestoreWriter(StoreWriter):
    """Restores only the first half of the keys a checkpoint changes."""

    def _act(self, action: object, staged: Mapping[str, BranchWork]) -> None:
        if not isinstance(action, RestoreCheckpoint):
            super()._act(action, staged)
            return
        before = dict(self._tables.scan("state"))
        super()._act(action, staged)
        after = dict(self._tables.scan("state"))
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        for key in changed[(len(changed) + 1) // 2 :]:
            if key in before:
                self._tables.put("state", key, before[key])
            else:
                self._tables.delete("state", key)


class _PartialRestoreStore(MemoryStore):
    writer_class = _PartialRestoreWriter


class RestoresPartOfCheckpoint(SimParticipant):
    """A rollback that writes only part of the checkpoint back."""

    store_class = _PartialRestoreStore


class _LockTableThatLocksNothing(LockTable):
    def conflict(self, txn_id: str, footprint: Footprint, now_ms: int) -> str:
        return ""


class SkipsLockCheck(SimParticipant):
    """Votes YES without checking what in-doubt branches hold: the vote's lock check
    (``LockTable.conflict``) finds nothing."""

    lock_table_class = _LockTableThatLocksNothing


class RerunsWithoutKey(SimParticipant):
    """Hands the service a fresh idempotency key on every run: a step rerun after a
    crash applies its effect a second time."""

    def idempotency_key(self, run: RunStep) -> str:
        return f"{super().idempotency_key(run)}/run{self.runs}"


class RerunsCompensationWithoutKey(SimParticipant):
    """Hands the service a fresh idempotency key on every run of a compensation: a
    compensation rerun after a crash (its effect done, COMPENSATED not yet written)
    undoes the step a second time."""

    def compensation_key(self, run: RunCompensation) -> str:
        return f"{super().compensation_key(run)}/run{self.runs}"


class FailedActionVotesYes(SimParticipant):
    """A one-shot transaction's action that fails (insufficient funds) leaves its
    branch open instead of aborting it: the branch votes YES on what the action did
    before it failed, and the transfer commits without its debit."""

    def abort_alone(self, txn_id: str, reason: str = "") -> None:
        return


class SkipsReadValidation(SimParticipant):
    """Votes without checking that what the branch read is unchanged: the check at
    Prepare sees every key read (and every prefix scanned) as read just now."""

    def isolation_check(self, txn_id: str, work: BranchWork, now_ms: int) -> str:
        as_if_now = replace(
            work,
            reads={key: self.memory.version(key) for key in work.reads},
            scans=dict.fromkeys(work.scans, self.memory.commit_seq),
        )
        return super().isolation_check(txn_id, as_if_now, now_ms)


class ReleasesLocksEarly(SimParticipant):
    """Lets go of a YES branch's keys at the vote instead of at the decision: until
    the decision applies, another branch may read and write what it holds."""

    def hold_locks(self, txn_id: str, footprint: Footprint) -> None:
        super().hold_locks(txn_id, footprint)
        self.locks.release(txn_id)


PLANTED: dict[str, Plant] = {
    "decide-before-all-votes": Plant(state=DecidesBeforeAllVotes),
    "timeout-overrides-decision": Plant(state=TimeoutOverridesDecision),
    "send-decision-before-applied": Plant(outbox=SendsDecisionBeforeApplied),
    "never-retry": Plant(outbox=NeverRetries),
    "early-votes-presume-yes": Plant(early_votes=EarlyVotesPresumeYes),
    "abort-alone-after-yes": Plant(participant_core=AbortsAloneAfterYes),
    "yes-without-prepared-record": Plant(participant_core=VotesYesWithoutRecord),
    "forget-in-doubt-at-restart": Plant(participant_core=ForgetsInDoubtAtRestart),
    "ignore-fencing": Plant(participant_core=IgnoresFencing),
    "unknown-is-failure": Plant(client=TreatsUnknownAsFailure),
    "reply-before-sync": Plant(participant=RepliesBeforeSync),
    "compensate-in-order": Plant(state=CompensatesInOrder),
    "late-step-completes": Plant(state=LateStepCompletes),
    "compensate-never-ran": Plant(participant_core=CompensatesStepsThatNeverRan),
    "forget-interrupted-steps": Plant(participant_core=ForgetsInterruptedSteps),
    "rerun-without-key": Plant(participant=RerunsWithoutKey),
    "rerun-compensation-without-key": Plant(participant=RerunsCompensationWithoutKey),
    # The leader (coordinator/core/leader.py).
    "serve-reads-before-caught-up": Plant(leader=ServesReadsBeforeCaughtUp),
    "drive-before-caught-up": Plant(leader=DrivesBeforeCaughtUp),
    "outcome-abort-without-log": Plant(leader=AnswersUnknownAsAbort),
    "decide-on-early-votes": Plant(leader=DecidesOnEarlyVotes),
    # Power loss.
    "journal-skips-sync": Plant(cluster=JournalSkipsSync),
    # The participant's write path (the SDK's store and lock table).
    "store-skips-sync": Plant(participant=StoreSkipsSync),
    "restore-part-of-checkpoint": Plant(participant=RestoresPartOfCheckpoint),
    "skip-lock-check": Plant(participant=SkipsLockCheck),
    # One-shot transactions (their actions inside Prepare).
    "failed-action-votes-yes": Plant(participant=FailedActionVotesYes),
    # Isolation.
    "skip-read-validation": Plant(participant=SkipsReadValidation),
    "release-locks-early": Plant(participant=ReleasesLocksEarly),
}

__all__ = ["PLANTED", "MustAsk"]
