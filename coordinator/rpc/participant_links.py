"""The leader's links to participants: one long-lived Exchange stream each.

Per-call cost dominates gRPC in Python (BASELINE.md: ~0.4-0.5 ms of CPU per unary
call, ~7 us per item at 100 items per stream message), so everything due for a
participant in one driver pass travels as one ``CoordinatorBatch`` on its stream, and
its answers come back batched too.

A link is best effort: a batch that cannot be sent (no stream, queue full, stream
broken) is dropped, because the outbox resends whatever the replicated state still
lacks (rule 5: every message is idempotent). Links never decide anything; replies go
to ``on_reply`` and become log entries elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from concord.v1 import participant_pb2, participant_pb2_grpc
from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.protomap import CodecError
from coordinator.rpc.convert import from_participant_batch, to_coordinator_batch

log = logging.getLogger(__name__)

LINK_QUEUE_BATCHES_MAX = 64  # batches waiting for one participant's stream
RECONNECT_BACKOFF_MS = (20, 1_000)  # first and largest wait between stream attempts


class ParticipantLinks:
    def __init__(self, on_reply: Callable[[FromParticipant], None]) -> None:
        self._on_reply = on_reply
        self._links: dict[str, _Link] = {}

    def send(
        self, participant_id: str, endpoint: str, term: int, messages: Sequence[ToParticipant]
    ) -> bool:
        """Queue one batch for the participant; False if it was dropped."""
        link = self._links.get(participant_id)
        if link is None or link.endpoint != endpoint:
            if link is not None:
                link.close()
            link = self._links[participant_id] = _Link(participant_id, endpoint, self._on_reply)
        return link.offer(to_coordinator_batch(term, messages))

    def connected(self) -> dict[str, bool]:
        return {pid: link.connected for pid, link in self._links.items()}

    async def close(self) -> None:
        links, self._links = self._links, {}
        await asyncio.gather(*(link.aclose() for link in links.values()))


class _Link:
    def __init__(
        self, participant_id: str, endpoint: str, on_reply: Callable[[FromParticipant], None]
    ) -> None:
        self.participant_id = participant_id
        self.endpoint = endpoint
        self.connected = False
        self._on_reply = on_reply
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
            try:
                async with grpc.aio.insecure_channel(self.endpoint) as channel:
                    stub = participant_pb2_grpc.ParticipantServiceStub(channel)
                    call = stub.Exchange(self._outgoing())
                    self.connected = True
                    backoff_ms = RECONNECT_BACKOFF_MS[0]
                    async for reply in call:
                        try:
                            replies = from_participant_batch(reply)
                        except CodecError as error:
                            # The peer's fault: drop the batch, the outbox asks again.
                            log.warning("bad batch from %s: %s", self.participant_id, error)
                            continue
                        for message in replies:
                            self._on_reply(message)
            except grpc.aio.AioRpcError as error:
                log.debug("link to %s (%s): %s", self.participant_id, self.endpoint, error.code())
            finally:
                self.connected = False
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(backoff_ms * 2, RECONNECT_BACKOFF_MS[1])

    async def _outgoing(self) -> AsyncIterator[participant_pb2.CoordinatorBatch]:
        while True:
            yield await self._queue.get()
