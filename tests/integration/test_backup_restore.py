"""`concord backup` under load, and `concord restore` into a fresh 3-node cluster (real
processes; docs/operations.md, "Backup and restore").

A client commits one-shot transactions in a thread while the backup is taken from the
leader. The old cluster is then stopped, three new data dirs (new node addresses) are
seeded from the one file, and the new cluster starts on them: every transaction
decided before the backup started reads back with the same decision, the new
cluster's audit chain continues from the backed-up head, and `concord audit verify`
passes on every new node."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coordinator.core.types import Decision
from coordinator.replication.backup import read_backup
from coordinator.runtime.local_cluster import CLIENT, STARTED_MARK, LocalCluster
from coordinator.security.identity import Role
from participant_sdk import SyncConcordClient
from tests.integration.conftest import AgentProcess, OneShotLoad, concord, wait_for

pytestmark = pytest.mark.integration

COMMITS_MIN = 5


def _restored_cluster(old: LocalCluster, root: Path, backup: Path) -> LocalCluster:
    """A new 3-node cluster (new addresses, the old cluster's CA and secret kept as an
    operator restoring in place would) whose data dirs are seeded from ``backup``."""
    root.mkdir(parents=True)
    if not old.insecure:
        shutil.copytree(old.tls_dir, root / "tls")
    new = LocalCluster(root, 3, insecure=old.insecure)
    for address in new.addresses:
        peers = [
            f"--peer={a.node_id}={a.raft},{a.grpc}"
            for a in new.addresses
            if a.node_id != address.node_id
        ]
        restored = concord(
            "restore",
            str(backup),
            f"--data-dir={new.nodes[address.node_id].data_dir}",
            f"--node-id={address.node_id}",
            f"--raft={address.raft}",
            f"--grpc={address.grpc}",
            *peers,
        )
        assert restored.returncode == 0, restored.stderr
        assert "starting from applied index" in restored.stdout
    (root / STARTED_MARK).touch()  # no --new-cluster: the data dirs hold a Raft log
    return new


def _log_records(address: str) -> list[dict[str, object]]:
    exported = concord("audit", "export", "--no-local", f"--coordinators={address}")
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines()]


def test_backup_under_load_restores_every_decision_into_a_new_cluster(
    cluster: LocalCluster, agents: dict[str, AgentProcess], tmp_path: Path
) -> None:
    coordinators = ",".join(cluster.grpc_addresses)
    backup = tmp_path / "cluster.backup"
    with OneShotLoad(cluster) as load:
        load.wait_commits("the first commits", COMMITS_MIN)
        # decided before the backup started (and known to the client)
        before = {txn_id: told for txn_id, told in load.told().items() if told is not None}
        taken = concord("backup", f"--out={backup}", f"--coordinators={coordinators}")
        assert taken.returncode == 0, taken.stderr
        load.wait_commits("commits after the backup", 1)
    header = read_backup(backup)
    assert f"applied index {header.applied_index}" in taken.stdout
    assert header.audit_head is not None
    head_position, head_hash = header.audit_head
    exported = concord("audit", "export", f"--coordinators={cluster.grpc_addresses[0]}")
    assert exported.returncode == 0, exported.stderr
    old_records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert any(r.get("hash") == head_hash for r in old_records), "head not in the old chain"
    cluster.stop()

    new = _restored_cluster(cluster, tmp_path / "restored", backup)
    try:
        new.start()
        new.wait_all_serving()
        tls = new.transport(Role.CLIENT, CLIENT)
        with SyncConcordClient(new.grpc_addresses, tls=tls, call_timeout_s=5.0) as client:
            for txn_id, told in before.items():
                assert client.get(txn_id).decision is told, txn_id
            # A new entry: its audit record continues the chain from the backed-up head.
            fresh = client.begin(txn_id="after-restore")
            assert client.abort(fresh.id, "after restore") is Decision.ABORT
        new_coordinators = ",".join(new.grpc_addresses)
        for node in new.nodes.values():
            records = wait_for(
                f"{node.address.node_id}'s audit records of the new entries",
                lambda n=node.address.grpc: _log_records(n),
            )
            assert records[0]["prev_hash"] == head_hash, (head_position, records[0])
        verified = concord("audit", "verify", f"--coordinators={new_coordinators}")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.count("log chain: ok") == 3, verified.stdout
    finally:
        new.stop()
