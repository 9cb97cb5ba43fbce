"""The travel-booking example: three agents book trips over a local Concord cluster.

    scripts/example        (or: .venv/bin/python -m examples.travel.run [--dir DIR])

It starts a 3-node coordinator cluster and three agent processes (flight, hotel,
payment), each with its own LMDB directory under ./.concord-example/, and an outside
world the agents act on: a bank, an airline and a hotel chain, each an append-only
ledger in ./.concord-example/world/ (examples/travel/world.py). Then, in three parts:

1. Trips as transactions (2PC). A trip is one transaction across the three agents:
   the initiator asks each agent for its part through the cluster (``txn.call`` of the
   agent's ``book`` action), and every agent books its part, or none does. The payment
   agent charges the card at once, as a compensable effect: a trip that aborts (one
   agent votes NO) is refunded.
   During one trip the leader coordinator is SIGKILLed while votes are collected.
2. A guardrail rolls a trip back to its checkpoint. The agents' plans are set in a
   transaction (their ``plan`` action); a global checkpoint saves every agent's plan;
   the agents go on (upgrades, a charge); a guardrail (price above budget), through a
   rollback policy and a circuit breaker (participant_sdk/triggers.py), asks for a
   coordinated rollback: every agent's plan and counters go back, the charge
   is refunded, and each agent verifies the outside world.
3. Multi-leg trips as sagas. Each leg is a step run by one agent; one trip completes,
   the other fails at a late leg (a sold-out flight) and the legs before it are undone
   in reverse.

It checks what it shows against the ledgers and exits 1 on any mismatch. Every process
it starts is stopped by its PID at the end, also after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from coordinator.runtime.local_cluster import CLIENT, ClusterError, LocalCluster
from examples.travel import world
from examples.travel.agent import charge_key
from participant_sdk import (
    Action,
    ActionFailed,
    BreakerConfig,
    BreakerState,
    CheckpointRef,
    ConcordClient,
    ConcordError,
    Decision,
    GuardrailViolation,
    OutcomeUnknown,
    Role,
    RollbackPolicy,
    Rule,
    SagaResult,
    SagaStep,
    Target,
    TransactionAborted,
    TriggerKind,
    Unavailable,
    breaker_success,
    decide,
)

AGENTS = ("flight", "hotel", "payment")
READY_WAIT_S = 60.0
WAIT_S = 60.0
MARKER = ".concord-example"  # marks a directory this example may wipe

# The guardrail's policy: no plain retry for a price above budget; roll back once to
# the checkpoint labelled "planned"; after that, abort. The breaker bounds loops.
POLICY = RollbackPolicy(
    rules={
        TriggerKind.GUARDRAIL: Rule(
            retries_max=0, rollbacks_max=1, target=Target.LABELLED, label="planned"
        )
    }
)
BREAKER = BreakerConfig(failures_max=3, window_ms=60_000, cooldown_ms=30_000, trips_max=2)


class ExampleFailed(Exception):
    """The example cannot go on; the message says why and where to look."""


@dataclass
class Agent:
    role: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    http_port: int = 0

    def status(self) -> dict[str, Any]:
        """The agent's read-only view of itself (its work goes through the cluster)."""
        url = f"http://127.0.0.1:{self.http_port}/"
        with urllib.request.urlopen(url, timeout=10) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply


@dataclass
class Trip:
    who: str
    price: int
    seats: int = 1
    flight: str = "FL100"
    hotel: str = "GRAND"
    kill_leader: bool = False
    note: str = ""


def say(text: str = "") -> None:
    print(text, flush=True)


