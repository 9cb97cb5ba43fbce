"""Sagas on real processes: a 3-node cluster, three SDK agents whose saga steps change
an "outside world" (an fsynced ledger per agent, tests/integration/kv_agent.py), and
crashes of the leader and of a participant in the middle of a step.

What every test checks at the end is the outside world: each step's effect exists
exactly once when the saga completed, and is undone exactly once (in reverse step
order) when it was compensated; a step that never ran has no effect and no undo.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import SagaResult, SagaStep, SyncConcordClient
from tests.integration.conftest import AgentProcess, agent_processes, concord, wait_for

pytestmark = pytest.mark.integration

AGENTS = ("p1", "p2", "p3")


@pytest.fixture
def saga_agents(cluster: LocalCluster, tmp_path: Path) -> Iterator[dict[str, AgentProcess]]:
    with agent_processes(cluster, tmp_path, AGENTS) as started:
        yield started


def _steps(saga_id: str) -> list[SagaStep]:
    return [SagaStep(participant_id=p, action="put", payload={"saga": saga_id}) for p in AGENTS]


def _key(saga_id: str, index: int) -> str:
    return f"{saga_id}/{index}"


def _assert_world(
    agents: dict[str, AgentProcess], saga_id: str, done: set[int], undone: set[int]
) -> None:
    for index, pid in enumerate(AGENTS):
        key = _key(saga_id, index)
        ops = [op for op, k in agents[pid].world() if k == key and op in ("do", "undo")]
        expected = (["do"] if index in done else []) + (["undo"] if index in undone else [])
        assert ops == expected, f"step {index} at {pid}: {ops}, expected {expected}"


def _undo_order(agents: dict[str, AgentProcess], saga_id: str) -> list[int]:
    """Steps in the order their undo reached the outside world (ledger times)."""
    times = []
    for index, pid in enumerate(AGENTS):
        path = agents[pid].world_path
        for entry in map(json.loads, path.read_text().splitlines() if path.exists() else []):
            if entry["op"] == "undo" and entry["key"] == _key(saga_id, index):
                times.append((entry["t"], index))
    return [index for _, index in sorted(times)]


def test_a_saga_completes_with_every_effect_once(
    client: SyncConcordClient, saga_agents: dict[str, AgentProcess]
) -> None:
    saga_id = f"trip-{uuid.uuid4()}"
    result = client.run_saga(_steps(saga_id), saga_id=saga_id, step_timeout_s=10)
    assert (result.outcome, result.finished) == ("COMPLETED", True), result
    assert [s.status for s in result.steps] == ["DONE", "DONE", "DONE"]
    assert result.steps[1].result == f"done:{_key(saga_id, 1)}".encode()
    _assert_world(saga_agents, saga_id, done={0, 1, 2}, undone=set())


def test_a_failed_step_compensates_the_steps_before_it_in_reverse(
    client: SyncConcordClient, saga_agents: dict[str, AgentProcess]
) -> None:
    saga_id = f"trip-{uuid.uuid4()}"
    saga_agents["p3"].set_saga_mode(fail=[_key(saga_id, 2)])
    result = client.run_saga(_steps(saga_id), saga_id=saga_id, step_timeout_s=10)
    assert (result.outcome, result.finished) == ("COMPENSATED", True), result
    assert "step 2 (put at p3) failed" in result.reason
    assert [s.status for s in result.steps] == ["COMPENSATED", "COMPENSATED", "FAILED"]
    _assert_world(saga_agents, saga_id, done={0, 1}, undone={0, 1})
    assert _undo_order(saga_agents, saga_id) == [1, 0]


def test_a_leader_killed_mid_saga_does_not_repeat_or_lose_a_step(
    cluster: LocalCluster, client: SyncConcordClient, saga_agents: dict[str, AgentProcess]
) -> None:
    saga_id = f"trip-{uuid.uuid4()}"
    saga_agents["p2"].set_saga_mode(block_s={_key(saga_id, 1): 1.5})
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.run_saga, _steps(saga_id), saga_id=saga_id, step_timeout_s=20)
        wait_for("step 0 to be done", lambda: client.saga(saga_id).steps[0].status == "DONE")
        cluster.kill(cluster.leader())
        result: SagaResult = future.result(timeout=60)
    assert result.outcome == "COMPLETED", result
    _assert_world(saga_agents, saga_id, done={0, 1, 2}, undone=set())


def test_a_participant_killed_after_its_effect_reruns_the_step_once_in_effect(
    client: SyncConcordClient, saga_agents: dict[str, AgentProcess]
) -> None:
    saga_id = f"trip-{uuid.uuid4()}"
    saga_agents["p2"].set_saga_mode(crash_after_effect=[_key(saga_id, 1)])
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.run_saga, _steps(saga_id), saga_id=saga_id, step_timeout_s=30)
        process = saga_agents["p2"].process
        assert process is not None
        wait_for("p2 to die after its effect", lambda: process.poll() is not None)
        saga_agents["p2"].start()  # same data dir: the step's intent is durable, it reruns
        result: SagaResult = future.result(timeout=60)
    assert result.outcome == "COMPLETED", result
    _assert_world(saga_agents, saga_id, done={0, 1, 2}, undone=set())


def test_an_escalated_compensation_holds_the_saga_until_an_operator_resolves_it(
    cluster: LocalCluster, client: SyncConcordClient, saga_agents: dict[str, AgentProcess]
) -> None:
    saga_id = f"trip-{uuid.uuid4()}"
    saga_agents["p3"].set_saga_mode(fail=[_key(saga_id, 2)])
    saga_agents["p2"].set_saga_mode(compensation_fails=True)
    held = client.run_saga(_steps(saga_id), saga_id=saga_id, step_timeout_s=10)
    assert held.escalated == [1] and not held.finished, held
    assert "refund API is down" in held.steps[1].reason
    _assert_world(saga_agents, saga_id, done={0, 1}, undone=set())  # step 0 waits: reverse order

    coordinators = ",".join(cluster.grpc_addresses)
    status = json.loads(concord("status", "--json", "--coordinators", coordinators).stdout)
    assert {n["rounds_escalated"] for n in status["nodes"]} == {1}, status["nodes"]
    show = concord("txn", "show", saga_id, "--coordinators", coordinators)
    assert "ESCALATED" in show.stdout and "concord txn resolve" in show.stdout, show.stdout
    wrong = concord("txn", "resolve", saga_id, "--step", "0", "--coordinators", coordinators)
    assert wrong.returncode == 2 and "not escalated" in wrong.stderr, wrong.stderr
    resolved = concord(
        "txn", "resolve", saga_id, "--step", "1", "--note", "refunded by hand",
        "--coordinators", coordinators,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr
    done = wait_for("the saga to finish", lambda: _finished(client, saga_id))
    assert [s.status for s in done.steps] == ["COMPENSATED", "RESOLVED", "FAILED"]
    _assert_world(saga_agents, saga_id, done={0, 1}, undone={0})


def _finished(client: SyncConcordClient, saga_id: str) -> SagaResult | None:
    result = client.saga(saga_id)
    return result if result.finished else None
