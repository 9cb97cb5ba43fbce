"""Membership changes on real `concord serve` processes: a 4th node joins (`serve
--join`, then `concord cluster add-node`), a transaction commits, a founder is removed,
another commits, and restarted nodes come back with the members the log says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from concord.v1 import membership_pb2, membership_pb2_grpc
from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import LocalCluster, free_ports
from coordinator.security.identity import Role
from coordinator.security.transport import Transport
from participant_sdk import SyncConcordClient
from tests.integration.conftest import AgentProcess, begin_staged, concord, wait_for

pytestmark = pytest.mark.integration


def members_of(address: str) -> membership_pb2.ListMembersReply:
    """As the operator whose certificate the cluster fixture put in the environment."""
    transport = Transport.from_env(Role.OPERATOR, "") or Transport.insecure()
    with transport.channel(address, to=Role.NODE) as channel:
        stub = membership_pb2_grpc.MembershipServiceStub(channel)
        reply: membership_pb2.ListMembersReply = stub.ListMembers(
            membership_pb2.ListMembersRequest(), timeout=2.0
        )
        return reply


def ids(address: str) -> list[str]:
    return sorted(m.node_id for m in members_of(address).members)


class Joiner:
    """A 4th `concord serve --join` process, stopped by its PID."""

    def __init__(self, root: Path, secret: str, join: str, tls_flag: str) -> None:
        raft, grpc_port = free_ports(2)
        self.raft, self.grpc = f"127.0.0.1:{raft}", f"127.0.0.1:{grpc_port}"
        self.root, self.secret, self.join = root, secret, join
        self.tls_flag = tls_flag
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "coordinator.runtime.cli", "serve", "--node-id=c4",
            f"--raft={self.raft}", f"--grpc={self.grpc}", f"--data-dir={self.root / 'c4'}",
            f"--join={self.join}", self.tls_flag,
        ]  # fmt: skip
        env = {**os.environ, "CONCORD_SECRET": self.secret}
        with (self.root / "c4.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for("c4 to serve", lambda: self._alive() and members_of(self.grpc))

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.root / "c4.log").read_text()[-2000:]
            raise AssertionError(f"c4 exited: {log}")
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def joiner(cluster: LocalCluster, tmp_path: Path) -> Iterator[Joiner]:
    if cluster.insecure:
        tls_flag = "--insecure"
    else:
        cluster.transport(Role.NODE, "c4")  # its certificate, issued by the cluster's CA
        tls_flag = f"--tls-dir={cluster.tls_dir}"
    node = Joiner(tmp_path, cluster.secret, cluster.grpc_addresses[0], tls_flag)
    try:
        yield node
    finally:
        node.stop()


def commit(client: SyncConcordClient, agents: dict[str, AgentProcess]) -> str:
    txn_id = begin_staged(client, agents)
    assert client.commit(txn_id, timeout_s=30) is Decision.COMMIT
    return txn_id


def one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_add_commit_remove_commit_restart(
    cluster: LocalCluster,
    agents: dict[str, AgentProcess],
    client: SyncConcordClient,
    joiner: Joiner,
) -> None:
    founders = ",".join(cluster.grpc_addresses)
    to = f"--to={cluster.grpc_addresses[1]}"
    joiner.start()
    assert ids(joiner.grpc) == ["c1", "c2", "c3", "c4"]  # learnt from the leader

    # Mistakes: one line, exit 2, nothing changed.
    c1 = cluster.nodes["c1"].address
    one_line_error(
        concord("cluster", "add-node", "--id=c1", f"--raft={c1.raft}", f"--grpc={c1.grpc}", to),
        "already a member",
    )
    one_line_error(
        concord(
            "cluster", "add-node", "--id=c5", f"--raft={joiner.raft}", "--grpc=127.0.0.1:1", to
        ),
        "does not answer",
    )
    one_line_error(
        concord("cluster", "add-node", "--id=c4", f"--raft={c1.raft}", f"--grpc={joiner.grpc}", to),
        "in use by member c1",
    )
    one_line_error(concord("cluster", "remove-node", "--id=c9", to), "unknown node id 'c9'")
    (dead,) = free_ports(1)
    one_line_error(
        concord("cluster", "remove-node", "--id=c2", f"--to=127.0.0.1:{dead}"),
        "cannot reach the cluster's leader",
    )
    assert ids(cluster.grpc_addresses[0]) == ["c1", "c2", "c3"]

    added = concord(
        "cluster", "add-node", "--id=c4", f"--raft={joiner.raft}", f"--grpc={joiner.grpc}", to
    )
    assert added.returncode == 0, added.stderr
    assert "c4 caught up" in added.stdout and "members: c1 c2 c3 c4" in added.stdout
    status = concord("status", f"--coordinators={founders}")
    assert status.returncode == 0 and " c4 " in status.stdout, status.stdout
    for address in (*cluster.grpc_addresses, joiner.grpc):
        wait_for(f"{address} to list c4", lambda a=address: ids(a) == ["c1", "c2", "c3", "c4"])

    first = commit(client, agents)
    wait_for("c4 to apply the commit", lambda: members_of(joiner.grpc).applied_index > 0)

    # Remove a founder that does not lead, and stop it.
    leader = cluster.leader()
    gone = next(n for n in ("c1", "c2", "c3") if n != leader)
    removed = concord("cluster", "remove-node", f"--id={gone}", to)
    assert removed.returncode == 0, removed.stderr
    remaining = sorted({"c1", "c2", "c3", "c4"} - {gone})
    assert f"members: {' '.join(remaining)}\n" in removed.stdout, removed.stdout
    cluster.stop_node(gone)
    # Ask a node that is still a member (`to` may have been the one just removed).
    to = f"--to={cluster.nodes[leader].address.grpc}"
    one_line_error(concord("cluster", "remove-node", f"--id={leader}", to), "transfer-leader")
    follower = next(n for n in remaining if n not in (leader, "c4"))
    one_line_error(
        concord("cluster", "remove-node", f"--id={follower}", to), "would leave 2 members"
    )

    second = commit(client, agents)

    # Restart a founder with its original flags (they still name the removed node) and
    # the joined node: both come back with the members from their logs.
    cluster.stop_node(follower)
    joiner.stop()
    cluster.start_node(follower)
    joiner.start()
    follower_grpc = cluster.nodes[follower].address.grpc
    for address in (follower_grpc, joiner.grpc):
        wait_for(f"{address} to list {remaining}", lambda a=address: ids(a) == remaining)
        wait_for(f"{address} to know the leader", lambda a=address: members_of(a).leader_id)
    third = commit(client, agents)
    for txn_id in (first, second, third):
        assert client.outcome(txn_id) is Decision.COMMIT
    listing = concord("txn", "show", third, f"--coordinators={joiner.grpc}")
    assert listing.returncode == 0, listing.stderr