class Example:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.world = root / "world"
        self.cluster = LocalCluster(root / "cluster", 3, ui=True)
        self.agents: dict[str, Agent] = {}
        self.checks_failed: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        """Record a check of what the example shows against the state it left."""
        if not ok:
            self.checks_failed.append(what)
            say(f"    CHECK FAILED: {what}")
        return ok

    # ------------------------------------------------------------ processes

    def start(self) -> None:
        say(f"Starting a 3-node coordinator cluster (data under {self.cluster.root}) ...")
        self.cluster.start()
        leader = self.cluster.leader()
        say(f"  leader is {leader}; dashboard (read-only): {self.cluster.ui_urls[leader]}")
        coordinators = ",".join(self.cluster.grpc_addresses)
        for role in AGENTS:
            ready = self.root / f"{role}.ready"
            ready.unlink(missing_ok=True)
            with (self.root / f"{role}.log").open("ab") as log:
                command = [
                    sys.executable, "-m", "examples.travel.agent", f"--role={role}",
                    f"--data-dir={self.root / role}", f"--world={self.world}",
                    f"--coordinators={coordinators}", f"--ready-file={ready}",
                ]  # fmt: skip
                # Each agent gets its own certificate (the SDK takes it from here).
                env = {**os.environ, **self.cluster.tls_env(Role.PARTICIPANT, role)}
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            self.agents[role] = Agent(role, process, ready)
        deadline = time.monotonic() + READY_WAIT_S
        for agent in self.agents.values():
            while not agent.ready_file.exists():
                if agent.process.poll() is not None or time.monotonic() > deadline:
                    raise ExampleFailed(
                        f"the {agent.role} agent did not start; see {self.root / agent.role}.log"
                    )
                time.sleep(0.05)
            agent.http_port = json.loads(agent.ready_file.read_text())["http"]
        say(f"  agents up: {', '.join(AGENTS)} (each its own process and LMDB)")

    def stop(self) -> list[int]:
        """Stop every process started here, by its PID; returns the PIDs."""
        pids = [a.process.pid for a in self.agents.values()]
        for agent in self.agents.values():
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
        for agent in self.agents.values():
            try:
                agent.process.wait(10)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()
        pids += [n.process.pid for n in self.cluster.nodes.values() if n.process is not None]
        self.cluster.stop()
        return pids

    # ------------------------------------------------------------ reading

    def inventory(self) -> dict[str, dict[str, int]]:
        return {role: agent.status()["state"] for role, agent in self.agents.items()}

    def status(self, role: str) -> dict[str, Any]:
        return self.agents[role].status()

    def ledger(self, name: str) -> list[dict[str, Any]]:
        return world.read(self.world / f"{name}.jsonl")

    def money(self, key: str) -> tuple[list[int], list[int]]:
        """(amounts charged, amounts refunded) at the bank under ``key``."""
        entries = [e for e in self.ledger("bank") if e["key"] == key]
        return (
            [e["amount"] for e in entries if e["op"] == "charge"],
            [e["amount"] for e in entries if e["op"] == "refund"],
        )

    # ------------------------------------------------------------ transactions

    async def seed(self, client: ConcordClient) -> None:
        async with client.transaction(participants=list(AGENTS), timeout_s=30) as txn:
            for role in AGENTS:
                await txn.call(role, "seed")
        await wait_done(client, txn.id)

    async def book(self, client: ConcordClient, trip: Trip) -> tuple[str, str]:
        """Book ``trip`` as one transaction; (outcome, txn id) once every agent learned it."""
        txn_id = f"trip-{trip.who}-{uuid.uuid4().hex[:8]}"
        requests = {
            "flight": {"flight": trip.flight, "count": trip.seats},
            "hotel": {"hotel": trip.hotel, "count": 1},
            "payment": {"customer": trip.who, "price": trip.price, "slow_vote": trip.kill_leader},
        }
        try:
            async with client.transaction(
                participants=list(AGENTS), timeout_s=20, txn_id=txn_id
            ) as txn:
                # Each agent's part, through the cluster: the handler stages it on the
                # agent's branch of this transaction (its vote comes at Prepare).
                for role in AGENTS:
                    await txn.call(role, "book", requests[role])
                if trip.kill_leader:
                    asyncio.get_running_loop().create_task(
                        self._kill_leader_while_voting(client, txn.id)
                    )
            outcome = "COMMITTED"
        except TransactionAborted as aborted:
            outcome = f"ABORTED ({aborted.reason})"
        except ActionFailed as failed:
            # The agent's handler raised: leaving the block aborted the trip at once.
            outcome = f"ABORTED ({failed.participant_id}.{failed.action}: {failed.reason})"
        except (OutcomeUnknown, Unavailable):
            # Never a blind retry: ask by id until the cluster says how it ended.
            say("    the commit call's outcome is unknown (its coordinator died); asking by id ...")
            decision = await self._resolve(client, txn_id)
            outcome = (
                "COMMITTED" if decision == "COMMIT" else f"ABORTED (resolved by id: {decision})"
            )
        # The decision is made once it is in the replicated log; each agent applies it
        # (and refunds an aborted charge) when its Decide arrives, before it acknowledges.
        await wait_done(client, txn_id)
        return outcome, txn_id

    async def _kill_leader_while_voting(self, client: ConcordClient, txn_id: str) -> None:
        while True:
            try:
                if (await client.get(txn_id)).phase == "VOTING":
                    break
            except ConcordError:
                pass
            await asyncio.sleep(0.02)
        leader = await asyncio.to_thread(self.cluster.leader)
        say(f"    votes are being collected: SIGKILL the leader {leader} now")
        self.cluster.kill(leader)

    async def _resolve(self, client: ConcordClient, txn_id: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                decision = await client.outcome(txn_id)
            except ConcordError:
                decision = None
            if decision is not None:
                return decision.value
            await asyncio.sleep(0.2)
        return "UNKNOWN"


async def wait_done(client: ConcordClient, round_id: str) -> None:
    """Until every participant has acknowledged the round's decision (it is DONE). A
    checkpoint or rollback round holds its participants until then."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if (await client.get(round_id)).phase == "DONE":
                return
        except ConcordError:
            pass
        await asyncio.sleep(0.05)
    raise ExampleFailed(f"{round_id}: not every agent learned the decision within {WAIT_S}s")


# ================================================================ part 1: 2PC trips


async def trips_as_transactions(example: Example, client: ConcordClient) -> None:
    say()
    say("Part 1: trips as transactions (two-phase commit across the three agents)")
    trips = [
        Trip("alice", price=400, note="everyone can serve it"),
        Trip("bob", price=500, note="bob has only 300: payment votes NO"),
        Trip("alice", price=100, seats=5, note="5 seats, 2 left: flight votes NO"),
        Trip("alice", price=200, kill_leader=True,
             note="the leader dies while votes are collected"),
    ]  # fmt: skip
    before = example.inventory()
    say("Inventory before: " + _inventory_line(before))
    for number, trip in enumerate(trips, 1):
        say(f"Trip {number}: {trip.who} books {trip.seats} seat(s) on {trip.flight} + a room at "
            f"{trip.hotel} for {trip.price} ({trip.note})")  # fmt: skip
        outcome, txn_id = await example.book(client, trip)
        after = example.inventory()
        changed = {role for role in AGENTS if after[role] != before[role]}
        committed = outcome == "COMMITTED"
        consistent = changed == set(AGENTS) if committed else not changed
        verdict = "all three agents changed" if changed == set(AGENTS) else (
            "no agent changed" if not changed else f"ONLY {sorted(changed)} changed")  # fmt: skip
        example.check(consistent, f"trip {number} ({txn_id}) all-or-nothing: {verdict}")
        say(f"    -> {outcome}; {verdict} "
            f"{'(all-or-nothing holds)' if consistent else '(VIOLATION)'}")  # fmt: skip
        say(f"    bank: {_money_story(example, trip.who, charge_key(txn_id), committed)}")
        before = after
    say("Inventory after:  " + _inventory_line(before))
    dead = [n for n, node in example.cluster.nodes.items() if not node.alive]
    if dead:
        say(f"({', '.join(dead)} stays down: the rest runs on two of the three nodes.)")


def _money_story(example: Example, who: str, key: str, committed: bool) -> str:
    charged, refunded = example.money(key)
    if committed:
        example.check(len(charged) == 1 and not refunded, f"{key}: charged once, kept")
    else:
        example.check(refunded == charged, f"{key}: each charge of an aborted trip refunded")
    if not charged:
        return "nothing charged"
    story = f"charged {who} {charged[0]}"
    if refunded:
        story += f", then refunded {refunded[0]} (the trip aborted: the charge was compensated)"
    return story


# ================================================================ part 2: guardrail


async def guardrail_rollback(example: Example, client: ConcordClient) -> None:
    say()
    say("Part 2: a guardrail rolls a trip back to its checkpoint, across all three agents")
    session, budget = "carol-lisbon", 1_000
    checkpoint_id = f"{session}-planned"
    say(f"Session {session}: carol's budget is {budget}.")
    await _plan(client, session, economy=True)
    say(f"  flight agent plans FL500 economy (450); hotel agent plans a standard room at "
        f"RIVER (300): {_price(example, session)} in all, within budget")  # fmt: skip
    kept = await client.global_checkpoint(
        session_id=session, participants=list(AGENTS), checkpoint_id=checkpoint_id,
        label="planned",
    )  # fmt: skip
    example.check(kept.decision is Decision.COMMIT, f"checkpoint {checkpoint_id} kept")
    await wait_done(client, kept.round_id)  # a rollback asked for before this is refused Busy
    say(f"  global checkpoint {checkpoint_id!r} of {', '.join(AGENTS)}: "
        f"{'KEEP' if kept.decision is Decision.COMMIT else 'DISCARD'} "
        "(each agent saved its plan, and its counters)")  # fmt: skip
    checkpointed = example.inventory()

    await _plan(client, session, economy=False)
    price = _price(example, session)
    say("  the agents go on: flight upgrades to business (1350), hotel to a suite (600)")
    outcome, txn_id = await example.book(
        client, Trip("carol", price, flight="FL500", hotel="RIVER")
    )
    charged, _ = example.money(charge_key(txn_id))
    say(f"  carol's trip booked for {price}: {outcome}; bank: charged carol {sum(charged)}")

    # The guardrail: a price above budget is a trigger; the policy says what to do.
    kept_refs = [CheckpointRef(checkpoint_id=checkpoint_id, generation=1, label="planned")]
    trigger = GuardrailViolation(rule=f"price {price} above budget {budget}")
    now_ms = int(time.monotonic() * 1000)
    decision, breaker = decide(POLICY, BREAKER, BreakerState(), trigger, kept_refs, now_ms)
    say(f"  guardrail fired: {trigger.rule} -> the policy says {decision.action.name} to "
        f"{decision.checkpoint_id!r} ({decision.reason}; circuit breaker "
        f"{breaker.phase.value}, {len(breaker.failures_ms)} failure(s) in its window)")  # fmt: skip
    if not example.check(decision.action is Action.ROLLBACK, "the guardrail asks for a rollback"):
        return
    result = await client.request_rollback(
        session_id=session, participants=list(AGENTS), checkpoint_id=decision.checkpoint_id,
        reason=trigger.rule,
    )  # fmt: skip
    executed = result.decision is Decision.COMMIT
    status = await client.get(result.round_id)
    votes = ", ".join(f"{p.participant_id} {'YES' if p.yes else 'NO'}" for p in status.participants)
    say(f"  coordinated rollback to {checkpoint_id!r}: "
        f"{'EXECUTE' if executed else 'REJECT'} (votes: {votes})")  # fmt: skip
    if not example.check(executed, f"rollback to {checkpoint_id} executed"):
        return
    await wait_done(client, result.round_id)
    for role in AGENTS:
        report = await _restored(example, role, checkpoint_id)
        say(f"    {role}: {_restore_story(role, report, session)}")
        example.check(report["verified"], f"{role} verified its rollback: {report['detail']}")
    charged, refunded = example.money(charge_key(txn_id))
    example.check(
        charged == [price] and refunded == [price], f"carol's {price} refunded exactly once"
    )
    back = example.inventory()
    example.check(back == checkpointed, "every agent's counters are back at the checkpoint")
    say(f"  counters back at the checkpoint too: FL500 seats {back['flight']['seats:FL500']}, "
        f"RIVER rooms {back['hotel']['rooms:RIVER']}, "
        f"carol's balance {back['payment']['balance:carol']}")  # fmt: skip

    # Go on from the restored plans: they are within budget now.
    price = _price(example, session)
    again, _ = decide(POLICY, BREAKER, breaker, trigger, kept_refs, now_ms + 1)
    breaker = breaker_success(BREAKER, breaker, now_ms + 2)
    outcome, txn_id = await example.book(
        client, Trip("carol", price, flight="FL500", hotel="RIVER")
    )
    charged, refunded = example.money(charge_key(txn_id))
    example.check(charged == [price] and not refunded, f"carol's {price} charged once, kept")
    say(f"  from the restored plans ({price}, within budget): booked, {outcome}; "
        f"bank: charged carol {sum(charged)}")  # fmt: skip
    say(f"  (had the price still been above budget, the policy would now say "
        f"{again.action.name}: {again.reason})")  # fmt: skip


async def _plan(client: ConcordClient, session: str, *, economy: bool) -> None:
    """Every agent's plan for ``session``, set in one transaction (its ``plan`` action):
    the agents hold the new plans together once it commits, or none does."""
    plans = {
        "flight": {"flight": "FL500", "fare": "economy" if economy else "business",
                   "price": 450 if economy else 1350},
        "hotel": {"hotel": "RIVER", "room": "standard" if economy else "suite",
                  "price": 300 if economy else 600},
        "payment": {"customer": "carol", "budget": 1_000},
    }  # fmt: skip
    async with client.transaction(list(AGENTS), timeout_s=20, wait_applied=True) as txn:
        for role, plan in plans.items():
            await txn.call(role, "plan", {"session": session, "plan": plan})


def _price(example: Example, session: str) -> int:
    return sum(int(example.status(role)["plans"][session]["price"]) for role in ("flight", "hotel"))


async def _restored(example: Example, role: str, checkpoint_id: str) -> dict[str, Any]:
    """The agent's report of its rollback (it restores after the round's EXECUTE)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(example.status, role)
        for report in status["rollbacks"]:
            if report["checkpoint"] == checkpoint_id:
                return dict(report)
        if status["attention"]:
            raise ExampleFailed(f"the {role} agent could not roll back: {status['attention']}")
        await asyncio.sleep(0.05)
    raise ExampleFailed(f"the {role} agent did not roll back to {checkpoint_id} in {WAIT_S}s")


