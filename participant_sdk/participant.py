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
serve ``ParticipantService`` (+ health, reflection), register the endpoint with the
cluster (``RegisterParticipant``, retried with backoff in the background), and ask the
cluster about every round that voted YES and has no decision (``QueryOutcome``,
presumed abort), retrying with backoff until answered. A periodic tick forgets old
records (``expire``) and asks again about rounds still in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import grpc

from concord.v1 import coordinator_pb2
from coordinator.core.limits import clean_text
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
from participant_sdk.channels import (
    QUERY_OUTCOME,
    REGISTER_PARTICIPANT,
    REPORT_ESCALATIONS,
    CoordinatorChannels,
    decision_from_wire,
)
from participant_sdk.checkpoints import CheckpointError
from participant_sdk.core import (
    ApplyBranch,
    DiscardBranch,
    DropCheckpoint,
    HoldBranch,
    LocalState,
    ParticipantCore,
    RestoreCheckpoint,
    RoundRecord,
    RunCompensation,
    RunStep,
    Step,
)
from participant_sdk.effects import EffectLog
from participant_sdk.errors import BranchClosed, ConcordError, ParticipantStopped
from participant_sdk.isolation import Add, BranchWork, LockTable, Version, Write, check
from participant_sdk.reversion import AgentRollback
from participant_sdk.saga import SagaActions, SagaRunner
from participant_sdk.server import create_server, set_not_serving
from participant_sdk.store import (
    AuditEvent,
    CheckpointInfo,
    LmdbStore,
    MemoryStore,
    ParticipantStore,
    StoreLimitError,
    StoreLimits,
    StoreWriter,
)

__all__ = ["Branch", "Participant", "StateView", "Validate"]

ESCALATIONS_REPORTED_MAX = 100  # the cluster's escalations_per_participant_max
ESCALATION_DETAIL_BYTES_MAX = 1024  # the cluster's reason_bytes_max
TOMBSTONES_PRUNED_PER_TICK_MAX = 10_000

log = logging.getLogger(__name__)


class StateView:
    """Read-only view of the agent's committed state."""

    def __init__(
        self,
        get: Callable[[str], bytes | None],
        items: Callable[[str], list[tuple[str, bytes]]],
    ) -> None:
        self._get = get
        self._items = items

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        value = self._get(key)
        return default if value is None else value

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        return self._items(prefix)

    def __contains__(self, key: str) -> bool:
        return self._get(key) is not None


# The agent's vote on a transaction branch: (yes, reason). Called under the
# participant's lock, after the isolation check passed: it may read ``state`` (the
# committed state) but must not call the Participant.
Validate = Callable[[str, Mapping[str, Write], StateView], tuple[bool, str]]


