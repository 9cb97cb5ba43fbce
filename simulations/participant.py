"""A simulated participant: the real ``ParticipantCore`` over a simulated disk.

The agent is a bank: a few accounts, keys under ``acct/`` holding ASCII decimal
balances, each with the ``Version`` of its last committed write. Clients do the
agent's work in a branch of the SDK's own ``Workspace`` (what ``Branch`` calls)
through ``Read`` (a read or a scan, recording the version seen, optionally leasing
the keys first as ``Branch.get_for_update`` does) and ``Stage`` (new absolute values,
or commutative ``Add``s). At Prepare the branch is
judged by the production isolation check (``participant_sdk.isolation.check``) against
the production ``LockTable``; a YES holds the branch's footprint durably and in the
lock table until the decision, which applies the writes (one new commit sequence
number per applied branch that writes). Checkpoints copy the accounts; a rollback
restores them, giving every changed key a new version.

The disk is the SDK's own store (``MemoryStore`` over a ``MemoryKv`` whose commits stay
unsynced until ``sync``), written by the SDK's ``StoreWriter``: a store or restore bug
reaches the checkers here. A crash throws away memory (staged branches, leases, the
lock table) and every write that was not synced (rule 1 is what makes that harmless:
every Step is written and synced before its reply is sent). A restart recovers the
core from the store's records and rebuilds the lock table from
``store.held_footprints()``, as ``Participant.start`` does.

It also runs saga steps against the outside world (``sagas.OutsideWorld``): the core's
``RunStep`` and ``RunCompensation`` start only once the Step that asks for them is
synced, take a few simulated milliseconds (or longer than the step timeout, when the
plan says slow), and report back through ``step_finished`` and
``compensation_finished``, whose Steps are synced before the reply too. An action may
crash the whole participant half way: before its effect, or after its effect and
before its result is durable. A crash also abandons every action still running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.core.messages import CompensateStep, Decide, ExecuteStep, Prepare
from coordinator.core.types import Kind
from participant_sdk.actions import PREPARE_CALL_ID, ActionRunner, TxnActions
from participant_sdk.branch import Branch, Workspace
from participant_sdk.core import (
    ApplyBranch,
    BranchClosed,
    DiscardBranch,
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
    TermRecord,
    step_key,
)
from participant_sdk.isolation import (
    BranchWork,
    Footprint,
    LockConflict,
    LockTable,
    Version,
    Write,
    check,
    parse_int,
)
from participant_sdk.store import MemoryStore, StoreLimitError, StoreLimits
from simulations import history as h
from simulations.cluster import OutcomeQuery, OutcomeReply
from simulations.sagas import StepPlan

if TYPE_CHECKING:
    from simulations.world import World

ACCOUNTS = "acct/"  # the prefix of every account key
TRANSFER_ACTION = "transfer"  # a one-shot transfer's action: {key: delta} at one participant
GENESIS = Version(1, "genesis")  # the version of the opening balances


def account_key(index: int) -> str:
    return f"{ACCOUNTS}{index}"


@dataclass(frozen=True, slots=True)
class Read:
    """A client does its part of ``txn_id`` here: read ``keys`` (and scan ``prefix``)
    in the branch, beginning it if needed. ``lease``: lease the keys first
    (``Branch.get_for_update``). ``sent_ms``: a request sent before this incarnation
    started died with its connection."""

    request_id: int
    txn_id: str
    keys: tuple[str, ...] = ()
    prefix: str | None = None
    lease: bool = False
    sent_ms: int = 0


@dataclass(frozen=True, slots=True)
class ReadReply:
    request_id: int
    ok: bool
    values: tuple[tuple[str, int], ...] = ()  # key -> balance, in key order
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Stage:
    """Stage these writes in the branch of ``txn_id`` (each replaces what was staged
    for its key, so a repeated Stage changes nothing). ``begin``: blind writes may
    begin the branch (``Participant.begin``); a read-modify-write must continue the
    branch that read, or fail (``Participant.branch``)."""

    request_id: int
    txn_id: str
    writes: tuple[tuple[str, Write], ...]
    begin: bool = False
    sent_ms: int = 0


@dataclass(frozen=True, slots=True)
class StageReply:
    request_id: int
    ok: bool
    reason: str = ""


# The audit log is the store's own business here: a short one keeps writes cheap.
SIM_STORE_LIMITS = StoreLimits(audit_events_max=64)
_BRANCH_ACTIONS = (HoldBranch, ApplyBranch, DiscardBranch)  # change what is held
_STATE_ACTIONS = (ApplyBranch, RestoreCheckpoint)  # change the committed state


class Image:
    """The participant's data as the simulator reads it: a view of its SDK store
    (``MemoryStore`` over a ``MemoryKv`` whose commits stay unsynced until ``sync``).

    ``records`` and ``steps`` follow what each write persisted and are read back from
    the store after a crash; ``held`` and the balances are read from the store (kept
    until the next write). Implements the ``isolation.Committed`` view the Prepare
    check reads."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.records: dict[str, RoundRecord] = {}
        self.steps: dict[str, StepRecord] = {}  # saga steps, by key
        self.term = 0
        # The rounds whose record is PREPARED: the world asks after every write of
        # every participant whether any is (a half-done transfer), so it is kept up to
        # date with ``records`` rather than searched for.
        self.prepared: set[str] = set()
        self._held: dict[str, Footprint] | None = None
        self._holds_any: bool | None = None
        self._balances: dict[str, int] | None = None
        self.reload()

    def reload(self) -> None:
        """Read everything back from the store (after a crash lost what was unsynced)."""
        records, self.term = self.store.load()
        self.records = {}
        self.prepared = set()
        for record in records:
            self.put_record(record)
        self.steps = {s.key: s for s in self.store.load_steps()}
        self.changed()

    def put_record(self, record: RoundRecord) -> None:
        self.records[record.round_id] = record
        if record.state is LocalState.PREPARED:
            self.prepared.add(record.round_id)
        else:
            self.prepared.discard(record.round_id)

    def forget_record(self, round_id: str) -> None:
        self.records.pop(round_id, None)
        self.prepared.discard(round_id)

    def changed(self, actions: Sequence[object] | None = None) -> None:
        """Forget what was read from the store: all of it, or what ``actions`` (of a
        Step just written) can have changed."""
        if actions is None or any(isinstance(a, _BRANCH_ACTIONS) for a in actions):
            self._held = None
            self._holds_any = None
        if actions is None or any(isinstance(a, _STATE_ACTIONS) for a in actions):
            self._balances = None

    @property
    def held(self) -> dict[str, Footprint]:
        if self._held is None:
            self._held = self.store.held_footprints()
        return self._held

    @property
    def holds_any(self) -> bool:
        """Whether ``held`` is not empty: whether the store's held tables (those
        ``held_footprints`` reads) have a row, without decoding the footprints."""
        if self._held is not None:
            return bool(self._held)
        if self._holds_any is None:
            with self.store.kv.read() as t:
                self._holds_any = any(True for _ in t.scan("held")) or any(
                    True for _ in t.scan("held_scans")
                )
        return self._holds_any

    @property
    def commit_seq(self) -> int:
        return self.store.commit_seq()

    @property
    def state(self) -> dict[str, bytes]:
        return dict(self.store.items())

    def has_checkpoint(self, checkpoint_id: str) -> bool:
        return any(c.checkpoint_id == checkpoint_id for c in self.store.checkpoints())

    # ------------------------------------------------------------ isolation.Committed

    def get(self, key: str) -> bytes | None:
        return self.store.get(key)

    def version(self, key: str) -> Version:
        return self.store.version(key)

    def newest_under(self, prefix: str, after_seq: int) -> tuple[str, Version] | None:
        return self.store.newest_under(prefix, after_seq)

    def balances(self) -> dict[str, int]:
        if self._balances is None:
            self._balances = {k: parse_int(v) for k, v in self.store.items(ACCOUNTS)}
        return self._balances


