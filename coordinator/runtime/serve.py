"""`concord serve`: run one coordinator node until SIGINT or SIGTERM.

The node serves CoordinatorService, gRPC health checking and server reflection on its
gRPC address, and Raft (pysyncobj) on its Raft address. Stopping is clean: the gRPC
server drains for a moment, the driver stops, and replication closes its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from concord.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
)
from coordinator.audit.log import AuditError
from coordinator.core.entries import Entry
from coordinator.core.state import Applied
from coordinator.replication.membership import MembershipRefused, check_add
from coordinator.replication.node import (
    JOURNAL_DIR,
    NodeAddress,
    ReplicatedCoordinator,
    ReplicationConfig,
)
from coordinator.rpc.coordinator_service import CoordinatorServicer
from coordinator.rpc.membership_service import MembershipServicer
from coordinator.runtime.config import ConfigError, NodeConfig, check_new_cluster_size
from coordinator.runtime.node import CoordinatorNode
from coordinator.runtime.operations import Operations, OperationsOptions, OperationsServicer
from coordinator.security.authz import Authorizer
from coordinator.security.identity import Identity, Role
from coordinator.security.secret import answer, peer_holds_secret
from coordinator.security.transport import Transport, TransportError
from coordinator.security.undecodable import RejectUndecodable

log = logging.getLogger(__name__)

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
OPERATIONS_NAME = operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name
MEMBERSHIP_NAME = membership_pb2.DESCRIPTOR.services_by_name["MembershipService"].full_name
JOIN_CALL_S = 2.0
SHUTDOWN_GRACE_S = 1.0
SECRET_CHECK_S = 10.0  # start-up: how long to keep asking silent peers about the secret
JOURNAL_WATCH_S = 0.5  # how often to look whether the journal failed (then exit)


def check_port_free(flag: str, address: str) -> None:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as error:
            raise ConfigError(
                f"{flag} {address} cannot be used ({error.strerror}); pick a free port"
            ) from None


async def serve(config: NodeConfig, options: OperationsOptions | None = None) -> None:
    check_port_free("--raft", config.raft)
    check_port_free("--grpc", config.grpc)
    config = await members_to_start_with(config)
    options = options or OperationsOptions(
        metrics=config.metrics, audit_records_max=config.audit_records_max
    )
    if options.metrics:
        check_port_free("--metrics", options.metrics)
    if config.ui:
        check_port_free("--ui", config.ui)
    # Audit log, metrics, leader watch (coordinator/runtime/operations.py).
    try:
        operations = Operations(config.node_id, config.data_dir, options)
    except AuditError as error:
        raise ConfigError(str(error)) from None

    def replicated(on_apply: Callable[[int, Entry, Applied], None]) -> ReplicatedCoordinator:
        replication = ReplicatedCoordinator(
            ReplicationConfig(
                node_id=config.node_id,
                nodes=config.nodes,
                data_dir=config.data_dir,
                secret=config.secret,
                election_timeout_ms=(
                    config.timing.election_timeout_min_ms,
                    config.timing.election_timeout_max_ms,
                ),
                heartbeat_ms=config.timing.heartbeat_ms,
            ),
            operations.wrap(on_apply),
        )
        operations.attach(replication)
        return replication

    try:
        node = CoordinatorNode(replicated, config.tls)
    except BaseException:
        operations.close_audit()
        raise
    # Undecodable requests first (one line, no traceback), then who may call what.
    interceptors: list[grpc.aio.ServerInterceptor] = [RejectUndecodable()]
    if config.tls.identity is not None:
        interceptors.append(
            Authorizer(config.tls.identity, on_denied=_audit_denial(operations.audit.note_local))
        )
    server = grpc.aio.server(interceptors=interceptors, options=config.tls.server_options())
    servicer = CoordinatorServicer(
        node,
        node.replicated.grpc_directory,  # live: members change through the log
        secret_check=lambda nonce, mac: answer(config.secret, config.node_id, nonce, mac),
    )
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(
        OperationsServicer(operations, node), server
    )
    membership_pb2_grpc.add_MembershipServiceServicer_to_server(
        MembershipServicer(
            node.replicated,
            lambda address, node_id: peer_holds_secret(address, config.secret, config.tls, node_id),
            operations.audit.note_local,
            config.tls,
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            OPERATIONS_NAME,
            MEMBERSHIP_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        config.tls.add_port(server, config.grpc)
    except (RuntimeError, TransportError):
        await node.close()
        operations.close_audit()
        raise ConfigError(f"--grpc {config.grpc} cannot be bound; pick a free port") from None
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    operations.start()
    dashboard = _start_dashboard(config, operations, node)
    log.info("node %s serving gRPC on %s, Raft on %s", config.node_id, config.grpc, config.raft)
    if config.tls.identity is None:
        log.warning(
            "--insecure: gRPC is plaintext and nobody is authenticated; anyone who reaches "
            "%s may vote, decide, abort and change membership. Development only.",
            config.grpc,
        )
    else:
        log.info("TLS: serving as %s", config.tls.identity)
    if config.secret_on_command_line:
        log.warning(
            "the cluster secret was given with --secret: every user of this machine can read "
            "it in the process list; use --secret-file or CONCORD_SECRET"
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    problem: list[str] = []
    secret_check = loop.create_task(_check_peers_authenticate(node, config, stop, problem))
    journal_watch = loop.create_task(_stop_on_failure(node, stop, problem))
    try:
        await stop.wait()
    finally:
        secret_check.cancel()
        journal_watch.cancel()
        log.info("node %s stopping", config.node_id)
        if dashboard is not None:
            dashboard.close()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(SHUTDOWN_GRACE_S)
        await servicer.close()
        await operations.close()
        await node.close()
        operations.close_audit()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    if problem:
        raise ConfigError(problem[0])


async def members_to_start_with(config: NodeConfig) -> NodeConfig:
    """The member flags bootstrap a new data dir only. A new node with ``--join`` asks
    the cluster's leader for the current members instead (it must know them before its
    first Raft message, to count majorities right); a data dir that exists already
    knows its members from its own log."""
    fresh = not (config.data_dir / JOURNAL_DIR).exists()
    if not config.join:
        if fresh and not config.new_cluster:
            # A lost or wiped volume must stop the node, not the data: started empty it
            # would vote as if it had never acknowledged anything, and two such nodes
            # of three would elect a leader that lost committed decisions.
            raise ConfigError(
                f"data dir {config.data_dir} holds no Raft log. If this is the first start "
                "of a new cluster, start it with --new-cluster; if this node lost its data, "
                "remove it (concord cluster remove-node) and add it back empty with --join"
            )
        if fresh:
            check_new_cluster_size(config)
        return config
    if not fresh:
        log.info("data dir %s exists: --join ignored, members come from its log", config.data_dir)
        return config
    members = await _current_members(config.join, config.tls)
    me = NodeAddress(node_id=config.node_id, raft=config.raft, grpc=config.grpc)
    try:
        check_add(members, me)
    except MembershipRefused as error:
        raise ConfigError(f"cannot join: {error}") from None
    log.info(
        "joining with members %s; now run concord cluster add-node --id %s --raft %s --grpc %s",
        [m.node_id for m in members],
        me.node_id,
        me.raft,
        me.grpc,
    )
    return dataclasses.replace(config, peers=members)


async def _current_members(
    addresses: tuple[str, ...], transport: Transport
) -> tuple[NodeAddress, ...]:
    """The members as the leader knows them, found through any of ``addresses``."""
    problems = []
    for address in addresses:
        view = await _list_members(address, transport)
        if view is None:
            problems.append(f"{address}: no answer")
            continue
        where = {m.node_id: m.grpc for m in view.members}
        if not view.leader_id or view.leader_id not in where:
            problems.append(f"{address}: no leader known")
            continue
        leader_view = view if view.leader_id == view.node_id else None
        if leader_view is None:
            leader_view = await _list_members(where[view.leader_id], transport)
        if leader_view is None:
            problems.append(f"leader {view.leader_id} at {where[view.leader_id]}: no answer")
            continue
        return tuple(
            NodeAddress(node_id=m.node_id, raft=m.raft, grpc=m.grpc) for m in leader_view.members
        )
    raise ConfigError(
        f"--join: cannot learn the members ({'; '.join(problems)}); check the addresses "
        "and that the cluster runs"
    )


async def _list_members(
    address: str, transport: Transport
) -> membership_pb2.ListMembersReply | None:
    async with transport.aio_channel(address, to=Role.NODE) as channel:
        stub = membership_pb2_grpc.MembershipServiceStub(channel)
        try:
            reply: membership_pb2.ListMembersReply = await stub.ListMembers(
                membership_pb2.ListMembersRequest(), timeout=JOIN_CALL_S
            )
            return reply
        except grpc.aio.AioRpcError:
            return None


async def _check_peers_authenticate(
    node: CoordinatorNode, config: NodeConfig, stop: asyncio.Event, problem: list[str]
) -> None:
    """At start-up, ask each peer (over gRPC) whether it holds the same cluster secret.
    A peer that answers "no" makes this node stop with a one-line error; a peer that does
    not answer (down, partitioned) proves nothing and is simply not asked again."""
    deadline = asyncio.get_running_loop().time() + SECRET_CHECK_S
    unasked = {p.node_id: p.grpc for p in config.peers}
    while unasked and asyncio.get_running_loop().time() < deadline:
        for node_id, address in list(unasked.items()):
            match = await peer_holds_secret(address, config.secret, config.tls, node_id)
            if match is None:
                continue
            del unasked[node_id]
            if not match:
                problem.append(
                    f"peer {node_id} ({address}) holds another cluster secret; use the same "
                    "secret (--secret-file or CONCORD_SECRET) on every node"
                )
                log.error("%s", problem[0])
                stop.set()
                return
        await asyncio.sleep(0.5)


async def _stop_on_failure(node: CoordinatorNode, stop: asyncio.Event, problem: list[str]) -> None:
    """A node whose journal failed (it said why, CRITICAL) acknowledges nothing more:
    it exits instead of serving stale reads, so a supervisor restarts it."""
    while node.replicated.failure is None:
        await asyncio.sleep(JOURNAL_WATCH_S)
    problem.append(f"stopped: {node.replicated.failure}")
    stop.set()


def _start_dashboard(config: NodeConfig, operations: Operations, node: CoordinatorNode) -> Any:
    """The read-only web dashboard (coordinator/ui/server.py), if --ui names an address."""
    if not config.ui:
        return None
    from coordinator.ui.server import Dashboard

    dashboard = Dashboard(config.ui, operations, node, config.data_dir)
    port = dashboard.start()
    host = config.ui.rpartition(":")[0]
    token = dashboard.operators.token_path if dashboard.operators else None
    log.info("dashboard on http://%s:%d/ (operator token in %s)", host, port, token)
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        log.warning("--ui %s: whoever reaches the dashboard reads every page", config.ui)
    return dashboard


def _audit_denial(note: Callable[[str, dict[str, Any]], None]) -> Callable[..., None]:
    """Denied calls, in this node's local audit chain (authz: once per caller and method)."""

    def denied(caller: Identity | None, method: str, why: str) -> None:
        note("denied", {"caller": caller.uri if caller else "", "method": method, "why": why})

    return denied