class Branch:
    """The agent's work in one transaction: serializable by default.

    Reads see this branch's own writes first, then committed state, and are recorded
    with the version they saw; writes are staged in memory. At Prepare the branch votes
    NO if anything it read changed since (or a scanned range gained, lost or changed a
    key), or if another branch in doubt holds a key it touches (docs/sdk.md,
    "Isolation")."""

    def __init__(self, participant: Participant, txn_id: str) -> None:
        self._participant = participant
        self.txn_id = txn_id

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """The value as this branch sees it; the read is checked at Prepare."""
        value = self._participant._read(self.txn_id, key)
        return default if value is None else value

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        """Every key under ``prefix`` as this branch sees it, in key order. The whole
        range is checked at Prepare: a key inserted, deleted or changed under it since
        (a phantom) makes the branch vote NO."""
        return self._participant._scan(self.txn_id, prefix)

    def put(self, key: str, value: bytes) -> None:
        self._participant._stage(self.txn_id, key, bytes(value))

    def delete(self, key: str) -> None:
        self._participant._stage(self.txn_id, key, None)

    def add(self, key: str, delta: int, *, min: int | None = None, max: int | None = None) -> None:
        """Add ``delta`` to the integer at ``key`` (ASCII decimal; absent is 0) when the
        transaction commits. Nothing is read: concurrent adds to one key do not conflict.
        The bounds are checked at Prepare against the committed value and every add in
        doubt that works against them; the branch votes NO if one could be broken."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an int, got {type(delta).__name__}")
        self._participant._stage(self.txn_id, key, Add(delta=delta, min=min, max=max))

    def lock(self, *keys: str) -> None:
        """Hold ``keys`` for this branch from now until it votes or aborts (bounded by
        the participant's ``lock_lease_ms``): another branch that touches one of them
        votes NO, so a long step between read and write does not lose at the end.
        No-wait: raises ``LockConflict`` at once if another branch holds one."""
        self._participant._lock_keys(self.txn_id, keys)

    def get_for_update(self, key: str, default: bytes | None = None) -> bytes | None:
        """``lock(key)``, then ``get(key)``."""
        self.lock(key)
        return self.get(key, default)

    @property
    def writes(self) -> dict[str, Write]:
        return self._participant._staged_copy(self.txn_id)

    @property
    def reads(self) -> dict[str, Version]:
        """The version of each key read (at its first read): what Prepare checks.
        For diagnostics and history checkers."""
        with self._participant._lock:
            work = self._participant._staged.get(self.txn_id)
            return {} if work is None else dict(work.reads)

    @property
    def scans(self) -> dict[str, int]:
        """Each prefix scanned, with the commit sequence number it was read at."""
        with self._participant._lock:
            work = self._participant._staged.get(self.txn_id)
            return {} if work is None else dict(work.scans)


class Participant:
    def __init__(
        self,
        participant_id: str,
        data_dir: str | os.PathLike[str] | None,
        coordinators: Sequence[str],
        *,
        listen: str = "127.0.0.1:0",
        advertise: str | None = None,
        validate: Validate | None = None,
        limits: StoreLimits | None = None,
        record_retention_ms: int = 300_000,
        tick_interval_s: float = 1.0,
        in_doubt_ask_after_s: float = 0.5,
        query_backoff_initial_s: float = 0.05,
        query_backoff_max_s: float = 2.0,
        call_timeout_s: float = 5.0,
        lock_lease_ms: int = 30_000,
        active_branch_ms_max: int = 3_600_000,
        clock: Callable[[], float] = time.time,
        on_decided: Callable[[str, Decision], None] | None = None,
        saga_actions: SagaActions | None = None,
        rollback: AgentRollback | None = None,
        effects: EffectLog | None = None,
        tls: Transport | None = None,
    ) -> None:
        """``data_dir`` None keeps everything in memory (tests, demos: not durable).
        ``advertise``: the endpoint registered with the cluster (default: the bound
        host:port, or 127.0.0.1:port when listening on all interfaces). ``tls``: this
        participant's certificate, whose identity must be ``participant_id``
        (``Transport.from_dir(dir, Role.PARTICIPANT, participant_id)``); by default
        from the environment (``CONCORD_TLS_DIR`` or ``CONCORD_TLS_CA``/``CERT``/``KEY``);
        without one it runs in plaintext, which a cluster that uses TLS refuses."""
        self.participant_id = participant_id
        self.data_dir = data_dir
        self.coordinators = tuple(coordinators)
        self.listen = listen
        self.advertise = advertise
        self.validate = validate
        self.limits = limits or StoreLimits()
        self.record_retention_ms = record_retention_ms
        self.tick_interval_s = tick_interval_s
        self.in_doubt_ask_after_s = in_doubt_ask_after_s
        self.query_backoff_initial_s = query_backoff_initial_s
        self.query_backoff_max_s = query_backoff_max_s
        self.call_timeout_s = call_timeout_s
        if lock_lease_ms <= 0:
            raise ValueError(f"lock_lease_ms must be positive, got {lock_lease_ms}")
        self.lock_lease_ms = lock_lease_ms
        # Branches begun here that never got a Prepare are given up after this long.
        self.active_branch_ms_max = active_branch_ms_max
        self._clock = clock
        # Called (under the participant's lock: keep it short) once a transaction's
        # COMMIT or ABORT is durable here; e.g. EffectLog.on_decision. Errors are logged.
        self.on_decided = on_decided
        # The saga actions this agent offers (participant_sdk/saga.py).
        self.saga_actions = saga_actions
        # The agent's own state in coordinated checkpoints and rollbacks (reversion.py).
        self.rollback = rollback
        # The agent's effect log, if any: its escalated compensations are reported to
        # the cluster (``concord txn show`` names them) and listed by ``attention()``.
        self.effects = effects
        self._escalations_reported: tuple[tuple[str, str, str], ...] = ()
        # Failed verifications after a rollback: operator attention (also audited).
        self._attention: list[str] = []
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
        self._saga: SagaRunner | None = None

        self._lock = threading.Lock()
        self._store: ParticipantStore | None = None
        self._core: ParticipantCore | None = None
        # Active branches' work (memory only), and what prepared branches and leases hold.
        self._staged: dict[str, BranchWork] = {}
        self._locks = LockTable()
        self._commit_seq = 0  # the store's, as of the last write (read at start)
        self._decided = threading.Condition(self._lock)
        self._failed: BaseException | None = None
        # round id -> (monotonic time to ask next, current backoff)
        self._ask: dict[str, tuple[float, float]] = {}
        self.violations = 0
        self.port = 0

        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._channels: CoordinatorChannels | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._registered: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # ================================================================ lifecycle

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"participant {self.participant_id} is already started")
        self._loop = asyncio.get_running_loop()
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
            record_retention_ms=self.record_retention_ms,
        )
        self._saga = SagaRunner(self.saga_actions, self.participant_id, self._finish_saga_work)
        for checkpoint_id in store.agent_restores_pending():
            self._restore_agent_later(checkpoint_id)  # a rollback a crash cut short
        locks = LockTable()
        for txn_id, footprint in store.held_footprints().items():
            locks.hold(txn_id, footprint)
        with self._lock:
            self._store, self._core, self._failed = store, core, None
            self._staged.clear()
            self._locks = locks
            self._commit_seq = store.commit_seq()
            now = time.monotonic()
            self._ask = {r.round_id: (now, self.query_backoff_initial_s) for r in core.in_doubt()}
        try:
            self._server, self.port, self._health = await create_server(
                self, self.listen, self.transport
            )
        except BaseException:
            with self._lock:
                self._store, self._core = None, None
            store.close()
            raise
        self._registered = asyncio.Event()
        self._wake = asyncio.Event()
        if self.coordinators:
            self._channels = CoordinatorChannels(
                self.coordinators,
                transport=self.transport,
                attempts_max=len(self.coordinators),
                call_timeout_s=self.call_timeout_s,
            )
            self._tasks.append(asyncio.create_task(self._register_forever()))
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
        if self._saga is not None:
            self._saga.stop()  # unfinished steps stay durable: they run again on restart
        await server.stop(grace_s)
        if self._channels is not None:
            await self._channels.close()
            self._channels = None
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
            self._staged.clear()
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
            if txn_id not in self._staged:
                self._staged[txn_id] = BranchWork(
                    begin_seq=self._commit_seq, begun_ms=self._now_ms()
                )
        return Branch(self, txn_id)

    def branch(self, txn_id: str) -> Branch:
        """The branch of ``txn_id`` begun earlier in this process, to go on with it.
        ``BranchClosed`` if it is not open here: voted, aborted, or lost with a restart.
        Work that continues an earlier step (another request, a resumed agent) must use
        this, not ``begin``: after a restart ``begin`` would start an empty branch, and
        what the earlier step read and wrote would silently not be part of it."""
        with self._lock:
            self._open_work(txn_id)
        return Branch(self, txn_id)

    def abort_alone(self, txn_id: str, reason: str = "aborted by the agent") -> None:
        """Give up a branch that has not voted YES. Raises ``MustAsk`` if it has."""
        with self._lock:
            core = self._running_core()
            self._write_steps(lambda: [core.abort_alone(txn_id, self._now_ms(), reason)])

    @property
    def state(self) -> StateView:
        store = self._store
        if store is None:
            raise ParticipantStopped(f"participant {self.participant_id} is not running")
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
                    if record.kind is not Kind.TXN:
                        return None
                    committed = record.state is LocalState.COMMITTED
                    return Decision.COMMIT if committed else Decision.ABORT
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

    @property
    def term_seen(self) -> int:
        core = self._core
        return 0 if core is None else core.term_seen

    def _open_work(self, txn_id: str) -> BranchWork:
        """Caller holds ``_lock``: the work of a branch still open here."""
        core = self._running_core()
        work = self._staged.get(txn_id)
        if txn_id not in core.active or work is None:
            raise BranchClosed(
                f"txn {txn_id!r} is not open here (voted, aborted or lost in a restart)"
            )
        return work

    def _stage(self, txn_id: str, key: str, value: Write) -> None:
        with self._lock:
            work = self._open_work(txn_id)
            self.limits.check_key(key)
            self.limits.check_value(key, value)
            if key not in work.writes and len(work.writes) >= self.limits.writes_per_branch_max:
                raise StoreLimitError(
                    f"txn {txn_id!r}: more than writes_per_branch_max="
                    f"{self.limits.writes_per_branch_max} writes"
                )
            work.stage(key, value)

    def _count_read(self, txn_id: str, work: BranchWork) -> None:
        if len(work.reads) + len(work.scans) >= self.limits.reads_per_branch_max:
            raise StoreLimitError(
                f"txn {txn_id!r}: more than reads_per_branch_max="
                f"{self.limits.reads_per_branch_max} keys read and prefixes scanned"
            )

    def _read(self, txn_id: str, key: str) -> bytes | None:
        with self._lock:
            work = self._open_work(txn_id)
            self.limits.check_key(key)
            staged = work.writes.get(key, b"")
            if key in work.writes and not isinstance(staged, Add):
                return staged  # its own write: nothing to check
            value, version = self.store.get_versioned(key)
            if key not in work.reads:  # the first read's version is the one checked
                self._count_read(txn_id, work)
                work.reads[key] = version
            if isinstance(staged, Add):
                return staged.applied_to(value)
            return value

    def _scan(self, txn_id: str, prefix: str) -> list[tuple[str, bytes]]:
        with self._lock:
            work = self._open_work(txn_id)
            committed, seq = self.store.scan_versioned(prefix)
            if prefix not in work.scans:
                self._count_read(txn_id, work)
                work.scans[prefix] = seq
            seen = dict(committed)
            for key, write in work.writes.items():
                if not key.startswith(prefix):
                    continue
                if write is None:
                    seen.pop(key, None)
                elif isinstance(write, Add):
                    seen[key] = write.applied_to(seen.get(key))
                else:
                    seen[key] = write
            return sorted(seen.items())

    def _lock_keys(self, txn_id: str, keys: Sequence[str]) -> None:
        with self._lock:
            self._open_work(txn_id)
            for key in keys:
                self.limits.check_key(key)
            now_ms = self._now_ms()
            self._locks.lease(txn_id, keys, now_ms, now_ms + self.lock_lease_ms)

    def _staged_copy(self, txn_id: str) -> dict[str, Write]:
        with self._lock:
            work = self._staged.get(txn_id)
            return {} if work is None else dict(work.writes)

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

    def _agent_checkpoint_saved(self, prepare: Prepare) -> bool:
        """Saved for this very round already (a crash came between the save and the
        YES vote's write, and the Prepare was sent again)."""
        assert self.rollback is not None
        try:
            info = self.rollback.reverter.checkpoints.info(prepare.checkpoint_id)
        except CheckpointError:
            return False
        return info.metadata.get("round_id") == prepare.round_id

    def audit_denial(self, caller: Identity | None, method: str, why: str) -> None:
        """A call refused by the authorization table (server.py): audited here."""
        store = self._store
        if store is not None:
            with contextlib.suppress(Exception):
                store.audit_event("note", f"denied {method}: {why}"[:1000])

    def attention(self) -> list[str]:
        """What needs an operator here: failed verifications after a rollback, and
        escalated compensations of the effect log (``effects=``)."""
        with self._lock:
            found = list(self._attention)
        found += [f"{txn}: effect {key} escalated: {why}" for txn, key, why in self._escalated()]
        return found

    def _escalated(self) -> tuple[tuple[str, str, str], ...]:
        if self.effects is None:
            return ()
        # The detail is the tool's error text: cleaned to what the cluster accepts (no
        # control characters, reason_bytes_max), or the report would be refused whole.
        return tuple(
            (e.txn_id, e.key, clean_text(e.error, ESCALATION_DETAIL_BYTES_MAX))
            for e in sorted(self.effects.escalations(), key=lambda e: e.seq)
        )[:ESCALATIONS_REPORTED_MAX]

    async def _report_escalations(self) -> None:
        """Tell the cluster the set of escalated effects when it changed (the whole
        set: idempotent; an empty set clears it once an operator resolved them)."""
        registered = self._registered
        if self._channels is None or registered is None or not registered.is_set():
            return
        current = await asyncio.to_thread(self._escalated)
        if current == self._escalations_reported:
            return
        request = coordinator_pb2.ReportEscalationsRequest(
            participant_id=self.participant_id,
            escalations=[
                coordinator_pb2.Escalation(round_id=txn, key=key, detail=why)
                for txn, key, why in current
            ],
        )
        try:
            await self._channels.call(REPORT_ESCALATIONS, request, write=False)
        except ConcordError as error:  # the next tick tries again
            log.info("participant %s: escalations not reported: %s", self.participant_id, error)
            return
        self._escalations_reported = current

    def _restore_agent_later(self, checkpoint_id: str) -> None:
        """After a durable EXECUTE (or at start, for one a crash cut short): restore
        the agent through AgentRollback off the caller's thread: compensations may be
        slow. The store's marker is cleared only once it is done."""
        thread = threading.Thread(
            target=self._restore_agent,
            args=(checkpoint_id,),
            name=f"restore-{self.participant_id}",
            daemon=True,
        )
        thread.start()

    def _restore_agent(self, checkpoint_id: str) -> None:
        store, binding = self._store, self.rollback
        if store is None:
            return
        if binding is None:
            store.agent_restore_done(checkpoint_id, "store state only (no AgentRollback)")
            return
        try:
            result = binding.reverter.restore(checkpoint_id)
            if binding.restored is not None:
                binding.restored(result)
        except Exception as error:  # kept pending: the next start tries again
            log.exception("agent restore of %r failed; retried at the next start", checkpoint_id)
            self._report_attention(checkpoint_id, f"agent restore failed: {error}")
            return
        detail = f"generation {result.restored_generation}"
        if result.cleanup_failures:
            detail += f"; cleanup failures: {list(result.cleanup_failures)}"
        if binding.verify is not None:
            try:
                ok, what = binding.verify(result)
            except Exception as error:
                ok, what = False, f"verify raised {type(error).__name__}: {error}"
            if not ok:
                self._report_attention(checkpoint_id, f"verification failed: {what}")
            detail += f"; verified: {ok} {what}".rstrip()
        store.agent_restore_done(checkpoint_id, detail)

    def _report_attention(self, checkpoint_id: str, what: str) -> None:
        log.error("participant %s: %s (checkpoint %r)", self.participant_id, what, checkpoint_id)
        with self._lock:
            self._attention.append(f"{checkpoint_id}: {what}")
        store = self._store
        if store is not None:
            with contextlib.suppress(Exception):
                store.audit_event("verification_failed", what[:1000], checkpoint_id)

    def _finish_saga_work(self, make: Callable[[ParticipantCore, int], Step]) -> None:
        """A saga action or compensation returned (worker thread): make it durable. The
        coordinator's next ExecuteStep/CompensateStep hears the answer."""
        try:
            with self._lock:
                core = self._running_core()
                self._write_steps(lambda: [make(core, self._now_ms())])
        except ParticipantStopped:
            log.info("participant %s stopped before a saga step was recorded", self.participant_id)

    def _vote(self, prepare: Prepare, writer: StoreWriter) -> tuple[bool, str]:
        if prepare.kind is Kind.ROLLBACK:
            if not writer.has_checkpoint(prepare.checkpoint_id):
                return False, f"no checkpoint {prepare.checkpoint_id!r} here"
            if self.rollback is not None:
                try:
                    self.rollback.reverter.checkpoints.info(prepare.checkpoint_id)
                except CheckpointError as error:
                    return False, f"agent checkpoint {prepare.checkpoint_id!r}: {error}"
            return True, ""
        if prepare.kind is Kind.CHECKPOINT:
            try:
                self.limits.check_id("checkpoint id", prepare.checkpoint_id)
            except StoreLimitError as error:
                return False, str(error)
            if writer.has_checkpoint(prepare.checkpoint_id):
                return False, f"checkpoint {prepare.checkpoint_id!r} already exists here"
            if writer.checkpoint_count() >= self.limits.checkpoints_max:
                return False, f"checkpoints_max={self.limits.checkpoints_max} reached"
            if self.rollback is not None and not self._agent_checkpoint_saved(prepare):
                # Durable before the YES is (the vote's write comes after this returns).
                try:
                    self.rollback.reverter.save(
                        self.rollback.capture(),
                        checkpoint_id=prepare.checkpoint_id,
                        label=prepare.label or prepare.checkpoint_id,
                        metadata={"round_id": prepare.round_id, "session_id": prepare.session_id},
                    )
                except Exception as error:
                    log.exception("agent checkpoint %r failed: voting NO", prepare.checkpoint_id)
                    return False, f"agent checkpoint failed: {type(error).__name__}: {error}"
            return True, ""
        work = self._staged.get(prepare.round_id, BranchWork())
        try:
            self.limits.check_writes(prepare.round_id, work.writes)
        except StoreLimitError as error:
            return False, str(error)
        # Serializable: what it read is unchanged, and nobody in doubt or leasing holds
        # what it touches (isolation.py). A YES holds its keys until the decision.
        conflict = check(prepare.round_id, work, writer, self._locks, self._now_ms())
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
        writer.apply(step, self._staged)
        for action in step.actions:
            if isinstance(action, HoldBranch):
                work = self._staged.get(action.txn_id, BranchWork())
                self._locks.hold(action.txn_id, work.footprint())
            elif isinstance(action, ApplyBranch | DiscardBranch):
                self._locks.release(action.txn_id)

    def _write_steps_with(self, steps_for: Callable[[StoreWriter], list[Step]]) -> list[Step]:
        """Caller holds ``_lock``. One durable write; on failure the participant stops."""
        store = self._store
        assert store is not None
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
                    self._staged.pop(action.txn_id, None)
                elif isinstance(action, RunStep | RunCompensation) and self._saga is not None:
                    self._saga.submit(action)
                elif isinstance(action, RestoreCheckpoint):
                    self._restore_agent_later(action.checkpoint_id)
                elif isinstance(action, DropCheckpoint) and self.rollback is not None:
                    with contextlib.suppress(CheckpointError):
                        self.rollback.reverter.checkpoints.drop(action.checkpoint_id)
            for item in step.persist:
                if isinstance(item, RoundRecord):
                    if item.state is not LocalState.PREPARED:
                        self._decided.notify_all()
                    if item.state is LocalState.PREPARED:
                        self._ask.setdefault(
                            item.round_id,
                            (now + self.in_doubt_ask_after_s, self.query_backoff_initial_s),
                        )
                    else:
                        self._ask.pop(item.round_id, None)
                        if self.on_decided is not None and item.kind is Kind.TXN:
                            decided = (
                                Decision.COMMIT
                                if item.state is LocalState.COMMITTED
                                else Decision.ABORT
                            )
                            try:
                                self.on_decided(item.round_id, decided)
                            except Exception:
                                log.exception("on_decided(%r) raised", item.round_id)
            if step.violation:
                self.violations += 1
                log.error(
                    "participant %s: protocol violation by the coordinator: %s",
                    self.participant_id,
                    step.violation,
                )

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
        return int(self._clock() * 1000)

    # ================================================================ background

    def _endpoint(self) -> str:
        if self.advertise:
            return self.advertise
        host = self.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def _register_forever(self) -> None:
        assert self._channels is not None and self._registered is not None
        request = coordinator_pb2.RegisterParticipantRequest(
            participant_id=self.participant_id, endpoint=self._endpoint()
        )
        backoff_s = self.query_backoff_initial_s
        while True:
            try:
                await self._channels.call(REGISTER_PARTICIPANT, request, write=False)
            except ConcordError as error:
                log.warning("participant %s: registration failed: %s", self.participant_id, error)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.query_backoff_max_s)
                continue
            log.info("participant %s registered as %s", self.participant_id, request.endpoint)
            self._registered.set()
            return

    async def _tick_forever(self) -> None:
        next_expire = time.monotonic() + self.tick_interval_s
        while True:
            now = time.monotonic()
            if now >= next_expire:
                await asyncio.to_thread(self._expire)
                next_expire = now + self.tick_interval_s
                await self._report_escalations()
            if self._channels is not None:
                await self._ask_in_doubt()
            with self._lock:
                due = min((at for at, _ in self._ask.values()), default=next_expire)
            delay = max(0.0, min(due, next_expire) - time.monotonic())
            await asyncio.sleep(min(delay, self.tick_interval_s) or 0.001)

    def _expire(self) -> None:
        with self._lock:
            if self._core is None or self._failed is not None:
                return
            core = self._core
            # Tombstones older than every active branch can have been read by none.
            horizon = min(
                (work.begin_seq for work in self._staged.values()),
                default=self._commit_seq + 1,
            )

            now_ms = self._now_ms()
            # Work nobody asked to prepare for that long was abandoned (an initiator
            # that died before committing): give it up, with its locks.
            abandoned = sorted(
                txn_id
                for txn_id, work in self._staged.items()
                if txn_id in core.active and now_ms - work.begun_ms > self.active_branch_ms_max
            )

            def steps_for(writer: StoreWriter) -> list[Step]:
                steps = [core.expire(now_ms)]
                for txn_id in abandoned:
                    log.warning(
                        "participant %s: gave up txn %s: no Prepare came",
                        self.participant_id,
                        txn_id,
                    )
                    reason = f"no Prepare within active_branch_ms_max={self.active_branch_ms_max}"
                    steps.append(core.abort_alone(txn_id, now_ms, reason))
                for step in steps:
                    self._apply(writer, step)
                writer.prune_tombstones(horizon, TOMBSTONES_PRUNED_PER_TICK_MAX)
                return steps

            self._write_steps_with(steps_for)

    async def _ask_in_doubt(self) -> None:
        assert self._channels is not None
        now = time.monotonic()
        with self._lock:
            due = [rid for rid, (at, _) in self._ask.items() if at <= now]
        for round_id in due:
            request = coordinator_pb2.QueryOutcomeRequest(
                round_id=round_id, participant_id=self.participant_id
            )
            decision = None
            try:
                reply = await self._channels.call(QUERY_OUTCOME, request, write=False)
                decision = decision_from_wire(reply.decision)
            except ConcordError as error:
                log.info("participant %s: in-doubt %s: %s", self.participant_id, round_id, error)
            if decision is None:
                with self._lock:
                    if round_id in self._ask:
                        _, backoff = self._ask[round_id]
                        retry_at = time.monotonic() + backoff
                        self._ask[round_id] = (retry_at, min(backoff * 2, self.query_backoff_max_s))
                continue
            await asyncio.to_thread(self._learn_outcome, round_id, decision)

    def _learn_outcome(self, round_id: str, decision: Any) -> None:
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
