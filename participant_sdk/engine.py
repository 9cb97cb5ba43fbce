"""Everything a participant does under its lock: the core, the store's writes, the
open branches and the capabilities' hooks; no network and no event loop.

One lock (a thread lock: agents may use plain threads) covers the core, the staged
writes and every store write. Whatever changes the core (a coordinator batch,
``begin``, ``abort_alone``, an in-doubt answer, ``expire``) runs under it and makes
the resulting Steps durable before the lock is released; so no reply, repeated or
not, can report something that is not yet on disk (rule 1). A coordinator batch is
one write transaction: all its Steps are applied in order through it (a vote later in
the batch reads what a decision earlier in it did) and fsynced once when it commits
(group commit), and only then is the batch of replies returned.

If a write fails, the core's memory is already ahead of the disk: the engine refuses
everything from then on (``ParticipantStopped``) and tells its owner, which stops;
it is recovered from disk by a restart, never by retrying the write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from coordinator.core.messages import (
    CompensateStep,
    ExecuteStep,
    FromParticipant,
    Prepare,
    Refused,
    ToParticipant,
)
from coordinator.core.types import Decision, Kind
from participant_sdk.branch import Branch, StateView, Validate, Workspace
from participant_sdk.capabilities import Capability, Escalation
from participant_sdk.core import (
    ApplyBranch,
    DiscardBranch,
    HoldBranch,
    LocalState,
    ParticipantCore,
    RoundRecord,
    Step,
)
from participant_sdk.errors import ParticipantStopped
from participant_sdk.isolation import BranchWork, LockTable, check
from participant_sdk.options import ParticipantOptions
from participant_sdk.store import ParticipantStore, StoreLimitError, StoreWriter

__all__ = ["Engine"]

TOMBSTONES_PRUNED_PER_TICK_MAX = 10_000

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        participant_id: str,
        options: ParticipantOptions,
        capabilities: Sequence[Capability],
        *,
        validate: Validate | None,
        on_decided: Callable[[str, Decision], None] | None,
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.participant_id = participant_id
        self.options = options
        self.limits = options.limits
        self.capabilities = tuple(capabilities)
        self.validate = validate
        # Runs a one-shot Prepare's action on its branch: (JSON result, "") or (b"",
        # why it failed). Set by the Participant (its ActionRunner); None: no actions.
        self.prepare_action: Callable[[Prepare], tuple[bytes, str]] | None = None
        self.on_decided = on_decided
        self._on_failure = on_failure
        self.lock = threading.Lock()
        self.store: ParticipantStore | None = None
        self.core: ParticipantCore | None = None
        self.work = Workspace(
            self.lock,
            self.limits,
            options.lock_lease_ms,
            self.running_core,
            self._open_store,
            self.now_ms,
        )
        self._commit_seq = 0  # the store's, as of the last write (read at open)
        self._decided = threading.Condition(self.lock)
        self._failed: BaseException | None = None
        # round id -> (monotonic time to ask next, current backoff)
        self._ask: dict[str, tuple[float, float]] = {}
        self.violations = 0

    # ------------------------------------------------------------ open and close

    def open(self, store: ParticipantStore) -> int:
        """Rebuild the core from ``store`` and take it over; the term seen."""
        records, term = store.load()
        core = ParticipantCore.recover(
            self.participant_id,
            records,
            term,
            steps=store.load_steps(),
            record_retention_ms=self.options.record_retention_ms,
        )
        locks = LockTable()
        for txn_id, footprint in store.held_footprints().items():
            locks.hold(txn_id, footprint)
        with self.lock:
            self.store, self.core, self._failed = store, core, None
            self.work.staged.clear()
            self.work.locks = locks
            self._commit_seq = store.commit_seq()
            now, backoff_s = time.monotonic(), self.options.query_backoff_initial_s
            self._ask = {r.round_id: (now, backoff_s) for r in core.in_doubt()}
        return term

    def close(self) -> ParticipantStore | None:
        """Abort the branches that never voted (restart semantics, now rather than
        after the restart: a late Prepare or Branch.put is refused); hand back the
        store, for its owner to close."""
        with self.lock:
            core, store = self.core, self.store
            if core is not None and store is not None and self._failed is None:
                self.write_steps(
                    lambda: [
                        core.abort_alone(txn_id, self.now_ms(), "participant stopped")
                        for txn_id in sorted(core.active)
                    ]
                )
            self.store, self.core = None, None
            self.work.staged.clear()
        return store

    def release(self) -> None:
        """Let go of the store without writing to it (a start that failed)."""
        with self.lock:
            self.store, self.core = None, None
            self.work.staged.clear()

    @property
    def running(self) -> bool:
        return self.core is not None and self._failed is None

    def running_core(self) -> ParticipantCore:
        if self._failed is not None:
            raise ParticipantStopped(
                f"participant {self.participant_id} stopped after a failed write: {self._failed}"
            )
        if self.core is None:
            raise ParticipantStopped(f"participant {self.participant_id} is not running")
        return self.core

    def _open_store(self) -> ParticipantStore:
        if self.store is None:
            raise ParticipantStopped(f"participant {self.participant_id} is not running")
        return self.store

    def now_ms(self) -> int:
        return int(self.options.clock() * 1000)

    # ------------------------------------------------------------ the agent's calls

    def begin(self, txn_id: str) -> Branch:
        with self.lock:
            core = self.running_core()
            self.limits.check_id("txn id", txn_id)
            core.begin_branch(txn_id)
            if txn_id not in self.work.staged:
                self.work.staged[txn_id] = BranchWork(
                    begin_seq=self._commit_seq, begun_ms=self.now_ms()
                )
        return Branch(self.work, txn_id)

    def branch(self, txn_id: str) -> Branch:
        with self.lock:
            self.work.open_work(txn_id)
        return Branch(self.work, txn_id)

    def abort_alone(self, txn_id: str, reason: str) -> None:
        with self.lock:
            core = self.running_core()
            self.write_steps(lambda: [core.abort_alone(txn_id, self.now_ms(), reason)])

    def wait_applied(self, txn_id: str, timeout_s: float) -> Decision | None:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                core = self.running_core()
                record = core.records.get(txn_id)
                if record is None and txn_id not in core.active:
                    return None
                if record is not None and record.state is not LocalState.PREPARED:
                    return txn_decision(record)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"txn {txn_id!r} not decided here within {timeout_s} s")
                self._decided.wait(left)

    def in_doubt(self) -> list[str]:
        with self.lock:
            return sorted(r.round_id for r in self.running_core().in_doubt())

    def record(self, round_id: str) -> RoundRecord | None:
        with self.lock:
            return self.running_core().records.get(round_id)

    def decision_of(self, txn_id: str) -> Decision | None:
        with self.lock:
            record = self.core.records.get(txn_id) if self.core is not None else None
        return None if record is None else txn_decision(record)

    def finish(self, make: Callable[[ParticipantCore, int], Step]) -> None:
        """A saga action or compensation returned (worker thread): make it durable. The
        coordinator's next ExecuteStep/CompensateStep hears the answer."""
        try:
            with self.lock:
                core = self.running_core()
                self.write_steps(lambda: [make(core, self.now_ms())])
        except ParticipantStopped:
            log.info("participant %s stopped before a saga step was recorded", self.participant_id)

    def escalations(self) -> tuple[Escalation, ...]:
        return tuple(e for capability in self.capabilities for e in capability.escalations())

    # ------------------------------------------------------------ the coordinator's

    def handle_messages(self, items: Sequence[ToParticipant]) -> list[FromParticipant]:
        """Run a coordinator batch through the core; all its Steps are durable (one
        synced write) when this returns. Blocking: call it from a worker thread.

        Decisions run before votes: the wire batch does not keep the order between
        its prepares and decides, and a vote should see what a decision just did (a
        branch applied, an in-doubt round released)."""
        items = sorted(items, key=lambda m: isinstance(m, Prepare))
        results = self._run_prepare_actions(items)  # first: handlers take the lock
        with self.lock:
            core = self.running_core()

            def steps_for(writer: StoreWriter) -> list[Step]:
                steps = []
                for message in items:
                    step = self._on_message(core, message, writer, results)
                    self._apply(writer, step)
                    steps.append(step)
                return steps

            steps = self._write_steps_with(steps_for)
        return [step.reply for step in steps if step.reply is not None]

    def _run_prepare_actions(self, items: Sequence[ToParticipant]) -> dict[str, str]:
        """One-shot transactions: run the action each new Prepare carries (on its
        branch, through ``prepare_action``) before the batch votes; round id -> the
        result of those that returned. A failed action has aborted its branch, so its
        Prepare votes NO with the error. A Prepare already answered, or from an older
        term than one seen, runs nothing: the core answers it from the record, or
        refuses it."""
        results: dict[str, str] = {}
        if self.prepare_action is None:
            return results
        for message in items:
            if not isinstance(message, Prepare) or message.participant_id != self.participant_id:
                continue
            with self.lock:
                runs = self.running_core().runs_prepare_action(message)
            if not runs:
                continue
            result, error = self.prepare_action(message)
            if not error:
                results[message.round_id] = result.decode()
        return results

    def _on_message(
        self,
        core: ParticipantCore,
        message: ToParticipant,
        writer: StoreWriter,
        results: Mapping[str, str],
    ) -> Step:
        now_ms = self.now_ms()
        if message.participant_id != self.participant_id:
            reason = f"addressed to {message.participant_id!r}, this is {self.participant_id!r}"
            refused = Refused(
                round_id=message.round_id,
                participant_id=self.participant_id,
                term_seen=core.term_seen,
                reason=reason,
            )
            return Step(reply=refused, violation=f"{message.round_id!r}: {reason}")
        if isinstance(message, Prepare):
            return core.on_prepare(
                message,
                now_ms,
                lambda m: self._vote(m, writer),
                result=results.get(message.round_id, ""),
            )
        if isinstance(message, ExecuteStep):
            return core.on_execute(message, now_ms)
        if isinstance(message, CompensateStep):
            return core.on_compensate(message, now_ms)
        return core.on_decide(message, now_ms)

    def _vote(self, prepare: Prepare, writer: StoreWriter) -> tuple[bool, str]:
        if prepare.kind is Kind.ROLLBACK:
            if not writer.has_checkpoint(prepare.checkpoint_id):
                return False, f"no checkpoint {prepare.checkpoint_id!r} here"
            return self._capabilities_vote(prepare)
        if prepare.kind is Kind.CHECKPOINT:
            try:
                self.limits.check_id("checkpoint id", prepare.checkpoint_id)
            except StoreLimitError as error:
                return False, str(error)
            if writer.has_checkpoint(prepare.checkpoint_id):
                return False, f"checkpoint {prepare.checkpoint_id!r} already exists here"
            if writer.checkpoint_count() >= self.limits.checkpoints_max:
                return False, f"checkpoints_max={self.limits.checkpoints_max} reached"
            return self._capabilities_vote(prepare)
        work = self.work.staged.get(prepare.round_id, BranchWork())
        try:
            self.limits.check_writes(prepare.round_id, work.writes)
        except StoreLimitError as error:
            return False, str(error)
        # Serializable: what it read is unchanged, and nobody in doubt or leasing holds
        # what it touches (isolation.py). A YES holds its keys until the decision.
        conflict = check(prepare.round_id, work, writer, self.work.locks, self.now_ms())
        if conflict:
            return False, conflict
        if self.validate is None:
            return True, ""
        view = StateView(writer.get, writer.items)
        writes = MappingProxyType(dict(work.writes))
        try:
            yes, reason = self.validate(prepare.round_id, writes, view)
        except Exception as error:
            log.exception("validate(%r) raised: voting NO", prepare.round_id)
            return False, f"validate raised {type(error).__name__}: {error}"
        return bool(yes), str(reason)

    def _capabilities_vote(self, prepare: Prepare) -> tuple[bool, str]:
        for capability in self.capabilities:
            verdict = capability.vote(prepare)
            if verdict is not None:
                return verdict
        return True, ""

    # ------------------------------------------------------------ upkeep

    def expire(self) -> None:
        """Forget old records, give up branches abandoned before their Prepare, prune
        tombstones no open branch can have read."""
        with self.lock:
            if self.core is None or self._failed is not None:
                return
            core, staged = self.core, self.work.staged
            horizon = min(
                (work.begin_seq for work in staged.values()), default=self._commit_seq + 1
            )
            now_ms = self.now_ms()
            # Work nobody asked to prepare for that long was abandoned (an initiator
            # that died before committing): give it up, with its locks.
            limit_ms = self.options.active_branch_ms_max
            abandoned = sorted(
                txn_id
                for txn_id, work in staged.items()
                if txn_id in core.active and now_ms - work.begun_ms > limit_ms
            )

            def steps_for(writer: StoreWriter) -> list[Step]:
                steps = [core.expire(now_ms)]
                for txn_id in abandoned:
                    log.warning(
                        "participant %s: gave up txn %s: no Prepare came",
                        self.participant_id,
                        txn_id,
                    )
                    reason = f"no Prepare within active_branch_ms_max={limit_ms}"
                    steps.append(core.abort_alone(txn_id, now_ms, reason))
                for step in steps:
                    self._apply(writer, step)
                writer.prune_tombstones(horizon, TOMBSTONES_PRUNED_PER_TICK_MAX)
                return steps

            self._write_steps_with(steps_for)

    def in_doubt_due(self, now: float) -> list[str]:
        """Rounds in doubt to ask the cluster about now."""
        with self.lock:
            return [rid for rid, (at, _) in self._ask.items() if at <= now]

    def next_ask_at(self) -> float | None:
        """When the next question about a round in doubt is due (monotonic time)."""
        with self.lock:
            return min((at for at, _ in self._ask.values()), default=None)

    def in_doubt_count(self) -> int:
        with self.lock:
            return len(self._ask)

    def ask_later(self, round_id: str) -> None:
        """No answer about ``round_id``: ask again after a longer backoff."""
        with self.lock:
            if round_id in self._ask:
                _, backoff_s = self._ask[round_id]
                retry_at = time.monotonic() + backoff_s
                self._ask[round_id] = (
                    retry_at,
                    min(backoff_s * 2, self.options.query_backoff_max_s),
                )

    def learn_outcome(self, round_id: str, decision: Decision) -> None:
        with self.lock:
            core = self.core
            if core is None or self._failed is not None:
                return
            decide = core.outcome_decide(round_id, decision)
            if decide is None:
                self._ask.pop(round_id, None)
                return
            log.info(
                "participant %s: in-doubt %s resolved: %s",
                self.participant_id,
                round_id,
                decision.value,
            )
            self.write_steps(lambda: [core.on_decide(decide, self.now_ms())])

    # ------------------------------------------------------------ durable writes

    def write_steps(self, make_steps: Callable[[], list[Step]]) -> list[Step]:
        """Caller holds ``lock``. Local misuse (MustAsk, BranchClosed) raises here,
        before the core changes."""
        steps = make_steps()

        def steps_for(writer: StoreWriter) -> list[Step]:
            for step in steps:
                self._apply(writer, step)
            return steps

        return self._write_steps_with(steps_for)

    def _apply(self, writer: StoreWriter, step: Step) -> None:
        """Caller holds ``lock``. Apply a Step to the write and to the lock table, at
        once: a vote later in the same batch sees the keys a decision just released."""
        writer.apply(step, self.work.staged)
        for action in step.actions:
            if isinstance(action, HoldBranch):
                work = self.work.staged.get(action.txn_id, BranchWork())
                self.work.locks.hold(action.txn_id, work.footprint())
            elif isinstance(action, ApplyBranch | DiscardBranch):
                self.work.locks.release(action.txn_id)

    def _write_steps_with(self, steps_for: Callable[[StoreWriter], list[Step]]) -> list[Step]:
        """Caller holds ``lock``. One durable write; on failure the participant stops."""
        store = self._open_store()
        try:
            with store.write() as writer:
                steps = steps_for(writer)
                commit_seq = writer.commit_seq()
        except Exception as error:
            # The core may have moved already; memory is ahead of disk (see Step).
            self._failed = error
            log.critical(
                "participant %s: durable write failed (%s); memory is ahead of disk: "
                "stopping. Restart it to recover from disk.",
                self.participant_id,
                error,
            )
            self._on_failure(error)
            raise ParticipantStopped(
                f"participant {self.participant_id} stopped: durable write failed: {error}"
            ) from error
        self._commit_seq = commit_seq
        self._after_durable(steps)
        return steps

    def _after_durable(self, steps: list[Step]) -> None:
        now = time.monotonic()
        for step in steps:
            for action in step.actions:
                if isinstance(action, HoldBranch | DiscardBranch):
                    self.work.staged.pop(action.txn_id, None)
                for capability in self.capabilities:
                    capability.after_durable(action)
            for item in step.persist:
                if isinstance(item, RoundRecord):
                    self._recorded(item, now)
            if step.violation:
                self.violations += 1
                log.error(
                    "participant %s: protocol violation by the coordinator: %s",
                    self.participant_id,
                    step.violation,
                )

    def _recorded(self, record: RoundRecord, now: float) -> None:
        if record.state is LocalState.PREPARED:
            self._ask.setdefault(
                record.round_id,
                (now + self.options.in_doubt_ask_after_s, self.options.query_backoff_initial_s),
            )
            return
        self._decided.notify_all()
        self._ask.pop(record.round_id, None)
        decision = txn_decision(record)
        if decision is None:
            return
        for capability in self.capabilities:
            try:
                capability.decided(record.round_id, decision)
            except Exception:
                log.exception("%s: decision of %r", type(capability).__name__, record.round_id)
        if self.on_decided is not None:
            try:
                self.on_decided(record.round_id, decision)
            except Exception:
                log.exception("on_decided(%r) raised", record.round_id)


def txn_decision(record: RoundRecord) -> Decision | None:
    """A transaction's decision as recorded here; None for other rounds or undecided."""
    if record.kind is not Kind.TXN or record.state is LocalState.PREPARED:
        return None
    return Decision.COMMIT if record.state is LocalState.COMMITTED else Decision.ABORT
