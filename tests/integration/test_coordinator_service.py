"""CoordinatorService on real nodes: followers forward, health and reflection answer,
and WatchTxns streams applied changes."""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from concord.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from coordinator.runtime.local_cluster import OPERATOR, LocalCluster
from coordinator.security.identity import Role

pytestmark = pytest.mark.integration


def _channel(cluster: LocalCluster, address: str) -> grpc.Channel:
    """As the cluster's operator (an identity that may call every method used here)."""
    return cluster.transport(Role.OPERATOR, OPERATOR).channel(address, to=Role.NODE)


def _stub(
    cluster: LocalCluster, address: str
) -> tuple[grpc.Channel, coordinator_pb2_grpc.CoordinatorServiceStub]:
    channel = _channel(cluster, address)
    return channel, coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def test_a_follower_forwards_writes_and_reads_to_the_leader(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    channel, stub = _stub(cluster, cluster.nodes[follower].address.grpc)
    with channel:
        txn_id = f"t-{uuid.uuid4().hex[:8]}"
        stub.BeginTxn(coordinator_pb2.BeginTxnRequest(txn_id=txn_id, timeout_ms=10_000), timeout=10)
        reply = stub.Abort(coordinator_pb2.AbortRequest(txn_id=txn_id, reason="test"), timeout=10)
        assert reply.decision == common_pb2.DECISION_ABORT
        status = stub.GetTxn(coordinator_pb2.GetTxnRequest(round_id=txn_id), timeout=10)
        assert (status.round_id, status.decision) == (txn_id, common_pb2.DECISION_ABORT)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetTxn(coordinator_pb2.GetTxnRequest(round_id="never-begun"), timeout=10)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as bad:
            stub.BeginTxn(coordinator_pb2.BeginTxnRequest(txn_id="x" * 1000), timeout=10)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_every_node_serves_health_and_reflection(cluster: LocalCluster) -> None:
    for node in cluster.nodes.values():
        with _channel(cluster, node.address.grpc) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(
                health_pb2.HealthCheckRequest(service="concord.v1.CoordinatorService"), timeout=5
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (reply,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
            names = {s.name for s in reply.list_services_response.service}
            assert "concord.v1.CoordinatorService" in names


def test_watch_streams_applied_changes_of_a_round(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    channel, stub = _stub(cluster, cluster.nodes[follower].address.grpc)
    _, writer = _stub(cluster, cluster.nodes[leader].address.grpc)
    with channel:
        # The watch must be registered before the round's first write, and a retried
        # BeginTxn changes nothing once applied: so each try watches a fresh id.
        for _ in range(10):
            txn_id = f"t-{uuid.uuid4().hex[:8]}"
            events: queue.Queue[tuple[str, int]] = queue.Queue()
            stream = stub.WatchTxns(coordinator_pb2.WatchTxnsRequest(round_id=txn_id), timeout=60)
            reader = threading.Thread(target=_read_events, args=(stream, events), daemon=True)
            reader.start()
            writer.BeginTxn(
                coordinator_pb2.BeginTxnRequest(txn_id=txn_id, timeout_ms=10_000), timeout=10
            )
            try:
                seen = events.get(timeout=2)
                break
            except queue.Empty:
                stream.cancel()
                reader.join(timeout=10)
        else:
            pytest.fail("no WatchTxns event for a begin in 10 tries")
        assert seen == ("ACTIVE", common_pb2.DECISION_UNSPECIFIED)
        writer.Abort(coordinator_pb2.AbortRequest(txn_id=txn_id), timeout=10)
        assert events.get(timeout=10) == ("DONE", common_pb2.DECISION_ABORT)
        stream.cancel()
        reader.join(timeout=10)


def _read_events(stream: Any, events: queue.Queue[tuple[str, int]]) -> None:
    try:
        for event in stream:
            events.put((event.round.phase, event.round.decision))
    except grpc.RpcError:
        pass


def test_a_commit_can_carry_its_begin(cluster: LocalCluster) -> None:
    """A client whose BeginTxn is still travelling sends it with the commit: both are
    proposed together; a begin already applied makes the carried one a no-op."""
    channel, stub = _stub(cluster, cluster.nodes[cluster.leader()].address.grpc)
    with channel:
        fresh = f"t-{uuid.uuid4().hex[:8]}"
        begin = coordinator_pb2.BeginTxnRequest(txn_id=fresh, timeout_ms=10_000)
        reply = stub.Commit(
            coordinator_pb2.CommitRequest(txn_id=fresh, wait_for_decision=True, begin=begin),
            timeout=10,
        )
        assert reply.decision == common_pb2.DECISION_COMMIT  # no participants: decided at once
        # The begin that was travelling arrives late: a no-op, the decision stands.
        stub.BeginTxn(begin, timeout=10)
        status = stub.GetTxn(coordinator_pb2.GetTxnRequest(round_id=fresh), timeout=10)
        assert status.decision == common_pb2.DECISION_COMMIT

        other = f"t-{uuid.uuid4().hex[:8]}"
        with pytest.raises(grpc.RpcError) as mismatch:
            stub.Commit(coordinator_pb2.CommitRequest(txn_id=other, begin=begin), timeout=10)
        assert mismatch.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        clash = coordinator_pb2.BeginTxnRequest(
            txn_id=fresh, timeout_ms=10_000, participants=["someone-else"]
        )
        with pytest.raises(grpc.RpcError) as reused:
            stub.Commit(coordinator_pb2.CommitRequest(txn_id=fresh, begin=clash), timeout=10)
        assert reused.value.code() is grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
