"""A simulated participant: the real ``ParticipantCore`` over a simulated disk.

The agent is a bank account: transfers stage a delta, a YES vote holds it durably,
COMMIT applies it; checkpoints snapshot the balance. The disk keeps what was synced;
a crash throws away memory and every write that was not synced (rule 1 is what makes
that harmless: every Step is written and synced before its reply is sent).

It also runs saga steps against the outside world (``sagas.OutsideWorld``): the core's
``RunStep`` and ``RunCompensation`` start only once the Step that asks for them is
synced, take a few simulated milliseconds (or longer than the step timeout, when the
plan says slow), and report back through ``step_finished`` and
``compensation_finished``, whose Steps are synced before the reply too. An action may
crash the whole participant half way: before its effect, or after its effect and
before its result is durable. A crash also abandons every action still running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coordinator.core.messages import CompensateStep, Decide, ExecuteStep, Prepare
from coordinator.core.types import Kind
from participant_sdk.core import (
    ApplyBranch,
    BranchClosed,
    DiscardBranch,
    DropCheckpoint,
    ForgetRecord,
    ForgetStep,
    HoldBranch,
    LocalState,
    MustAsk,
    ParticipantCore,
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
from simulations import history as h
from simulations.cluster import OutcomeQuery
from simulations.sagas import StepPlan

if TYPE_CHECKING:
    from simulations.world import World


@dataclass(frozen=True, slots=True)
class Work:
    """A client asks the agent to do its part of a transfer under ``txn_id``."""

    txn_id: str
    delta: int


@dataclass
class Image:
    """The participant's data: what is in memory, and (a copy) what is on disk."""

    balance: int
    held: dict[str, int] = field(default_factory=dict)  # voted YES: delta kept durably
    checkpoints: dict[str, int] = field(default_factory=dict)
    records: dict[str, RoundRecord] = field(default_factory=dict)
    term: int = 0
    steps: dict[str, StepRecord] = field(default_factory=dict)  # saga steps, by key

    def copy(self) -> Image:
        return Image(
            self.balance,
            dict(self.held),
            dict(self.checkpoints),
            dict(self.records),
            self.term,
            dict(self.steps),
        )


