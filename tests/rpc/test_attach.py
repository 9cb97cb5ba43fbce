"""Participants that only connect out (``ParticipantOptions(connect="outbound")``):
the leader's link to one runs on the stream it opened (CoordinatorService.Attach).

One real coordinator node in this process (tests/rpc/serving.py, plaintext; the TLS
checks are in tests/integration/test_attach_processes.py), real SDK participants with
in-memory stores: transactions commit over the stream, action calls travel on it, the
stream is taken again after the leader ends it, a participant registered as attached
is never dialled, and a reply naming another participant is dropped as on a dialled
link."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc, participant_pb2
from coordinator.core.messages import Prepare
from coordinator.core.types import Kind
from coordinator.protomap import ATTACHED_ENDPOINT
from participant_sdk import (
    Branch,
    ConcordClient,
    Decision,
    Participant,
    ParticipantOptions,
    TxnActions,
)
from tests.rpc.serving import serving, until

OUTBOUND = ParticipantOptions(connect="outbound")


def _actions() -> TxnActions:
    actions = TxnActions()

    def put(branch: Branch, request: Mapping[str, Any]) -> str:
        branch.put(request["key"], request["value"].encode())
        return f"put {request['key']}"

    actions.add("put", put)
    return actions


def test_options_refuse_what_outbound_cannot_use() -> None:
    with pytest.raises(ValueError, match="connect must be"):
        ParticipantOptions(connect="sideways")
    with pytest.raises(ValueError, match="advertise has no use"):
        ParticipantOptions(connect="outbound", advertise="10.0.0.1:7000")
    with pytest.raises(ValueError, match="needs the coordinators"):
        Participant("p1", None, options=OUTBOUND)


def test_an_outbound_participant_commits_and_runs_actions_with_no_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "node") as served:
            participants = [
                Participant(name, None, [served.address], actions=_actions(), options=OUTBOUND)
                for name in ("p1", "p2")
            ]
            for participant in participants:
                await participant.start()
            try:
                for participant in participants:
                    assert participant.port == 0  # nothing served
                    await participant.wait_registered()
                    await participant.wait_attached()
                endpoints = served.node.read(lambda s: dict(s.endpoints))
                assert endpoints == {"p1": ATTACHED_ENDPOINT, "p2": ATTACHED_ENDPOINT}
                async with ConcordClient([served.address]) as client:
                    async with client.transaction(wait_applied=True) as txn:
                        said = await txn.call("p1", "put", {"key": "a", "value": "1"})
                        await txn.call("p2", "put", {"key": "b", "value": "2"})
                    assert said == "put a"
                    assert txn.decision is Decision.COMMIT
                    results = await client.run(
                        {"p1": ("put", {"key": "c", "value": "3"})}, wait_applied=True
                    )
                    assert results == {"p1": "put c"}
                assert dict(participants[0].state.items()) == {"a": b"1", "c": b"3"}
                assert dict(participants[1].state.items()) == {"b": b"2"}
                assert served.node.links.connected() == {"p1": True, "p2": True}
            finally:
                for participant in participants:
                    await participant.stop()

    asyncio.run(scenario())


def test_a_participant_attaches_again_when_the_leader_ends_its_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "node") as served:
            participant = Participant(
                "p1", None, [served.address], actions=_actions(), options=OUTBOUND
            )
            await participant.start()
            try:
                await participant.wait_attached()
                attacher = participant._attacher
                assert attacher is not None
                before = attacher.attaches
                # What a leader does when its leadership ends or begins: every stream ends.
                served.node.links.reset()
                await until(lambda: attacher.attaches > before, "the participant to attach again")
                await participant.wait_attached()
                async with ConcordClient([served.address]) as client:
                    async with client.transaction(wait_applied=True) as txn:
                        await txn.call("p1", "put", {"key": "k", "value": "v"})
                    assert txn.decision is Decision.COMMIT
                assert participant.state.get("k") == b"v"
            finally:
                await participant.stop()

    asyncio.run(scenario())


def test_a_participant_registered_as_attached_is_never_dialled(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "node") as served:
            async with grpc.aio.insecure_channel(served.address) as channel:
                stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                await stub.RegisterParticipant(
                    coordinator_pb2.RegisterParticipantRequest(
                        participant_id="absent", endpoint=ATTACHED_ENDPOINT
                    )
                )
            links = served.node.links
            links.send("absent", "127.0.0.1:1", 1, [])  # as it was: it served there
            assert set(links._links) == {"absent"}
            # Now its batches wait for a stream (none comes): the dialled link is gone.
            assert links.send("absent", ATTACHED_ENDPOINT, 1, []) is True
            assert links._links == {}
            assert links.connected() == {"absent": False}
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await links.call(
                    "absent", ATTACHED_ENDPOINT, participant_pb2.CallAction(), timeout_s=0.2
                )
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_replies_naming_another_participant_are_dropped(tmp_path: Path) -> None:
    """A raw stream for p1 answers a batch with a vote in p2's name: refused and
    counted, as on a dialled link (coordinator/rpc/edge.py); p1's own vote is taken."""

    async def scenario() -> None:
        async with serving(tmp_path / "node") as served:
            replies: list[Any] = []
            links = served.node.links
            original = links._on_reply
            links._on_reply = lambda message: (replies.append(message), original(message))[1]
            async with grpc.aio.insecure_channel(served.address) as channel:
                stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                outgoing: asyncio.Queue[coordinator_pb2.AttachRequest] = asyncio.Queue()
                outgoing.put_nowait(coordinator_pb2.AttachRequest(participant_id="p1"))

                async def requests() -> Any:
                    while True:
                        yield await outgoing.get()

                call = stub.Attach(requests())
                first = await call.read()
                assert first.WhichOneof("kind") == "heartbeat"
                prepare = Prepare(
                    round_id="r1", kind=Kind.TXN, participant_id="p1", session_id="", term=1
                )
                links.send("p1", ATTACHED_ENDPOINT, 1, [prepare])
                batch = await call.read()
                while batch.WhichOneof("kind") != "batch":
                    batch = await call.read()
                votes = [
                    participant_pb2.VoteReply(round_id="r1", participant_id=who, yes=True)
                    for who in ("p2", "p1")
                ]
                outgoing.put_nowait(
                    coordinator_pb2.AttachRequest(
                        batch=participant_pb2.ParticipantBatch(votes=votes)
                    )
                )
                await until(lambda: links.replies_refused == 1, "the forged vote refused")
                await until(lambda: replies, "p1's own vote")
                assert [r.participant_id for r in replies] == ["p1"]
                call.cancel()  # the participant goes away: its link knows at once
                await until(lambda: links.connected() == {"p1": False}, "the stream to end")

    asyncio.run(scenario())


def test_attach_must_name_the_participant_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            serving(tmp_path / "node") as served,
            grpc.aio.insecure_channel(served.address) as channel,
        ):
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            batch = coordinator_pb2.AttachRequest(batch=participant_pb2.ParticipantBatch())
            call = stub.Attach(iter([batch]))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call.read()
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            bad = coordinator_pb2.AttachRequest(participant_id="p\x00")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Attach(iter([bad])).read()
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(scenario())
