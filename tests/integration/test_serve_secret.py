"""A node started with another cluster secret than its peers says so in one line and
exits 2, instead of sitting outside the cluster."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coordinator.runtime.local_cluster import LocalCluster

pytestmark = pytest.mark.integration


def test_a_wrong_secret_is_a_one_line_error(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    outsider = next(n for n in cluster.nodes if n != leader)
    cluster.stop_node(outsider)
    node = cluster.nodes[outsider]
    peers = [
        f"--peer={a.node_id}={a.raft},{a.grpc}" for a in cluster.addresses if a.node_id != outsider
    ]
    command = [
        sys.executable, "-m", "coordinator.runtime.cli", "serve", f"--node-id={outsider}",
        f"--raft={node.address.raft}", f"--grpc={node.address.grpc}", f"--data-dir={node.data_dir}",
        *peers,
    ]  # fmt: skip
    env = {**os.environ, "CONCORD_SECRET": "not-the-cluster-secret"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("concord: ") and "holds another cluster secret" in last, last
    cluster.start_node(outsider)  # with the right secret it rejoins
    assert cluster.leader()
