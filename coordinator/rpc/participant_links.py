"""The leader's links to participants: one long-lived Exchange stream each.

In Python gRPC the fixed cost of a call or a stream message is far larger than the
cost of one more item in a message, so everything due for a participant in one driver
pass travels as one ``CoordinatorBatch`` on its stream, and its answers come back
batched too.

A link is best effort: a batch that cannot be sent (no stream, queue full, stream
broken) is dropped, because the outbox resends whatever the replicated state still
lacks (rule 5: every message is idempotent). Links never decide anything; replies go
to ``on_reply`` and become log entries elsewhere.

A link is also the edge for what participants send (coordinator/rpc/edge.py): a reply
naming another participant or a round id no round can have is dropped, and a reply's
free text is cleaned and cut to the limits before the leader may propose it, so a
participant's odd reason never costs its vote.

A participant that only connects out (it registered ``ATTACHED_ENDPOINT``) is never
dialled: it opens ``CoordinatorService.Attach`` to the leader, and ``attach`` gives
that stream the participant's link. The link is the same one: its batches, in order,
one reply batch each, with the same reply timeout and the same edge checks; action
calls travel on the stream too (numbered, answered by number), and an idle stream
carries a heartbeat so the participant notices a leader gone silent. Until it attaches
(or after its stream ended) its batches wait in the link's queue, and what overflows
is dropped like any batch: the outbox resends it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc

from concord.v1 import coordinator_pb2, participant_pb2, participant_pb2_grpc
from coordinator.core.errors import ProtocolError
from coordinator.core.limits import BATCH_ITEMS_MAX, Limits, check_id
from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.protomap import (
    ATTACH_HEARTBEAT_MS,
    ATTACHED_ENDPOINT,
    CodecError,
    coordinator_batch_size,
    from_participant_batch,
    to_coordinator_batch,
)
from coordinator.rpc.edge import clean_reply
from coordinator.security.identity import Role
from coordinator.security.transport import MESSAGE_BYTES_MAX, Transport

log = logging.getLogger(__name__)

LINK_QUEUE_BATCHES_MAX = 64  # batches waiting for one participant's stream
# A batch's encoded size, far below gRPC's message limit whatever its payloads (a
# one-shot Prepare carries its action's payload): a batch over the limit would fail its
# stream at every resend, and the participant would never be reached again.
BATCH_BYTES_MAX = MESSAGE_BYTES_MAX // 2
RECONNECT_BACKOFF_MS = (20, 1_000)  # first and largest wait between stream attempts
# A stream with a batch unanswered this long is presumed dead (a half-open connection:
# the peer's host or process vanished without a reset) and is replaced by a new one.
LINK_REPLY_TIMEOUT_MS = 2_000
# An action call for a participant that attaches but holds no stream here right now (it
# is attaching again after a leader change) waits this long for one before it fails.
ATTACH_CALL_WAIT_S = 2.0


class ParticipantLinks:
    def __init__(
        self,
        on_reply: Callable[[FromParticipant], None],
        transport: Transport | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._limits = limits or Limits()
        self._on_reply = on_reply
        self._transport = transport or Transport.insecure()
        self._links: dict[str, _Link] = {}
        # Participants that attach (only connect out): their links, streams or not yet.
        self._attached: dict[str, _AttachedLink] = {}
        # participant -> (endpoint, channel) for action calls: unary, beside the stream
        self._call_channels: dict[str, tuple[str, grpc.aio.Channel]] = {}
        self.replies_refused = 0  # replies that named another participant than the stream's

    def send(
        self,
        participant_id: str,
        endpoint: str,
        term: int,
        messages: Sequence[ToParticipant],
        trace_parents: Mapping[str, str] | None = None,
    ) -> bool:
        """Queue ``messages`` for the participant, in batches of at most
        ``BATCH_ITEMS_MAX``; False if one was dropped. ``trace_parents``: round id ->
        traceparent, only when tracing is on. A participant registered as
        ``ATTACHED_ENDPOINT`` is never dialled: its batches wait for its stream."""
        link: _LinkBase | None = self._attached_link(participant_id, endpoint)
        if link is None:
            dialled = self._links.get(participant_id)
            if dialled is None or dialled.endpoint != endpoint:
                if dialled is not None:
                    dialled.close()
                dialled = self._links[participant_id] = _Link(
                    participant_id,
                    endpoint,
                    self._on_reply,
                    self._transport,
                    self._refused,
                    self._limits,
                )
            link = dialled
        queued = True
        for chunk, batch in _bounded_batches(term, messages):
            if trace_parents:
                rounds = {message.round_id for message in chunk}
                batch.trace_parents.update(
                    (round_id, parent)
                    for round_id, parent in trace_parents.items()
                    if round_id in rounds
                )
            queued = link.offer(batch) and queued
        return queued

    async def call(
        self,
        participant_id: str,
        endpoint: str,
        action: participant_pb2.CallAction,
        timeout_s: float,
    ) -> participant_pb2.CallResult:
        """Run a transaction action at the participant (its handler may take a while:
        a call of its own, not a batch on the stream, whose replies are in order).
        Raises ``grpc.aio.AioRpcError`` when it does not answer within ``timeout_s``
        (or, attached, is not attached here)."""
        attached = self._attached_link(participant_id, endpoint)
        if attached is not None:
            return await attached.call(action, timeout_s)
        known = self._call_channels.get(participant_id)
        if known is None or known[0] != endpoint:
            if known is not None:
                await known[1].close()
            channel = self._transport.aio_channel(
                endpoint, to=Role.PARTICIPANT, name=participant_id
            )
            known = self._call_channels[participant_id] = (endpoint, channel)
        stub = participant_pb2_grpc.ParticipantServiceStub(known[1])
        result: participant_pb2.CallResult = await stub.Call(action, timeout=timeout_s)
        return result

    def attach(self, participant_id: str) -> _AttachedLink:
        """The link an Attach stream of ``participant_id`` serves (``serve``): its
        batches go there from now on, whatever endpoint it registered."""
        link = self._attached.get(participant_id)
        if link is None:
            link = self._attached[participant_id] = self._new_attached(participant_id)
        dialled = self._links.pop(participant_id, None)
        if dialled is not None:
            dialled.close()
        return link

    def _attached_link(self, participant_id: str, endpoint: str) -> _AttachedLink | None:
        """The link to use for an attached participant: one registered as attached (its
        batches queue until it attaches), or one holding a stream here now."""
        link = self._attached.get(participant_id)
        if endpoint == ATTACHED_ENDPOINT:
            if link is None:
                link = self._attached[participant_id] = self._new_attached(participant_id)
            dialled = self._links.pop(participant_id, None)
            if dialled is not None:  # it served before, and attaches now
                dialled.close()
            return link
        return link if link is not None and link.connected else None

    def _new_attached(self, participant_id: str) -> _AttachedLink:
        return _AttachedLink(participant_id, self._on_reply, self._refused, self._limits)

    def _refused(self) -> None:
        self.replies_refused += 1

    def connected(self) -> dict[str, bool]:
        links: dict[str, _LinkBase] = {**self._links, **self._attached}
        return {pid: link.connected for pid, link in links.items()}

    def reset(self) -> None:
        """Drop every stream: the next batch to each participant opens a new one. A new
        leadership starts this way, so no stream left over from an earlier term (maybe
        half-open by now) delays its first messages. Attached streams end too: a
        participant attaches to the leader of the new term."""
        links: list[_LinkBase] = [*self._links.values(), *self._attached.values()]
        self._links, self._attached = {}, {}
        for link in links:
            link.close()

    async def close(self) -> None:
        links: list[_LinkBase] = [*self._links.values(), *self._attached.values()]
        self._links, self._attached = {}, {}
        await asyncio.gather(*(link.aclose() for link in links))
        channels, self._call_channels = self._call_channels, {}
        for _, channel in channels.values():
            await channel.close()


def _bounded_batches(
    term: int, messages: Sequence[ToParticipant]
) -> list[tuple[Sequence[ToParticipant], participant_pb2.CoordinatorBatch]]:
    """``messages`` in order, as batches of at most ``BATCH_ITEMS_MAX`` messages and
    ``BATCH_BYTES_MAX`` bytes (a message alone may be larger: an action's payload is
    bounded by ``step_payload_bytes_max``, 64 KiB by default), each with the messages
    it holds."""
    pending = [
        messages[start : start + BATCH_ITEMS_MAX]
        for start in range(0, len(messages), BATCH_ITEMS_MAX)
    ]
    batches = []
    while pending:
        chunk = pending.pop(0)
        batch = to_coordinator_batch(term, chunk)
        if len(chunk) > 1 and batch.ByteSize() > BATCH_BYTES_MAX:
            half = len(chunk) // 2
            pending[0:0] = [chunk[:half], chunk[half:]]
            continue
        batches.append((chunk, batch))
    return batches


class _Stream:
    """One Exchange call's own state. A stream that ended must leave nothing behind
    for the next: a read that failed would fail the next stream at once, forever (a
    link that never recovered from a participant restart until the next leadership,
    retrying at 50 Hz); and a request generator still waiting on the link's queue would
    take the next batch into a dead call and count it as unanswered on the live one."""

    def __init__(self) -> None:
        # Send times and batches not yet answered (the participant answers each batch
        # with one reply batch, in order), oldest first.
        self.unanswered: collections.deque[tuple[float, participant_pb2.CoordinatorBatch]] = (
            collections.deque()
        )
        self.pending_read: asyncio.Future[Any] | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)
        read, self.pending_read = self.pending_read, None
        if read is not None:
            if read.done() and not read.cancelled():
                read.exception()  # retrieved: the stream is over either way
            read.cancel()


class _LinkBase:
    """What a dialled and an attached link share: the queue of batches, the batches a
    broken stream left unanswered, and the edge checks of what comes back."""

    endpoint = ""

    def __init__(
        self,
        participant_id: str,
        on_reply: Callable[[FromParticipant], None],
        on_refused: Callable[[], None],
        limits: Limits,
    ) -> None:
        self.participant_id = participant_id
        self._limits = limits
        self.connected = False
        self._on_reply = on_reply
        self._on_refused = on_refused
        # Batches the last stream took and did not see answered: the next stream sends
        # them first (idempotent, rule 5) instead of leaving them to the outbox, whose
        # per-message backoff may have grown to seconds while the stream was stuck.
        self._resend: collections.deque[participant_pb2.CoordinatorBatch] = collections.deque(
            maxlen=LINK_QUEUE_BATCHES_MAX
        )
        self._queue: asyncio.Queue[participant_pb2.CoordinatorBatch] = asyncio.Queue(
            LINK_QUEUE_BATCHES_MAX
        )

    def offer(self, batch: participant_pb2.CoordinatorBatch) -> bool:
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            return False
        return True

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def _answered(self, stream: _Stream, reply: participant_pb2.ParticipantBatch) -> None:
        """One reply batch: it answers the oldest unanswered batch; its messages go to
        ``on_reply`` if they pass the edge."""
        if stream.unanswered:
            stream.unanswered.popleft()
        try:
            replies = from_participant_batch(reply)
        except CodecError as error:
            # The peer's fault: drop the batch, the outbox asks again.
            log.warning("bad batch from %s: %s", self.participant_id, error)
            return
        for message in replies:
            accepted = self._accept(message)
            if accepted is not None:
                self._on_reply(accepted)

    def _accept(self, message: FromParticipant) -> FromParticipant | None:
        """The reply as the leader may use it, or None (dropped, counted)."""
        if message.participant_id != self.participant_id:
            # A participant speaks only for itself on its own stream.
            log.warning(
                "link to %s: a reply naming %r refused",
                self.participant_id,
                message.participant_id[:128],
            )
            self._on_refused()
            return None
        try:
            check_id(self._limits, "round_id", message.round_id)
        except ProtocolError as error:  # no round can have that id
            log.debug("link to %s: reply refused: %s", self.participant_id, error.message)
            self._on_refused()
            return None
        return clean_reply(message, self._limits)

    async def _outgoing(self, stream: _Stream) -> AsyncIterator[participant_pb2.CoordinatorBatch]:
        """The stream's requests: first what the last stream left unanswered, then the
        queue, each with the batches queued behind it merged in; ends with the stream
        (gRPC does not stop a request iterator of a call that the peer ended)."""
        while not stream.ended.done():
            if self._resend:
                batch = self._resend.popleft()
            elif not self._queue.empty():
                batch = self._queue.get_nowait()
            else:
                get = asyncio.ensure_future(self._queue.get())
                try:
                    await asyncio.wait((get, stream.ended), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not get.done():
                        get.cancel()  # the batch stays queued for the next stream
                if not get.done() or get.cancelled():
                    return  # cancelled while it waited (the item, if any, stays queued)
                batch = get.result()
                if stream.ended.done():
                    self._resend.append(batch)  # taken as the stream ended: the next sends it
                    return
            self._merge_queued(batch)
            stream.unanswered.append((time.monotonic(), batch))
            yield batch

    def _merge_queued(self, batch: participant_pb2.CoordinatorBatch) -> None:
        """Merge into ``batch`` the batches waiting behind it (driver passes that came
        while the stream wrote the last one), as one pass would have grouped them: a
        stream message and its answer cost both ends far more than the messages in
        them. Stops at a batch of another term or one that would make it too large
        (``BATCH_ITEMS_MAX`` messages, ``BATCH_BYTES_MAX`` bytes), which goes first
        next time."""
        if not self._resend and self._queue.empty():
            return  # the usual case below saturation: no size to compute
        size, size_bytes = coordinator_batch_size(batch), batch.ByteSize()
        while self._resend or not self._queue.empty():
            following = self._resend.popleft() if self._resend else self._queue.get_nowait()
            more, more_bytes = coordinator_batch_size(following), following.ByteSize()
            if (
                following.term != batch.term
                or size + more > BATCH_ITEMS_MAX
                or size_bytes + more_bytes > BATCH_BYTES_MAX
            ):
                self._resend.appendleft(following)
                return
            batch.MergeFrom(following)
            size, size_bytes = size + more, size_bytes + more_bytes


class _Link(_LinkBase):
    def __init__(
        self,
        participant_id: str,
        endpoint: str,
        on_reply: Callable[[FromParticipant], None],
        transport: Transport,
        on_refused: Callable[[], None],
        limits: Limits,
    ) -> None:
        super().__init__(participant_id, on_reply, on_refused, limits)
        self.endpoint = endpoint
        self._transport = transport
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"link-{participant_id}"
        )

    def close(self) -> None:
        self._task.cancel()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        backoff_ms = RECONNECT_BACKOFF_MS[0]
        while True:
            stream = _Stream()
            try:
                # With TLS the endpoint must prove it is this participant: a re-pointed
                # or spoofed endpoint fails the handshake.
                channel = self._transport.aio_channel(
                    self.endpoint, to=Role.PARTICIPANT, name=self.participant_id
                )
                async with channel:
                    stub = participant_pb2_grpc.ParticipantServiceStub(channel)
                    call = stub.Exchange(self._outgoing(stream))
                    self.connected = True
                    while (reply := await self._read(stream, call)) is not None:
                        backoff_ms = RECONNECT_BACKOFF_MS[0]  # it answers: a working stream
                        self._answered(stream, reply)
            except grpc.aio.AioRpcError as error:
                log.debug("link to %s (%s): %s", self.participant_id, self.endpoint, error.code())
            except TimeoutError:
                log.warning(
                    "link to %s (%s): no answer for %d ms; reconnecting",
                    self.participant_id,
                    self.endpoint,
                    LINK_REPLY_TIMEOUT_MS,
                )
            finally:
                self.connected = False
                stream.end()
                self._resend.extend(batch for _, batch in stream.unanswered)
            # Grows until a stream answers, so a participant that is down is not dialled
            # (through a new connection each time) every 20 ms.
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(backoff_ms * 2, RECONNECT_BACKOFF_MS[1])

    async def _read(self, stream: _Stream, call: Any) -> Any:
        """The next reply batch, None at the end of the stream; TimeoutError when the
        oldest unanswered batch has waited ``LINK_REPLY_TIMEOUT_MS``."""
        while True:
            if stream.unanswered:
                waited_s = time.monotonic() - stream.unanswered[0][0]
                wait_s = max(0.0, LINK_REPLY_TIMEOUT_MS / 1000 - waited_s)
            else:
                wait_s = LINK_REPLY_TIMEOUT_MS / 1000
            if stream.pending_read is None:
                # One read in flight per stream: a timed-out wait leaves it running.
                stream.pending_read = asyncio.ensure_future(call.read())
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation when the read completes at the same moment (the link's task
            # then never ended and ParticipantLinks.close() hung).
            done, _ = await asyncio.wait((stream.pending_read,), timeout=wait_s)
            if not done:
                if stream.unanswered and (
                    time.monotonic() - stream.unanswered[0][0] >= LINK_REPLY_TIMEOUT_MS / 1000
                ):
                    call.cancel()
                    raise TimeoutError
                continue  # nothing outstanding: keep waiting
            read, stream.pending_read = stream.pending_read, None
            if read.cancelled():
                return None  # the call was cancelled under us: over, like an end of stream
            reply = read.result()  # an ended stream's error is raised once, here
            return None if reply is grpc.aio.EOF else reply


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A failed action call on an attached stream, raised as a dialled call's would be."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _AttachStream(_Stream):
    """One Attach call: what the leader writes to it, and the action calls sent on it
    and not answered yet."""

    def __init__(self) -> None:
        super().__init__()
        self.out: asyncio.Queue[coordinator_pb2.AttachReply] = asyncio.Queue()
        self.calls: dict[int, asyncio.Future[participant_pb2.CallResult]] = {}

    def end(self) -> None:
        super().end()
        calls, self.calls = self.calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(
                    _rpc_error(grpc.StatusCode.UNAVAILABLE, "the participant's stream ended")
                )


class _AttachedLink(_LinkBase):
    """The link to a participant that attached: ``serve`` runs one Attach stream (a
    new one replaces the last), the batches and calls travel on it."""

    endpoint = ATTACHED_ENDPOINT

    def __init__(
        self,
        participant_id: str,
        on_reply: Callable[[FromParticipant], None],
        on_refused: Callable[[], None],
        limits: Limits,
    ) -> None:
        super().__init__(participant_id, on_reply, on_refused, limits)
        self._stream: _AttachStream | None = None
        self._streaming = asyncio.Event()  # set while a stream is open
        self._call_numbers = itertools.count(1)
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.end()

    async def aclose(self) -> None:
        self.close()

    async def call(
        self, action: participant_pb2.CallAction, timeout_s: float
    ) -> participant_pb2.CallResult:
        if not self._streaming.is_set() and not self._closed:
            loop = asyncio.get_running_loop()
            started = loop.time()
            waiting = asyncio.ensure_future(self._streaming.wait())
            try:
                await asyncio.wait((waiting,), timeout=min(timeout_s, ATTACH_CALL_WAIT_S))
            finally:
                waiting.cancel()
            timeout_s = max(0.0, timeout_s - (loop.time() - started))
        stream = self._stream
        if stream is None or stream.ended.done():
            raise _rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"participant {self.participant_id!r} is not attached to this leader",
            )
        number = next(self._call_numbers)
        future: asyncio.Future[participant_pb2.CallResult] = (
            asyncio.get_running_loop().create_future()
        )
        stream.calls[number] = future
        stream.out.put_nowait(
            coordinator_pb2.AttachReply(
                call=coordinator_pb2.AttachCall(call_number=number, action=action)
            )
        )
        try:
            done, _ = await asyncio.wait((future,), timeout=timeout_s)
        finally:
            stream.calls.pop(number, None)
        if not done:
            future.cancel()
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer from the participant")
        return future.result()

    async def serve(
        self, requests: AsyncIterator[coordinator_pb2.AttachRequest]
    ) -> AsyncGenerator[coordinator_pb2.AttachReply, None]:
        """The leader's side of one Attach stream (its first message already read):
        until the participant ends it, a newer stream replaces it, the link closes
        (leadership moved) or a batch goes unanswered for ``LINK_REPLY_TIMEOUT_MS``."""
        if self._closed:
            return
        if self._stream is not None:
            self._stream.end()  # the participant attached again: the old stream is dead
        stream = self._stream = _AttachStream()
        self.connected = True
        self._streaming.set()
        # The first word on the stream tells the participant a leader took it.
        stream.out.put_nowait(coordinator_pb2.AttachReply(heartbeat=True))
        reader = asyncio.ensure_future(self._read_requests(stream, requests))
        pump = asyncio.ensure_future(self._pump(stream))
        try:
            while True:
                reply = await self._next_reply(stream)
                if reply is None:
                    return
                yield reply
        finally:
            stream.end()
            for task in (reader, pump):
                task.cancel()
            for task in (reader, pump):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._stream is stream:
                self._stream = None
                self.connected = False
                self._streaming.clear()
            self._resend.extend(batch for _, batch in stream.unanswered)

    async def _pump(self, stream: _AttachStream) -> None:
        async for batch in self._outgoing(stream):
            stream.out.put_nowait(coordinator_pb2.AttachReply(batch=batch))

    async def _next_reply(self, stream: _AttachStream) -> coordinator_pb2.AttachReply | None:
        """What to write next: a batch or a call, else a heartbeat when idle; None when
        the stream is over."""
        heartbeat_s = ATTACH_HEARTBEAT_MS / 1000
        timeout_s = LINK_REPLY_TIMEOUT_MS / 1000
        while not stream.ended.done():
            if stream.unanswered:
                waited_s = time.monotonic() - stream.unanswered[0][0]
                if waited_s >= timeout_s:
                    log.warning(
                        "attached %s: no answer for %d ms; ending its stream",
                        self.participant_id,
                        LINK_REPLY_TIMEOUT_MS,
                    )
                    return None
                wait_s = min(heartbeat_s, timeout_s - waited_s)
            else:
                wait_s = heartbeat_s
            if not stream.out.empty():
                return stream.out.get_nowait()
            get = asyncio.ensure_future(stream.out.get())
            try:
                await asyncio.wait(
                    (get, stream.ended), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not get.done():
                    get.cancel()
            if get.done() and not get.cancelled():
                return get.result()
            if stream.ended.done():
                return None
            if not stream.unanswered:
                return coordinator_pb2.AttachReply(heartbeat=True)
        return None

    async def _read_requests(
        self, stream: _AttachStream, requests: AsyncIterator[coordinator_pb2.AttachRequest]
    ) -> None:
        """The participant's side of the stream: reply batches and call results."""
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "batch":
                    self._answered(stream, request.batch)
                elif kind == "call_result":
                    future = stream.calls.pop(request.call_result.call_number, None)
                    if future is not None and not future.done():
                        future.set_result(request.call_result.result)
                else:  # a second "I am": nothing to act on
                    log.debug("attached %s: a %s message ignored", self.participant_id, kind)
        except grpc.aio.AioRpcError as error:
            log.debug("attached %s: %s", self.participant_id, error.code())
        finally:
            stream.end()
