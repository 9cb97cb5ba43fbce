"""One coordinator node at run time: the loop that executes the sans-I/O ``Leader``
(coordinator/core/leader.py) over pysyncobj and gRPC, and the hooks the servicers
need (ask the leader, wait for a decision, watch rounds).

Threads: pysyncobj applies entries on its own thread and calls ``_on_apply`` there;
everything else runs on one asyncio loop. ``_on_apply`` only hands events over to
the loop (``call_soon_threadsafe``); state is read through ``replicated.read`` under
the state lock, and the ``Leader`` is called under it, so it sees no entry
half-applied.

The loop keeps the ``Leader`` in step with pysyncobj (``start_term`` when this node
wins a term, ``stop`` when it loses it, ``on_caught_up`` once its election entry has
applied), feeds it client requests, participant replies and ticks, and executes what
it returns: messages to participants (one batch per participant per pass, over
``ParticipantLinks``), entries to propose, answers to the waiting callers. A tick
runs after every apply and every reply, and otherwise every ``driver_tick_ms`` so
retries and timeouts fire; it costs what is open, not what is retained
(``CoordinatorState.open_rounds`` is an index of the rounds not yet DONE).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from concord.v1 import coordinator_pb2, participant_pb2
from coordinator import tracing
from coordinator.core.entries import (
    BeginTxn,
    Entry,
    RequestCommit,
    RoundChanged,
    rounds_touched,
)
from coordinator.core.leader import Answer, Leader, Proposal, ProposeResult, ProposeStatus, Ready
from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.core.outbox import Outbox
from coordinator.core.state import Applied, CoordinatorState, Decided
from coordinator.replication.node import ReplicatedCoordinator
from coordinator.rpc.participant_links import ParticipantLinks
from coordinator.rpc.traces import RoundTraces
from coordinator.security.transport import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")

DRIVER_TICK_MS = 10  # retries and timeouts fire at least this often on the leader
WATCH_QUEUE_EVENTS_MAX = 1_000  # a watcher that falls this far behind is dropped
WATCHERS_MAX = 256
# A caller waits at most this long for the leader's answer: every proposal is answered
# by the replication layer within its proposal timeout, so this only bounds a bug.
ANSWER_WAIT_S_MAX = 30.0


class CoordinatorNode:
    def __init__(
        self,
        replicated_factory: Callable[
            [Callable[[int, Entry, Applied], None]], ReplicatedCoordinator
        ],
        transport: Transport | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._watchers: set[tuple[str, asyncio.Queue[RoundChanged | None]]] = set()
        self._decided: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        # Applied entries the loop has not yet heard of (the raft thread appends).
        self._applied: list[tuple[int, tuple[str, ...], tuple[Decided, ...]]] = []
        self._applied_lock = threading.Lock()
        self.replicated = replicated_factory(self._on_apply)
        self.transport = transport or Transport.insecure()
        limits = self.replicated.read(lambda s: s.limits)
        self.links = ParticipantLinks(self._on_reply, self.transport, limits)
        # Participants are reached through their registered endpoints only: rounds that
        # need one that never registered are aborted and acknowledged on its behalf
        # (coordinator/core/outbox.py).
        self.leader = Leader(
            outbox_factory=lambda limits: Outbox(limits, registry=True), registry=True
        )
        self._tickets = itertools.count(1)
        self._answers: dict[int, asyncio.Future[Answer]] = {}
        self._results: dict[int, dict[int, ProposeResult]] = {}
        self._reads_ready = asyncio.Event()
        # Leader-local trace state, only when tracing is on (coordinator/tracing.py).
        tracer = tracing.active()
        self.traces = RoundTraces(tracer) if tracer is not None else None
        self._driver = self._loop.create_task(self._drive(), name="driver")

    @property
    def node_id(self) -> str:
        return self.replicated.status().node_id

    @staticmethod
    def now_ms() -> int:
        """The leader's time for the entries it proposes (the core never reads a clock)."""
        return int(time.time() * 1000)

    def read(self, fn: Callable[[CoordinatorState], T]) -> T:
        return self.replicated.read(fn)

    # ------------------------------------------------------------------ asking the leader

    async def write(self, entry: Entry) -> Answer:
        """Propose a client's entry through the leader (admitted first)."""
        return await self._ask(lambda ticket, s: self.leader.write(ticket, entry, s))

    async def commit(self, commit: RequestCommit, begin: BeginTxn | None) -> Answer:
        """A client's commit request, with the begin it carries (if any)."""
        now_ms = self.now_ms()
        return await self._ask(
            lambda ticket, s: self.leader.commit(ticket, commit, begin, s, now_ms)
        )

    async def outcome_query(self, round_id: str, participant_id: str) -> Answer:
        now_ms = self.now_ms()
        return await self._ask(
            lambda ticket, s: self.leader.outcome_query(ticket, round_id, participant_id, s, now_ms)
        )

    async def call_action(
        self, endpoint: str, request: coordinator_pb2.CallRequest, timeout_s: float
    ) -> coordinator_pb2.CallReply:
        """Relay a transaction action to its participant (the servicer checked the
        transaction and the caller). Raises ``grpc.aio.AioRpcError`` when the
        participant does not answer."""
        action = participant_pb2.CallAction(
            txn_id=request.txn_id,
            participant_id=request.participant_id,
            call_id=request.call_id,
            action=request.action,
            payload=request.payload,
            term=self.leader.term or 0,
            calls_before=request.calls_before,
        )
        result = await self.links.call(request.participant_id, endpoint, action, timeout_s)
        return coordinator_pb2.CallReply(result=result.result, error=result.error)

    async def submit(self, entry: Entry, timeout_s: float) -> ProposeResult:
        """Propose an operator's entry as it is (no client admission)."""
        return await self.replicated.propose_async(entry, timeout_s=timeout_s)

    async def wait_reads_ready(self, timeout_s: float) -> bool:
        """Wait (bounded) until this node leads and has caught up with its term, so a
        read it answers reflects every decision applied before (coordinator/core/
        leader.py). False: not leading, or not caught up in time."""
        self._sync_leadership()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._reads_ready.wait()
        return self.leader.serves_reads and self.replicated.is_leader()

    def retry_now(self, round_id: str) -> int | None:
        """Leader only (None elsewhere): resend what ``round_id`` waits for at the next
        driver pass instead of after its backoff. Returns the resets made."""
        self._sync_leadership()
        reset = self.leader.retry_now(round_id)
        self._wake.set()
        return reset

    async def _ask(self, request: Callable[[int, CoordinatorState], None]) -> Answer:
        ticket = next(self._tickets)
        future: asyncio.Future[Answer] = self._loop.create_future()
        self._answers[ticket] = future
        try:
            self._sync_leadership()
            self._step(lambda s: request(ticket, s))
            async with asyncio.timeout(ANSWER_WAIT_S_MAX):
                return await future
        except TimeoutError:
            log.error("no answer from the leader for ticket %d: a bug", ticket)
            return Answer(ticket, results=(ProposeResult(ProposeStatus.UNKNOWN),))
        finally:
            self._answers.pop(ticket, None)

    # ------------------------------------------------------------------ waiting on state

    async def wait_decided(self, round_id: str, timeout_s: float) -> None:
        """Return once the round is decided on this node, or after ``timeout_s``."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._decided[round_id].append(future)
        try:
            if self.read(lambda s: _is_decided(s, round_id)):
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await future
        finally:
            waiting = self._decided.get(round_id)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._decided[round_id]

    async def watch(self, round_id: str) -> AsyncIterator[RoundChanged]:
        """Applied changes of one round (or of every round, for ``""``), as they apply."""
        if len(self._watchers) >= WATCHERS_MAX:
            raise OverflowError(f"{len(self._watchers)} watchers (WATCHERS_MAX={WATCHERS_MAX})")
        queue: asyncio.Queue[RoundChanged | None] = asyncio.Queue(WATCH_QUEUE_EVENTS_MAX)
        key = (round_id, queue)
        self._watchers.add(key)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    raise OverflowError(f"watcher fell {WATCH_QUEUE_EVENTS_MAX} events behind")
                yield event
        finally:
            self._watchers.discard(key)

    async def wait_until(
        self, round_id: str, done: Callable[[CoordinatorState], bool], timeout_s: float
    ) -> bool:
        """Wait until ``done(state)`` holds on this node, re-checked whenever an applied
        entry touches ``round_id``; False after ``timeout_s``."""
        queue: asyncio.Queue[RoundChanged | None] = asyncio.Queue(WATCH_QUEUE_EVENTS_MAX)
        key = (round_id, queue)
        self._watchers.add(key)  # before the first check: no change can slip between
        deadline = self._loop.time() + timeout_s
        try:
            while not self.read(done):
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        changed = await queue.get()
                    if changed is None:
                        self._watchers.add(key)  # fell behind: re-check and go on
            return True
        finally:
            self._watchers.discard(key)

    async def close(self) -> None:
        self._driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._driver
        await self.links.close()
        await asyncio.to_thread(self.replicated.close)

    # ------------------------------------------------------------------ apply hook (raft thread)

    def _on_apply(self, index: int, entry: Entry, applied: Applied) -> None:
        """Raft thread, per applied entry: queue what the loop must hear of it, and wake
        the loop once for all that applied meanwhile (a wake per entry cost a syscall
        and a driver pass each, thousands a second under load)."""
        change = (index, rounds_touched(entry), applied.decided)
        with self._applied_lock:
            self._applied.append(change)
            first = len(self._applied) == 1
        if first:
            self._loop.call_soon_threadsafe(self._after_apply)

    def _after_apply(self) -> None:
        with self._applied_lock:
            changes, self._applied = self._applied, []
        self._wake.set()
        for index, touched, decided in changes:
            for outcome in decided:
                for future in self._decided.pop(outcome.round_id, []):
                    if not future.done():
                        future.set_result(None)
            if self.traces is not None and decided:
                self.traces.on_decided(decided)
            for watched, queue in list(self._watchers):
                for round_id in touched:
                    if watched in ("", round_id):
                        try:
                            queue.put_nowait(RoundChanged(round_id, index))
                        except asyncio.QueueFull:
                            self._watchers.discard((watched, queue))
                            with contextlib.suppress(asyncio.QueueFull):
                                queue.get_nowait()
                                queue.put_nowait(None)

    # ------------------------------------------------------------------ executing the leader

    def _sync_leadership(self) -> None:
        """Tell the leader what pysyncobj says: leading in which term, caught up."""
        replicated, leader = self.replicated, self.leader
        if replicated.is_leader():
            term = replicated.term()
            if leader.term != term:
                # A new leadership: fresh streams; the new outbox resends what the
                # applied state lacks.
                self.links.reset()
                if self.traces is not None and leader.term is not None:
                    self.traces.reset("leadership changed")
                self._step(lambda s: leader.start_term(term, s))
            if not leader.caught_up and replicated.leader_ready():
                leader.on_caught_up()
        elif leader.term is not None:
            # Deposed: its streams to participants have nothing more to carry.
            self.links.reset()
            if self.traces is not None:
                self.traces.reset("leadership lost")
            leader.stop()
            self._execute(leader.take_ready(), {})
        if leader.serves_reads:
            self._reads_ready.set()
        else:
            self._reads_ready.clear()

    def _step(self, feed: Callable[[CoordinatorState], None]) -> None:
        """Feed the leader under the state lock, then execute what it returns."""

        def run(state: CoordinatorState) -> tuple[Ready, dict[str, str]]:
            feed(state)
            ready = self.leader.take_ready()
            return ready, dict(state.endpoints) if ready.sends else {}

        self._execute(*self.replicated.read(run))

    def _execute(self, ready: Ready, endpoints: dict[str, str]) -> None:
        term = self.leader.term
        if ready.sends and term is not None:
            by_participant: dict[str, list[ToParticipant]] = defaultdict(list)
            for message in ready.sends:
                by_participant[message.participant_id].append(message)
            for participant_id, messages in by_participant.items():
                endpoint = endpoints.get(participant_id)
                if endpoint is None:
                    continue  # a saga's step for a participant not registered (yet): retried
                parents = self.traces.on_send(messages) if self.traces is not None else None
                self.links.send(participant_id, endpoint, term, messages, parents)
        for proposal in ready.proposals:
            self._propose(proposal)
        for answer in ready.answers:
            future = self._answers.get(answer.ticket)
            if future is not None and not future.done():
                future.set_result(answer)

    def _propose(self, proposal: Proposal) -> None:
        """The proposal's entries in one LogBatch (one Raft round); the results of the
        answered ones go back to the leader together."""
        if not proposal.answered:
            self.replicated.propose_together([(entry, _ignore) for entry in proposal.entries])
            return
        self._results[proposal.ticket] = {}

        def deliver_to(position: int) -> Callable[[ProposeResult], None]:
            if position >= proposal.answered:
                return _ignore

            def deliver(result: ProposeResult) -> None:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    self._loop.call_soon_threadsafe(
                        self._on_result, proposal.ticket, proposal.answered, position, result
                    )

            return deliver

        self.replicated.propose_together(
            [(entry, deliver_to(position)) for position, entry in enumerate(proposal.entries)]
        )

    def _on_result(self, ticket: int, answered: int, position: int, result: ProposeResult) -> None:
        results = self._results.get(ticket)
        if results is None:
            return
        results[position] = result
        if len(results) < answered:
            return
        del self._results[ticket]
        ordered = tuple(results[i] for i in range(answered))
        self._step(lambda s: self.leader.on_proposed(ticket, ordered, s))

    def _on_reply(self, reply: FromParticipant) -> None:
        if self.traces is not None:
            self.traces.on_reply(reply)
        self.leader.on_reply(reply, self.now_ms())
        ready = self.leader.take_ready()
        if ready:
            self._execute(ready, {})
        self._wake.set()

    async def _drive(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRIVER_TICK_MS / 1000):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self._drive_once()
            except Exception:  # pragma: no cover - a bug: log loudly and keep the node up
                log.exception("driver pass failed")

    def _drive_once(self) -> None:
        self._sync_leadership()
        if self.leader.term is not None:
            now_ms = self.now_ms()
            self._step(lambda s: self.leader.tick(s, now_ms))


def _is_decided(state: CoordinatorState, round_id: str) -> bool:
    rnd = state.get(round_id)
    return rnd is not None and rnd.decision is not None


def _ignore(result: ProposeResult) -> None:
    pass
