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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc

from concord.v1 import participant_pb2, participant_pb2_grpc
from coordinator.core.errors import ProtocolError
from coordinator.core.limits import BATCH_ITEMS_MAX, Limits, check_id
from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.protomap import CodecError, from_participant_batch, to_coordinator_batch
from coordinator.rpc.edge import clean_reply
from coordinator.security.identity import Role
from coordinator.security.transport import Transport

log = logging.getLogger(__name__)

LINK_QUEUE_BATCHES_MAX = 64  # batches waiting for one participant's stream
RECONNECT_BACKOFF_MS = (20, 1_000)  # first and largest wait between stream attempts
# A stream with a batch unanswered this long is presumed dead (a half-open connection:
# the peer's host or process vanished without a reset) and is replaced by a new one.
LINK_REPLY_TIMEOUT_MS = 2_000


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
        traceparent, only when tracing is on."""
        link = self._links.get(participant_id)
        if link is None or link.endpoint != endpoint:
            if link is not None:
                link.close()
            link = self._links[participant_id] = _Link(
                participant_id,
                endpoint,
                self._on_reply,
                self._transport,
                self._refused,
                self._limits,
            )
        queued = True
        for start in range(0, len(messages), BATCH_ITEMS_MAX):
            chunk = messages[start : start + BATCH_ITEMS_MAX]
            batch = to_coordinator_batch(term, chunk)
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
        Raises ``grpc.aio.AioRpcError`` when it does not answer within ``timeout_s``."""
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

    def _refused(self) -> None:
        self.replies_refused += 1

    def connected(self) -> dict[str, bool]:
        return {pid: link.connected for pid, link in self._links.items()}

    def reset(self) -> None:
        """Drop every stream: the next batch to each participant opens a new one. A new
        leadership starts this way, so no stream left over from an earlier term (maybe
        half-open by now) delays its first messages."""
        links, self._links = self._links, {}
        for link in links.values():
            link.close()

    async def close(self) -> None:
        links, self._links = self._links, {}
        await asyncio.gather(*(link.aclose() for link in links.values()))
        channels, self._call_channels = self._call_channels, {}
        for _, channel in channels.values():
            await channel.close()


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


class _Link:
    def __init__(
        self,
        participant_id: str,
        endpoint: str,
        on_reply: Callable[[FromParticipant], None],
        transport: Transport,
        on_refused: Callable[[], None],
        limits: Limits,
    ) -> None:
        self.participant_id = participant_id
        self._limits = limits
        self.endpoint = endpoint
        self.connected = False
        self._on_reply = on_reply
        self._transport = transport
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
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"link-{participant_id}"
        )

    def offer(self, batch: participant_pb2.CoordinatorBatch) -> bool:
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            return False
        return True

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
                        if stream.unanswered:
                            stream.unanswered.popleft()
                        try:
                            replies = from_participant_batch(reply)
                        except CodecError as error:
                            # The peer's fault: drop the batch, the outbox asks again.
                            log.warning("bad batch from %s: %s", self.participant_id, error)
                            continue
                        for message in replies:
                            accepted = self._accept(message)
                            if accepted is not None:
                                self._on_reply(accepted)
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

    async def _outgoing(self, stream: _Stream) -> AsyncIterator[participant_pb2.CoordinatorBatch]:
        """The stream's requests: first what the last stream left unanswered, then the
        queue; ends with the stream (gRPC does not stop a request iterator of a call
        that the peer ended)."""
        while self._resend and not stream.ended.done():
            batch = self._resend.popleft()
            stream.unanswered.append((time.monotonic(), batch))
            yield batch
        while not stream.ended.done():
            if self._queue.empty():
                get = asyncio.ensure_future(self._queue.get())
                try:
                    await asyncio.wait((get, stream.ended), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not get.done():
                        get.cancel()  # the batch stays queued for the next stream
                if get.cancelled():
                    return
                batch = get.result()
                if stream.ended.done():
                    self._resend.append(batch)  # taken as the stream ended: the next sends it
                    return
            else:
                batch = self._queue.get_nowait()
            stream.unanswered.append((time.monotonic(), batch))
            yield batch
