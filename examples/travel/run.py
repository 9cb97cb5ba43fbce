"""The travel-booking example: three agents book trips atomically over a local cluster.

    scripts/concord example        (or: .venv/bin/python -m examples.travel.run)

It starts a 3-node coordinator cluster and three agent processes (flight, hotel,
payment), each with its own LMDB directory under ./.concord-example/, then books trips.
A trip is one transaction across all three agents: either every agent books its part,
or none does. Some trips fail a vote and abort everywhere; during one trip the leader
coordinator is killed with SIGKILL while votes are being collected, and the trip still
ends all-or-nothing. Every process it starts is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import ConcordClient, OutcomeUnknown, TransactionAborted, Unavailable

AGENTS = ("flight", "hotel", "payment")
READY_WAIT_S = 60.0


@dataclass
class Agent:
    role: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    http_port: int = 0

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply


@dataclass
class Trip:
    who: str
    price: int
    seats: int = 1
    kill_leader: bool = False
    note: str = ""
    outcome: str = field(default="")


def say(text: str = "") -> None:
    print(text, flush=True)


class Example:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = LocalCluster(root / "cluster", 3)
        self.agents: dict[str, Agent] = {}

    def start(self) -> None:
        say(f"Starting a 3-node coordinator cluster (data under {self.cluster.root}) ...")
        self.cluster.start()
        leader = self.cluster.leader()
        say(f"  leader is {leader}")
        coordinators = ",".join(self.cluster.grpc_addresses)
        for role in AGENTS:
            ready = self.root / f"{role}.ready"
            ready.unlink(missing_ok=True)
            log = (self.root / f"{role}.log").open("ab")
            command = [
                sys.executable, "-m", "examples.travel.agent", f"--role={role}",
                f"--data-dir={self.root / role}", f"--coordinators={coordinators}",
                f"--ready-file={ready}",
            ]  # fmt: skip
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            self.agents[role] = Agent(role, process, ready)
        deadline = time.monotonic() + READY_WAIT_S
        for agent in self.agents.values():
            while not agent.ready_file.exists():
                if agent.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the {agent.role} agent did not start; see {self.root / agent.role}.log"
                    )
                time.sleep(0.05)
            agent.http_port = json.loads(agent.ready_file.read_text())["http"]
        say(f"  agents up: {', '.join(AGENTS)} (each its own process and LMDB)")

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
        for agent in self.agents.values():
            try:
                agent.process.wait(10)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()
        self.cluster.stop()

    def inventory(self) -> dict[str, dict[str, int]]:
        return {role: agent.call("/")["state"] for role, agent in self.agents.items()}

    async def seed(self, client: ConcordClient) -> None:
        async with client.transaction(participants=list(AGENTS), timeout_s=30) as txn:
            for agent in self.agents.values():
                await asyncio.to_thread(agent.call, "/seed", {"txn_id": txn.id})
        await wait_learned(client, txn.id)

    async def book(self, client: ConcordClient, trip: Trip) -> tuple[str, str]:
        return await self._book(client, trip, f"trip-{trip.who}-{uuid.uuid4().hex[:8]}")

    async def _book(self, client: ConcordClient, trip: Trip, txn_id: str) -> tuple[str, str]:
        requests = {
            "flight": {"flight": "FL100", "count": trip.seats},
            "hotel": {"hotel": "GRAND", "count": 1},
            "payment": {"customer": trip.who, "price": trip.price, "slow_vote": trip.kill_leader},
        }
        try:
            async with client.transaction(
                participants=list(AGENTS), timeout_s=20, txn_id=txn_id
            ) as txn:
                for role, agent in self.agents.items():
                    await asyncio.to_thread(
                        agent.call, "/stage", {"txn_id": txn.id, **requests[role]}
                    )
                if trip.kill_leader:
                    asyncio.get_running_loop().create_task(
                        self._kill_leader_while_voting(client, txn.id)
                    )
            return "COMMITTED", txn_id
        except TransactionAborted as aborted:
            return f"ABORTED ({aborted.reason})", txn_id
        except (OutcomeUnknown, Unavailable):
            # Never a blind retry: ask by id until the cluster says how it ended.
            say("    the commit call's outcome is unknown (its coordinator died); asking by id ...")
            decision = await self._resolve(client, txn_id)
            return (
                "COMMITTED" if decision == "COMMIT" else f"ABORTED (resolved by id: {decision})"
            ), txn_id

    async def _kill_leader_while_voting(self, client: ConcordClient, txn_id: str) -> None:
        while True:
            try:
                status = await client.get(txn_id)
                if status.phase == "VOTING":
                    break
            except Exception:
                pass
            await asyncio.sleep(0.02)
        leader = await asyncio.to_thread(self.cluster.leader)
        say(f"    votes are being collected: SIGKILL the leader {leader} now")
        self.cluster.kill(leader)

    async def _resolve(self, client: ConcordClient, txn_id: str) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                decision = await client.outcome(txn_id)
            except Exception:
                decision = None
            if decision is not None:
                return decision.value
            await asyncio.sleep(0.2)
        return "UNKNOWN"


async def wait_learned(client: ConcordClient, txn_id: str, timeout_s: float = 60) -> None:
    """Until every participant has acknowledged the decision (the round is DONE)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await client.get(txn_id)).phase == "DONE":
                return
        except Exception:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{txn_id}: not every agent learned the decision within {timeout_s}s")