class SimParticipant:
    # Replying before the write is synced is the planted bug "losing unsynced writes".
    sync_before_reply = True

    def __init__(
        self,
        world: World,
        participant_id: str,
        balance: int,
        core_factory: Callable[..., ParticipantCore],
    ) -> None:
        self.world = world
        self.participant_id = participant_id
        self.core_factory = core_factory
        self.memory = Image(balance)
        self.disk = self.memory.copy()
        self.dirty = False
        self.alive = True
        self.staged: dict[str, int] = {}  # ACTIVE work: memory only
        self.work_since_ms: dict[str, int] = {}
        self.core = core_factory(
            participant_id, record_retention_ms=world.config.participant_retention_ms
        )
        self._query_turn = 0
        # Saga steps: a crash ends this incarnation and every action it was running.
        self.incarnation = 0
        self.step_reply_to: dict[str, str] = {}  # step key -> node that last asked
        self.runs = 0  # actions started, ever (an attempt number for idempotency keys)

    # ------------------------------------------------------------------ faults

    def crash(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.memory = self.disk.copy()
        self.dirty = False
        self.staged.clear()
        self.work_since_ms.clear()
        self.incarnation += 1
        self.step_reply_to.clear()
        self.world.history.record(h.FAULT, self.participant_id, value="crash")

    def restart(self) -> None:
        if self.alive:
            return
        self.alive = True
        self.memory = self.disk.copy()
        self.core = self.core_factory.recover(  # type: ignore[attr-defined]
            self.participant_id,
            list(self.disk.records.values()),
            self.disk.term,
            steps=list(self.disk.steps.values()),
            record_retention_ms=self.world.config.participant_retention_ms,
        )
        now = self.world.loop.now_ms
        self.work_since_ms = {t: now for t in self.memory.held}
        self.world.history.record(h.FAULT, self.participant_id, value="restart")
        self.ask_in_doubt()

    # ------------------------------------------------------------------ messages

    def on_message(self, src: str, payload: Any) -> None:
        if not self.alive:
            return
        now = self.world.loop.now_ms
        match payload:
            case Work():
                try:
                    self.core.begin_branch(payload.txn_id)
                except BranchClosed:
                    return
                self.staged[payload.txn_id] = payload.delta
                self.work_since_ms.setdefault(payload.txn_id, now)
            case Prepare():
                self._perform(self.core.on_prepare(payload, now, self._vote), src)
            case Decide():
                self._perform(self.core.on_decide(payload, now), src)
            case ExecuteStep():
                self.step_reply_to[step_key(payload.round_id, payload.step)] = src
                self._perform(self.core.on_execute(payload, now), src)
            case CompensateStep():
                self.step_reply_to[step_key(payload.round_id, payload.step)] = src
                self._perform(self.core.on_compensate(payload, now), src)

    def _vote(self, msg: Prepare) -> tuple[bool, str]:
        if msg.kind is Kind.TXN:
            delta = self.staged[msg.round_id]
            reserved = sum(d for d in self.memory.held.values() if d < 0)
            if delta < 0 and self.memory.balance + reserved + delta < 0:
                return False, "insufficient funds"
            return True, ""
        if msg.kind is Kind.ROLLBACK and msg.checkpoint_id not in self.memory.checkpoints:
            return False, f"no checkpoint {msg.checkpoint_id!r} here"
        return True, ""

    # ------------------------------------------------------------------ steps

    def _perform(self, step: Step, reply_to: str | None) -> None:
        if step.violation:
            self.world.history.record(h.VIOLATION, self.participant_id, value=step.violation)
        if step.needs_sync:
            self._write(step)
            if self.sync_before_reply:
                self.sync()
        # Actions on the outside world start once the intent is durable.
        for action in step.actions:
            match action:
                case RunStep():
                    self._run_step(action)
                case RunCompensation():
                    self._run_compensation(action)
        if step.reply is not None and reply_to is not None:
            self.world.send(self.participant_id, reply_to, step.reply)

    def sync(self) -> None:
        if self.dirty:
            self.disk = self.memory.copy()
            self.dirty = False

    def _write(self, step: Step) -> None:
        image, record = self.memory, self.world.history.record
        pid = self.participant_id
        for item in step.persist:
            match item:
                case RoundRecord():
                    before = image.records.get(item.round_id)
                    image.records[item.round_id] = item
                    self._record_transition(before, item)
                case TermRecord():
                    image.term = item.term
                case ForgetRecord():
                    image.records.pop(item.round_id, None)
                case StepRecord():
                    before_step = image.steps.get(item.key)
                    image.steps[item.key] = item
                    self._step_transition(before_step, item)
                case ForgetStep():
                    image.steps.pop(item.key, None)
        for action in step.actions:
            match action:
                case HoldBranch():
                    image.held[action.txn_id] = self.staged.pop(action.txn_id)
                case ApplyBranch():
                    delta = image.held.pop(action.txn_id)
                    image.balance += delta
                    self.work_since_ms.pop(action.txn_id, None)
                    record(h.APPLIED_DELTA, pid, action.txn_id, str(delta))
                case DiscardBranch():
                    image.held.pop(action.txn_id, None)
                    self.staged.pop(action.txn_id, None)
                    self.work_since_ms.pop(action.txn_id, None)
                case TakeCheckpoint():
                    image.checkpoints[action.checkpoint_id] = image.balance
                case DropCheckpoint():
                    image.checkpoints.pop(action.checkpoint_id, None)
                case RestoreCheckpoint():
                    image.balance = image.checkpoints[action.checkpoint_id]
                    record(h.RESTORED, pid, "", action.checkpoint_id)
        self.dirty = True
        self.world.after_participant_write(self)

    def _record_transition(self, before: RoundRecord | None, after: RoundRecord) -> None:
        record, pid = self.world.history.record, self.participant_id
        voted_now = before is None or before.state is not LocalState.PREPARED
        if after.state is LocalState.PREPARED and voted_now:
            record(h.VOTED, pid, after.round_id, "yes", of=after.kind.value)
        elif after.state is not LocalState.PREPARED:
            if voted_now and not after.voted_yes:
                record(h.VOTED, pid, after.round_id, "no", of=after.kind.value)
            decision = "COMMIT" if after.state is LocalState.COMMITTED else "ABORT"
            record(h.P_DECIDED, pid, after.round_id, decision, of=after.kind.value)

    def _step_transition(self, before: StepRecord | None, after: StepRecord) -> None:
        if before is not None and before.state is after.state:
            return
        record, pid, step = self.world.history.record, self.participant_id, str(after.step)
        record(h.STEP, pid, after.saga_id, after.state.value, step=step)
        # A completed step is this participant's COMMIT of the saga, a compensated one
        # its ABORT: the atomicity checker judges them like a transaction's outcomes.
        if after.state is StepState.COMPLETED:
            record(h.P_DECIDED, pid, after.saga_id, "COMMIT", of="SAGA", step=step)
        elif after.state is StepState.COMPENSATED:
            record(h.P_DECIDED, pid, after.saga_id, "ABORT", of="SAGA", step=step)

    # ------------------------------------------------------------------ saga actions

    def idempotency_key(self, run: RunStep) -> str:
        """The key the action hands the outside world: the same for every rerun."""
        return f"{self.participant_id}/{run.saga_id}#{run.step}"

    def _run_step(self, run: RunStep) -> None:
        """The action: its effect half way through, its result at the end."""
        plan, config, rng = StepPlan.decode(run.payload), self.world.config, self.world.loop.rng
        key, incarnation = step_key(run.saga_id, run.step), self.incarnation
        took_ms = plan.slow_ms or rng.randint(*config.step_action_ms)
        idempotency_key = self.idempotency_key(run)
        self.runs += 1

        def effect() -> None:
            if self.incarnation != incarnation:
                return
            crash = self._crash_mid_action()
            if crash == "before":
                self._crash_now("before the step's effect")
                return
            self.world.outside.call(
                self.participant_id, run.saga_id, run.step, idempotency_key, fails=plan.fails
            )
            if crash == "after":
                self._crash_now("after the step's effect")
                return
            self.world.loop.after(took_ms - took_ms // 2, returned)

        def returned() -> None:
            if self.incarnation != incarnation:
                return
            ok = not plan.fails
            step = self.core.step_finished(
                run.saga_id,
                run.step,
                ok=ok,
                result=f"{run.action}-{run.saga_id}-{run.step}".encode() if ok else b"",
                reason="" if ok else f"{run.action} refused by the service",
                now_ms=self.world.loop.now_ms,
            )
            self._perform(step, self.step_reply_to.get(key))

        self.world.loop.after(took_ms // 2, effect)

    def _run_compensation(self, run: RunCompensation) -> None:
        """The compensation, retried a few times in process; if the service keeps
        refusing it, the participant gives up and the step is escalated."""
        plan, config, rng = StepPlan.decode(run.payload), self.world.config, self.world.loop.rng
        key, incarnation = step_key(run.saga_id, run.step), self.incarnation
        outside, pid = self.world.outside, self.participant_id

        def finished(ok: bool, reason: str) -> None:
            if self.incarnation != incarnation:
                return
            step = self.core.compensation_finished(
                run.saga_id, run.step, ok=ok, reason=reason, now_ms=self.world.loop.now_ms
            )
            self._perform(step, self.step_reply_to.get(key))

        def attempt(number: int) -> None:
            if self.incarnation != incarnation:
                return
            if outside.compensation_fails(pid, run.saga_id, run.step, plan):
                if number >= config.compensation_attempts_max:
                    finished(False, f"the service refused the compensation {number} times")
                else:
                    self.world.loop.after(
                        rng.randint(*config.step_action_ms), lambda: attempt(number + 1)
                    )
                return
            crash = self._crash_mid_action()
            if crash == "before":
                self._crash_now("before the compensation's effect")
                return
            outside.undo(pid, run.saga_id, run.step, outcome_known=run.outcome_known, by=pid)
            if crash == "after":
                self._crash_now("after the compensation's effect")
                return
            self.world.loop.after(rng.randint(*config.step_action_ms), lambda: finished(True, ""))

        self.runs += 1
        self.world.loop.after(rng.randint(*config.step_action_ms), lambda: attempt(1))

    def _crash_mid_action(self) -> str:
        """Whether this action will take the participant down, and when."""
        world = self.world
        if not world.config.faults or world.loop.now_ms >= world.config.workload_ms:
            return ""
        roll = world.loop.rng.random()
        if roll < world.config.action_crash_p / 2:
            return "before"
        if roll < world.config.action_crash_p:
            return "after"
        return ""

    def _crash_now(self, why: str) -> None:
        self.world.history.record(h.FAULT, self.participant_id, value=f"crash mid-action: {why}")
        self.world.nemesis.crash_for_a_while(self)

    # ------------------------------------------------------------------ ticks

    def tick(self) -> None:
        if not self.alive:
            return
        now = self.world.loop.now_ms
        if not self.sync_before_reply:
            self.sync()
        self._perform(self.core.expire(now), None)
        self._give_up_stale_work(now)

    def _give_up_stale_work(self, now: int) -> None:
        """The agent stops waiting for transactions it worked on long ago. The core
        lets it abort only what has not voted YES (rule 3)."""
        patience = self.world.config.work_patience_ms
        for txn_id, since in list(self.work_since_ms.items()):
            if now - since < patience:
                continue
            try:
                step = self.core.abort_alone(txn_id, now, "gave up waiting")
            except MustAsk:
                continue  # voted YES: in doubt, it asks the cluster (ask_in_doubt)
            self.work_since_ms.pop(txn_id, None)
            self._perform(step, None)

    def ask_in_doubt(self) -> None:
        if not self.alive:
            return
        nodes = self.world.coordinator_ids
        for record in self.core.in_doubt():
            self._query_turn += 1
            node = nodes[self._query_turn % len(nodes)]
            self.world.send(
                self.participant_id, node, OutcomeQuery(record.round_id, self.participant_id)
            )
