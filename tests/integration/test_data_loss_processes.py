"""An operator mistake, a lost volume, must stop the node, not the data: two of three
nodes restarted with empty data dirs refuse to start (without the guard they elected a
leader among themselves with an empty log, and committed decisions were lost)."""

from __future__ import annotations

import shutil
import uuid

import grpc
import pytest

from concord.v1 import coordinator_pb2
from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import SyncConcordClient
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def test_nodes_whose_data_dirs_were_wiped_refuse_to_start(
    cluster: LocalCluster, client: SyncConcordClient
) -> None:
    txn_id = f"t-{uuid.uuid4().hex[:8]}"
    client.begin([], txn_id=txn_id)
    assert client.commit(txn_id) is Decision.COMMIT
    cluster.stop()
    wiped = ["c1", "c2"]
    for node_id in wiped:
        shutil.rmtree(cluster.nodes[node_id].data_dir)
    for node_id in cluster.nodes:
        node = cluster.nodes[node_id]
        command = node.process.args if node.process is not None else None
        assert command is not None and "--new-cluster" in command  # their first start
    for node_id in wiped:  # restarted as an operator would: the same flags, minus the first
        cluster.start_node(node_id)
    cluster.start_node("c3")
    for node_id in wiped:
        node = cluster.nodes[node_id]
        assert node.process is not None
        assert "--new-cluster" not in node.process.args
        wait_for(f"{node_id} to refuse", lambda n=node: n.process.poll() is not None)
        assert node.process.returncode == 2
        last = node.log_path.read_text().strip().splitlines()[-1]
        assert "holds no Raft log" in last and "--new-cluster" in last, last
    # The one node with its data keeps it, and leads nothing alone (asked once its gRPC
    # port answers: it opens after the node has loaded its journal).
    assert cluster.nodes["c3"].alive
    status = wait_for("c3 to answer", lambda: _status(cluster, "c3"))
    assert status.leader_id == ""


def _status(cluster: LocalCluster, node_id: str) -> coordinator_pb2.ClusterStatusReply | None:
    try:
        return cluster.status(node_id)
    except grpc.RpcError:
        return None