def _restore_story(role: str, report: dict[str, Any], session: str) -> str:
    plan = report["plans"].get(session, {})
    if role == "payment":
        refunds = ", ".join(f"{r['amount']} ({r['key']})" for r in report["refunded"])
        story = f"refunded {refunds or 'nothing'}"
    else:
        what = plan.get("fare") or plan.get("room")
        story = (
            f"plan back to {plan.get('flight') or plan.get('hotel')} {what} ({plan.get('price')})"
        )
    return f"{story}; verified: {report['detail']}" if report["verified"] else (
        f"{story}; VERIFICATION FAILED: {report['detail']}")  # fmt: skip


# ================================================================ part 3: sagas


async def trips_as_sagas(example: Example, client: ConcordClient) -> None:
    say()
    say("Part 3: multi-leg trips as sagas (each leg a step; if one fails, the legs before it")
    say("        are undone in reverse order)")
    say(f"The airline has {world.AIRLINE_SEATS['FL201']} seat left on FL201.")
    notes = {"alice": "", "dave": " (FL201's last seat went to alice)"}
    for number, who in enumerate(notes, 1):
        saga_id = f"saga-{who}-{uuid.uuid4().hex[:8]}"
        say(f"Multi-leg trip {number} ({saga_id}): {who} flies FL200 out, stays at HARBOUR, "
            f"flies FL201 back, pays 900{notes[who]}")  # fmt: skip
        steps = [
            SagaStep(participant_id="flight", action="book_flight",
                     payload={"flight": "FL200", "who": who}),
            SagaStep(participant_id="hotel", action="book_room",
                     payload={"hotel": "HARBOUR", "who": who}),
            SagaStep(participant_id="flight", action="book_flight",
                     payload={"flight": "FL201", "who": who}),
            SagaStep(participant_id="payment", action="charge",
                     payload={"customer": who, "amount": 900}),
        ]  # fmt: skip
        result = await client.run_saga(steps, saga_id=saga_id, session_id=who, step_timeout_s=10)
        for index, step in enumerate(result.steps):
            detail = step.reason or step.result.decode()
            if step.status == "COMPENSATED":
                detail = f"{detail}, then undone" if detail else "undone"
            elif step.status == "PENDING":
                detail = "never ran"
            say(f"    step {index}  {step.participant_id:<8} {step.action:<12} "
                f"{step.status:<12} {detail}")  # fmt: skip
        say(
            f"    -> {result.outcome or result.phase}"
            + (f": {result.reason}" if result.reason else "")
        )
        say(f"    outside world, in order: {_world_story(example, saga_id)}")
        _check_saga(example, result, expect_completed=number == 1)


