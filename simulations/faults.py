"""The nemesis: a seeded schedule of crashes, restarts, partitions and bad links.

Faults happen only during the workload; at its end everything heals (every node
restarted, every partition healed, links clean), and the run goes on quietly for the
liveness bound, by which every round must be decided and learned by everyone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from simulations import history as h
from simulations.network import LinkFaults

if TYPE_CHECKING:
    from simulations.participant import SimParticipant
    from simulations.world import World


class Nemesis:
    def __init__(self, world: World) -> None:
        self.world = world
        self.rng = world.loop.rng
        self.faults: list[tuple[float, Callable[[], None]]] = [
            (3, self.crash_coordinator),
            (1, self.power_cut_coordinator),
            (1, self.power_cut_cluster),
            (2, self.crash_participant),
            (2, self.isolate_leader),
            (2, self.cut_participants),
            (1, self.cut_clients),
            (1, self.split_everything),
            (1, self.one_way_cut),
            (1, self.step_down),
            (2, self.bad_links),
            (1, self.lossy_log),
        ]

    def start(self) -> None:
        config = self.world.config
        if not config.faults:
            return
        time_ms = self.rng.randint(*config.fault_gap_ms)
        while time_ms < config.workload_ms:
            fault = self._pick()
            self.world.loop.at(time_ms, fault)
            time_ms += self.rng.randint(*config.fault_gap_ms)
        self.world.loop.at(config.workload_ms, self.heal_everything)

    def _pick(self) -> Callable[[], None]:
        total = sum(weight for weight, _ in self.faults)
        roll = self.rng.random() * total
        for weight, fault in self.faults:
            roll -= weight
            if roll <= 0:
                return fault
        return self.faults[-1][1]

    def _later(self, fn: Callable[[], None], length_ms: tuple[int, int] | None = None) -> None:
        """Undo a fault after a while, but never after the heal at the workload's end."""
        config = self.world.config
        length = self.rng.randint(*(length_ms or config.fault_length_ms))
        at = min(self.world.loop.now_ms + length, config.workload_ms)
        self.world.loop.at(at, fn)

    # ------------------------------------------------------------------ faults

    def crash_coordinator(self) -> None:
        cluster = self.world.cluster
        leader = cluster.leader
        node_id = (
            leader
            if leader is not None and self.rng.random() < 0.6
            else self.rng.choice(self.world.coordinator_ids)
        )
        cluster.crash(node_id)
        self._later(lambda: cluster.restart(node_id))

    def power_cut_coordinator(self) -> None:
        """One node loses power: its process and what its journal had not synced."""
        cluster = self.world.cluster
        node_id = cluster.leader or self.rng.choice(self.world.coordinator_ids)
        cluster.power_cut(node_id)
        self._later(lambda: cluster.restart(node_id))

    def power_cut_cluster(self) -> None:
        """Every coordinator loses power at once (one rack, one power feed)."""
        cluster = self.world.cluster
        for node_id in self.world.coordinator_ids:
            cluster.power_cut(node_id)

        def restart() -> None:
            for node_id in self.world.coordinator_ids:
                cluster.restart(node_id)

        self._later(restart)

    def crash_participant(self) -> None:
        self.crash_for_a_while(self.world.participants[self.rng.choice(self.world.participant_ids)])

    def crash_for_a_while(self, participant: SimParticipant) -> None:
        """Also how a saga action takes its participant down half way."""
        participant.crash()
        self._later(participant.restart)

    def isolate_leader(self) -> None:
        """The leader loses the other coordinators but keeps participants and clients,
        and so do they: the classic two-leaders window. Long enough, at times, to
        outlast the retention of finished rounds, which is when a deposed leader's
        stale messages could do harm and fencing must stop them."""
        leader = self.world.cluster.leader
        if leader is None:
            return
        net = self.world.network
        cut_ids = [
            cut_id
            for other in self.world.coordinator_ids
            if other != leader
            for cut_id in (net.cut_one_way(leader, other), net.cut_one_way(other, leader))
        ]
        self.world.history.record(h.FAULT, leader, value="isolated from the other coordinators")
        self.world.cluster.check_leadership()

        def heal() -> None:
            for cut_id in cut_ids:
                self.heal_network(cut_id)

        self._later(heal, self.world.config.isolated_leader_ms)

    def cut_participants(self) -> None:
        cut = self.rng.sample(
            self.world.participant_ids, k=self.rng.randint(1, len(self.world.participant_ids))
        )
        rest = [n for n in self.world.all_ids if n not in cut]
        self._partition([cut, rest], f"cut {','.join(cut)}")

    def cut_clients(self) -> None:
        cut = self.world.client_ids
        rest = [n for n in self.world.all_ids if n not in cut]
        self._partition([cut, rest], "cut clients")

    def split_everything(self) -> None:
        nodes = list(self.world.all_ids)
        self.rng.shuffle(nodes)
        k = self.rng.randint(1, len(nodes) - 1)
        self._partition([nodes[:k], nodes[k:]], "random split")

    def one_way_cut(self) -> None:
        a, b = self.rng.sample(self.world.all_ids, k=2)
        cut_id = self.world.network.cut_one_way(a, b)
        self.world.history.record(h.FAULT, a, value=f"one-way cut to {b}")
        self.world.cluster.check_leadership()
        self._later(lambda: self.heal_network(cut_id))

    def step_down(self) -> None:
        self.world.history.record(h.FAULT, "nemesis", value="leader steps down")
        self.world.cluster.step_down_leader()

    def bad_links(self) -> None:
        net = self.world.network
        net.faults = LinkFaults(
            drop_p=self.rng.uniform(0.05, 0.3),
            duplicate_p=self.rng.uniform(0.02, 0.2),
            delay_ms_min=1,
            delay_ms_max=self.rng.randint(20, 300),
        )
        self.world.history.record(h.FAULT, "nemesis", value="bad links")
        self._later(self.clean_links)

    def lossy_log(self) -> None:
        cluster = self.world.cluster
        cluster.lose_p = self.rng.uniform(0.05, 0.4)
        cluster.report_unknown_p = self.rng.uniform(0.05, 0.4)
        self.world.history.record(h.FAULT, "nemesis", value="proposals lost or reported unknown")

        def clean() -> None:
            cluster.lose_p = cluster.report_unknown_p = 0.0

        self._later(clean)

    # ------------------------------------------------------------------ healing

    def _partition(
        self, groups: list[list[str]], what: str, length_ms: tuple[int, int] | None = None
    ) -> None:
        cut_id = self.world.network.partition(groups)
        self.world.history.record(h.FAULT, "nemesis", value=f"partition: {what}")
        self.world.cluster.check_leadership()
        self._later(lambda: self.heal_network(cut_id), length_ms)

    def heal_network(self, cut_id: int | None = None) -> None:
        if cut_id is None:
            self.world.network.heal_all()
        else:
            self.world.network.heal(cut_id)
        self.world.history.record(h.FAULT, "nemesis", value="heal network")
        self.world.cluster.check_leadership()
        self.world.cluster.catch_up_all()

    def clean_links(self) -> None:
        self.world.network.faults = self.world.config.links()

    def heal_everything(self) -> None:
        world = self.world
        self.clean_links()
        world.cluster.lose_p = world.cluster.report_unknown_p = 0.0
        for node_id in world.coordinator_ids:
            world.cluster.restart(node_id)
        for participant in world.participants.values():
            participant.restart()
        self.heal_network()
        world.history.record(h.FAULT, "nemesis", value="healed everything")