class SimParticipant:
    # Replying before the write is synced is the planted bug "losing unsynced writes".
    sync_before_reply = True
    # The production parts, which planted bugs replace.
    store_class: type[MemoryStore] = MemoryStore
    lock_table_class: type[LockTable] = LockTable

    def __init__(
        self,
        world: World,
        participant_id: str,
        balances: Mapping[str, int],
        core_factory: Callable[..., ParticipantCore],
    ) -> None:
        self.world = world
        self.participant_id = participant_id
        self.core_factory = core_factory
        self.store = self.store_class(
            participant_id,
            SIM_STORE_LIMITS,
            clock_ms=lambda: world.loop.now_ms,
            sync_on_commit=False,
        )
        # The opening balances: one branch of writes, applied as any other.
        opening = BranchWork(writes={k: str(v).encode() for k, v in sorted(balances.items())})
        with self.store.write() as writer:
            writer.apply(Step(actions=(HoldBranch(txn_id=GENESIS.txn_id),)), {"genesis": opening})
            writer.apply(Step(actions=(ApplyBranch(txn_id=GENESIS.txn_id),)), {})
        self.store.kv.sync()
        self.memory = Image(self.store)
        self.alive = True
        self.started_ms = 0  # when this incarnation started
        # The SDK's own branches (reads, scans, staged writes, leases) and lock table:
        # memory only; the lock table is rebuilt from the held footprints at a restart.
        self.workspace = Workspace(
            threading.Lock(),
            SIM_STORE_LIMITS,
            world.config.lease_ms,
            running_core=lambda: self.core,
            store=lambda: self.store,
            now_ms=lambda: world.loop.now_ms,
        )
        self.workspace.locks = self.lock_table_class()
        self.work_since_ms: dict[str, int] = {}
        self.core = core_factory(
            participant_id, record_retention_ms=world.config.participant_retention_ms
        )
        self._query_turn = 0
        # Saga steps: a crash ends this incarnation and every action it was running.
        self.incarnation = 0
        self.step_reply_to: dict[str, str] = {}  # step key -> node that last asked
        self.runs = 0  # actions started, ever (an attempt number for idempotency keys)
        self.actions = self._action_runner()

    def _action_runner(self) -> ActionRunner:
        actions = TxnActions()
        actions.add(TRANSFER_ACTION, self._transfer)
        return ActionRunner(actions, self)

    @property
    def work(self) -> dict[str, BranchWork]:
        """The open branches' work, by txn id (``Workspace.staged``)."""
        return self.workspace.staged

    @property
    def locks(self) -> LockTable:
        return self.workspace.locks

    @locks.setter
    def locks(self, table: LockTable) -> None:
        self.workspace.locks = table

    # ------------------------------------------------------------------ faults

    def crash(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.store.kv.lose_unsynced()
        self.memory.reload()
        self.work.clear()
        self.locks = self.lock_table_class()
        self.work_since_ms.clear()
        self.incarnation += 1
        self.step_reply_to.clear()
        self.world.history.record(h.FAULT, self.participant_id, value="crash")

    def restart(self) -> None:
        if self.alive:
            return
        self.alive = True
        records, term = self.store.load()
        self.core = self.core_factory.recover(  # type: ignore[attr-defined]
            self.participant_id,
            records,
            term,
            steps=self.store.load_steps(),
            record_retention_ms=self.world.config.participant_retention_ms,
        )
        # As Participant.start: the lock table from what voted YES (leases are gone).
        self.locks = self.lock_table_class()
        for txn_id, footprint in self.store.held_footprints().items():
            self.locks.hold(txn_id, footprint)
        now = self.world.loop.now_ms
        self.started_ms = now
        self.work_since_ms = {t: now for t in self.memory.held}
        self.actions = self._action_runner()  # what it remembered of calls died with it
        self.world.history.record(h.FAULT, self.participant_id, value="restart")
        self.ask_in_doubt()

    # ------------------------------------------------------------------ messages

    def on_message(self, src: str, payload: Any) -> None:
        if not self.alive:
            return
        now = self.world.loop.now_ms
        match payload:
            case Read():
                if payload.sent_ms >= self.started_ms:
                    self.world.send(self.participant_id, src, self._read(payload))
            case Stage():
                if payload.sent_ms >= self.started_ms:
                    self.world.send(self.participant_id, src, self._stage(payload))
            case Prepare():
                result = self._run_prepare_action(payload) if payload.action else ""
                if not self.alive:  # it crashed in the middle of the action
                    return
                vote = self._vote
                self._perform(self.core.on_prepare(payload, now, vote, result=result), src)
            case Decide():
                self._perform(self.core.on_decide(payload, now), src)
            case OutcomeReply():
                self._learn_outcome(payload, now)
            case ExecuteStep():
                self.step_reply_to[step_key(payload.round_id, payload.step)] = src
                self._perform(self.core.on_execute(payload, now), src)
            case CompensateStep():
                self.step_reply_to[step_key(payload.round_id, payload.step)] = src
                self._perform(self.core.on_compensate(payload, now), src)

    # ------------------------------------------------------------------ branches

    def _open(self, txn_id: str, begin: bool) -> BranchWork:
        """The branch of ``txn_id``: begun now if ``begin`` (``Participant.begin``),
        else only if still open here (``Participant.branch``). ``BranchClosed`` once it
        voted, aborted or was lost with a restart."""
        if begin:
            self.core.begin_branch(txn_id)
            if txn_id not in self.work:
                self.work[txn_id] = BranchWork(begin_seq=self.memory.commit_seq)
                self.work_since_ms.setdefault(txn_id, self.world.loop.now_ms)
        return self.workspace.open_work(txn_id)

    def _read(self, msg: Read) -> ReadReply:
        """The agent's reads, through the SDK's own branch (``Workspace``)."""
        workspace, txn_id = self.workspace, msg.txn_id
        try:
            self._open(txn_id, begin=True)
            if msg.lease:
                workspace.lease(txn_id, msg.keys)
            values = [(key, parse_int(workspace.read(txn_id, key))) for key in msg.keys]
            if msg.prefix is not None:
                scanned = workspace.scan(txn_id, msg.prefix)
                values += [(key, parse_int(value)) for key, value in scanned]
        except (BranchClosed, LockConflict, StoreLimitError) as error:
            return ReadReply(msg.request_id, ok=False, reason=str(error))
        return ReadReply(msg.request_id, ok=True, values=tuple(values))

    def _stage(self, msg: Stage) -> StageReply:
        try:
            work = self._open(msg.txn_id, begin=msg.begin)
            for key, write in msg.writes:
                work.writes.pop(key, None)  # a repeated Stage must not add twice
                self.workspace.stage(msg.txn_id, key, write)
        except (BranchClosed, ValueError) as error:
            return StageReply(msg.request_id, ok=False, reason=str(error))
        return StageReply(msg.request_id, ok=True)

    def _run_prepare_action(self, msg: Prepare) -> str:
        """A one-shot transaction's action, run before the vote by the SDK's own
        ``ActionRunner`` with this participant as its branch host, as the SDK's engine
        runs it; "" when nothing ran or it failed (it then aborted the branch here, so
        the vote is NO). It may crash the participant half way: the branch is lost with
        it, and the next Prepare runs the action again on a new one."""
        if not self.core.runs_prepare_action(msg):
            return ""
        result, error = self.actions.run(msg.round_id, PREPARE_CALL_ID, msg.action, msg.payload, 0)
        if self._crash_mid_action():
            self._crash_now("a one-shot action done, its vote not yet made")
        return "" if error else result.decode()

    def _transfer(self, branch: Branch, deltas: dict[str, int]) -> dict[str, int]:
        """The agent's ``transfer`` action: each key read through the branch and its new
        balance staged; a balance that would go below 0 fails it."""
        seen = {}
        for key, delta in sorted(deltas.items()):
            value = parse_int(branch.get(key))
            if value + delta < 0:
                raise ValueError(f"insufficient funds: {key} holds {value}")
            seen[key] = value
            branch.put(key, str(value + delta).encode())
        return seen

    # The SDK's ``BranchHost``, for the ActionRunner: the agent's calls on branches.

    def begin(self, txn_id: str) -> Branch:
        self._open(txn_id, begin=True)
        return Branch(self.workspace, txn_id)

    def branch(self, txn_id: str) -> Branch:
        self._open(txn_id, begin=False)
        return Branch(self.workspace, txn_id)

    def abort_alone(self, txn_id: str, reason: str = "aborted by the agent") -> None:
        self._perform(self.core.abort_alone(txn_id, self.world.loop.now_ms, reason), None)

    def _vote(self, msg: Prepare) -> tuple[bool, str]:
        if msg.kind is Kind.TXN:
            work = self.work.get(msg.round_id, BranchWork())
            conflict = self.isolation_check(msg.round_id, work, self.world.loop.now_ms)
            return not conflict, conflict
        if msg.kind is Kind.ROLLBACK and not self.memory.has_checkpoint(msg.checkpoint_id):
            return False, f"no checkpoint {msg.checkpoint_id!r} here"
        return True, ""

    def isolation_check(self, txn_id: str, work: BranchWork, now_ms: int) -> str:
        """The production check, against the committed state and the lock table."""
        return check(txn_id, work, self.memory, self.locks, now_ms)

    def hold_locks(self, txn_id: str, footprint: Footprint) -> None:
        """A YES: the footprint is held until the decision applies."""
        self.locks.hold(txn_id, footprint)

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
        self.store.kv.sync()

    def writeback(self) -> None:
        """The operating system writes dirty pages back by itself every few seconds."""
        if self.alive:
            self.store.kv.sync()

    @property
    def disk(self) -> Image:
        """What survives a crash; a crashed participant's memory is exactly that."""
        return self.memory

    def _write(self, step: Step) -> None:
        """The SDK's own write: ``StoreWriter.apply`` over the simulated disk, then what
        ``Participant`` does once a write is durable (locks) and the history."""
        image, record = self.memory, self.world.history.record
        pid = self.participant_id
        staged = {
            a.txn_id: self.work.pop(a.txn_id, BranchWork())
            for a in step.actions
            if isinstance(a, HoldBranch)
        }
        held = image.held if any(isinstance(a, ApplyBranch) for a in step.actions) else {}
        restoring = any(isinstance(a, RestoreCheckpoint) for a in step.actions)
        before_restore = image.state if restoring else {}
        with self.store.write() as writer:
            writer.apply(step, staged)
        image.changed(step.actions)
        for item in step.persist:
            match item:
                case RoundRecord():
                    before = image.records.get(item.round_id)
                    image.put_record(item)
                    self._record_transition(before, item)
                case TermRecord():
                    image.term = item.term
                case ForgetRecord():
                    image.forget_record(item.round_id)
                case StepRecord():
                    before_step = image.steps.get(item.key)
                    image.steps[item.key] = item
                    self._step_transition(before_step, item)
                case ForgetStep():
                    image.steps.pop(item.key, None)
        for action in step.actions:
            match action:
                case HoldBranch():
                    work = staged[action.txn_id]
                    self.hold_locks(action.txn_id, work.footprint())
                    record(h.HELD, pid, action.txn_id, **h.encode_branch(work))
                case ApplyBranch():
                    footprint = held.get(action.txn_id, Footprint())
                    # The sequence number the store gave the branch's writes.
                    installed = min(
                        (self.store.version(key).seq for key in footprint.writes), default=0
                    )
                    self.locks.release(action.txn_id)
                    self.work_since_ms.pop(action.txn_id, None)
                    writes = h.encode_writes(footprint)
                    record(h.APPLIED, pid, action.txn_id, str(installed or ""), **writes)
                case DiscardBranch():
                    self.work.pop(action.txn_id, None)
                    self.locks.release(action.txn_id)
                    self.work_since_ms.pop(action.txn_id, None)
                case RestoreCheckpoint():
                    after = image.state
                    changed = sorted(
                        key
                        for key in before_restore.keys() | after.keys()
                        if before_restore.get(key) != after.get(key)
                    )
                    keys, restored = h.encode_keys(changed), str(image.commit_seq)
                    record(h.RESTORED, pid, "", action.checkpoint_id, changed=keys, seq=restored)
        self.world.after_participant_write(self)

    def _record_transition(self, before: RoundRecord | None, after: RoundRecord) -> None:
        record, pid = self.world.history.record, self.participant_id
        voted_now = before is None or before.state is not LocalState.PREPARED
        if after.state is LocalState.PREPARED and voted_now:
            record(h.VOTED, pid, after.round_id, "yes", of=after.kind.value)
        elif after.state is not LocalState.PREPARED:
            if voted_now and not after.voted_yes:
                # What the refused branch had read and staged (it is discarded next).
                work = self.work.get(after.round_id)
                branch = h.encode_branch(work) if work is not None else {}
                of, why = after.kind.value, after.reason
                record(h.VOTED, pid, after.round_id, "no", of=of, why=why, **branch)
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

    def compensation_key(self, run: RunCompensation) -> str:
        """The key the compensation hands the outside world: the step's own key (as
        the SDK's ``StepContext.idempotency_key``), the same for every rerun."""
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
        idempotency_key = self.compensation_key(run)

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
            outside.undo(
                pid,
                run.saga_id,
                run.step,
                idempotency_key,
                outcome_known=run.outcome_known,
                by=pid,
            )
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

    def _learn_outcome(self, reply: OutcomeReply, now: int) -> None:
        """The cluster's answer to an outcome query, taken as the SDK takes it."""
        decide = self.core.outcome_decide(reply.round_id, reply.decision)
        if decide is not None:
            self._perform(self.core.on_decide(decide, now), None)

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
