"""One coordinator node at run time: replication, the leader's driver, and the hooks
the gRPC servicer needs (submit an entry, wait for a decision, watch rounds).

Threads: pysyncobj applies entries on its own thread and calls ``_on_apply`` there;
everything else runs on one asyncio loop. ``_on_apply`` only hands events over to
the loop (``call_soon_threadsafe``); state is read through ``replicated.read`` under
the state lock.

The driver (leader only) is a loop that polls the core's ``Outbox`` and
- sends what is due to participants, one batch per participant per pass;
- proposes what is due (batched votes and acks, timeouts);
- wakes early whenever an entry is applied or a reply arrives, and otherwise every
  ``driver_tick_ms`` so retries and timeouts fire.
A node that becomes leader starts with a fresh ``Outbox``: it resends whatever the
applied state says is missing, which is how it resumes every undecided or
unacknowledged round after a failover. Decisions come from applied state only
(rule 9). The one message sent ahead of the log is a commit's early Prepare
(``prepare_early``, coordinator/core/early.py says why that is safe): its votes go
into the log with the commit request, so a commit costs one Raft round, not two.

A pass runs after every apply and every reply, under the state lock; it costs what is
open, not what is retained: ``CoordinatorState.open_rounds`` is an index of the rounds
not yet DONE.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from coordinator import tracing
from coordinator.core.early import EARLY_PREPARES_MAX, EARLY_VOTES_WAIT_MS, EarlyVotes
from coordinator.core.entries import (
    Abort,
    BeginRound,
    BeginSaga,
    BeginTxn,
    Enlist,
    Entry,
    PresumeAbort,
    RecordAcks,
    RecordEscalations,
    RecordStepReports,
    RecordVotes,
    RegisterParticipant,
    RequestCommit,
    ResolveStep,
    Timeout,
    Vote,
)
from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.core.outbox import Outbox
from coordinator.core.state import Applied, CoordinatorState
from coordinator.replication.node import ProposeResult, ReplicatedCoordinator
from coordinator.rpc.participant_links import ParticipantLinks
from coordinator.runtime.traces import RoundTraces
from coordinator.security.transport import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")

DRIVER_TICK_MS = 10  # retries and timeouts fire at least this often on the leader
WATCH_QUEUE_EVENTS_MAX = 1_000  # a watcher that falls this far behind is dropped
WATCHERS_MAX = 256


@dataclass(frozen=True, slots=True)
class RoundChanged:
    round_id: str
    index: int


def rounds_touched(entry: Entry) -> tuple[str, ...]:
    match entry:
        case BeginTxn() | Enlist() | RequestCommit():
            return (entry.txn_id,)
        case BeginRound() | Abort() | Timeout() | PresumeAbort():
            return (entry.round_id,)
        case RecordVotes():
            return tuple(dict.fromkeys(v.round_id for v in entry.votes))
        case RecordAcks():
            return tuple(dict.fromkeys(a.round_id for a in entry.acks))
        case BeginSaga() | ResolveStep():
            return (entry.saga_id,)
        case RecordStepReports():
            return tuple(dict.fromkeys(r.saga_id for r in entry.reports))
        case RecordEscalations():
            return tuple(dict.fromkeys(e.round_id for e in entry.escalations))
        case RegisterParticipant():
            return ()
    return ()


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
        self.replicated = replicated_factory(self._on_apply)
        self.transport = transport or Transport.insecure()
        limits = self.replicated.read(lambda s: s.limits)
        self.links = ParticipantLinks(self._on_reply, self.transport, limits)
        self._outbox: Outbox | None = None
        self._outbox_term = 0
        self._early: dict[str, tuple[EarlyVotes, asyncio.Event]] = {}
        self._committing: collections.Counter[str] = collections.Counter()
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

    async def submit(self, entry: Entry, timeout_s: float) -> ProposeResult:
        return await self.replicated.propose_async(entry, timeout_s=timeout_s)

    async def wait_decided(self, round_id: str, timeout_s: float) -> None:
        """Return once the round is decided on this node, or after ``timeout_s``."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._decided[round_id].append(future)
        try:
            if self.read(lambda s: _is_decided(s, round_id)):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout_s)
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
                    if await asyncio.wait_for(queue.get(), remaining) is None:
                        self._watchers.add(key)  # fell behind: re-check and go on
            return True
        finally:
            self._watchers.discard(key)

    def retry_now(self, round_id: str) -> int | None:
        """Leader only (None elsewhere): resend what ``round_id`` waits for at the next
        driver pass instead of after its backoff. Returns the resets made."""
        outbox = self._outbox
        if outbox is None or not self.replicated.is_leader():
            return None
        reset = outbox.reset_backoff(round_id)
        self._wake.set()
        return reset

    @contextlib.contextmanager
    def committing(self, txn_id: str) -> Iterator[None]:
        """While a Commit call for ``txn_id`` is being handled here: outcome queries
        must not presume it aborted (``is_committing``)."""
        self._committing[txn_id] += 1
        try:
            yield
        finally:
            self._committing[txn_id] -= 1
            if not self._committing[txn_id]:
                del self._committing[txn_id]

    def is_committing(self, txn_id: str) -> bool:
        return txn_id in self._committing

    async def prepare_early(
        self, txn_id: str, session_id: str, participants: tuple[str, ...]
    ) -> tuple[Vote, ...]:
        """Leader only: send Prepare for ``txn_id`` before its commit request is in the
        log (coordinator/core/early.py), and return the votes heard within
        ``EARLY_VOTES_WAIT_MS``: all of them, or fewer. ``participants`` comes from
        ``CoordinatorState.early_prepare_set``. Nothing is decided here."""
        replicated = self.replicated
        if (
            not participants
            or txn_id in self._early
            or len(self._early) >= EARLY_PREPARES_MAX
            or not replicated.is_leader()
        ):
            return ()
        term = replicated.term()
        endpoints = replicated.read(lambda s: {p: s.endpoints.get(p) for p in participants})
        if None in endpoints.values():
            return ()
        early, prepares = EarlyVotes.start(txn_id, session_id, participants, term)
        settled = asyncio.Event()
        self._early[txn_id] = (early, settled)
        try:
            for prepare in prepares:
                endpoint = endpoints[prepare.participant_id]
                assert endpoint is not None
                parents = self.traces.on_send([prepare]) if self.traces is not None else None
                self.links.send(prepare.participant_id, endpoint, term, [prepare], parents)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), EARLY_VOTES_WAIT_MS / 1000)
            return early.collected()
        finally:
            del self._early[txn_id]

    async def close(self) -> None:
        self._driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._driver
        await self.links.close()
        await asyncio.to_thread(self.replicated.close)

    # ------------------------------------------------------------------ apply hook (raft thread)

    def _on_apply(self, index: int, entry: Entry, applied: Applied) -> None:
        touched = rounds_touched(entry)
        decided = tuple(d.round_id for d in applied.decided)
        self._loop.call_soon_threadsafe(self._after_apply, index, touched, decided)
        if self.traces is not None and applied.decided:
            self._loop.call_soon_threadsafe(self.traces.on_decided, applied.decided)

    def _after_apply(self, index: int, touched: tuple[str, ...], decided: tuple[str, ...]) -> None:
        self._wake.set()
        for round_id in decided:
            for future in self._decided.pop(round_id, []):
                if not future.done():
                    future.set_result(None)
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

    # ------------------------------------------------------------------ driver

    def _on_reply(self, reply: FromParticipant) -> None:
        if self.traces is not None:
            self.traces.on_reply(reply)
        early = self._early.get(reply.round_id)
        if early is not None:
            if early[0].on_reply(reply):  # the vote travels in the commit's own batch
                early[1].set()
            return
        if self._outbox is not None:
            self._outbox.on_reply(reply)
            self._wake.set()

    async def _drive(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DRIVER_TICK_MS / 1000)
            self._wake.clear()
            try:
                self._drive_once()
            except Exception:  # pragma: no cover - a bug: log loudly and keep the node up
                log.exception("driver pass failed")

    def _drive_once(self) -> None:
        replicated = self.replicated
        if not replicated.is_leader():
            if self._outbox is not None:
                # Deposed: its streams to participants have nothing more to carry.
                self.links.reset()
                if self.traces is not None:
                    self.traces.reset("leadership lost")
            self._outbox = None
            return
        term = replicated.term()
        if self._outbox is None or self._outbox_term != term:
            # A new leadership: fresh streams, and resend everything the applied state
            # lacks.
            self.links.reset()
            if self.traces is not None and self._outbox is not None:
                self.traces.reset("leadership changed")
            # Participants are reached through their registered endpoints only: rounds
            # that need one that never registered are aborted and acknowledged on its
            # behalf (coordinator/core/outbox.py).
            self._outbox = Outbox(replicated.read(lambda s: s.limits), registry=True)
            self._outbox_term = term
        outbox, now = self._outbox, self.now_ms()
        due, endpoints = replicated.read(lambda s: (outbox.poll(s, now, term), dict(s.endpoints)))
        by_participant: dict[str, list[ToParticipant]] = defaultdict(list)
        for message in due.sends:
            by_participant[message.participant_id].append(message)
        for participant_id, messages in by_participant.items():
            endpoint = endpoints.get(participant_id)
            if endpoint is None:
                continue  # a saga's step for a participant not registered (yet): retried
            parents = self.traces.on_send(messages) if self.traces is not None else None
            self.links.send(participant_id, endpoint, term, messages, parents)
        for entry in due.proposals:
            replicated.propose(entry, _ignore)


def _is_decided(state: CoordinatorState, round_id: str) -> bool:
    rnd = state.get(round_id)
    return rnd is not None and rnd.decision is not None


def _ignore(result: ProposeResult) -> None:
    pass