async def scenario(example: Example) -> bool:
    trips = [
        Trip("alice", price=400, note="everyone can serve it"),
        Trip("bob", price=500, note="bob has only 300: payment votes NO"),
        Trip("alice", price=100, seats=5, note="5 seats, 2 left: flight votes NO"),
        Trip(
            "alice", price=200, kill_leader=True, note="the leader dies while votes are collected"
        ),
    ]
    async with ConcordClient(example.cluster.grpc_addresses) as client:
        await example.seed(client)
        before = example.inventory()
        say()
        say("Inventory before: " + _inventory_line(before))
        say()
        all_or_nothing = True
        for number, trip in enumerate(trips, 1):
            say(f"Trip {number}: {trip.who} books {trip.seats} seat(s) on FL100 + a room at GRAND "
                f"for {trip.price} "
                f"({trip.note})")  # fmt: skip
            trip.outcome, txn_id = await example.book(client, trip)
            # The decision is made once it is in the replicated log; each agent applies it
            # when its Decide arrives. Compare inventories once every agent has.
            await wait_learned(client, txn_id)
            after = example.inventory()
            changed = {role for role in AGENTS if after[role] != before[role]}
            consistent = changed == set(AGENTS) if trip.outcome == "COMMITTED" else not changed
            all_or_nothing &= consistent
            verdict = "all three agents changed" if changed == set(AGENTS) else (
                "no agent changed" if not changed else
                f"ONLY {sorted(changed)} changed")  # fmt: skip
            say(
                f"    -> {trip.outcome}; {verdict} "
                f"{'(all-or-nothing holds)' if consistent else '(VIOLATION)'}"
            )
            before = after
        say()
        say("Inventory after:  " + _inventory_line(before))
        return all_or_nothing


def _inventory_line(inventory: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{role}: " + ", ".join(f"{k}={v}" for k, v in sorted(state.items()))
                     for role, state in inventory.items())  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Concord's travel-booking example")
    parser.add_argument(
        "--dir", type=Path, default=Path(".concord-example"), help="scratch directory (wiped)"
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    example = Example(args.dir)
    try:
        example.start()
        ok = asyncio.run(scenario(example))
    finally:
        example.stop()
    say()
    say(
        "Every trip was all-or-nothing."
        if ok
        else "An all-or-nothing VIOLATION was seen: see the logs."
    )
    say(f"Logs: {args.dir}/*.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
