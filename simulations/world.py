"""One tier-1 run: the real cores, simulated everything else, from one seed.

``run_seed(seed)`` builds a world (coordinator nodes over a simulated replicated log,
participants over simulated disks, clients, a nemesis), runs the workload with faults,
heals, lets the system settle for the liveness bound, and hands the history to the
checkers. The same seed and code give the same history, fact for fact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from coordinator.core.early import EarlyVotes
from coordinator.core.leader import Leader
from coordinator.core.limits import Limits
from coordinator.core.outbox import Outbox
from coordinator.core.state import CoordinatorState
from participant_sdk.core import ParticipantCore
from simulations import history as h
from simulations.attach import Attachments
from simulations.cluster import SimCluster
from simulations.engine import Loop
from simulations.faults import Nemesis
from simulations.history import History
from simulations.network import LinkFaults, Network
from simulations.participant import SimParticipant, account_key
from simulations.sagas import OutsideWorld
from simulations.workload import Call, Operator, Process, Reader, Send, SimClient, Sleep


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    coordinators: int = 3
    participants: int = 3
    clients: int = 3
    # The bank: accounts at every participant (keys acct/0..), account 0 hot.
    accounts_per_participant: int = 3
    initial_balance: int = 100
    hot_account_p: float = 0.6  # a transfer's account at a participant is account 0
    workload_ms: int = 20_000
    # After the last fault heals, everything must be decided and learned within this.
    liveness_bound_ms: int = 20_000
    faults: bool = True
    fault_gap_ms: tuple[int, int] = (200, 1_500)
    fault_length_ms: tuple[int, int] = (100, 3_000)
    isolated_leader_ms: tuple[int, int] = (500, 16_000)
    # Protocol timing.
    txn_timeout_ms: int = 1_500
    round_timeout_ms: int = 3_000
    retention_ms: int = 5_000
    participant_retention_ms: int = 7_000
    work_patience_ms: int = 2_500
    # Clients.
    think_ms_max: int = 50
    call_timeout_ms: int = 300
    submit_attempts_max: int = 4
    busy_retries_max: int = 4
    resolve_window_ms: int = 3_000
    client_abort_p: float = 0.08
    # Of the transactions: read-only audits of every account (half of them by scan),
    # and transfers by commutative adds; the rest read, then write new balances (some
    # leasing the keys they read, as Branch.get_for_update does).
    audit_p: float = 0.15
    audit_scan_p: float = 0.5
    add_transfer_p: float = 0.25
    lease_p: float = 0.2
    lease_ms: int = 1_000
    work_attempts_max: int = 2  # a Read or Stage that got no answer is sent once more
    # A transfer whose begin travels with its commit request (not proposed first).
    commit_carries_begin_p: float = 0.3
    # A transfer run one-shot: its actions travel inside the commit and run inside
    # each participant's Prepare (``client.run``).
    one_shot_p: float = 0.2
    checkpoint_p: float = 0.06
    rollback_p: float = 0.05
    # Sagas: 2-4 steps across participants; some fail, some are slow (outlive the step
    # timeout), some are cancelled by the client; some compensations fail a few times,
    # a few until they escalate to the operator.
    saga_p: float = 0.15
    saga_steps: tuple[int, int] = (2, 4)
    step_timeout_ms: int = 1_000
    step_action_ms: tuple[int, int] = (4, 60)
    step_fail_p: float = 0.08
    step_slow_p: float = 0.06
    saga_abort_p: float = 0.1
    saga_abort_after_ms: tuple[int, int] = (0, 500)
    undo_flaky_p: float = 0.15  # the compensation fails once or twice, then works
    undo_stuck_p: float = 0.03  # the compensation fails until the participant escalates
    compensation_attempts_max: int = 3
    action_crash_p: float = 0.05  # an action takes its participant down half way
    saga_patience_ms: int = 15_000  # how long a client waits for a saga it began
    operator_poll_ms: int = 500
    operator_delay_ms: int = 1_500  # an escalation is fixed by hand after this
    reader_poll_ms: int = 200  # a reader lists the rounds some client was told about
    reader_recent_rounds: int = 10  # ... the latest this many
    # Cluster and network.
    election_ms: tuple[int, int] = (150, 300)
    # A new leader's election entry commits (and it catches up) this long after it won:
    # it first brings a majority's logs up to date, which takes longer after a partition.
    catch_up_ms: tuple[int, int] = (2, 80)
    follower_apply_ms: tuple[int, int] = (1, 30)  # up to a heartbeat (30 ms) behind
    writeback_ms: int = 5_000  # the OS writes dirty pages back by itself this often
    commit_ms: tuple[int, int] = (1, 5)
    proposal_timeout_ms: int = 500
    stale_leader_ms_max: int = 15_000
    clock_skew_ms: int = 50
    link_drop_p: float = 0.01
    link_duplicate_p: float = 0.01
    link_delay_ms: tuple[int, int] = (1, 10)
    driver_tick_ms: int = 20
    participant_tick_ms: int = 100
    in_doubt_query_ms: int = 300
    # The last this many participants only connect out (simulations/attach.py): the
    # leader reaches each only over the stream it attached, after ``attach_delay_ms``,
    # and it gives up a stream silent for ``attach_silence_ms``.
    outbound_participants: int = 1
    attach_delay_ms: tuple[int, int] = (20, 300)
    attach_silence_ms: int = 4_000

    def links(self) -> LinkFaults:
        return LinkFaults(
            drop_p=self.link_drop_p,
            duplicate_p=self.link_duplicate_p,
            delay_ms_min=self.link_delay_ms[0],
            delay_ms_max=self.link_delay_ms[1],
        )

    def limits(self) -> Limits:
        return Limits(retention_ms=self.retention_ms)


@dataclass(frozen=True, kw_only=True)
class Plant:
    """The parts a run is built from; a planted bug swaps one of them."""

    state: Callable[[Limits], CoordinatorState] = CoordinatorState
    outbox: Callable[[Limits], Outbox] = Outbox
    early_votes: type[EarlyVotes] = EarlyVotes
    leader: type[Leader] = Leader
    cluster: type[SimCluster] = SimCluster
    participant_core: type[ParticipantCore] = ParticipantCore
    participant: type[SimParticipant] = SimParticipant
    client: type[SimClient] = SimClient


@dataclass
class RunResult:
    seed: int
    violations: list[str]
    simulated_ms: int
    history: History
    stats: dict[str, int] = field(default_factory=dict)


class World:
    def __init__(
        self, seed: int, config: SimConfig, plant: Plant, trace: Callable[[str], None] | None
    ) -> None:
        self.seed = seed
        self.config = config
        self.loop = Loop(seed)
        self.history = History(lambda: self.loop.now_ms, trace)
        self.network = Network(self.loop, self._deliver)
        self.network.faults = config.links()
        self.coordinator_ids = [f"c{i}" for i in range(config.coordinators)]
        self.participant_ids = [f"p{i}" for i in range(config.participants)]
        self.client_ids = [f"client{i}" for i in range(config.clients)]
        self.all_ids = [*self.coordinator_ids, *self.participant_ids, *self.client_ids]
        self.cluster = plant.cluster(
            self,
            self.coordinator_ids,
            config.limits(),
            state_factory=plant.state,
            leader_factory=lambda: plant.leader(
                outbox_factory=plant.outbox, early_votes=plant.early_votes
            ),
        )
        self.account_keys = [account_key(i) for i in range(config.accounts_per_participant)]
        opening = dict.fromkeys(self.account_keys, config.initial_balance)
        self.participants = {
            p: plant.participant(self, p, opening, plant.participant_core)
            for p in self.participant_ids
        }
        self.clients = {c: plant.client(self, c) for c in self.client_ids}
        outbound = max(0, min(config.outbound_participants, config.participants))
        self.attachments = Attachments(self, self.participant_ids[config.participants - outbound :])
        self.outside = OutsideWorld(self.history)
        self.operator = Operator(self, "operator")
        self.reader = Reader(self, "reader")
        self.told: list[str] = []  # rounds whose outcome a client was told, in order
        self.kept_checkpoints: list[str] = []
        self.expected_total = config.initial_balance * len(self.account_keys) * config.participants
        self._pending_calls: dict[int, tuple[Process, int]] = {}
        self._request_ids = 0
        self.nemesis = Nemesis(self)

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        config, loop = self.config, self.loop
        end_ms = config.workload_ms + config.liveness_bound_ms
        loop.every(config.driver_tick_ms, self._drive, until_ms=end_ms)
        loop.every(config.writeback_ms, self._writeback, until_ms=end_ms)
        loop.every(config.participant_tick_ms, self._tick_participants, until_ms=end_ms)
        loop.every(config.in_doubt_query_ms, self._ask_in_doubt, until_ms=end_ms)
        self.cluster.check_leadership()
        for name, client in self.clients.items():
            loop.after(
                loop.rng.randint(0, 50), lambda c=client, n=name: self._step(c.run(), None, n)
            )
        loop.after(0, lambda: self._step(self.operator.run(), None, self.operator.name))
        loop.after(0, lambda: self._step(self.reader.run(), None, self.reader.name))
        self.nemesis.start()
        loop.run_until(end_ms)
        return end_ms

    def _drive(self) -> None:
        self.cluster.check_leadership()
        self.cluster.catch_up_all()
        self.cluster.drive()

    def _writeback(self) -> None:
        self.cluster.writeback()
        for participant in self.participants.values():
            participant.writeback()

    def _tick_participants(self) -> None:
        for participant in self.participants.values():
            participant.tick()
        if self.attachments.outbound:
            self.attachments.tick()

    def _ask_in_doubt(self) -> None:
        for participant in self.participants.values():
            participant.ask_in_doubt()

    # ------------------------------------------------------------------ messages

    def send(self, src: str, dst: str, payload: Any) -> None:
        if self.history.trace is not None:
            self.history.note(src, f"-> {dst} {payload}")
        self.network.send(src, dst, payload)

    def _deliver(self, dst: str, src: str, payload: Any) -> None:
        if self.attachments.outbound and not self.attachments.carries(src, dst, payload):
            self.network.dropped += 1  # no stream between them (an outbound participant)
            return
        if dst in self.cluster.nodes:
            self.cluster.on_message(dst, src, payload)
        elif dst in self.participants:
            self.participants[dst].on_message(src, payload)
        else:
            request_id = getattr(payload, "request_id", None)
            pending = self._pending_calls.pop(request_id, None) if request_id is not None else None
            if pending is not None:
                self._step(pending[0], payload, dst)

    # ------------------------------------------------------------------ client processes

    def _step(self, process: Process, value: Any, name: str) -> None:
        try:
            command = process.send(value)
        except StopIteration:
            return
        match command:
            case Sleep():
                self.loop.after(command.ms, lambda: self._step(process, None, name))
            case Send():
                self.send(name, command.dst, command.payload)
                self._step(process, None, name)
            case Call():
                self._request_ids += 1
                request_id = self._request_ids
                self._pending_calls[request_id] = (process, request_id)
                self.send(name, command.dst, command.make_request(request_id))
                self.loop.after(
                    self.config.call_timeout_ms, lambda: self._call_timed_out(request_id, name)
                )

    def _call_timed_out(self, request_id: int, name: str) -> None:
        pending = self._pending_calls.pop(request_id, None)
        if pending is not None:
            self._step(pending[0], None, name)

    # ------------------------------------------------------------------ bank invariant

    def after_participant_write(self, participant: SimParticipant) -> None:
        """The conserved total must hold whenever no transfer or rollback is half done."""
        if self._half_done():
            return
        total = self.bank_total()
        self.history.record(h.BALANCES, participant.participant_id, value=str(total))

    def _half_done(self) -> bool:
        # Work held (voted YES, not yet applied or discarded) or rounds still prepared
        # anywhere mean the global state is between two consistent points.
        for p in self.participants.values():
            image = p.memory if p.alive else p.disk
            if image.prepared or image.holds_any:
                return True
        return False

    def bank_total(self) -> int:
        return sum(
            sum((p.memory if p.alive else p.disk).balances().values())
            for p in self.participants.values()
        )


def run_seed(
    seed: int,
    config: SimConfig | None = None,
    plant: Plant | None = None,
    trace: Callable[[str], None] | None = None,
) -> RunResult:
    from simulations.checkers import check

    world = World(seed, config or SimConfig(), plant or Plant(), trace)
    end_ms = world.run()
    violations = check(world)
    stats = {
        "events": world.loop.events_run,
        "log_entries": len(world.cluster.log),
        "messages": world.network.sent,
        "client_ops": len(world.history.of(h.CLIENT)),
        "early_commits": world.cluster.early_commits,
        "early_commits_short": world.cluster.early_commits_short,
    }
    return RunResult(seed, violations, end_ms, world.history, stats)


def with_overrides(config: SimConfig, **overrides: Any) -> SimConfig:
    return replace(config, **overrides)
