"""Operator tools against real `concord serve` processes: audit export/verify on every
node (identical chains, also after a restart), txn abort/retry/list --in-doubt, status,
transfer-leader, and the metrics endpoint with JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import LocalCluster, free_ports
from participant_sdk import SyncConcordClient
from tests.integration.conftest import AgentProcess, concord, new_txn_id, wait_for

pytestmark = pytest.mark.integration


def _log_chain(address: str) -> list[dict[str, Any]]:
    result = concord("audit", "export", f"--coordinators={address}", "--no-local")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _chains_agree(cluster: LocalCluster) -> list[dict[str, Any]]:
    """Every live node's log chain, once they all hold the same number of records."""

    def same() -> list[dict[str, Any]] | None:
        chains = [_log_chain(n.address.grpc) for n in cluster.nodes.values() if n.alive]
        return chains[0] if all(c == chains[0] for c in chains) else None

    return wait_for("every node to hold the same audit chain", same)


def test_audit_chain_is_identical_on_every_node_and_survives_a_restart(
    cluster: LocalCluster, client: SyncConcordClient
) -> None:
    coordinators = ",".join(cluster.grpc_addresses)
    committed, stuck = new_txn_id(), new_txn_id()
    client.begin([], txn_id=committed)
    assert client.commit(committed) is Decision.COMMIT
    client.begin(["nobody"], txn_id=stuck, timeout_s=60)
    aborted = concord("txn", "abort", stuck, "--reason=stuck", f"--coordinators={coordinators}")
    assert aborted.returncode == 0 and "ABORT" in aborted.stdout, aborted.stderr
    again = concord("txn", "abort", committed, f"--coordinators={coordinators}")
    assert again.returncode == 1 and "already decided COMMIT" in again.stderr

    chain = _chains_agree(cluster)
    events = [(r["event"], r["round_id"]) for r in chain]
    assert ("decision", committed) in events and ("decision", stuck) in events
    [abort] = [r for r in chain if r["event"] == "abort_requested" and r["round_id"] == stuck]
    assert abort["detail"]["operator"] is True and "stuck" in abort["detail"]["reason"]

    only = concord("audit", "export", f"--coordinators={coordinators}", f"--txn={stuck}")
    assert {json.loads(line)["round_id"] for line in only.stdout.splitlines()} == {stuck}

    follower = next(n for n in cluster.nodes if n != cluster.leader())
    cluster.stop_node(follower)
    more = new_txn_id()
    client.begin([], txn_id=more)
    client.commit(more)
    offline = concord("audit", "verify", f"--data-dir={cluster.nodes[follower].data_dir}")
    assert offline.returncode == 0 and "log chain: ok" in offline.stdout, offline
    cluster.start_node(follower)
    chain = _chains_agree(cluster)
    assert ("decision", more) in [(r["event"], r["round_id"]) for r in chain]
    verified = concord("audit", "verify", f"--coordinators={coordinators}")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("log chain: ok") == 3


def test_in_doubt_listing_retry_and_status(
    cluster: LocalCluster, client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    coordinators = ",".join(cluster.grpc_addresses)
    txn_id = new_txn_id()
    txn = client.begin(["p1", "p2"], txn_id=txn_id, timeout_s=30)
    agents["p1"].stage(txn, f"k-{txn_id}", "v")
    # long enough for three CLI processes to start and answer on a loaded machine
    agents["p2"].stage(txn, f"k-{txn_id}", "v", vote_delay_s=8)
    committing = threading.Thread(target=lambda: client.commit(txn_id, timeout_s=30))
    committing.start()
    try:
        wait_for(
            "p1's YES vote",
            lambda: any(
                p.voted and p.participant_id == "p1" for p in client.get(txn_id).participants
            ),
        )
        listed = concord("txn", "list", "--in-doubt", f"--coordinators={coordinators}")
        assert listed.returncode == 0 and txn_id in listed.stdout and "p1" in listed.stdout
        status = concord("status", "--json", f"--coordinators={coordinators}")
        assert status.returncode == 0, status.stderr
        nodes = json.loads(status.stdout)["nodes"]
        assert len(nodes) == 3 and any(n["rounds_in_doubt"] >= 1 for n in nodes)
        assert all(n["tls_identity"].startswith("concord://local/node/") for n in nodes)
        table = concord("status", f"--coordinators={coordinators}")
        assert table.returncode == 0 and "certificates:" in table.stdout, table.stderr
        assert "concord://local/node/c1  until " in table.stdout
        retried = concord("txn", "retry", txn_id, f"--coordinators={coordinators}")
        assert retried.returncode == 0 and "VOTING" in retried.stdout, retried.stderr
        table = concord("status", f"--coordinators={coordinators}")
        assert table.returncode == 0 and "IN-DOUBT" in table.stdout and "leader" in table.stdout
    finally:
        committing.join(60)
    assert client.outcome(txn_id) is Decision.COMMIT
    missing = concord("txn", "retry", "no-such-txn", f"--coordinators={coordinators}")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_transfer_leader_is_recorded_locally(cluster: LocalCluster) -> None:
    coordinators = ",".join(cluster.grpc_addresses)
    before = cluster.leader()
    target = next(n for n in cluster.nodes if n != before)
    moved = concord(
        "cluster", "transfer-leader", f"--to={target}", f"--coordinators={coordinators}"
    )
    assert moved.returncode == 0, moved.stderr
    assert cluster.leader() == target
    old = concord("audit", "export", f"--coordinators={cluster.nodes[before].address.grpc}")
    local = [json.loads(line) for line in old.stdout.splitlines() if '"local":true' in line]
    assert any(r["event"] == "operator_transfer_leader" for r in local)
    unknown = concord("cluster", "remove-node", "--id=c9", f"--coordinators={coordinators}")
    assert unknown.returncode == 2 and "unknown node id 'c9'" in unknown.stderr


@pytest.fixture
def metrics_node(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    raft, grpc_port, metrics = free_ports(3)
    log_path = tmp_path / "node.log"
    command = [
        sys.executable, "-m", "coordinator.runtime.cli", "serve", "--node-id=c1",
        f"--raft=127.0.0.1:{raft}", f"--grpc=127.0.0.1:{grpc_port}",
        f"--data-dir={tmp_path / 'c1'}", f"--metrics=127.0.0.1:{metrics}",
        "--log-format=json", "--insecure", "--new-cluster",
    ]  # fmt: skip
    env = {**os.environ, "CONCORD_SECRET": "s3cret-0123456789abcdef"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics}/metrics", log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_metrics_endpoint_and_json_logs(metrics_node: tuple[str, str, Path]) -> None:
    address, url, log_path = metrics_node
    wait_for("a leader", lambda: "concord_is_leader 1.0" in _scrape(url))
    with SyncConcordClient([address], call_timeout_s=5.0) as client:
        txn_id = new_txn_id()
        client.begin([], txn_id=txn_id)
        assert client.commit(txn_id) is Decision.COMMIT

    def counted() -> str | None:
        text = _scrape(url)
        return text if 'outcome="COMMIT"} 1.0' in text else None

    text = wait_for("the decision to be counted", counted)
    for name in (
        "concord_term",
        "concord_raft_apply_lag",
        "concord_rounds_in_doubt",
        "concord_decision_latency_seconds_bucket",
        "concord_proposals_overloaded_total",
    ):
        assert name in text, name
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines)
