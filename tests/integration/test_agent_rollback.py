"""Coordinated rollback reaches the agent's own state and the outside world: a global
checkpoint round saves each agent's state (AgentRollback.capture) under the round's
checkpoint id; a rollback round's EXECUTE restores it through the agent's Reverter,
compensates the effects made since (newest first), and runs the verify hook, whose
failure is reported, never hidden.

A real 3-node cluster (processes); the two agents run in this process (the SDK's
plain-thread mode) with in-memory stores, so the test can look at their state.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import (
    AgentRollback,
    Decision,
    Effect,
    EffectLog,
    MemoryCheckpointStore,
    Participant,
    ParticipantOptions,
    RestoreResult,
    Reverter,
    Role,
    SyncConcordClient,
)
from tests.integration.conftest import concord, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Agent:
    """A tiny agent: a plan in memory, charges made through its effect log."""

    name: str
    bank: list[tuple[str, str]]  # the outside world: ("charge"|"refund", key)
    verify_ok: bool = True
    plan: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # more state: each note a key
    restored: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.effects = EffectLog(sleep=lambda s: None)
        self.reverter = Reverter(MemoryCheckpointStore(), effects=self.effects)

        def refund(effect: Effect) -> None:
            self.bank.append(("refund", effect.key))

        @self.effects.compensable(compensate=refund, name=f"{self.name}.charge")
        def charge(amount: int, idempotency_key: str) -> int:
            self.bank.append(("charge", idempotency_key))
            return amount

        self.charge = charge

    def binding(self) -> AgentRollback:
        return AgentRollback(
            reverter=self.reverter,
            capture=self.state,
            restored=self._restored,
            verify=lambda result: (self.verify_ok, f"{self.name}: refunds match the bank"),
        )

    def state(self) -> dict[str, Any]:
        return {"plan": list(self.plan), **self.notes}

    def _restored(self, result: RestoreResult) -> None:
        state = dict(result.checkpoint.state)
        self.plan = list(state.pop("plan"))
        self.notes = state
        self.restored.set()


@pytest.fixture
def rollback_agents(cluster: LocalCluster) -> Iterator[tuple[dict[str, Agent], list[Any]]]:
    bank: list[tuple[str, str]] = []
    agents = {name: Agent(name, bank) for name in ("flights", "payments")}
    participants = []
    try:
        for name, agent in agents.items():
            participant = Participant(
                name,
                None,
                cluster.grpc_addresses,
                rollback=agent.binding(),
                tls=cluster.transport(Role.PARTICIPANT, name),
            )
            participant.start_in_thread()
            participants.append(participant)
            participant.wait_registered_in_thread()
        yield agents, participants
    finally:
        for participant in participants:
            participant.stop_in_thread()


def test_a_rollback_round_restores_each_agent_and_compensates_its_effects(
    client: SyncConcordClient, rollback_agents: tuple[dict[str, Agent], list[Any]]
) -> None:
    agents, participants = rollback_agents
    names = list(agents)
    for agent in agents.values():
        agent.plan = ["search"]
    cp = f"cp-{uuid.uuid4()}"
    kept = client.global_checkpoint(session_id="trip", participants=names, checkpoint_id=cp)
    assert kept.decision is Decision.COMMIT
    _wait_done(client, kept.round_id)
    # The agents go on: plans change, money moves.
    for agent in agents.values():
        agent.plan.append("book")
    agents["payments"].charge(1200, idempotency_key="charge-1")
    agents["payments"].charge(300, idempotency_key="charge-2")
    agents["payments"].verify_ok = False  # its verify hook will find a mismatch

    result = client.request_rollback(
        session_id="trip", participants=names, checkpoint_id=cp, reason="price above budget"
    )
    assert result.decision is Decision.COMMIT  # EXECUTE
    for agent in agents.values():
        assert agent.restored.wait(30), f"{agent.name} was not restored"
        assert agent.plan == ["search"]
    # Compensated newest first, each once.
    bank = agents["payments"].bank
    assert [entry for entry in bank if entry[0] == "refund"] == [
        ("refund", "charge-2"),
        ("refund", "charge-1"),
    ]
    payments = next(p for p in participants if p.participant_id == "payments")
    flights = next(p for p in participants if p.participant_id == "flights")
    attention = wait_for("the failed verification to be reported", payments.attention)
    assert "verification failed" in attention[0] and cp in attention[0]
    assert flights.attention() == []
    assert any(e.event == "verification_failed" for e in payments.store.audit())


def test_a_rollback_to_a_delta_checkpoint_restores_exactly_its_state(
    client: SyncConcordClient, rollback_agents: tuple[dict[str, Agent], list[Any]]
) -> None:
    """The second checkpoint of each agent is stored as a delta (the keys changed or
    removed since the full one before it); rolling back to it rebuilds exactly the
    state captured then, not the full one's and not the latest."""
    agents, _ = rollback_agents
    names = list(agents)
    for agent in agents.values():
        agent.plan = ["search"]
        agent.notes = {f"note/{i}": f"{agent.name} fact {i}. " * 20 for i in range(20)}
    full = _checkpoint(client, names)
    for agent in agents.values():
        agent.plan.append("compare")
        agent.notes["note/3"] = "revised"
        del agent.notes["note/7"]
        agent.notes["note/new"] = "learned"
    expected = {name: agent.state() for name, agent in agents.items()}
    delta = _checkpoint(client, names)
    for agent in agents.values():
        kinds = [agent.reverter.checkpoints.load(cp).info.kind for cp in (full, delta)]
        assert kinds == ["full", "delta"], (agent.name, kinds)
        agent.plan.append("book")
        agent.notes["note/1"] = "overwritten"
        agent.notes["note/later"] = "added after"
        del agent.notes["note/9"]

    result = client.request_rollback(
        session_id="trip", participants=names, checkpoint_id=delta, reason="back a step"
    )

    assert result.decision is Decision.COMMIT  # EXECUTE
    for name, agent in agents.items():
        assert agent.restored.wait(30), f"{name} was not restored"
        assert agent.state() == expected[name]


