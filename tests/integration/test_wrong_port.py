"""A client pointed at something that is not a Concord coordinator's gRPC address says
so at once, in one line naming the address, instead of retrying into UNAVAILABLE or
waiting for a connect timeout: a node's Raft port, a participant's port, a silent TCP
server, and a cluster that speaks the other transport (TLS against plaintext)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from participant_sdk import (
    ConcordClient,
    NotACoordinator,
    NotFound,
    Participant,
    Role,
    Transport,
    Unavailable,
)

pytestmark = pytest.mark.integration

# "At once": a handshake attempt and a probe, far below gRPC's 20 s connect timeout
# and the ~13 s a client used to wait for DEADLINE_EXCEEDED.
AT_ONCE_S = 6.0


@pytest.fixture(scope="module", params=[False, True], ids=["tls", "insecure"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), 1, insecure=request.param)
    cluster.start()
    try:
        cluster.leader()
        yield cluster
    finally:
        cluster.stop()


async def _first_call(address: str, tls: Transport) -> tuple[BaseException, float]:
    started = time.monotonic()
    async with ConcordClient([address], tls=tls) as client:
        try:
            await client.get("any")
        except Exception as error:
            return error, time.monotonic() - started
    raise AssertionError(f"a call through {address} succeeded")


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_the_raft_port_is_named_as_not_a_coordinator(cluster: LocalCluster) -> None:
    raft = cluster.addresses[0].raft
    error, took_s = asyncio.run(_first_call(raft, cluster.transport(Role.CLIENT, CLIENT)))
    assert isinstance(error, NotACoordinator), error
    assert isinstance(error, Unavailable)  # code that handles Unavailable still does
    assert took_s < AT_ONCE_S
    assert _one_line(error) == (
        f"{raft} is not a Concord coordinator: it accepts connections but does not speak "
        "gRPC (a node's Raft port instead of its gRPC port?)"
    )


def test_the_grpc_port_still_answers(cluster: LocalCluster) -> None:
    error, _ = asyncio.run(
        _first_call(cluster.grpc_addresses[0], cluster.transport(Role.CLIENT, CLIENT))
    )
    assert isinstance(error, NotFound)  # a real answer: no such transaction


def test_a_wrong_address_among_right_ones_is_passed_over(cluster: LocalCluster) -> None:
    """Like a node that is down: the call goes on through the next address."""
    raft, grpc_address = cluster.addresses[0].raft, cluster.grpc_addresses[0]

    async def body() -> None:
        tls = cluster.transport(Role.CLIENT, CLIENT)
        async with ConcordClient([raft, grpc_address], tls=tls) as client:
            with pytest.raises(NotFound):
                await client.get("any")  # a coordinator's answer

    asyncio.run(body())


def test_a_commit_through_the_raft_port_is_refused_before_anything_is_sent(
    cluster: LocalCluster,
) -> None:
    """Not OutcomeUnknown: nothing reached a coordinator, so there is nothing to ask."""

    async def body() -> None:
        raft = cluster.addresses[0].raft
        async with ConcordClient([raft], tls=cluster.transport(Role.CLIENT, CLIENT)) as client:
            with pytest.raises(NotACoordinator, match="Raft port"):
                async with client.transaction(["p1"]):
                    pass

    asyncio.run(body())


def test_the_other_transport_or_a_foreign_certificate_is_named(cluster: LocalCluster) -> None:
    grpc_address = cluster.grpc_addresses[0]
    foreign = LocalCluster(cluster.root.parent / "foreign", 1)  # only its certificates
    if cluster.insecure:
        error, took_s = asyncio.run(
            _first_call(grpc_address, foreign.transport(Role.CLIENT, CLIENT))
        )
        assert isinstance(error, NotACoordinator), error
        assert _one_line(error) == (
            f"{grpc_address} serves plaintext gRPC and this client uses TLS "
            "(a cluster started with --insecure?)"
        )
        assert took_s < AT_ONCE_S
        return
    error, took_s = asyncio.run(_first_call(grpc_address, Transport.insecure()))
    assert isinstance(error, NotACoordinator), error
    assert _one_line(error).startswith(
        f"{grpc_address} serves TLS and this client has no certificate"
    )
    assert took_s < AT_ONCE_S
    error, took_s = asyncio.run(_first_call(grpc_address, foreign.transport(Role.CLIENT, CLIENT)))
    assert isinstance(error, NotACoordinator), error
    assert _one_line(error).startswith(
        f"{grpc_address} speaks TLS but refused this client's certificate"
    )
    assert took_s < AT_ONCE_S


def test_a_silent_tcp_server_and_a_participant_port_are_named(tmp_path: Path) -> None:
    async def body() -> None:
        silent = socket.create_server(("127.0.0.1", 0))
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        try:
            error, took_s = await _first_call(address, Transport.insecure())
        finally:
            silent.close()
        assert isinstance(error, NotACoordinator), error
        assert "does not speak gRPC" in _one_line(error)
        assert took_s < AT_ONCE_S

        participant = Participant("p1", None, [], tls=Transport.insecure())
        await participant.start()
        try:
            error, took_s = await _first_call(f"127.0.0.1:{participant.port}", Transport.insecure())
        finally:
            await participant.stop()
        assert isinstance(error, NotACoordinator), error
        assert "serves gRPC but not concord.v1.CoordinatorService.GetTxn" in _one_line(error)
        assert took_s < AT_ONCE_S

    asyncio.run(body())


def _blackhole() -> tuple[str, list[socket.socket]]:
    """An address whose TCP connections never open, like a host cut off by the network:
    a listening socket with a full accept queue drops every further SYN."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    held = [server]
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(server.getsockname())
        held.append(filler)
    return f"127.0.0.1:{server.getsockname()[1]}", held


def test_a_write_through_a_host_cut_off_first_in_the_list_still_commits(
    cluster: LocalCluster,
) -> None:
    """The call is not sent where no connection opens (it would wait for one until its
    deadline, and a write's deadline means "outcome unknown"): the next address
    serves it."""
    cut_off, held = _blackhole()

    async def body() -> None:
        tls = cluster.transport(Role.CLIENT, CLIENT)
        addresses = [cut_off, *cluster.grpc_addresses]
        async with ConcordClient(addresses, tls=tls, call_timeout_s=3.0) as client:
            txn = await client.begin([])
            assert await client.commit(txn.id) is Decision.COMMIT

    try:
        asyncio.run(body())
    finally:
        for sock in held:
            sock.close()