def _saga_entries(example: Example, saga_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(ledger, entry) of ``saga_id``'s steps in every ledger, in the order written."""
    entries = [
        (name, e)
        for name in ("airline", "hotels", "bank")
        for e in example.ledger(name)
        if e["key"].startswith(f"{saga_id}/")
    ]
    return sorted(entries, key=lambda item: item[1]["t"])


def _world_story(example: Example, saga_id: str) -> str:
    words = {"book": "booked", "cancel": "cancelled", "charge": "charged", "refund": "refunded"}
    parts = []
    for name, e in _saga_entries(example, saga_id):
        what = e.get("flight") or e.get("hotel") or e.get("amount")
        whom = e.get("who") or e.get("customer")
        parts.append(f"{name} {words[e['op']]} {what} for {whom}")
    return "; ".join(parts) or "nothing"


def _check_saga(example: Example, result: SagaResult, *, expect_completed: bool) -> None:
    saga_id = result.saga_id
    entries = _saga_entries(example, saga_id)
    ops = {
        index: [e["op"] for _, e in entries if e["key"] == f"{saga_id}/{index}"]
        for index in range(len(result.steps))
    }
    do_op = {0: "book", 1: "book", 2: "book", 3: "charge"}
    undo_op = {"book": "cancel", "charge": "refund"}
    if expect_completed:
        example.check(result.outcome == "COMPLETED", f"{saga_id} completed")
        expected = {i: [do_op[i]] for i in ops}
    else:
        example.check(result.outcome == "COMPENSATED", f"{saga_id} compensated")
        # Legs 0 and 1 done then undone once; leg 2 (sold out) and leg 3 never happened.
        expected = {0: ["book", "cancel"], 1: ["book", "cancel"], 2: [], 3: []}
        undone = [
            e["key"] for _, e in _saga_entries(example, saga_id) if e["op"] in undo_op.values()
        ]
        example.check(undone == [f"{saga_id}/1", f"{saga_id}/0"], f"{saga_id} undone in reverse")
    example.check(ops == expected, f"{saga_id}: outside world {ops}, expected {expected}")


# ================================================================ the whole run


async def scenario(example: Example) -> None:
    tls = example.cluster.transport(Role.CLIENT, CLIENT)
    async with ConcordClient(example.cluster.grpc_addresses, tls=tls) as client:
        await example.seed(client)
        await trips_as_transactions(example, client)
        await guardrail_rollback(example, client)
        await trips_as_sagas(example, client)
    say()
    bank = example.ledger("bank")
    charges = [e["key"] for e in bank if e["op"] == "charge"]
    refunds = [e["key"] for e in bank if e["op"] == "refund"]
    example.check(len(set(charges)) == len(charges), "no key charged twice")
    example.check(
        len(set(refunds)) == len(refunds) and set(refunds) <= set(charges),
        "each refund matches one charge, none twice",
    )
    say(f"The bank at the end ({example.world / 'bank.jsonl'}): {len(charges)} charge(s), "
        f"{len(refunds)} refund(s); each refund matches one charge; none made twice.")  # fmt: skip


def _inventory_line(inventory: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{role}: " + ", ".join(f"{k}={v}" for k, v in sorted(state.items()))
                     for role, state in inventory.items())  # fmt: skip


def _prepare_dir(path: Path) -> None:
    """Wipe ``path`` for a fresh run, but only if this example made it."""
    if path.exists() and not path.is_dir():
        raise ExampleFailed(f"--dir {path} is a file, not a directory")
    made_here = (path / MARKER).exists() or (path / "cluster" / "cluster.toml").exists()
    if path.is_dir() and any(path.iterdir()) and not made_here:
        raise ExampleFailed(
            f"refusing to wipe {path}: it is not empty and this example did not make it "
            f"(no {MARKER} file in it); choose another --dir"
        )
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / MARKER).write_text("scratch directory of examples/travel/run.py: wiped on each run\n")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the example as Ctrl-C does: cleanly


