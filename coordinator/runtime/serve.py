"""`concord serve`: run one coordinator node until SIGINT or SIGTERM.

The node serves CoordinatorService, gRPC health checking and server reflection on its
gRPC address, and Raft (pysyncobj) on its Raft address. Stopping is clean: the gRPC
server drains for a moment, the driver stops, and replication closes its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc, operations_pb2, operations_pb2_grpc
from coordinator.audit.log import AuditError
from coordinator.core.entries import Entry
from coordinator.core.state import Applied
from coordinator.replication.node import ReplicatedCoordinator, ReplicationConfig
from coordinator.rpc.coordinator_service import CoordinatorServicer
from coordinator.runtime.config import ConfigError, NodeConfig
from coordinator.runtime.node import CoordinatorNode
from coordinator.runtime.operations import Operations, OperationsOptions, OperationsServicer

log = logging.getLogger(__name__)

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
OPERATIONS_NAME = operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name
SHUTDOWN_GRACE_S = 1.0


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
    options = options or OperationsOptions()
    if options.metrics:
        check_port_free("--metrics", options.metrics)
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
            ),
            operations.wrap(on_apply),
        )
        operations.attach(replication)
        return replication

    try:
        node = CoordinatorNode(replicated)
    except BaseException:
        operations.close_audit()
        raise
    server = grpc.aio.server()
    servicer = CoordinatorServicer(node, config.grpc_address_of())
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(
        OperationsServicer(operations, node), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, OPERATIONS_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        server.add_insecure_port(config.grpc)
    except RuntimeError:
        await node.close()
        operations.close_audit()
        raise ConfigError(f"--grpc {config.grpc} cannot be bound; pick a free port") from None
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    operations.start()
    log.info("node %s serving gRPC on %s, Raft on %s", config.node_id, config.grpc, config.raft)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("node %s stopping", config.node_id)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(SHUTDOWN_GRACE_S)
        await servicer.close()
        await operations.close()
        await node.close()
        operations.close_audit()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
