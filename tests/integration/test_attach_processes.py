"""An agent that only connects out, across real processes with mutual TLS: 3
`concord serve` nodes, p1 a kv_agent started with ``--connect=outbound`` (it serves no
gRPC port; the only port it listens on is the test's read-only HTTP view) and p2 a
dialled one. p1's transaction actions and votes travel on the stream it opened to the
leader; when the leader dies with p1's vote in doubt, p1 attaches to the new leader,
learns the decision and goes on committing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import OutcomeUnknown, SyncConcordClient, TransactionAborted, Unavailable
from tests.integration.conftest import (
    AgentProcess,
    agent_processes,
    begin_staged,
    new_txn_id,
    wait_done,
    wait_for,
)

pytestmark = pytest.mark.integration


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (Linux: its sockets in /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def mixed_agents(cluster: LocalCluster, tmp_path: Path) -> Iterator[dict[str, AgentProcess]]:
    with agent_processes(cluster, tmp_path, ("p1", "p2"), outbound=("p1",)) as started:
        yield started


def _commit_across(client: SyncConcordClient, agents: dict[str, AgentProcess]) -> None:
    """A transaction that writes at both agents commits, and both apply it."""
    txn_id = begin_staged(client, agents)
    assert client.commit(txn_id) is Decision.COMMIT
    assert wait_done(client, txn_id) is Decision.COMMIT
    assert _committed_everywhere(agents, f"k-{txn_id}")


def _voted(client: SyncConcordClient, txn_id: str, pid: str) -> bool:
    return any(p.participant_id == pid and p.voted for p in client.get(txn_id).participants)


def _committed_everywhere(agents: dict[str, AgentProcess], key: str) -> bool:
    return all(key in agent.view()["state"] for agent in agents.values())


def test_an_outbound_agent_commits_and_survives_a_leader_kill(
    cluster: LocalCluster, client: SyncConcordClient, mixed_agents: dict[str, AgentProcess]
) -> None:
    p1 = mixed_agents["p1"]
    assert p1.process is not None
    assert listening_ports(p1.process.pid) == {p1.http_port}, "p1 serves nothing but its view"

    # Actions and votes over the stream p1 opened.
    _commit_across(client, mixed_agents)

    # p1 votes YES, stops before the decision reaches it; the leader dies with it decided.
    txn_id = new_txn_id()
    txn = client.begin(["p1", "p2"], txn_id=txn_id, timeout_s=20)
    p1.stage(txn, f"k-{txn_id}", "v", vote_delay_s=0.5)
    mixed_agents["p2"].stage(txn, f"k-{txn_id}", "v")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.commit, txn_id, timeout_s=30)
        try:
            wait_for("p1's vote", lambda: _voted(client, txn_id, "p1"))
            p1.pause()
            wait_for("the decision", lambda: client.get(txn_id).decision)
            cluster.kill(cluster.leader())
        finally:
            p1.resume()
        try:
            decision = future.result(timeout=60)
        except TransactionAborted:
            decision = Decision.ABORT
        except (OutcomeUnknown, Unavailable):
            decision = wait_for("the outcome by id", lambda: client.outcome(txn_id))
    assert decision is Decision.COMMIT
    # p1 attached to the new leader (or asked it), and applied the decision.
    assert wait_done(client, txn_id) is Decision.COMMIT
    assert _committed_everywhere(mixed_agents, f"k-{txn_id}")
    assert wait_for("p1 with nothing in doubt", lambda: p1.view()["in_doubt"] == [] or None)

    # The new leader reaches p1 on its new stream: actions and commits go on.
    _commit_across(client, mixed_agents)
