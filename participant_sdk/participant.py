"""The runtime an agent embeds: the engine (core + durable store + branches +
capabilities, engine.py), its gRPC server (server.py) and its calls to the cluster
(cluster_link.py).

On ``start()``: open the store and rebuild the core from it (work that was ACTIVE
before a restart is gone and a later Prepare for it votes NO), start the optional
parts it composes (capabilities.py: sagas, agent rollback, effects; each recovers
what a crash cut short), serve ``ParticipantService`` (+ health, reflection),
register the endpoint with the cluster (retried with backoff in the background) — or,
with ``ParticipantOptions(connect="outbound")``, serve nothing, register as attached
and keep a stream open to the leader instead (attach.py) — and
ask the cluster about every round that voted YES and has no decision
(``QueryOutcome``, presumed abort), retrying with backoff until answered. A periodic
tick forgets old records (``expire``) and asks again about rounds still in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import grpc
from grpc_health.v1 import health

from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.core.types import Decision
from coordinator.protomap import ATTACHED_ENDPOINT
from coordinator.security.identity import Identity, Role
from coordinator.security.transport import Transport, TransportError
from participant_sdk.actions import PREPARE_CALL_ID, ActionRunner, TxnActions
from participant_sdk.attach import Attacher
from participant_sdk.branch import Branch, StateView, Validate
from participant_sdk.capabilities import AgentRestorer, Capability, Effects, Host, Sagas
from participant_sdk.cluster_link import ClusterLink
from participant_sdk.core import RoundRecord
from participant_sdk.effects import EffectLog
from participant_sdk.engine import Engine
from participant_sdk.errors import ParticipantStopped
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
)

__all__ = ["Branch", "Participant", "StateView", "Validate"]

log = logging.getLogger(__name__)


class Participant:
    """One agent's side of Concord. ``data_dir`` None keeps everything in memory
    (tests, demos: not durable). ``coordinators``: the cluster's gRPC addresses.

    ``validate``: an extra vote on each transaction branch (branch.py). ``actions``:
    the transaction actions it offers, which initiators call through the cluster
    (actions.py). The optional parts are given as the objects the agent builds, and
    ``start()`` wires and recovers each: ``saga_actions`` (the saga steps it offers),
    ``rollback`` (its own state in coordinated checkpoints and rollbacks), ``effects``
    (its effect log: an ABORT compensates the transaction's effects, escalations are
    reported to the cluster; by default the log of ``rollback``'s reverter, if it has
    one).
    ``on_decided(txn_id, decision)``: called once a transaction's decision is durable
    here (under the participant's lock: keep it short; errors are logged).

    ``tls``: this participant's certificate, whose identity must be
    ``participant_id`` (``Transport.from_dir(dir, Role.PARTICIPANT, participant_id)``);
    by default from the environment (``CONCORD_TLS_DIR`` or
    ``CONCORD_TLS_CA``/``CERT``/``KEY``); without one it runs in plaintext, which a
    cluster that uses TLS refuses. ``options``: where it serves (or that it only
    connects out: ``connect="outbound"``, which needs ``coordinators``), limits and
    timings.

    ``async with Participant(...) as p:`` starts and stops it."""

    def __init__(
        self,
        participant_id: str,
        data_dir: str | os.PathLike[str] | None,
        coordinators: Sequence[str] = (),
        *,
        validate: Validate | None = None,
        actions: TxnActions | None = None,
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
        self.options = options = options or ParticipantOptions()
        self.limits = options.limits
        self.limits.check_id("participant id", participant_id)
        if options.connect == "outbound" and not self.coordinators:
            raise ValueError(
                "connect='outbound' needs the coordinators' addresses: the participant "
                "attaches to their leader"
            )
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
        self._engine = Engine(
            participant_id,
            options,
            self.capabilities,
            validate=validate,
            on_decided=on_decided,
            on_failure=self._stop_soon,
        )
        self._actions = ActionRunner(actions, self)
        self._engine.prepare_action = lambda prepare: self._actions.run(
            prepare.round_id, PREPARE_CALL_ID, prepare.action, prepare.payload, 0
        )
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._link: ClusterLink | None = None
        self._attacher: Attacher | None = None
        self._started = False
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
        if self._started:
            raise RuntimeError(f"participant {self.participant_id} is already started")
        self._loop = asyncio.get_running_loop()
        options = self.options
        store = (
            MemoryStore(self.participant_id, self.limits)
            if self.data_dir is None
            else LmdbStore(self.data_dir, self.participant_id, self.limits)
        )
        engine = self._engine
        try:
            term = engine.open(store)
            host = Host(
                self.participant_id, lambda: engine.store, engine.decision_of, engine.finish
            )
            for capability in self.capabilities:
                await asyncio.to_thread(capability.start, host)
            if options.connect == "inbound":
                self._server, self.port, self._health = await create_server(
                    self, options.listen, self.transport
                )
        except BaseException:
            for capability in self.capabilities:
                capability.stop()
            engine.release()
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
            if options.connect == "outbound":
                self._attacher = self._link.attacher(self)
                self._tasks.append(asyncio.create_task(self._attacher.run_forever()))
        self._tasks.append(asyncio.create_task(self._tick_forever()))
        self._started = True
        log.info(
            "participant %s %s (%d in doubt, term %d)",
            self.participant_id,
            f"serving on port {self.port}"
            if self._server is not None
            else "attaching to the leader (no port)",
            engine.in_doubt_count(),
            term,
        )

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving, abort the branches that never voted, close the store."""
        if not self._started:
            return
        self._started = False
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
        if server is not None:
            await server.stop(grace_s)
        self._attacher = None
        if self._link is not None:
            await self._link.close()
            self._link = None
        await asyncio.to_thread(self._close_store)

    def _close_store(self) -> None:
        store = self._engine.close()
        if store is not None:
            store.close()

    def _stop_soon(self, error: BaseException) -> None:
        """A durable write failed (engine.py): stop, from whatever thread saw it."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self.stop(grace_s=1.0)))

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

    def wait_attached_in_thread(self, timeout_s: float = 10.0) -> None:
        """``wait_attached`` for a participant started with ``start_in_thread``."""
        loop = self._loop
        if self._thread is None or loop is None:
            raise RuntimeError(f"participant {self.participant_id} was not started in a thread")
        future = asyncio.run_coroutine_threadsafe(self.wait_attached(timeout_s), loop)
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
        async with asyncio.timeout(timeout_s):
            await self._registered.wait()

    @property
    def registered(self) -> bool:
        return self._registered is not None and self._registered.is_set()

    async def wait_attached(self, timeout_s: float = 10.0) -> None:
        """Outbound only: until a leader holds this participant's stream."""
        if self._attacher is None:
            raise ParticipantStopped(
                f"participant {self.participant_id} is not started with connect='outbound'"
            )
        async with asyncio.timeout(timeout_s):
            await self._attacher.attached.wait()

    @property
    def attached(self) -> bool:
        """Outbound only: a leader holds this participant's stream now."""
        return self._attacher is not None and self._attacher.attached.is_set()

    @property
    def running(self) -> bool:
        return self._engine.running

    # ================================================================ agent API

    def begin(self, txn_id: str) -> Branch:
        """Start this participant's branch of ``txn_id`` (or return it, if this process
        began it already). Raises ``BranchClosed`` once the branch has voted or was
        aborted here. To go on with a branch an earlier step began, use ``branch``."""
        return self._engine.begin(txn_id)

    def branch(self, txn_id: str) -> Branch:
        """The branch of ``txn_id`` begun earlier in this process, to go on with it.
        ``BranchClosed`` if it is not open here: voted, aborted, or lost with a restart.
        Work that continues an earlier step (another request, a resumed agent) must use
        this, not ``begin``: after a restart ``begin`` would start an empty branch, and
        what the earlier step read and wrote would silently not be part of it."""
        return self._engine.branch(txn_id)

    def abort_alone(self, txn_id: str, reason: str = "aborted by the agent") -> None:
        """Give up a branch that has not voted YES. Raises ``MustAsk`` if it has."""
        self._engine.abort_alone(txn_id, reason)

    @property
    def state(self) -> StateView:
        store = self.store
        return StateView(store.get, store.items)

    @property
    def store(self) -> ParticipantStore:
        store = self._engine.store
        if store is None:
            raise ParticipantStopped(f"participant {self.participant_id} is not running")
        return store

    def wait_applied(self, txn_id: str, timeout_s: float = 30.0) -> Decision | None:
        """Block until this participant has durably applied the decision of ``txn_id``
        here: its writes are in ``state`` (COMMIT) or discarded (ABORT). None when the
        transaction is not known here (never part of it, or forgotten after
        ``record_retention_ms``). ``TimeoutError`` after ``timeout_s``."""
        return self._engine.wait_applied(txn_id, timeout_s)

    async def applied(self, txn_id: str, timeout_s: float = 30.0) -> Decision | None:
        """``wait_applied`` for asyncio code."""
        return await asyncio.to_thread(self.wait_applied, txn_id, timeout_s)

    def in_doubt(self) -> list[str]:
        """Rounds that voted YES here and have no decision yet."""
        return self._engine.in_doubt()

    def record(self, round_id: str) -> RoundRecord | None:
        return self._engine.record(round_id)

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
        core = self._engine.core
        return 0 if core is None else core.term_seen

    @property
    def violations(self) -> int:
        """Coordinator messages that contradicted what is durable here (refused)."""
        return self._engine.violations

    # ================================================================ serving

    def handle_messages(self, items: Sequence[ToParticipant]) -> list[FromParticipant]:
        """Run a coordinator batch; every resulting Step is durable (one synced write)
        when this returns. Blocking: the server calls it from a worker thread."""
        return self._engine.handle_messages(items)

    def run_action(
        self, txn_id: str, call_id: str, action: str, payload: bytes, calls_before: int
    ) -> tuple[bytes, str]:
        """A transaction action relayed by the leader (server.py): (JSON result, "")
        or (b"", why it failed). Blocking: runs the handler."""
        return self._actions.run(txn_id, call_id, action, payload, calls_before)

    def audit_denial(self, caller: Identity | None, method: str, why: str) -> None:
        """A call refused by the authorization table (server.py): audited here."""
        store = self._engine.store
        if store is not None:
            try:
                store.audit_event("note", f"denied {method}: {why}"[:1000])
            except Exception:
                log.exception("participant %s: denial not audited", self.participant_id)

    def _endpoint(self) -> str:
        if self.options.connect == "outbound":
            return ATTACHED_ENDPOINT
        if self.options.advertise:
            return self.options.advertise
        host = self.options.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def _tick_forever(self) -> None:
        engine, tick_s = self._engine, self.options.tick_interval_s
        next_expire = time.monotonic() + tick_s
        while True:
            now = time.monotonic()
            if now >= next_expire:
                await asyncio.to_thread(engine.expire)
                next_expire = now + tick_s
                link = self._link
                if link is not None and link.registered.is_set():
                    await link.report_escalations(await asyncio.to_thread(engine.escalations))
            if self._link is not None:
                for round_id in engine.in_doubt_due(time.monotonic()):
                    decision = await self._link.outcome(round_id)
                    if decision is None:
                        engine.ask_later(round_id)
                    else:
                        await asyncio.to_thread(engine.learn_outcome, round_id, decision)
            ask_at = engine.next_ask_at()
            due = next_expire if ask_at is None else min(ask_at, next_expire)
            delay = max(0.0, due - time.monotonic())
            await asyncio.sleep(min(delay, tick_s) or 0.001)
