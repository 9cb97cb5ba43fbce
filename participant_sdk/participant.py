"""The runtime an agent embeds: core + durable store + gRPC server + cluster client.

Theory of operation
-------------------
One lock (``Participant._lock``, a thread lock: agents may use plain threads) covers
the core, the staged writes and every store write. Whatever changes the core (a
coordinator batch, ``begin``, ``abort_alone``, an in-doubt answer, ``expire``) runs
under it and makes the resulting Steps durable before the lock is released; so no
reply, repeated or not, can report something that is not yet on disk (rule 1). A
coordinator batch is one write transaction: all its Steps are applied in order through
it (a vote later in the batch reads what a decision earlier in it did) and fsynced
once when it commits (group commit), and only then is the batch of replies sent.

If a write fails, the core's memory is already ahead of the disk: the participant
stops itself (``ParticipantStopped`` from then on) and is recovered from disk by a
restart, never by retrying the write.

On ``start()``: open the store, rebuild the core from it (``ParticipantCore.recover``:
work that was ACTIVE before a restart is gone and a later Prepare for it votes NO),
start the optional parts it composes (capabilities.py: sagas, agent rollback, effects;
each recovers what a crash cut short), serve ``ParticipantService`` (+ health,
reflection), register the endpoint with the cluster (cluster_link.py, retried with
backoff in the background), and ask the cluster about every round that voted YES and
has no decision (``QueryOutcome``, presumed abort), retrying with backoff until
answered. A periodic tick forgets old records (``expire``) and asks again about rounds
still in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import MappingProxyType, TracebackType

import grpc
from grpc_health.v1 import health

from coordinator.core.messages import (
    CompensateStep,
    Decide,
    ExecuteStep,
    FromParticipant,
    Prepare,
    Refused,
    ToParticipant,
)
from coordinator.core.types import Decision, Kind
from coordinator.security.identity import Identity, Role
from coordinator.security.transport import Transport, TransportError
from participant_sdk.branch import Branch, StateView, Validate, Workspace
from participant_sdk.capabilities import AgentRestorer, Capability, Effects, Host, Sagas
from participant_sdk.cluster_link import ClusterLink
from participant_sdk.core import (
    ApplyBranch,
    DiscardBranch,
    HoldBranch,
    LocalState,
    ParticipantCore,
    RoundRecord,
    Step,
)
from participant_sdk.effects import EffectLog
from participant_sdk.errors import ParticipantStopped
from participant_sdk.isolation import BranchWork, LockTable, check
from participant_sdk.options import ParticipantOptions
from participant_sdk.reversion import AgentRollback
from participant_sdk.saga import SagaActions
from participant_sdk.server import create_server, set_not_serving
from participant_sdk.store import (
    AuditEvent,
    CheckpointInfo,
    LmdbStore,
    MemoryStore,
    ParticipantStore,
    StoreLimitError,
    StoreWriter,
)

__all__ = ["Branch", "Participant", "StateView", "Validate"]

TOMBSTONES_PRUNED_PER_TICK_MAX = 10_000

log = logging.getLogger(__name__)


class Participant:
    """One agent's side of Concord. ``data_dir`` None keeps everything in memory
    (tests, demos: not durable). ``coordinators``: the cluster's gRPC addresses.

    ``validate``: an extra vote on each transaction branch (branch.py). The optional
    parts are given as the objects the agent builds, and ``start()`` wires and
    recovers each: ``saga_actions`` (the saga steps it offers), ``rollback`` (its own
    state in coordinated checkpoints and rollbacks), ``effects`` (its effect log: an
    ABORT compensates the transaction's effects, escalations are reported to the
    cluster; by default the log of ``rollback``'s reverter, if it has one).
    ``on_decided(txn_id, decision)``: called once a transaction's decision is durable
    here (under the participant's lock: keep it short; errors are logged).

    ``tls``: this participant's certificate, whose identity must be
    ``participant_id`` (``Transport.from_dir(dir, Role.PARTICIPANT, participant_id)``);
    by default from the environment (``CONCORD_TLS_DIR`` or
    ``CONCORD_TLS_CA``/``CERT``/``KEY``); without one it runs in plaintext, which a
    cluster that uses TLS refuses. ``options``: where it serves, limits and timings.

    ``async with Participant(...) as p:`` starts and stops it."""

    def __init__(
        self,
        participant_id: str,
        data_dir: str | os.PathLike[str] | None,
        coordinators: Sequence[str] = (),
        *,
        validate: Validate | None = None,
        saga_actions: SagaActions | None = None,
        rollback: AgentRollback | None = None,
        effects: EffectLog | None = None,
        on_decided: Callable[[str, Decision], None] | None = None,
        tls: Transport | None = None,
        options: ParticipantOptions | None = None,
    ) -> None:
        self.participant_id = participant_id
        self.data_dir = data_dir
        self.coordinators = tuple(coordinators)
        self.validate = validate
        self.on_decided = on_decided
        self.options = options = options or ParticipantOptions()
        self.limits = options.limits
        self.limits.check_id("participant id", participant_id)
        self.transport = Transport.resolve(
            tls, Role.PARTICIPANT, participant_id, f"participant {participant_id}"
        )
        identity = self.transport.identity
        if identity is not None and (
            identity.role is not Role.PARTICIPANT or identity.name != participant_id
        ):
            raise TransportError(
                f"participant {participant_id!r} was given the certificate of {identity}"
            )
        if effects is None and rollback is not None:
            effects = rollback.reverter.effects
        self.capabilities: list[Capability] = [Sagas(saga_actions), AgentRestorer(rollback)]
        if effects is not None:
            self.capabilities.append(Effects(effects))

        self._lock = threading.Lock()
        self._store: ParticipantStore | None = None
        self._core: ParticipantCore | None = None
        # Active branches' work (memory only), and what prepared branches and leases hold.
        self._work = Workspace(
            self._lock,
            self.limits,
            options.lock_lease_ms,
            self._running_core,
            lambda: self.store,
            self._now_ms,
        )
        self._commit_seq = 0  # the store's, as of the last write (read at start)
        self._decided = threading.Condition(self._lock)
        self._failed: BaseException | None = None
        # round id -> (monotonic time to ask next, current backoff)
        self._ask: dict[str, tuple[float, float]] = {}
        self.violations = 0
        self.port = 0

        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._link: ClusterLink | None = None
        self._registered: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None

    # ================================================================ lifecycle

    async def __aenter__(self) -> Participant:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"participant {self.participant_id} is already started")
        self._loop = asyncio.get_running_loop()
        options = self.options
        store = (
            MemoryStore(self.participant_id, self.limits)
            if self.data_dir is None
            else LmdbStore(self.data_dir, self.participant_id, self.limits)
        )
        records, term = store.load()
        core = ParticipantCore.recover(
            self.participant_id,
            records,
            term,
            steps=store.load_steps(),
            record_retention_ms=options.record_retention_ms,
        )
        locks = LockTable()
        for txn_id, footprint in store.held_footprints().items():
            locks.hold(txn_id, footprint)
        with self._lock:
            self._store, self._core, self._failed = store, core, None
            self._work.staged.clear()
            self._work.locks = locks
            self._commit_seq = store.commit_seq()
            now = time.monotonic()
            self._ask = {
                r.round_id: (now, options.query_backoff_initial_s) for r in core.in_doubt()
            }
        try:
            host = Host(self.participant_id, lambda: self._store, self._decision_of, self._finish)
            for capability in self.capabilities:
                await asyncio.to_thread(capability.start, host)
            self._server, self.port, self._health = await create_server(
                self, options.listen, self.transport
            )
        except BaseException:
            for capability in self.capabilities:
                capability.stop()
            with self._lock:
                self._store, self._core = None, None
            store.close()
            raise
        self._registered = asyncio.Event()
        if self.coordinators:
            self._link = ClusterLink(
                self.participant_id,
                self.coordinators,
                self.transport,
                call_timeout_s=options.call_timeout_s,
                backoff_initial_s=options.query_backoff_initial_s,
                backoff_max_s=options.query_backoff_max_s,
            )
            self._registered = self._link.registered
            self._tasks.append(asyncio.create_task(self._link.register_forever(self._endpoint())))
        self._tasks.append(asyncio.create_task(self._tick_forever()))
        log.info(
            "participant %s serving on port %d (%d in doubt, term %d)",
            self.participant_id,
            self.port,
            len(self._ask),
            term,
        )

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving, abort the branches that never voted, close the store."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._health is not None:
            await set_not_serving(self._health)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for capability in self.capabilities:
            capability.stop()
        await server.stop(grace_s)
        if self._link is not None:
            await self._link.close()
            self._link = None
        await asyncio.to_thread(self._close_store)

    def _close_store(self) -> None:
        with self._lock:
            core, store = self._core, self._store
            if core is not None and store is not None and self._failed is None:
                # Restart semantics, now rather than after the restart: work that never
                # voted is abandoned, and a late Prepare or Branch.put is refused.
                self._write_steps(
                    lambda: [
                        core.abort_alone(txn_id, self._now_ms(), "participant stopped")
                        for txn_id in sorted(core.active)
                    ]
                )
            self._store, self._core = None, None
            self._work.staged.clear()
        if store is not None:
            store.close()

    def start_in_thread(self, timeout_s: float = 30.0) -> None:
        """``start()`` on a private event loop in a dedicated thread (plain-thread agents)."""
        if self._thread is not None:
            raise RuntimeError(f"participant {self.participant_id} is already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"concord-participant-{self.participant_id}", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout_s)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            loop.close()
            raise
        self._thread = thread

    def wait_registered_in_thread(self, timeout_s: float = 10.0) -> None:
        """``wait_registered`` for a participant started with ``start_in_thread``, from
        any other thread."""
        loop = self._loop
        if self._thread is None or loop is None:
            raise RuntimeError(f"participant {self.participant_id} was not started in a thread")
        future = asyncio.run_coroutine_threadsafe(self.wait_registered(timeout_s), loop)
        future.result(timeout_s + 1.0)

    def stop_in_thread(self, timeout_s: float = 30.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            loop.close()
            self._thread = None

    async def wait_registered(self, timeout_s: float = 10.0) -> None:
        """Until the cluster has accepted this participant's endpoint."""
        if self._registered is None:
            raise ParticipantStopped(f"participant {self.participant_id} is not started")
        await asyncio.wait_for(self._registered.wait(), timeout_s)

    @property
    def registered(self) -> bool:
        return self._registered is not None and self._registered.is_set()

    @property
    def running(self) -> bool:
        return self._core is not None and self._failed is None

    # ================================================================ agent API

    def begin(self, txn_id: str) -> Branch:
        """Start this participant's branch of ``txn_id`` (or return it, if this process
        began it already). Raises ``BranchClosed`` once the branch has voted or was
        aborted here. To go on with a branch an earlier step began, use ``branch``."""
        with self._lock:
            core = self._running_core()
            self.limits.check_id("txn id", txn_id)
            core.begin_branch(txn_id)
            if txn_id not in self._work.staged:
                self._work.staged[txn_id] = BranchWork(
                    begin_seq=self._commit_seq, begun_ms=self._now_ms()
                )
        return Branch(self._work, txn_id)

    def branch(self, txn_id: str) -> Branch:
        """The branch of ``txn_id`` begun earlier in this process, to go on with it.
        ``BranchClosed`` if it is not open here: voted, aborted, or lost with a restart.
        Work that continues an earlier step (another request, a resumed agent) must use
        this, not ``begin``: after a restart ``begin`` would start an empty branch, and
        what the earlier step read and wrote would silently not be part of it."""
        with self._lock:
            self._work.open_work(txn_id)
        return Branch(self._work, txn_id)

    def abort_alone(self, txn_id: str, reason: str = "aborted by the agent") -> None:
        """Give up a branch that has not voted YES. Raises ``MustAsk`` if it has."""
        with self._lock:
            core = self._running_core()
            self._write_steps(lambda: [core.abort_alone(txn_id, self._now_ms(), reason)])

    @property
    def state(self) -> StateView:
        store = self.store
        return StateView(store.get, store.items)

    @property
    def store(self) -> ParticipantStore:
        if self._store is None:
            raise ParticipantStopped(f"participant {self.participant_id} is not running")
        return self._store

    def wait_applied(self, txn_id: str, timeout_s: float = 30.0) -> Decision | None:
        """Block until this participant has durably applied the decision of ``txn_id``
        here: its writes are in ``state`` (COMMIT) or discarded (ABORT). None when the
        transaction is not known here (never part of it, or forgotten after
        ``record_retention_ms``). ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                core = self._running_core()
                record = core.records.get(txn_id)
                if record is None and txn_id not in core.active:
                    return None
                if record is not None and record.state is not LocalState.PREPARED:
                    return _txn_decision(record)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"txn {txn_id!r} not decided here within {timeout_s} s")
                self._decided.wait(left)

    async def applied(self, txn_id: str, timeout_s: float = 30.0) -> Decision | None:
        """``wait_applied`` for asyncio code."""
        return await asyncio.to_thread(self.wait_applied, txn_id, timeout_s)

    def in_doubt(self) -> list[str]:
        """Rounds that voted YES here and have no decision yet."""
        with self._lock:
            return sorted(r.round_id for r in self._running_core().in_doubt())

    def record(self, round_id: str) -> RoundRecord | None:
        with self._lock:
            return self._running_core().records.get(round_id)

    def checkpoints(self) -> list[CheckpointInfo]:
        return self.store.checkpoints()

    def audit_event(self, kind: str, detail: str, round_id: str = "") -> AuditEvent:
        """Durably record an agent-level event in the participant's hash-chained audit
        log (``store.AUDIT_AGENT_EVENTS``: effect executed, compensation run, trigger
        fired, breaker tripped, ...)."""
        return self.store.audit_event(kind, detail, round_id)

    def attention(self) -> list[str]:
        """What needs an operator here: failed verifications after a rollback, and
        escalated compensations of the effect log."""
        return [item for capability in self.capabilities for item in capability.attention()]

    @property
    def term_seen(self) -> int:
        core = self._core
        return 0 if core is None else core.term_seen

    def audit_denial(self, caller: Identity | None, method: str, why: str) -> None:
        """A call refused by the authorization table (server.py): audited here."""
        store = self._store
        if store is not None:
            try:
                store.audit_event("note", f"denied {method}: {why}"[:1000])
            except Exception:
                log.exception("participant %s: denial not audited", self.participant_id)

    # ================================================================ protocol

    def handle_messages(self, items: Sequence[ToParticipant]) -> list[FromParticipant]:
        """Run a coordinator batch through the core; all its Steps are durable (one
        synced write) when this returns. Blocking: call it from a worker thread.

        Decisions run before votes: the wire batch does not keep the order between
        its prepares and decides, and a vote should see what a decision just did (a
        branch applied, an in-doubt round released)."""
        items = sorted(items, key=lambda m: isinstance(m, Prepare))
        with self._lock:
            core = self._running_core()

            def steps_for(writer: StoreWriter) -> list[Step]:
                steps = []
                for message in items:
                    step = self._on_message(core, message, writer)
                    self._apply(writer, step)
                    steps.append(step)
                return steps

            steps = self._write_steps_with(steps_for)
        return [step.reply for step in steps if step.reply is not None]

    def _on_message(
        self, core: ParticipantCore, message: ToParticipant, writer: StoreWriter
    ) -> Step:
        now_ms = self._now_ms()
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
            return core.on_prepare(message, now_ms, lambda m: self._vote(m, writer))
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
        work = self._work.staged.get(prepare.round_id, BranchWork())
        try:
            self.limits.check_writes(prepare.round_id, work.writes)
        except StoreLimitError as error:
            return False, str(error)
        # Serializable: what it read is unchanged, and nobody in doubt or leasing holds
        # what it touches (isolation.py). A YES holds its keys until the decision.
        conflict = check(prepare.round_id, work, writer, self._work.locks, self._now_ms())
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

    # ================================================================ durable writes

    def _write_steps(self, make_steps: Callable[[], list[Step]]) -> list[Step]:
        # Local misuse (MustAsk, BranchClosed) raises here, before the core changes.
        steps = make_steps()

        def steps_for(writer: StoreWriter) -> list[Step]:
            for step in steps:
                self._apply(writer, step)
            return steps

        return self._write_steps_with(steps_for)

    def _apply(self, writer: StoreWriter, step: Step) -> None:
        """Caller holds ``_lock``. Apply a Step to the write and to the lock table, at
        once: a vote later in the same batch sees the keys a decision just released."""
        writer.apply(step, self._work.staged)
        for action in step.actions:
            if isinstance(action, HoldBranch):
                work = self._work.staged.get(action.txn_id, BranchWork())
                self._work.locks.hold(action.txn_id, work.footprint())
            elif isinstance(action, ApplyBranch | DiscardBranch):
                self._work.locks.release(action.txn_id)

    def _write_steps_with(self, steps_for: Callable[[StoreWriter], list[Step]]) -> list[Step]:
        """Caller holds ``_lock``. One durable write; on failure the participant stops."""
        store = self.store
        try:
            with store.write() as writer:
                steps = steps_for(writer)
                commit_seq = writer.commit_seq()
        except Exception as error:
            # The core may have moved already; memory is ahead of disk (see Step).
            self._fail(error)
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
                    self._work.staged.pop(action.txn_id, None)
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
        decision = _txn_decision(record)
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

    def _finish(self, make: Callable[[ParticipantCore, int], Step]) -> None:
        """A saga action or compensation returned (worker thread): make it durable. The
        coordinator's next ExecuteStep/CompensateStep hears the answer."""
        try:
            with self._lock:
                core = self._running_core()
                self._write_steps(lambda: [make(core, self._now_ms())])
        except ParticipantStopped:
            log.info("participant %s stopped before a saga step was recorded", self.participant_id)

    def _decision_of(self, txn_id: str) -> Decision | None:
        with self._lock:
            record = self._core.records.get(txn_id) if self._core is not None else None
        return None if record is None else _txn_decision(record)

    def _fail(self, error: BaseException) -> None:
        self._failed = error
        log.critical(
            "participant %s: durable write failed (%s); memory is ahead of disk: stopping. "
            "Restart it to recover from disk.",
            self.participant_id,
            error,
        )
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self.stop(grace_s=1.0)))

    def _running_core(self) -> ParticipantCore:
        if self._failed is not None:
            raise ParticipantStopped(
                f"participant {self.participant_id} stopped after a failed write: {self._failed}"
            )
        if self._core is None:
            raise ParticipantStopped(f"participant {self.participant_id} is not running")
        return self._core

    def _now_ms(self) -> int:
        return int(self.options.clock() * 1000)

    # ================================================================ background

    def _endpoint(self) -> str:
        if self.options.advertise:
            return self.options.advertise
        host = self.options.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def _tick_forever(self) -> None:
        tick_s = self.options.tick_interval_s
        next_expire = time.monotonic() + tick_s
        while True:
            now = time.monotonic()
            if now >= next_expire:
                await asyncio.to_thread(self._expire)
                next_expire = now + tick_s
                if self._link is not None and self._link.registered.is_set():
                    await self._link.report_escalations(await asyncio.to_thread(self._escalated))
            if self._link is not None:
                await self._ask_in_doubt(self._link)
            with self._lock:
                due = min((at for at, _ in self._ask.values()), default=next_expire)
            delay = max(0.0, min(due, next_expire) - time.monotonic())
            await asyncio.sleep(min(delay, tick_s) or 0.001)

    def _escalated(self) -> tuple[tuple[str, str, str], ...]:
        return tuple(e for capability in self.capabilities for e in capability.escalations())

    def _expire(self) -> None:
        with self._lock:
            if self._core is None or self._failed is not None:
                return
            core, staged = self._core, self._work.staged
            # Tombstones older than every active branch can have been read by none.
            horizon = min(
                (work.begin_seq for work in staged.values()), default=self._commit_seq + 1
            )
            now_ms = self._now_ms()
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

    async def _ask_in_doubt(self, link: ClusterLink) -> None:
        now = time.monotonic()
        with self._lock:
            due = [rid for rid, (at, _) in self._ask.items() if at <= now]
        for round_id in due:
            decision = await link.outcome(round_id)
            if decision is not None:
                await asyncio.to_thread(self._learn_outcome, round_id, decision)
                continue
            with self._lock:
                if round_id in self._ask:
                    _, backoff = self._ask[round_id]
                    retry_at = time.monotonic() + backoff
                    backoff_max = self.options.query_backoff_max_s
                    self._ask[round_id] = (retry_at, min(backoff * 2, backoff_max))

    def _learn_outcome(self, round_id: str, decision: Decision) -> None:
        with self._lock:
            core = self._core
            if core is None or self._failed is not None:
                return
            record = core.records.get(round_id)
            if record is None or record.state is not LocalState.PREPARED:
                self._ask.pop(round_id, None)
                return
            log.info(
                "participant %s: in-doubt %s resolved: %s",
                self.participant_id,
                round_id,
                decision.value,
            )
            decide = Decide(
                round_id=round_id,
                kind=record.kind,
                participant_id=self.participant_id,
                decision=decision,
                checkpoint_id=record.checkpoint_id,
                term=core.term_seen,  # the answer is from the cluster now: never fenced
            )
            self._write_steps(lambda: [core.on_decide(decide, self._now_ms())])


def _txn_decision(record: RoundRecord) -> Decision | None:
    """A transaction's decision as recorded here; None for other rounds or undecided."""
    if record.kind is not Kind.TXN or record.state is LocalState.PREPARED:
        return None
    return Decision.COMMIT if record.state is LocalState.COMMITTED else Decision.ABORT
