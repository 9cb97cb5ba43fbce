"""Identities in certificates and mutual TLS on real gRPC ports (127.0.0.1, port 0):
who may connect, and whose server a client accepts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.runtime.cli import main as concord
from coordinator.security.certs import CertError, init_dir, issue, peer_identity
from coordinator.security.identity import Identity, IdentityError, Role
from coordinator.security.transport import Transport, TransportError

CLUSTER = "demo"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls") / "certs"
    init_dir(
        directory,
        CLUSTER,
        [
            Identity(CLUSTER, Role.NODE, "c1"),
            Identity(CLUSTER, Role.PARTICIPANT, "p1"),
            Identity(CLUSTER, Role.PARTICIPANT, "p2"),
            Identity(CLUSTER, Role.OPERATOR, "alice"),
        ],
    )
    return directory


def test_identities_round_trip_and_refuse_what_is_not_one() -> None:
    odd = Identity(CLUSTER, Role.PARTICIPANT, "weird id/é%")
    assert Identity.parse(odd.uri) == odd
    for bad in ("https://x/node/c1", "concord://demo/king/c1", "concord://demo/node", ""):
        with pytest.raises(IdentityError):
            Identity.parse(bad)
    with pytest.raises(IdentityError, match="cluster name"):
        Identity("Not_DNS", Role.NODE, "c1")
    with pytest.raises(IdentityError, match="printable"):
        Identity(CLUSTER, Role.NODE, "c1\x00")


def test_keys_are_private_and_the_ca_is_not_overwritten(tls: Path) -> None:
    assert os.stat(tls).st_mode & 0o777 == 0o700
    for key in tls.glob("*.key"):
        assert os.stat(key).st_mode & 0o777 == 0o600, key
    with pytest.raises(CertError, match="already holds a CA"):
        init_dir(tls, CLUSTER, [])


def test_transport_files_are_checked(tls: Path, tmp_path: Path) -> None:
    p1 = Transport.from_dir(tls, Role.PARTICIPANT, "p1")
    assert p1.identity == Identity(CLUSTER, Role.PARTICIPANT, "p1")
    other = tmp_path / "other"
    init_dir(other, CLUSTER, [Identity(CLUSTER, Role.NODE, "c1")])
    with pytest.raises(TransportError, match="was not issued by the CA"):
        Transport.from_files(tls / "ca.pem", other / "node-c1.pem", other / "node-c1.key")
    with pytest.raises(TransportError, match="is not the key of"):
        Transport.from_files(tls / "ca.pem", tls / "node-c1.pem", tls / "participant-p1.key")
    loose = tmp_path / "loose.key"
    loose.write_bytes((tls / "node-c1.key").read_bytes())
    loose.chmod(0o644)
    with pytest.raises(TransportError, match="readable by its owner only"):
        Transport.from_files(tls / "ca.pem", tls / "node-c1.pem", loose)
    with pytest.raises(TransportError, match="holds 0 certificates for node 'c9'"):
        Transport.from_dir(tls, Role.NODE, "c9")


class Recorder(health.HealthServicer):
    def __init__(self) -> None:
        self.callers: list[Identity | None] = []

    async def Check(self, request: Any, context: Any) -> Any:
        self.callers.append(peer_identity(context.auth_context()))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _check(channel: grpc.aio.Channel) -> str:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    finally:
        await channel.close()
    return "OK"


def test_mutual_tls_names_the_caller_and_checks_the_server(tls: Path, tmp_path: Path) -> None:
    p1 = Transport.from_dir(tls, Role.PARTICIPANT, "p1")
    c1 = Transport.from_dir(tls, Role.NODE, "c1")
    alice = Transport.from_dir(tls, Role.OPERATOR, "alice")
    stranger_dir = tmp_path / "stranger"
    init_dir(stranger_dir, CLUSTER, [Identity(CLUSTER, Role.NODE, "c1")])
    stranger = Transport.from_dir(stranger_dir, Role.NODE, "c1")

    async def body() -> None:
        recorder = Recorder()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(recorder, server)
        address = f"127.0.0.1:{p1.add_port(server, '127.0.0.1:0')}"
        await server.start()
        try:
            assert await _check(c1.aio_channel(address, to=Role.PARTICIPANT, name="p1")) == "OK"
            assert recorder.callers == [Identity(CLUSTER, Role.NODE, "c1")]
            # the server is p1: a client that expects p2 there refuses it
            wrong = c1.aio_channel(address, to=Role.PARTICIPANT, name="p2")
            assert await _check(wrong) == "UNAVAILABLE"
            # a participant is no coordinator: a client that wants one refuses it
            assert await _check(alice.aio_channel(address, to=Role.NODE)) == "UNAVAILABLE"
            # no client certificate, or one from another CA: refused by the server
            insecure = Transport.insecure().aio_channel(address, to=Role.PARTICIPANT)
            assert await _check(insecure) == "UNAVAILABLE"
            forged = stranger.aio_channel(address, to=Role.PARTICIPANT, name="p1")
            assert await _check(forged) == "UNAVAILABLE"
            assert len(recorder.callers) == 1
        finally:
            await server.stop(0)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_the_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "tls"
    assert concord(["certs", "init", str(directory), "--cluster", "c", "--nodes", "a,b"]) == 0
    assert concord(["certs", "issue", str(directory), "--participant", "p1"]) == 0
    assert concord(["certs", "check", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "participant 'p1' of cluster 'c'" in out and "node 'b' of cluster 'c'" in out
    assert concord(["certs", "init", str(directory), "--nodes", "x"]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert concord(["certs", "init", str(tmp_path / "x"), "--cluster", "c"]) == 2
    assert "name at least one identity" in capsys.readouterr().err
    assert concord(["certs", "issue", str(tmp_path / "none"), "--node", "x"]) == 2


def test_issue_adds_an_identity_under_the_same_ca(tls: Path) -> None:
    issued = issue(tls, Identity(CLUSTER, Role.CLIENT, "app"))
    assert Transport.from_files(tls / "ca.pem", issued.cert, issued.key).identity == issued.identity
