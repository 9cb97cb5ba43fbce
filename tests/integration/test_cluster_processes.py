"""Two-phase commit across real processes: 3 `concord serve` nodes, 2 participants.

Each test checks all-or-nothing at the participants themselves (their LMDB state),
after the round is DONE (every participant acknowledged the decision).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from coordinator.security.identity import Role
from participant_sdk import OutcomeUnknown, SyncConcordClient, TransactionAborted, Unavailable
from tests.integration.conftest import (
    AgentProcess,
    begin_staged,
    concord,
    new_txn_id,
    wait_done,
    wait_for,
)

pytestmark = pytest.mark.integration


def _assert_all_or_nothing(agents: dict[str, AgentProcess], key: str, decision: Decision) -> None:
    present = {pid: key in agent.view()["state"] for pid, agent in agents.items()}
    expected = decision is Decision.COMMIT
    assert present == dict.fromkeys(agents, expected), (
        f"{decision.value}, but {key} present at {present}"
    )


def _commit_in_background(
    client: SyncConcordClient, txn_id: str
) -> tuple[ThreadPoolExecutor, Future[Decision]]:
    pool = ThreadPoolExecutor(1)
    return pool, pool.submit(client.commit, txn_id, timeout_s=30)


def _settle(future: Future[Decision], client: SyncConcordClient, txn_id: str) -> Decision:
    """The commit call's answer, or (if it could not know) the outcome resolved by id."""
    try:
        return future.result(timeout=60)
    except TransactionAborted:
        return Decision.ABORT
    except (OutcomeUnknown, Unavailable):
        return wait_for(f"the outcome of {txn_id} by id", lambda: client.outcome(txn_id))


def test_commit(client: SyncConcordClient, agents: dict[str, AgentProcess]) -> None:
    txn_id = begin_staged(client, agents)
    assert client.commit(txn_id) is Decision.COMMIT
    assert wait_done(client, txn_id) is Decision.COMMIT
    _assert_all_or_nothing(agents, f"k-{txn_id}", Decision.COMMIT)


