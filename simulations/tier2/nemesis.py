"""The fault schedule (a pure function of the seed) and its execution.

Faults run one at a time: each starts, lasts its duration, ends (heal, restart, resume),
and is followed by a quiet gap long enough to measure recovery. Which node is "the
leader" is only known while running; every other choice comes from the seed.

Nemesis names (``--nemesis``, combinable): kill (SIGKILL + restart of coordinator
nodes: the leader, the leader while transactions are deciding, a random node), pause
(SIGSTOP/SIGCONT of the leader or a random node), kill-participant (SIGKILL + restart,
right after it voted YES or at random), partition (every shape below), delay (added
latency on every link), power (SIGKILL of the leader, a random node, every node at once
(an outage of the whole cluster) or a participant right after it voted YES, and a power
cut of its LazyFS disk: what it had not synced is lost, but for a random prefix with a
torn last write; then restart).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from simulations.tier2.cluster import CLIENT
from simulations.tier2.harness import Harness, http
from simulations.tier2.lazyfs import LazyFsError

KINDS = {
    "kill": ("kill-leader", "kill-leader-deciding", "kill-node"),
    "pause": ("pause-leader", "pause-node"),
    "kill-participant": ("kill-participant-after-yes", "kill-participant"),
    "partition": (
        "isolated-leader",
        "majority-minority",
        "majorities-ring",
        "bridge",
        "one-way",
        "participant-isolated",
        "leader-participants",
        "client-leader",
    ),
    "delay": ("delay",),
    "power": ("power-leader", "power-node", "power-cluster", "power-participant-after-yes"),
}
NEMESES = tuple(KINDS)
WARMUP_S = 5.0
COOLDOWN_S = 3.0
DECIDED_WAIT_S = 10.0  # longest we watch in-doubt transactions after a leader kill
# Longest a participant fault waits for its target to hold a YES with no decision; on a
# loaded machine the views it polls answer slowly, and a few seconds can pass without one.
IN_DOUBT_WAIT_S = 8.0
HOLD_DECISION_WAIT_S = 1.0  # how long a held YES waits for the cluster's decision
HOLD_LAST_CHANCE_S = 1.5  # this close to the end of the wait, any held YES will do


@dataclass(frozen=True)
class Fault:
    index: int
    kind: str
    start_s: float
    duration_s: float
    pick: float  # a seeded number in [0, 1) that chooses targets at run time


def parse_nemeses(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("all",):
        return NEMESES
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        raise ValueError(
            f"unknown nemesis {','.join(unknown) or text!r}; choose from {', '.join(NEMESES)}, all"
        )
    return names


def schedule(seed: int, nemeses: tuple[str, ...], time_s: float) -> list[Fault]:
    rng = random.Random(f"{seed}/nemesis")
    faults = []
    t = WARMUP_S
    while True:
        kind = rng.choice(KINDS[rng.choice(nemeses)])  # each nemesis equally often
        duration = rng.uniform(1.0, 6.0)
        if t + duration > time_s - COOLDOWN_S:
            break
        faults.append(Fault(len(faults), kind, round(t, 3), round(duration, 3), rng.random()))
        t += duration + rng.uniform(5.0, 8.0)  # quiet: recovery must be measurable
    return faults


def _pick(items: list[str], pick: float) -> str:
    return sorted(items)[int(pick * len(items)) % len(items)]


class Nemesis:
    def __init__(self, runner: Harness, faults: list[Fault]) -> None:
        self.runner = runner
        self.faults = faults
        self.killed_nodes: set[str] = set()
        self.paused_nodes: set[str] = set()
        self.killed_agents: set[str] = set()

    @property
    def cluster(self):  # type: ignore[no-untyped-def]
        return self.runner.cluster

    async def run(self, time_s: float) -> None:
        start = self.runner.history.start
        for fault in self.faults:
            await self._sleep_until(start + fault.start_s)
            await self.inject(fault)
        await self._sleep_until(start + time_s)

    @staticmethod
    async def _sleep_until(monotonic_at: float) -> None:
        delay = monotonic_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _record(self, fault: Fault, event: str, **detail: Any) -> None:
        self.runner.history.add(
            {"type": "fault", "event": event, "id": fault.index, "kind": fault.kind, **detail}
        )

    async def inject(self, fault: Fault) -> None:
        history = self.runner.history
        leader = self.runner.leader
        nodes = self.cluster.node_ids
        if leader is None or leader not in nodes:
            leader = _pick(nodes, fault.pick)
        followers = [n for n in nodes if n != leader]
        kind = fault.kind
        history.faults += 1
        history.current_fault = kind
        measure: asyncio.Task[None] | None = None
        targets: list[str] = []
        if kind in ("kill-leader", "kill-leader-deciding", "kill-node"):
            target = _pick(nodes, fault.pick) if kind == "kill-node" else leader
            targets = [target]
            if kind == "kill-leader-deciding":
                # only once commits are in flight: a participant holds an in-doubt txn
                await self._wait_in_doubt(None, 3.0)
            self._record(fault, "start", targets=targets)
            self.cluster.coordinators[target].process.kill()
            self.killed_nodes.add(target)
            if kind != "kill-node":
                measure = asyncio.ensure_future(self._measure_decided(fault))
        elif kind in ("pause-leader", "pause-node"):
            target = leader if kind == "pause-leader" else _pick(nodes, fault.pick)
            targets = [target]
            self._record(fault, "start", targets=targets)
            self.cluster.coordinators[target].process.pause()
            self.paused_nodes.add(target)
        elif kind in ("kill-participant-after-yes", "kill-participant"):
            target = _pick(self.cluster.participant_ids, fault.pick)
            targets = [target]
            after_yes, decision = False, ""
            if kind == "kill-participant-after-yes":
                after_yes, decision = await self._hold_in_doubt(target, IN_DOUBT_WAIT_S)
            self._record(fault, "start", targets=targets, after_yes=after_yes, held=decision)
            self.cluster.agents[target].process.kill()
            self.killed_agents.add(target)
        elif kind == "power-participant-after-yes":
            target = _pick(self.cluster.participant_ids, fault.pick)
            targets = [target]
            after_yes, decision = await self._hold_in_doubt(target, IN_DOUBT_WAIT_S)
            self._record(fault, "start", targets=targets, after_yes=after_yes, held=decision)
            self.killed_agents.add(target)
            await self._power_cut(target, fault.pick)
        elif kind in ("power-leader", "power-node", "power-cluster"):
            if kind == "power-cluster":
                targets = sorted(nodes)
            else:
                targets = [leader if kind == "power-leader" else _pick(nodes, fault.pick)]
            self._record(fault, "start", targets=targets)
            self.killed_nodes.update(targets)
            # One outage: every target is dead before any disk loses what it held.
            for target in targets:
                self.cluster.process(target).kill()
            # A whole cluster's outage loses everything unsynced (no disk had time to
            # write anything back); a single node's keeps a random prefix of it.
            everything = kind == "power-cluster"
            await asyncio.gather(
                *(
                    self._power_cut(t, (fault.pick + i / len(targets)) % 1.0, everything)
                    for i, t in enumerate(targets)
                )
            )
        elif kind == "delay":
            rng = random.Random(fault.pick)
            links = self._all_links()
            self.cluster.network.set_delay({link: rng.uniform(0.02, 0.2) for link in links})
            self._record(fault, "start", targets=["all links"])
        else:
            cut = self.partition(kind, leader, followers, fault.pick)
            self.cluster.network.set_cut(cut)
            targets = sorted(f"{a}->{b}" for a, b in cut)
            self._record(fault, "start", targets=targets)
        await asyncio.sleep(fault.duration_s)
        await self.heal_all(fault)
        history.current_fault = ""
        if measure is not None:
            await measure

    async def _power_cut(self, target: str, pick: float, everything: bool = False) -> None:
        try:
            await self.cluster.power_cut(target, seed=int(pick * 2**32), everything=everything)
        except LazyFsError as error:
            self.runner.history.add({"type": "error", "what": f"power cut of {target}: {error}"})

    def _all_links(self) -> list[tuple[str, str]]:
        ends = [*self.cluster.node_ids, *self.cluster.participant_ids, CLIENT]
        return [(a, b) for a in ends for b in ends if a != b]

    def partition(
        self, shape: str, leader: str, followers: list[str], pick: float
    ) -> set[tuple[str, str]]:
        nodes = self.cluster.node_ids
        rng = random.Random(pick)

        def both(a: list[str], b: list[str]) -> set[tuple[str, str]]:
            return {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}

        if shape == "isolated-leader":
            return both([leader], followers)
        if shape == "majority-minority":
            shuffled = rng.sample(nodes, len(nodes))
            minority = shuffled[: len(nodes) // 2]
            return both(minority, [n for n in nodes if n not in minority])
        if shape == "majorities-ring":
            # node i hears itself and the next n//2 nodes: each sees a majority, no two
            # see the same one (directed: a cut is what dst does not hear from src)
            ring = rng.sample(nodes, len(nodes))
            cut = set()
            for i, dst in enumerate(ring):
                hears = {ring[(i + k) % len(ring)] for k in range(len(ring) // 2 + 1)}
                cut |= {(src, dst) for src in nodes if src not in hears}
            return cut
        if shape == "bridge":
            ring = rng.sample(nodes, len(nodes))
            rest = ring[1:]  # ring[0] is the bridge: it still hears both sides
            half = len(rest) // 2
            return both(rest[:half], rest[half:])
        if shape == "one-way":
            other = _pick(followers, pick)
            return {(leader, other)} if rng.random() < 0.5 else {(other, leader)}
        if shape == "participant-isolated":
            target = _pick(self.cluster.participant_ids, pick)
            return both([target], nodes)
        if shape == "leader-participants":
            return both([leader], self.cluster.participant_ids)
        if shape == "client-leader":
            return both([CLIENT], [leader])
        raise ValueError(shape)

    async def heal_all(self, fault: Fault | None = None) -> None:
        """End whatever is in effect: heal the network, resume, restart."""
        self.cluster.network.heal()
        for node_id in sorted(self.paused_nodes):
            self.cluster.coordinators[node_id].process.resume()
        for node_id in sorted(self.killed_nodes):
            self.cluster.coordinators[node_id].process.start()
        self.paused_nodes.clear()
        self.killed_nodes.clear()
        restarts = sorted(self.killed_agents)
        self.killed_agents.clear()
        if fault is not None:
            self._record(fault, "end")
        for pid in restarts:
            try:
                await self.runner.restart_agent(pid)
            except RuntimeError as error:
                self.runner.history.add({"type": "error", "what": str(error)})
            else:
                self.runner.history.add({"type": "restored", "participant": pid})

    async def _wait_in_doubt(self, participant: str | None, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid in [participant] if participant else list(self.cluster.agents):
                if await self._in_doubt(pid):
                    return True
            await asyncio.sleep(0.01)
        return False

    async def _in_doubt(self, participant: str) -> set[str]:
        """The rounds for which ``participant`` holds a YES that is written: in doubt,
        and its keys held in its store (the PREPARED record goes in the same write). The
        core shows a round in doubt a moment before that write completes, and a crash in
        that moment only cuts a vote short, which nobody was told of."""
        try:
            view = await http(self.cluster.agents[participant].http_port, "/", timeout_s=0.5)
        except Exception:
            return set()
        return set(view["in_doubt"]) & set(view["held"])

    async def _hold_in_doubt(self, participant: str, timeout_s: float) -> tuple[bool, str]:
        """Until ``participant`` is in doubt (it voted YES and has no decision), then
        keep it so: no node reaches it any more (the fault's end heals this; its votes
        still reach the nodes). Without the cut, the decision often arrives between
        seeing the YES and the crash, and the crash would find nothing in doubt.

        It then waits for the cluster to decide, and prefers a YES the cluster commits:
        dying with that one is the case where a lost or forgotten vote loses a write the
        client was told is committed (an abort hides it: undoing a branch nobody kept is
        what an abort asks). Returns whether the participant is in doubt now, and the
        decision the cluster took for what it holds ("" if none was seen in time)."""
        deadline = time.monotonic() + timeout_s
        while await self._wait_in_doubt(participant, deadline - time.monotonic()):
            self.cluster.network.set_cut({(node, participant) for node in self.cluster.node_ids})
            held = await self._in_doubt(participant)
            if not held:
                self.cluster.network.heal()  # decided meanwhile: wait for the next YES
                continue
            decision = await self._decision_of(held, deadline - time.monotonic())
            last_chance = deadline - time.monotonic() < HOLD_LAST_CHANCE_S
            # Still in doubt about what the cluster decided, now that it has decided?
            if (decision != "DECISION_ABORT" or last_chance) and (
                held & await self._in_doubt(participant)
            ):
                return True, decision
            self.cluster.network.heal()  # its decision reaches it: try the next YES
        return False, ""

    async def _decision_of(self, rounds: set[str], timeout_s: float) -> str:
        """COMMIT if the cluster commits any of ``rounds`` within ``timeout_s``, ABORT if it
        aborts them all, "" if it has not decided them all by then."""
        deadline = time.monotonic() + max(0.0, min(timeout_s, HOLD_DECISION_WAIT_S))
        decided = self.runner.decided
        while True:
            decisions = {decided.get(r, "") for r in rounds}
            if "DECISION_COMMIT" in decisions:
                return "DECISION_COMMIT"
            if decisions == {"DECISION_ABORT"}:
                return "DECISION_ABORT"
            if time.monotonic() >= deadline:
                return ""
            await asyncio.sleep(0.01)

    async def _measure_decided(self, fault: Fault) -> None:
        """Leader SIGKILL -> every transaction in doubt at that moment decided at every
        participant that held it. Records the time, or None if not within the wait."""
        killed_at = time.monotonic()
        pending = await self.runner.in_doubt_everywhere()
        if pending is None:
            pending = set()
        deadline = killed_at + DECIDED_WAIT_S
        seconds = None
        while time.monotonic() < deadline:
            now_in_doubt = await self.runner.in_doubt_everywhere()
            if now_in_doubt is not None and not (pending & now_in_doubt):
                seconds = round(time.monotonic() - killed_at, 3)
                break
            await asyncio.sleep(0.05)
        self.runner.history.add(
            {
                "type": "recovery",
                "id": fault.index,
                "kind": fault.kind,
                "metric": "in_doubt_decided_after_leader_kill",
                "in_doubt": len(pending),
                "seconds": seconds,
            }
        )
