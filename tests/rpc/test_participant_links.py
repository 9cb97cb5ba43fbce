"""The leader's participant links: a stream that stops answering (a half-open
connection) is replaced, so one dead stream cannot stall a participant forever; a
stream that the participant ended (a restart) leaves nothing behind that breaks the
next one; a participant that is down is not dialled every 20 ms."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from concord.v1 import participant_pb2_grpc
from coordinator.core.limits import BATCH_ITEMS_MAX
from coordinator.core.messages import (
    CompensateStep,
    ExecuteStep,
    FromParticipant,
    Prepare,
    ToParticipant,
    VoteReply,
)
from coordinator.core.types import Kind
from coordinator.protomap import (
    coordinator_batch_size,
    from_coordinator_batch,
    to_participant_batch,
)
from coordinator.rpc import participant_links
from coordinator.rpc.participant_links import ParticipantLinks
from coordinator.security.transport import MESSAGE_BYTES_MAX

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


class Answering(participant_pb2_grpc.ParticipantServiceServicer):
    """Answers every batch; with ``end_first``, the first stream ends after one batch
    (as when the participant goes away), and ``first_ended`` is set."""

    def __init__(self, end_first: bool = False) -> None:
        self.streams = 0
        self.end_first = end_first
        self.first_ended = asyncio.Event()

    async def Exchange(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        self.streams += 1
        first = self.streams == 1
        try:
            async for batch in request_iterator:
                yield _answer(batch)
                if first and self.end_first:
                    return
        finally:
            if first:
                self.first_ended.set()


def _answer(batch: Any) -> Any:
    _, items = from_coordinator_batch(batch)
    return to_participant_batch(
        [VoteReply(round_id=m.round_id, participant_id=m.participant_id, yes=True) for m in items]
    )


async def _start(servicer: Any, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    participant_pb2_grpc.add_ParticipantServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


async def _until_answered(
    links: ParticipantLinks, endpoint: str, replies: asyncio.Queue[FromParticipant], round_id: str
) -> FromParticipant:
    """Send like the outbox does (again and again until answered); the reply."""
    async with asyncio.timeout(WAIT_S):
        while True:
            links.send("p1", endpoint, 1, [_prepare(round_id)])
            try:
                reply = await asyncio.wait_for(replies.get(), 0.1)
            except TimeoutError:
                continue
            if reply.round_id == round_id:
                return reply


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


def test_a_restarted_participant_is_reached_again() -> None:
    """The stream to a participant that is killed ends with an error; once it is back
    on the same address the link reaches it again (it used to fail every new stream at
    once with the old stream's error, until the next leadership)."""

    async def body() -> None:
        server, port = await _start(Answering())
        replies: asyncio.Queue[FromParticipant] = asyncio.Queue()
        links = ParticipantLinks(replies.put_nowait)
        endpoint = f"127.0.0.1:{port}"
        try:
            assert (await _until_answered(links, endpoint, replies, "t1")).round_id == "t1"
            await server.stop(None)  # the participant goes away mid-stream
            links.send("p1", endpoint, 1, [_prepare("t2")])
            server, _ = await _start(Answering(), port)  # and comes back
            reply = await _until_answered(links, endpoint, replies, "t3")
            assert reply == VoteReply(round_id="t3", participant_id="p1", yes=True)
        finally:
            await links.close()
            await server.stop(None)

    asyncio.run(body())


def test_a_batch_after_a_stream_ended_reaches_the_next_stream() -> None:
    """The participant ends a stream; the one batch sent after that (no resend) is
    answered on the next stream: nothing left over from the ended stream takes it."""

    async def body() -> None:
        servicer = Answering(end_first=True)
        server, port = await _start(servicer)
        replies: asyncio.Queue[FromParticipant] = asyncio.Queue()
        links = ParticipantLinks(replies.put_nowait)
        endpoint = f"127.0.0.1:{port}"
        try:
            links.send("p1", endpoint, 1, [_prepare("t1")])
            async with asyncio.timeout(WAIT_S):
                assert (await replies.get()).round_id == "t1"
                await servicer.first_ended.wait()
            links.send("p1", endpoint, 1, [_prepare("t2")])  # sent once
            async with asyncio.timeout(WAIT_S):
                reply = await replies.get()
            assert reply == VoteReply(round_id="t2", participant_id="p1", yes=True)
            assert servicer.streams == 2
        finally:
            await links.close()
            await server.stop(None)

    asyncio.run(body())


def test_unanswered_batches_go_first_on_the_replacing_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch the silent stream swallowed is sent again on its replacement without
    waiting for the outbox's next retry (whose backoff may be seconds by then)."""
    monkeypatch.setattr(participant_links, "LINK_REPLY_TIMEOUT_MS", 200)

    async def body() -> None:
        servicer = SilentFirstStream()
        server, port = await _start(servicer)
        replies: asyncio.Queue[FromParticipant] = asyncio.Queue()
        links = ParticipantLinks(replies.put_nowait)
        try:
            links.send("p1", f"127.0.0.1:{port}", 1, [_prepare("t1")])  # sent once
            async with asyncio.timeout(WAIT_S):
                reply = await replies.get()
            assert reply == VoteReply(round_id="t1", participant_id="p1", yes=True)
            assert servicer.streams == 2
        finally:
            await links.close()
            await server.stop(None)

    asyncio.run(body())


def test_a_participant_that_fails_every_stream_is_retried_with_growing_waits() -> None:
    """Every stream attempt fails at once (a participant that is stopping, or a proxy
    whose participant is down); the waits between attempts grow (20 ms doubling to
    1 s) instead of starting over at 20 ms each time, which dialled a new connection
    50 times a second."""

    class Failing(participant_pb2_grpc.ParticipantServiceServicer):
        def __init__(self) -> None:
            self.calls: list[float] = []
            self.enough = asyncio.Event()

        async def Exchange(
            self, request_iterator: AsyncIterator[Any], context: Any
        ) -> AsyncIterator[Any]:
            self.calls.append(time.monotonic())
            if len(self.calls) >= 7:
                self.enough.set()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "participant stopped")
            yield  # pragma: no cover - a generator, like the real servicer

    async def body() -> None:
        servicer = Failing()
        server, port = await _start(servicer)
        links = ParticipantLinks(lambda reply: None)
        try:
            links.send("p1", f"127.0.0.1:{port}", 1, [_prepare("t1")])
            async with asyncio.timeout(WAIT_S):
                await servicer.enough.wait()
            gaps = [b - a for a, b in itertools.pairwise(servicer.calls)]
            # waits of 20, 40, 80, 160, 320, 640 ms: the sixth gap is at least 0.64 s
            assert gaps[5] >= 0.5, gaps
        finally:
            await links.close()
            await server.stop(None)

    asyncio.run(body())


