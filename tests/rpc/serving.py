"""One real coordinator node in this process, for tests of its gRPC services: a
single-node Raft group (it leads at once), the CoordinatorService, OperationsService
and MembershipService as ``concord serve`` wires them, plaintext on 127.0.0.1:0,
with ``RejectUndecodable`` first in the interceptors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from concord.v1 import coordinator_pb2_grpc, membership_pb2_grpc, operations_pb2_grpc
from coordinator.core.entries import Entry
from coordinator.core.limits import Limits
from coordinator.core.state import Applied
from coordinator.replication.node import NodeAddress, ReplicatedCoordinator, ReplicationConfig
from coordinator.rpc.coordinator_service import CoordinatorServicer
from coordinator.rpc.membership_service import MembershipServicer
from coordinator.runtime.local_cluster import free_ports
from coordinator.runtime.node import CoordinatorNode
from coordinator.runtime.operations import Operations, OperationsOptions, OperationsServicer
from coordinator.security.undecodable import RejectUndecodable

LEADER_WAIT_S = 10.0
SECRET = "test-secret-0123456789abcdef"


@dataclass
class Served:
    address: str
    node: CoordinatorNode
    operations: Operations
    undecodable: RejectUndecodable

    def commit_index(self) -> int:
        return self.node.replicated.status().commit_index

    def audit_records(self) -> list[dict[str, Any]]:
        return list(self.operations.audit.records(round_id="", since_ms=0, local=True))


async def until(predicate: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    """Poll ``predicate`` (bounded) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


@contextlib.asynccontextmanager
async def serving(root: Path, limits: Limits | None = None) -> AsyncIterator[Served]:
    (raft_port,) = free_ports(1)
    operations = Operations("n1", root, OperationsOptions())

    def replicated(on_apply: Callable[[int, Entry, Applied], None]) -> ReplicatedCoordinator:
        node = ReplicatedCoordinator(
            ReplicationConfig(
                node_id="n1",
                nodes=(NodeAddress(node_id="n1", raft=f"127.0.0.1:{raft_port}", grpc="-"),),
                data_dir=root,
                secret=SECRET,
                limits=limits or Limits(),
            ),
            operations.wrap(on_apply),
        )
        operations.attach(node)
        return node

    node = CoordinatorNode(replicated)
    undecodable = RejectUndecodable()
    server = grpc.aio.server(interceptors=[undecodable])
    servicer = CoordinatorServicer(node, node.replicated.grpc_directory)
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(
        OperationsServicer(operations, node), server
    )

    async def no_secret(address: str, node_id: str) -> bool | None:
        return None

    membership_pb2_grpc.add_MembershipServiceServicer_to_server(
        MembershipServicer(node.replicated, no_secret, operations.audit.note_local), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await until(node.replicated.is_leader, "the node to lead", LEADER_WAIT_S)
        # Its first entry (the leader's no-op) applied: an idle log from here on.
        await until(
            lambda: node.replicated.status().applied_index >= 1, "the first entry", LEADER_WAIT_S
        )
        yield Served(f"127.0.0.1:{port}", node, operations, undecodable)
    finally:
        await server.stop(None)
        await servicer.close()
        await operations.close()
        await node.close()
        operations.close_audit()