def test_a_no_vote_aborts_everywhere(
    client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    txn_id = new_txn_id()
    txn = client.begin(["p1", "p2"], txn_id=txn_id)
    agents["p1"].stage(txn, f"k-{txn_id}", "v")
    agents["p2"].stage(txn, f"k-{txn_id}", "v", vote="no")
    with pytest.raises(TransactionAborted, match="told to vote no"):
        client.commit(txn_id)
    assert wait_done(client, txn_id) is Decision.ABORT
    _assert_all_or_nothing(agents, f"k-{txn_id}", Decision.ABORT)


def test_prepare_timeout_aborts(client: SyncConcordClient, agents: dict[str, AgentProcess]) -> None:
    txn_id = new_txn_id()
    txn = client.begin(["p1", "p2"], txn_id=txn_id, timeout_s=1.0)
    agents["p1"].stage(txn, f"k-{txn_id}", "v", vote_delay_s=3)
    agents["p2"].stage(txn, f"k-{txn_id}", "v")
    with pytest.raises(TransactionAborted):
        client.commit(txn_id)
    assert wait_done(client, txn_id) is Decision.ABORT
    _assert_all_or_nothing(agents, f"k-{txn_id}", Decision.ABORT)


def test_leader_sigkill_during_prepare(
    cluster: LocalCluster, client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    txn_id = new_txn_id()
    txn = client.begin(["p1", "p2"], txn_id=txn_id, timeout_s=20)
    agents["p1"].stage(txn, f"k-{txn_id}", "v", vote_delay_s=1.5)
    agents["p2"].stage(txn, f"k-{txn_id}", "v")
    pool, future = _commit_in_background(client, txn_id)
    with pool:
        wait_for("votes to be collected", lambda: client.get(txn_id).phase == "VOTING")
        cluster.kill(cluster.leader())
        decision = _settle(future, client, txn_id)
    assert wait_done(client, txn_id) is decision
    _assert_all_or_nothing(agents, f"k-{txn_id}", decision)


def test_leader_sigkill_during_decision_phase(
    cluster: LocalCluster, client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    """p2 votes, then stops (SIGSTOP) before it can apply the decision; the leader dies
    with the decision applied but unacknowledged; the new leader must finish it."""
    txn_id = new_txn_id()
    txn = client.begin(["p1", "p2"], txn_id=txn_id, timeout_s=20)
    agents["p1"].stage(txn, f"k-{txn_id}", "v", vote_delay_s=1.0)
    agents["p2"].stage(txn, f"k-{txn_id}", "v")
    pool, future = _commit_in_background(client, txn_id)
    try:
        with pool:
            wait_for("p2's vote", lambda: _voted(client, txn_id, "p2"))
            agents["p2"].pause()
            wait_for("the decision", lambda: client.get(txn_id).decision)
            cluster.kill(cluster.leader())
            agents["p2"].resume()
            decision = _settle(future, client, txn_id)
    finally:
        agents["p2"].resume()
    assert decision is Decision.COMMIT
    assert wait_done(client, txn_id) is Decision.COMMIT
    _assert_all_or_nothing(agents, f"k-{txn_id}", Decision.COMMIT)


def test_participant_sigkill_after_voting_yes_learns_the_decision(
    client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    txn_id = new_txn_id()
    txn = client.begin(["p1", "p2"], txn_id=txn_id, timeout_s=20)
    agents["p1"].stage(txn, f"k-{txn_id}", "v")
    agents["p2"].stage(txn, f"k-{txn_id}", "v", vote_delay_s=1.5)
    pool, future = _commit_in_background(client, txn_id)
    with pool:
        wait_for("p1's YES vote", lambda: _voted(client, txn_id, "p1"))
        agents["p1"].kill()
        assert _settle(future, client, txn_id) is Decision.COMMIT
    assert client.get(txn_id).phase == "DECIDED"  # p1 is down: it cannot have acknowledged
    agents["p1"].start()  # same data dir: it finds the YES vote in doubt and asks
    assert wait_done(client, txn_id) is Decision.COMMIT
    _assert_all_or_nothing(agents, f"k-{txn_id}", Decision.COMMIT)


def test_whole_cluster_sigkill_and_restart_loses_no_decision(
    cluster: LocalCluster, client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    decided = {}
    for vote in ("yes", "no", "yes"):
        txn_id = new_txn_id()
        txn = client.begin(["p1", "p2"], txn_id=txn_id)
        agents["p1"].stage(txn, f"k-{txn_id}", "v")
        agents["p2"].stage(txn, f"k-{txn_id}", "v", vote=vote)
        with contextlib.suppress(TransactionAborted):
            client.commit(txn_id)
        decided[txn_id] = wait_done(client, txn_id)
    for node_id in cluster.nodes:
        cluster.kill(node_id)
    cluster.start()
    cluster.leader()
    for txn_id, decision in decided.items():
        assert (
            wait_for(f"{txn_id} after the restart", lambda t=txn_id: client.get(t)).decision
            is decision
        )
    txn_id = begin_staged(client, agents)
    assert client.commit(txn_id) is Decision.COMMIT


def _voted(client: SyncConcordClient, txn_id: str, participant_id: str) -> bool:
    status = client.get(txn_id)
    return any(
        p.participant_id == participant_id and p.voted and p.yes for p in status.participants
    )


def test_global_checkpoint_then_rollback_reverts_every_participant(
    cluster: LocalCluster, agents: dict[str, AgentProcess]
) -> None:
    """`concord checkpoint`, a commit, then `concord rollback --to` that checkpoint:
    every participant's state is back where the checkpoint left it."""
    coordinators = ",".join(cluster.grpc_addresses)

    tls = cluster.transport(Role.CLIENT, CLIENT)
    with SyncConcordClient(cluster.grpc_addresses, tls=tls) as client:
        before = new_txn_id()
        txn = client.begin(["p1", "p2"], txn_id=before)
        for agent in agents.values():
            agent.stage(txn, f"k-{before}", "v")
        client.commit(before)
        wait_done(client, before)

        taken = concord(
            "checkpoint",
            "trip",
            "--participants=p1,p2",
            "--id=cp1",
            f"--coordinators={coordinators}",
        )
        assert taken.returncode == 0, taken.stderr
        assert "KEEP" in taken.stdout

        after = new_txn_id()
        txn = client.begin(["p1", "p2"], txn_id=after)
        for agent in agents.values():
            agent.stage(txn, f"k-{after}", "v")
        client.commit(after)
        wait_done(client, after)
        _assert_all_or_nothing(agents, f"k-{after}", Decision.COMMIT)

        reverted = concord(
            "rollback",
            "trip",
            "--to=cp1",
            "--participants=p1,p2",
            "--reason=guardrail",
            f"--coordinators={coordinators}",
        )
        assert reverted.returncode == 0, reverted.stderr
        assert "EXECUTE" in reverted.stdout
        round_id = reverted.stdout.split()[1]
        wait_done(client, round_id)
    _assert_all_or_nothing(agents, f"k-{after}", Decision.ABORT)  # reverted everywhere
    _assert_all_or_nothing(agents, f"k-{before}", Decision.COMMIT)  # kept: it is in the cut

    missing = concord(
        "rollback",
        "trip",
        "--to=nope",
        "--participants=p1,p2",
        "--reason=x",
        f"--coordinators={coordinators}",
    )
    assert (
        missing.returncode == 1 and "REJECT" in missing.stdout and "no checkpoint" in missing.stdout
    )
