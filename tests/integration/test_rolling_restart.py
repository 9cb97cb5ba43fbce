"""The upgrade procedure of docs/operations.md ("Upgrades: a rolling restart"), run
under load on a real 3-node cluster with 2 participant processes: one node at a time,
the leader last after moving its leadership away, each stopped with SIGTERM, started
again on its data dir, and caught up before the next. Throughout, a client commits
one-shot transactions. Afterwards every decision a client was told is the cluster's
decision, every transaction is all-or-nothing at both participants, and commits went
on while each node was down (two of three nodes are a majority)."""

from __future__ import annotations

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import SyncConcordClient
from tests.integration.conftest import AgentProcess, OneShotLoad, concord, wait_done, wait_for

pytestmark = pytest.mark.integration

COMMITS_WHILE_DOWN_MIN = 3


def _caught_up(cluster: LocalCluster, node_id: str) -> bool:
    leader = cluster.leader()
    target = cluster.status(leader).commit_index
    return cluster.status(node_id).applied_index >= target


def test_a_rolling_restart_under_load_loses_no_decision(
    cluster: LocalCluster, client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    coordinators = ",".join(cluster.grpc_addresses)
    first_leader = cluster.leader()
    order = [n for n in cluster.nodes if n != first_leader] + [first_leader]
    with OneShotLoad(cluster) as load:
        load.wait_commits("the first commits", COMMITS_WHILE_DOWN_MIN)
        for node_id in order:
            if cluster.leader() == node_id:
                moved = concord("cluster", "transfer-leader", f"--coordinators={coordinators}")
                assert moved.returncode == 0, moved.stderr
                wait_for(f"leadership away from {node_id}", lambda n=node_id: cluster.leader() != n)
            cluster.stop_node(node_id)
            load.wait_commits(f"commits while {node_id} is down", COMMITS_WHILE_DOWN_MIN)
            cluster.start_node(node_id)
            wait_for(f"{node_id} caught up", lambda n=node_id: _caught_up(cluster, n))
        load.wait_commits("commits after the last restart", COMMITS_WHILE_DOWN_MIN)

    told = load.told()
    decided = {txn_id: wait_done(client, txn_id) for txn_id in told}
    for txn_id, answer in told.items():
        if answer is not None:
            assert decided[txn_id] is answer, (txn_id, answer, decided[txn_id])
    views = {pid: agent.view()["state"] for pid, agent in agents.items()}
    for txn_id, decision in decided.items():
        present = {pid: f"k-{txn_id}" in state for pid, state in views.items()}
        assert present == dict.fromkeys(agents, decision is Decision.COMMIT), (txn_id, present)
    assert sum(d is Decision.COMMIT for d in decided.values()) >= 5 * COMMITS_WHILE_DOWN_MIN
