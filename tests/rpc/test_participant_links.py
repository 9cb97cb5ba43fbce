"""The leader's participant links: a stream that stops answering (a half-open
connection) is replaced, so one dead stream cannot stall a participant forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from concord.v1 import participant_pb2_grpc
from coordinator.core.messages import FromParticipant, Prepare, VoteReply
from coordinator.core.types import Kind
from coordinator.rpc import participant_links
from coordinator.rpc.convert import from_coordinator_batch, to_participant_batch
from coordinator.rpc.participant_links import ParticipantLinks

WAIT_S = 10.0


class SilentFirstStream(participant_pb2_grpc.ParticipantServiceServicer):
    """The first Exchange stream takes batches and never answers; later ones answer."""

    def __init__(self) -> None:
        self.streams = 0

    async def Exchange(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        self.streams += 1
        silent = self.streams == 1
        async for batch in request_iterator:
            if silent:
                continue
            _, items = from_coordinator_batch(batch)
            yield to_participant_batch(
                [
                    VoteReply(round_id=m.round_id, participant_id=m.participant_id, yes=True)
                    for m in items
                ]
            )


def _prepare(round_id: str) -> Prepare:
    return Prepare(round_id=round_id, kind=Kind.TXN, participant_id="p1", session_id="", term=1)


def test_a_silent_stream_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(participant_links, "LINK_REPLY_TIMEOUT_MS", 200)

    async def body() -> None:
        server = grpc.aio.server()
        servicer = SilentFirstStream()
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        replies: asyncio.Queue[FromParticipant] = asyncio.Queue()
        links = ParticipantLinks(replies.put_nowait)
        try:
            endpoint = f"127.0.0.1:{port}"
            links.send("p1", endpoint, 1, [_prepare("t1")])  # swallowed by the silent stream
            reply = None
            async with asyncio.timeout(WAIT_S):
                while reply is None:
                    # The outbox resends until answered; so does this test.
                    links.send("p1", endpoint, 1, [_prepare("t1")])
                    try:
                        reply = await asyncio.wait_for(replies.get(), 0.1)
                    except TimeoutError:
                        continue
            assert reply == VoteReply(round_id="t1", participant_id="p1", yes=True)
            assert servicer.streams >= 2
        finally:
            await links.close()
            await server.stop(None)

    asyncio.run(body())