def _checkpoint(client: SyncConcordClient, names: list[str]) -> str:
    cp = f"cp-{uuid.uuid4()}"
    kept = client.global_checkpoint(session_id="trip", participants=names, checkpoint_id=cp)
    assert kept.decision is Decision.COMMIT
    _wait_done(client, kept.round_id)
    return cp


def test_a_rollback_to_a_checkpoint_an_agent_lacks_is_rejected_with_its_reason(
    client: SyncConcordClient, rollback_agents: tuple[dict[str, Agent], list[Any]]
) -> None:
    agents, _ = rollback_agents
    names = list(agents)
    cp = f"cp-{uuid.uuid4()}"
    kept = client.global_checkpoint(session_id="trip", participants=names, checkpoint_id=cp)
    assert kept.decision is Decision.COMMIT
    _wait_done(client, kept.round_id)
    agents["flights"].reverter.checkpoints.drop(cp)  # the agent lost its side of it
    result = client.request_rollback(
        session_id="trip", participants=names, checkpoint_id=cp, reason="guardrail"
    )
    assert result.decision is Decision.ABORT  # REJECT
    status = client.get(result.round_id)
    reasons = {p.participant_id: p.reason for p in status.participants}
    assert f"agent checkpoint {cp!r}" in reasons["flights"]
    assert not any(agent.restored.is_set() for agent in agents.values())


def _wait_done(client: SyncConcordClient, round_id: str) -> None:
    """A round holds its participants until every one acknowledged (a rollback asked
    for meanwhile is refused BUSY)."""
    wait_for(f"round {round_id} to be done", lambda: client.get(round_id).phase == "DONE")


def test_an_escalated_compensation_is_shown_by_txn_show_until_resolved(
    cluster: LocalCluster, client: SyncConcordClient
) -> None:
    """A transaction aborts; the agent's refund keeps failing and escalates; the
    participant reports it and `concord txn show` names it; resolved in the agent, the
    report clears and the show no longer does."""
    effects = EffectLog(compensation_attempts_max=2, sleep=lambda s: None)

    def refund(effect: Effect) -> None:
        raise ConnectionError("the bank's refund API is down")

    @effects.compensable(compensate=refund, name="charge")
    def charge(amount: int, idempotency_key: str) -> int:
        return amount

    participant = Participant(
        "payments",
        None,
        cluster.grpc_addresses,
        effects=effects,  # an abort compensates the charge: no hook to wire by hand
        tls=cluster.transport(Role.PARTICIPANT, "payments"),
        options=ParticipantOptions(tick_interval_s=0.1),
    )
    participant.start_in_thread()
    try:
        participant.wait_registered_in_thread()
        txn_id = f"t-{uuid.uuid4().hex[:8]}"
        client.begin(["payments"], txn_id=txn_id, timeout_s=30)
        with effects.transaction(txn_id):
            charge(1200, idempotency_key=f"{txn_id}/charge")
        assert client.abort(txn_id, reason="the user cancelled") is Decision.ABORT
        wait_for("the refund to escalate", effects.escalations)
        assert any("escalated" in line for line in participant.attention())

        def shown() -> str | None:
            out = concord("txn", "show", txn_id, "--coordinators", ",".join(cluster.grpc_addresses))
            return out.stdout if "ESCALATED" in out.stdout else None

        show = wait_for("the escalation in txn show", shown)
        assert f"{txn_id}/charge" in show and "refund API is down" in show
        effects.resolve(f"{txn_id}/charge", "refunded by hand")
        wait_for("the escalation to clear", lambda: shown() is None)
    finally:
        participant.stop_in_thread()