def _keep(example: Example) -> None:
    """--keep: everything stays up until Ctrl-C or SIGTERM."""
    urls = example.cluster.ui_urls
    say()
    leader = example.cluster.leader()
    say(f"--keep: the cluster and the agents stay up. Dashboard: {urls[leader]}")
    say(f"  (every node serves one: {' '.join(urls.values())}); operators log in with the "
        f"token in <data dir>/ui-token, e.g. {example.cluster.ui_token_path(leader)}")  # fmt: skip
    say("  Ctrl-C stops everything")
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        say()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Concord's travel-booking example")
    parser.add_argument(
        "--dir", type=Path, default=Path(".concord-example"), help="scratch directory (wiped)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the cluster and the agents up at the end (look at the dashboard), until Ctrl-C",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    example: Example | None = None
    code = 1
    try:
        _prepare_dir(args.dir)
        example = Example(args.dir)
        example.start()
        asyncio.run(scenario(example))
        code = 0 if not example.checks_failed else 1
        if args.keep:
            _keep(example)
    except KeyboardInterrupt:
        say("\nInterrupted: stopping everything the example started ...")
        code = 130
    except (ExampleFailed, ClusterError, ConcordError, OSError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
    finally:
        if example is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan any
            pids = example.stop()
            say()
            say(f"Stopped the {len(pids)} processes it started, each by its PID: "
                f"{' '.join(map(str, pids))}")  # fmt: skip
    if example is None:
        return 2
    if code == 0:
        say("Every trip was all-or-nothing; every charge and booking undone was undone exactly "
            "once, and the ledgers agree with what was shown.")  # fmt: skip
    elif code == 1 and example.checks_failed:
        say(f"{len(example.checks_failed)} check(s) FAILED: {example.checks_failed}")
    say(f"Logs: {args.dir}/*.log (cluster: {args.dir}/cluster/); outside world: {example.world}/")
    return code


if __name__ == "__main__":
    sys.exit(main())
