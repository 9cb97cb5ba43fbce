"""Three LangGraph agents book a trip as one Concord transaction; a budget guardrail
rolls all three graphs, and the tools they ran, back to the planning checkpoint.

    .venv/bin/python -m examples.langgraph_trip.run

A local one-node cluster and three participants in this process (flight, hotel,
payment), each a LangGraph agent with a deterministic fake chat model (no network,
no keys), its checkpoints in a ``ConcordSaver`` and a compensable tool:

1. each agent plans (its graph stops before its tool runs);
2. a global checkpoint round, "planned", records each agent's graph checkpoint;
3. the agents book as one transaction: each graph resumes and runs its tool (an
   effect of the transaction) and each participant records its booking;
4. the budget guardrail (participant_sdk.triggers) sees the total above the budget
   and answers ROLLBACK to "planned";
5. a rollback round: every participant's store goes back to the cut, every agent's
   tool effects since are undone (newest first, once each) and every graph thread
   resumes from its planning checkpoint.

It prints each graph's state, what was undone, and the outside world's ledger; every
process it starts is stopped at the end (docs/langgraph.md explains the parts).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from examples.langgraph_trip.agents import Plan, TripAgent, World
from participant_sdk import (
    Action,
    BreakerConfig,
    BreakerState,
    CheckpointRef,
    Decision,
    GuardrailViolation,
    Participant,
    Role,
    RollbackPolicy,
    Rule,
    SyncConcordClient,
    TriggerKind,
    decide,
)

BUDGET_EUR = 1500
PLANS = [
    Plan("flight", "book_flight", {"item": "LIS-JFK", "price": 640}, 640, "call-flight-1"),
    Plan("hotel", "book_hotel", {"item": "NYC 4 nights", "price": 720}, 720, "call-hotel-1"),
    Plan("payment", "charge_card", {"item": "trip deposit", "price": 300}, 300, "call-pay-1"),
]
WAIT_S = 30.0


def _wait(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {WAIT_S:.0f} s")
        time.sleep(0.02)


def _named(decision: Decision | None, commit: str) -> str:
    """A round's decision as the command line names it (KEEP/DISCARD, EXECUTE/REJECT)."""
    if decision is None:
        return "UNDECIDED"
    return commit if decision is Decision.COMMIT else {"KEEP": "DISCARD"}.get(commit, "REJECT")


def _bookings(participants: list[Participant]) -> list[str | None]:
    """What each participant's own store holds under "booking" (committed state)."""
    found = [p.state.get("booking") for p in participants]
    return [None if raw is None else json.loads(raw) for raw in found]


def main(root: Path, world: World | None = None) -> list[str]:
    lines: list[str] = []
    world = world or World()
    agents = [TripAgent(plan, world, root / plan.agent) for plan in PLANS]
    names = [a.plan.agent for a in agents]
    cluster = LocalCluster(root / "cluster", 1)
    cluster.start()
    participants: list[Participant] = []
    try:
        cluster.leader()
        for agent in agents:
            tls = cluster.transport(Role.PARTICIPANT, agent.plan.agent)
            participant = agent.participant(cluster.grpc_addresses, tls)
            participant.start_in_thread()
            participants.append(participant)
        for participant in participants:
            participant.wait_registered_in_thread(30)
        with SyncConcordClient(
            cluster.grpc_addresses, tls=cluster.transport(Role.CLIENT, CLIENT)
        ) as client:
            # 1. Plan.
            for agent in agents:
                agent.make_plan("Plan my part of a trip to New York")
            lines += ["planned:"] + [f"  {a.describe()}" for a in agents]

            # 2. The global checkpoint: each agent's graph cut, under one id.
            kept = client.global_checkpoint(
                session_id="trip", participants=names, checkpoint_id="planned"
            )
            lines.append(f"global checkpoint 'planned': {_named(kept.decision, 'KEEP')}")
            _wait(
                "the checkpoint round to be done", lambda: client.get(kept.round_id).phase == "DONE"
            )

            # 3. Book, as one transaction.
            with client.transaction(names, session_id="trip", wait_applied=True) as txn:
                for agent, participant in zip(agents, participants, strict=True):
                    agent.act(txn.id)
                    booking = agent.effects.get(agent.effect_key).result
                    participant.begin(txn.id).put("booking", json.dumps(booking).encode())
            lines += ["booked:"] + [f"  {a.describe()}" for a in agents]
            lines.append(f"bookings in the participants' stores: {_bookings(participants)}")

            # 4. The budget guardrail.
            total = sum(a.plan.price for a in agents)
            policy = RollbackPolicy(rules={TriggerKind.GUARDRAIL: Rule(rollbacks_max=1)})
            breaker = BreakerConfig(failures_max=5, window_ms=60_000, cooldown_ms=30_000)
            outcome, _ = decide(
                policy,
                breaker,
                BreakerState(),
                GuardrailViolation(rule=f"budget {BUDGET_EUR} EUR, spent {total} EUR"),
                [CheckpointRef(checkpoint_id="planned", generation=1)],
                now_ms=0,
            )
            lines.append(
                f"guardrail: {total} EUR > {BUDGET_EUR} EUR: {outcome.action.name} "
                f"to {outcome.checkpoint_id!r}"
            )
            assert outcome.action is Action.ROLLBACK

            # 5. The rollback round: all three graphs and their tools go back.
            rolled = client.request_rollback(
                session_id="trip",
                participants=names,
                checkpoint_id="planned",
                reason=f"over budget: {total} EUR > {BUDGET_EUR} EUR",
            )
            lines.append(f"rollback to 'planned': {_named(rolled.decision, 'EXECUTE')}")
            for agent in agents:
                _wait(f"{agent.plan.agent} to rewind", agent.rewound.is_set)
        lines += ["after the rollback:"] + [f"  {a.describe()}" for a in agents]
        lines.append("undone: " + ", ".join(k for a in agents for k in a.undone()))
        lines.append(f"bookings in the participants' stores: {_bookings(participants)}")
        lines += ["ledger:"] + [f"  {line}" for line in world.ledger()]
    finally:
        for participant in participants:
            participant.stop_in_thread()
        cluster.stop()
        for agent in agents:
            agent.close()
    return lines


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        for line in main(Path(scratch)):
            print(line)
