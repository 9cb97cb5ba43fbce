"""The authorization table, enforced by the interceptor on a real TLS server: each
role may do what the table says and nothing else, a participant only as itself, a
forwarded caller only through a node, a stranger cluster never."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.security.authz import CALLER_METADATA, POLICY, Authorizer, current_caller
from coordinator.security.certs import init_dir, issue
from coordinator.security.identity import Identity, Role
from coordinator.security.transport import Transport

CLUSTER = "demo"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("authz") / "certs"
    init_dir(
        directory,
        CLUSTER,
        [
            Identity(CLUSTER, Role.NODE, "c1"),
            Identity(CLUSTER, Role.NODE, "c2"),
            Identity(CLUSTER, Role.PARTICIPANT, "p1"),
            Identity(CLUSTER, Role.OPERATOR, "alice"),
            Identity(CLUSTER, Role.CLIENT, "app"),
        ],
    )
    issue(directory, Identity("other", Role.OPERATOR, "mallory"))  # same CA, other cluster
    return directory


class Servicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Identity | None]] = []

    async def RegisterParticipant(self, request: Any, context: Any) -> Any:
        self.calls.append(("RegisterParticipant", current_caller()))
        return coordinator_pb2.RegisterParticipantReply()

    async def GetTxn(self, request: Any, context: Any) -> Any:
        self.calls.append(("GetTxn", current_caller()))
        return coordinator_pb2.GetTxnReply(round_id=request.round_id)

    async def CheckSecret(self, request: Any, context: Any) -> Any:
        self.calls.append(("CheckSecret", current_caller()))
        return coordinator_pb2.CheckSecretReply(match=False)

    async def WatchTxns(self, request: Any, context: Any) -> Any:
        self.calls.append(("WatchTxns", current_caller()))
        yield coordinator_pb2.TxnEvent(applied_index=7)


def test_the_table_is_enforced(tls: Path) -> None:
    server_side = Transport.from_dir(tls, Role.NODE, "c1")
    assert server_side.identity is not None
    denied: list[tuple[Identity | None, str, str]] = []
    authorizer = Authorizer(server_side.identity, on_denied=lambda *d: denied.append(d))
    servicer = Servicer()

    def transport(role: Role, name: str) -> Transport:
        return Transport.from_dir(tls, role, name)

    async def call(who: Transport, method: str, request: Any, caller: str = "") -> str:
        # dial as if to this cluster's nodes, whatever cluster the caller is of
        credentials = grpc.ssl_channel_credentials(who.ca, who.key, who.cert)
        override = ("grpc.ssl_target_name_override", f"coordinator.{CLUSTER}.concord")
        channel = grpc.aio.secure_channel(address, credentials, options=[override])
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        metadata = ((CALLER_METADATA, caller),) if caller else ()
        try:
            if method == "WatchTxns":
                async for _ in stub.WatchTxns(request, metadata=metadata, timeout=5):
                    break
            else:
                await getattr(stub, method)(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        finally:
            await channel.close()
        return "OK"

    register_p1 = coordinator_pb2.RegisterParticipantRequest(participant_id="p1", endpoint="x:1")
    register_p2 = coordinator_pb2.RegisterParticipantRequest(participant_id="p2", endpoint="x:1")
    get = coordinator_pb2.GetTxnRequest(round_id="t")
    secret = coordinator_pb2.CheckSecretRequest(nonce=b"0" * 16)
    p1_uri = Identity(CLUSTER, Role.PARTICIPANT, "p1").uri

    async def body() -> None:
        nonlocal address
        server = grpc.aio.server(interceptors=[authorizer])
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
        address = f"127.0.0.1:{server_side.add_port(server, '127.0.0.1:0')}"
        await server.start()
        try:
            p1, app = transport(Role.PARTICIPANT, "p1"), transport(Role.CLIENT, "app")
            alice, c2 = transport(Role.OPERATOR, "alice"), transport(Role.NODE, "c2")
            mallory = transport(Role.OPERATOR, "mallory")
            assert await call(p1, "RegisterParticipant", register_p1) == "OK"
            assert await call(p1, "RegisterParticipant", register_p2) == (
                "PERMISSION_DENIED: participant 'p1' of cluster 'demo' may not speak for "
                "participant 'p2'"
            )
            assert (await call(app, "RegisterParticipant", register_p1)).startswith(
                "PERMISSION_DENIED: client 'app' of cluster 'demo' may not call "
                "/concord.v1.CoordinatorService/RegisterParticipant (allowed: participant)"
            )
            assert await call(alice, "GetTxn", get) == "OK"
            assert await call(app, "WatchTxns", coordinator_pb2.WatchTxnsRequest()) == "OK"
            assert await call(c2, "CheckSecret", secret) == "OK"
            assert (await call(alice, "CheckSecret", secret)).startswith("PERMISSION_DENIED")
            assert await call(mallory, "GetTxn", get) == (
                "PERMISSION_DENIED: operator 'mallory' of cluster 'other' is not of cluster 'demo'"
            )
            # forwarded by a node: the original caller is the one checked
            assert await call(c2, "RegisterParticipant", register_p1, caller=p1_uri) == "OK"
            assert (await call(c2, "RegisterParticipant", register_p2, caller=p1_uri)).startswith(
                "PERMISSION_DENIED: participant 'p1'"
            )
            # ... and only a node may forward
            assert await call(app, "GetTxn", get, caller=p1_uri) == (
                "PERMISSION_DENIED: client 'app' of cluster 'demo' may not call on behalf of "
                "another"
            )
        finally:
            await server.stop(0)

    address = ""
    asyncio.run(asyncio.wait_for(body(), 60))
    who = [(method, caller.role.value if caller else None) for method, caller in servicer.calls]
    assert who == [
        ("RegisterParticipant", "participant"),
        ("GetTxn", "operator"),
        ("WatchTxns", "client"),
        ("CheckSecret", "node"),
        ("RegisterParticipant", "participant"),
    ]
    assert authorizer.denials == 6
    assert len(denied) == 5  # p1 speaking for p2 twice: audited once


def test_a_method_missing_from_the_table_is_closed(tls: Path) -> None:
    server_side = Transport.from_dir(tls, Role.NODE, "c1")
    assert server_side.identity is not None
    policy = {k: v for k, v in POLICY.items() if not k.endswith("/GetTxn")}
    authorizer = Authorizer(server_side.identity, policy=policy)

    async def body() -> str:
        server = grpc.aio.server(interceptors=[authorizer])
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(Servicer(), server)
        port = server_side.add_port(server, "127.0.0.1:0")
        await server.start()
        alice = Transport.from_dir(tls, Role.OPERATOR, "alice")
        channel = alice.aio_channel(f"127.0.0.1:{port}", to=Role.NODE)
        try:
            await coordinator_pb2_grpc.CoordinatorServiceStub(channel).GetTxn(
                coordinator_pb2.GetTxnRequest(round_id="t"), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        finally:
            await channel.close()
            await server.stop(0)
        return "OK"

    assert asyncio.run(body()) == (
        "PERMISSION_DENIED: /concord.v1.CoordinatorService/GetTxn is not open to anyone"
    )


def test_every_served_method_is_in_the_table() -> None:
    """Default-deny must not close a method by accident: the table names every method
    of every Concord service."""
    from concord.v1 import (
        coordinator_pb2,
        membership_pb2,
        operations_pb2,
        participant_pb2,
    )

    served = {
        f"/{service.full_name}/{method.name}"
        for module in (coordinator_pb2, membership_pb2, operations_pb2, participant_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert served - set(POLICY) == set()
