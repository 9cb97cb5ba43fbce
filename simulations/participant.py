"""A simulated participant: the real ``ParticipantCore`` over a simulated disk.

The agent is a bank account: transfers stage a delta, a YES vote holds it durably,
COMMIT applies it; checkpoints snapshot the balance. The disk keeps what was synced;
a crash throws away memory and every write that was not synced (rule 1 is what makes
that harmless: every Step is written and synced before its reply is sent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coordinator.core.messages import Decide, Prepare
from coordinator.core.types import Kind
from participant_sdk.core import (
    ApplyBranch,
    BranchClosed,
    DiscardBranch,
    DropCheckpoint,
    ForgetRecord,
    HoldBranch,
    LocalState,
    MustAsk,
    ParticipantCore,
    RestoreCheckpoint,
    RoundRecord,
    Step,
    TakeCheckpoint,
    TermRecord,
)
from simulations import history as h
from simulations.cluster import OutcomeQuery

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

    def copy(self) -> Image:
        return Image(
            self.balance, dict(self.held), dict(self.checkpoints), dict(self.records), self.term
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

    # ------------------------------------------------------------------ faults

    def crash(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.memory = self.disk.copy()
        self.dirty = False
        self.staged.clear()
        self.work_since_ms.clear()
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