class Chatty(participant_pb2_grpc.ParticipantServiceServicer):
    """Answers each Prepare with a NO whose reason is long and full of terminal
    escapes, and with a vote for a round id no round can have."""

    async def Exchange(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            _, items = from_coordinator_batch(batch)
            replies: list[FromParticipant] = []
            for m in items:
                reason = "\x1b[2J\x00" + "é" * 2_000
                replies.append(VoteReply(round_id="t\x00", participant_id="p1", yes=True))
                replies.append(
                    VoteReply(round_id=m.round_id, participant_id="p1", yes=False, reason=reason)
                )
            yield to_participant_batch(replies)


def test_a_reply_is_cleaned_at_the_link_never_lost_for_its_reason() -> None:
    """Applied, a reason over reason_bytes_max would cost the vote (refused, noted):
    the link cuts and escapes it, and drops a reply for an impossible round id."""

    async def body() -> None:
        server, port = await _start(Chatty())
        replies: asyncio.Queue[FromParticipant] = asyncio.Queue()
        links = ParticipantLinks(replies.put_nowait)
        try:
            reply = await _until_answered(links, f"127.0.0.1:{port}", replies, "t1")
            assert isinstance(reply, VoteReply) and not reply.yes
            assert reply.reason.startswith("\\x1b[2J\\x00éé")
            assert len(reply.reason.encode()) <= 1024
            assert links.replies_refused >= 1  # the vote for "t\x00"
            assert all(r.round_id == "t1" for r in _drain(replies))
        finally:
            await links.close()
            await server.stop(None)

    asyncio.run(asyncio.wait_for(body(), WAIT_S))


def _drain(queue: asyncio.Queue[FromParticipant]) -> list[FromParticipant]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class Recording(participant_pb2_grpc.ParticipantServiceServicer):
    """Keeps every batch it gets and answers it with nothing."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[Any] = asyncio.Queue()

    async def Exchange(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            self.batches.put_nowait(batch)
            yield to_participant_batch([])


def test_messages_beyond_the_batch_bound_go_in_more_batches_of_every_kind() -> None:
    """The leader never builds a batch a participant would refuse: executes and
    compensations count like prepares; each batch carries its own rounds' traces."""

    async def body() -> None:
        servicer = Recording()
        server, port = await _start(servicer)
        links = ParticipantLinks(lambda reply: None)
        step = {"participant_id": "p1", "action": "book", "term": 1}
        messages: list[ToParticipant] = [_prepare("t0")]
        messages += [ExecuteStep(round_id=f"e{i}", step=0, **step) for i in range(BATCH_ITEMS_MAX)]
        messages += [CompensateStep(round_id="c", step=i, **step) for i in range(BATCH_ITEMS_MAX)]
        parents = {"t0": "00-t0", "c": "00-c"}
        try:
            assert links.send("p1", f"127.0.0.1:{port}", 1, messages, parents)
            async with asyncio.timeout(WAIT_S):
                batches = [await servicer.batches.get() for _ in range(3)]
        finally:
            await links.close()
            await server.stop(None)
        sizes = [coordinator_batch_size(batch) for batch in batches]
        assert sizes == [BATCH_ITEMS_MAX, BATCH_ITEMS_MAX, 1]
        got = [item for batch in batches for item in from_coordinator_batch(batch)[1]]
        assert sorted(map(repr, got)) == sorted(map(repr, messages))
        assert [dict(batch.trace_parents) for batch in batches] == [
            {"t0": "00-t0"},
            {"c": "00-c"},
            {"c": "00-c"},
        ]

    asyncio.run(body())


def test_batches_queued_behind_one_travel_merged_in_one_stream_message() -> None:
    """Driver passes that queue batches while the stream is busy share one stream
    message (and one answer), in order, with their traces; a batch of another term
    is never merged into one of this term."""

    async def body() -> None:
        servicer = Recording()
        server, port = await _start(servicer)
        links = ParticipantLinks(lambda reply: None)
        endpoint = f"127.0.0.1:{port}"
        try:
            # Queued before the link's task first runs: all wait behind the first.
            for i in range(3):
                assert links.send("p1", endpoint, 1, [_prepare(f"t{i}")], {f"t{i}": f"00-{i}"})
            assert links.send("p1", endpoint, 2, [_prepare("t-new-term")])
            async with asyncio.timeout(WAIT_S):
                batches = [await servicer.batches.get() for _ in range(2)]
        finally:
            await links.close()
            await server.stop(None)
        assert [batch.term for batch in batches] == [1, 2]
        assert [p.round_id for p in batches[0].prepares] == ["t0", "t1", "t2"]
        assert dict(batches[0].trace_parents) == {"t0": "00-0", "t1": "00-1", "t2": "00-2"}
        assert [p.round_id for p in batches[1].prepares] == ["t-new-term"]

    asyncio.run(body())


def test_batches_stay_under_the_message_size_limit_whatever_the_payloads() -> None:
    """One-shot Prepares carry their actions' payloads: a pass with many large ones,
    or large batches queued behind each other, must not become a stream message over
    gRPC's limit (it would fail the stream at every resend, and the participant would
    never be reached again). All arrive, in order, in batches within the bound."""
    payload_bytes = 1 << 20
    # The participant's end takes what every Concord server takes.
    options = [("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]

    def big(round_id: str) -> Prepare:
        return Prepare(
            round_id=round_id, kind=Kind.TXN, participant_id="p1", session_id="", term=1,
            action="stage", payload=b"x" * payload_bytes,
        )  # fmt: skip

    async def body() -> None:
        servicer = Recording()
        server = grpc.aio.server(options=options)
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        links = ParticipantLinks(lambda reply: None)
        endpoint = f"127.0.0.1:{port}"
        try:
            assert links.send("p1", endpoint, 1, [big(f"a{i}") for i in range(12)])
            for i in range(6):  # queued behind the first pass: merged, within the bound
                assert links.send("p1", endpoint, 1, [big(f"b{i}")])
            got: list[str] = []
            async with asyncio.timeout(WAIT_S):
                while len(got) < 18:
                    batch = await servicer.batches.get()
                    assert batch.ByteSize() <= participant_links.BATCH_BYTES_MAX
                    got += [p.round_id for p in batch.prepares]
        finally:
            await links.close()
            await server.stop(None)
        assert got == [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(6)]

    asyncio.run(body())
