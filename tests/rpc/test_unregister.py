"""Unregistering a participant on a real node (port 0): an operator RPC through the
log, refused while a round not yet done names the participant, with the command line
`concord cluster unregister-participant`; only operators may call it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from concord.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    participant_pb2_grpc,
)
from coordinator.core.messages import AckReply, Decide, FromParticipant, Prepare, VoteReply
from coordinator.protomap import from_coordinator_batch, to_participant_batch
from coordinator.runtime import cli
from coordinator.security.authz import POLICY
from coordinator.security.identity import Role
from tests.rpc.serving import serving

WAIT_S = 60.0


class Agreeable(participant_pb2_grpc.ParticipantServiceServicer):
    """Votes YES to every Prepare and acknowledges every Decide."""

    async def Exchange(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            _, items = from_coordinator_batch(batch)
            replies: list[FromParticipant] = []
            for item in items:
                who = {"round_id": item.round_id, "participant_id": item.participant_id}
                if isinstance(item, Prepare):
                    replies.append(VoteReply(**who, yes=True))
                elif isinstance(item, Decide):
                    replies.append(AckReply(**who))
            yield to_participant_batch(replies)


def test_only_operators_may_unregister() -> None:
    assert POLICY["/concord.v1.OperationsService/UnregisterParticipant"].roles == {Role.OPERATOR}


def test_unregister_is_refused_while_a_round_holds_the_participant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("CONCORD_TLS_DIR", "CONCORD_TLS_CA", "CONCORD_TLS_CERT", "CONCORD_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)

    async def body() -> None:
        agent = grpc.aio.server()
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(Agreeable(), agent)
        agent_port = agent.add_insecure_port("127.0.0.1:0")
        await agent.start()
        try:
            async with (
                serving(tmp_path / "node") as served,
                grpc.aio.insecure_channel(served.address) as channel,
            ):
                coordinator = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                operations = operations_pb2_grpc.OperationsServiceStub(channel)
                await coordinator.RegisterParticipant(
                    coordinator_pb2.RegisterParticipantRequest(
                        participant_id="p1", endpoint=f"127.0.0.1:{agent_port}"
                    )
                )
                await coordinator.BeginTxn(
                    coordinator_pb2.BeginTxnRequest(txn_id="t1", participants=["p1"])
                )
                unregister = operations_pb2.UnregisterParticipantRequest(participant_id="p1")
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await operations.UnregisterParticipant(unregister)
                assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "round(s) not yet done (first: 't1')" in (raised.value.details() or "")

                # Decided and acknowledged by the participant: done, it holds nobody.
                await coordinator.Abort(coordinator_pb2.AbortRequest(txn_id="t1"))
                phase = coordinator_pb2.GetTxnRequest(round_id="t1")
                await _until_done(coordinator, phase)

                code = await asyncio.to_thread(
                    cli.main,
                    [
                        "cluster",
                        "unregister-participant",
                        "--id",
                        "p1",
                        "--coordinators",
                        served.address,
                    ],
                )
                assert code == 0
                assert served.node.read(lambda s: "p1" not in s.endpoints)
                records = [r for r in served.audit_records() if r.get("event")]
                events = [r["event"] for r in records]
                assert "operator_unregister_participant" in events

                # Gone: asked again, the command says so (exit 2, one line).
                again = await asyncio.to_thread(
                    cli.main,
                    [
                        "cluster",
                        "unregister-participant",
                        "--id",
                        "p1",
                        "--coordinators",
                        served.address,
                    ],
                )
                assert again == 2

                # A registration brings it back.
                await coordinator.RegisterParticipant(
                    coordinator_pb2.RegisterParticipantRequest(
                        participant_id="p1", endpoint=f"127.0.0.1:{agent_port}"
                    )
                )
                assert served.node.read(lambda s: "p1" in s.endpoints)
        finally:
            await agent.stop(None)

    asyncio.run(asyncio.wait_for(body(), WAIT_S))
    out, err = capsys.readouterr()
    assert "participant p1 unregistered at index" in out
    assert "participant 'p1' is not registered" in err
    assert len(err.strip().splitlines()) == 1


async def _until_done(stub: Any, request: Any) -> None:
    """Bounded: the leader sends Decide, the participant acknowledges, the ack is
    applied (it waits up to ack_flush_delay_ms to share an entry)."""

    async def poll() -> None:
        while (await stub.GetTxn(request)).phase != "DONE":
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 10)
