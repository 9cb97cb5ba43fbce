"""A simulated coordinator cluster: a replicated log and the nodes that apply it.

The log is modelled at the level the protocol sees, not as Raft messages:

- one committed log (what a majority holds); each node applies its prefix in order,
  with a delay, and only while it can reach the leader (a cut-off node goes stale);
- a proposal is *applied*, *not applied* (refused before sending: not the leader) or
  *unknown* (pysyncobj's LEADER_CHANGED/timeout): it may be lost, or applied and still
  reported as failed, and a stale leader's proposals never apply;
- leaders change after crashes, partitions and forced step-downs, with a new term;
- two leaders at once: a leader cut off from the majority keeps believing it leads for
  a while (pysyncobj's leaderFallbackTimeout) and keeps driving participants from its
  stale state, with its old term.

Entries pass through the real protobuf codec on their way into the log, as they do
in the real cluster. Each node runs the real ``CoordinatorState`` and ``Outbox``.

A leader handles a commit request as the real one does (coordinator/core/early.py):
when ``early_prepare_set`` allows it, it sends Prepare at once and proposes the commit
(with its begin, when the client sent one along) and the votes it heard in one
commit of the log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from coordinator.core.early import (
    EARLY_PREPARES_MAX,
    EARLY_VOTES_WAIT_MS,
    EarlyVotes,
    plan_early_prepare,
)
from coordinator.core.entries import BeginTxn, Entry, RecordVotes, RequestCommit
from coordinator.core.limits import Limits
from coordinator.core.messages import Decide, FromParticipant
from coordinator.core.outbox import Outbox
from coordinator.core.state import UNDECIDED, Applied, CoordinatorState, StepStatus
from coordinator.replication.codec import decode_entry, encode_entry
from simulations import history as h

if TYPE_CHECKING:
    from simulations.world import World

APPLIED, NOT_LEADER, UNKNOWN = "applied", "not_leader", "unknown"


@dataclass(frozen=True, slots=True)
class ProposeResult:
    status: str  # APPLIED, NOT_LEADER or UNKNOWN
    applied: Applied | None = None


# Sim-only request/response shapes between clients, participants and nodes.
@dataclass(frozen=True, slots=True)
class ClientRequest:
    request_id: int
    entry: Entry
    begin: BeginTxn | None = None  # a RequestCommit may carry its txn's begin


@dataclass(frozen=True, slots=True)
class ClientReply:
    request_id: int
    result: ProposeResult
    leader_hint: str | None = None


@dataclass(frozen=True, slots=True)
class StatusRequest:
    request_id: int
    round_id: str


@dataclass(frozen=True, slots=True)
class StatusReply:
    request_id: int
    found: bool
    leader: bool
    phase: str = ""
    decision: str = ""
    leader_hint: str | None = None


@dataclass(frozen=True, slots=True)
class EscalationsRequest:
    """The operator asks which saga steps wait for a person (``concord txn list``)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class EscalationsReply:
    request_id: int
    leader: bool
    escalated: tuple[tuple[str, int, str], ...] = ()  # (saga, step, participant)
    leader_hint: str | None = None


@dataclass(frozen=True, slots=True)
class OutcomeQuery:
    """An in-doubt participant asks for a round's decision."""

    round_id: str
    participant_id: str


@dataclass
class CoordinatorNode:
    node_id: str
    limits: Limits
    state_factory: Callable[[Limits], CoordinatorState]
    outbox_factory: Callable[[Limits], Outbox]
    clock_skew_ms: int = 0
    alive: bool = True
    believes_leader: bool = False
    term: int = 0
    stale_until_ms: int = 0
    applied_index: int = 0
    state: CoordinatorState = field(init=False)
    outbox: Outbox | None = None
    callbacks: dict[int, Callable[[ProposeResult], None]] = field(default_factory=dict)
    # Commits preparing early: their votes so far, and what proposes them.
    early: dict[str, tuple[EarlyVotes, Callable[[], None]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = self.state_factory(self.limits)


class SimCluster:
    def __init__(
        self,
        world: World,
        node_ids: list[str],
        limits: Limits,
        *,
        state_factory: Callable[[Limits], CoordinatorState] = CoordinatorState,
        outbox_factory: Callable[[Limits], Outbox] = Outbox,
        early_votes: type[EarlyVotes] = EarlyVotes,
    ) -> None:
        self.world = world
        self.early_votes = early_votes
        self.early_commits = 0  # commits proposed with their early votes
        self.early_commits_short = 0  # ... with fewer votes than participants
        self.loop = world.loop
        self.limits = limits
        self.nodes = {
            n: CoordinatorNode(
                n,
                limits,
                state_factory,
                outbox_factory,
                clock_skew_ms=self.loop.rng.randint(
                    -world.config.clock_skew_ms, world.config.clock_skew_ms
                ),
            )
            for n in node_ids
        }
        self.log: list[bytes] = []
        self.term = 0
        self.leader: str | None = None
        self._election_pending = False
        # Proposal faults, changed by the nemesis.
        self.lose_p = 0.0
        self.report_unknown_p = 0.0

    # ------------------------------------------------------------------ topology

    def quorum(self) -> int:
        return len(self.nodes) // 2 + 1

    def reach(self, node_id: str) -> list[str]:
        """Live coordinator nodes that ``node_id`` can talk to both ways (itself included)."""
        net = self.world.network
        return [
            n
            for n, node in self.nodes.items()
            if node.alive
            and (n == node_id or (net.connected(node_id, n) and net.connected(n, node_id)))
        ]

    def leads_majority(self, node_id: str) -> bool:
        return self.nodes[node_id].alive and len(self.reach(node_id)) >= self.quorum()

    # ------------------------------------------------------------------ elections

    def check_leadership(self) -> None:
        """Run often: step down stale leaders, elect when there is no working leader."""
        now = self.loop.now_ms
        for node in self.nodes.values():
            if not node.believes_leader or node.node_id == self.leader:
                continue
            hears_new_leader = self.leader is not None and self.leader in self.reach(node.node_id)
            if not node.alive or hears_new_leader or now >= node.stale_until_ms:
                self._step_down(node)
        if self.leader is not None and self.leads_majority(self.leader):
            return
        if self.leader is not None:
            old = self.nodes[self.leader]
            if old.alive and old.believes_leader:
                # Cut off from the majority but unaware: it leads on, stale, for a while.
                old.stale_until_ms = now + self.loop.rng.randint(
                    0, self.world.config.stale_leader_ms_max
                )
                self.world.history.record(
                    h.FAULT, old.node_id, value=f"stale leader until {old.stale_until_ms}ms"
                )
            self.leader = None
        if not self._election_pending:
            self._election_pending = True
            delay = self.loop.rng.randint(*self.world.config.election_ms)
            self.loop.after(delay, self._elect)

    def _elect(self) -> None:
        self._election_pending = False
        if self.leader is not None:
            return
        candidates = [n for n in self.nodes if self.leads_majority(n)]
        if not candidates:
            return  # check_leadership tries again on its next run
        chosen = self.loop.rng.choice(candidates)
        self.term += 1
        self.leader = chosen
        node = self.nodes[chosen]
        node.believes_leader = True
        node.term = self.term
        node.outbox = node.outbox_factory(self.limits)
        self.world.history.record(h.LEADER, chosen, value=str(self.term))
        self.catch_up(chosen)

    def step_down_leader(self) -> None:
        """Nemesis: the leader loses its lease (e.g. a long GC pause)."""
        if self.leader is not None:
            self._step_down(self.nodes[self.leader])
            self.leader = None
            self.check_leadership()

    def _step_down(self, node: CoordinatorNode) -> None:
        node.believes_leader = False
        node.outbox = None
        self._fail_pending(node)

    def _fail_pending(self, node: CoordinatorNode) -> None:
        callbacks, node.callbacks = node.callbacks, {}
        for callback in callbacks.values():
            callback(ProposeResult(UNKNOWN))

    # ------------------------------------------------------------------ crashes

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            return
        node.alive = False
        node.believes_leader = False
        node.outbox = None
        node.callbacks = {}  # the process is gone: nobody will ever answer those clients
        node.early = {}
        self.world.history.record(h.FAULT, node_id, value="crash")
        self.check_leadership()

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive:
            return
        # The Raft log is durable (issue "real cluster" makes it so): a restarted node
        # rebuilds its state by applying the log again from the start.
        node.alive = True
        node.state = node.state_factory(self.limits)
        node.applied_index = 0
        self.world.history.record(h.FAULT, node_id, value="restart")
        self.catch_up(node_id)
        self.check_leadership()

    # ------------------------------------------------------------------ log

    def propose(
        self,
        node_id: str,
        entry: Entry,
        on_result: Callable[[ProposeResult], None],
        *,
        before: tuple[Entry, ...] = (),
        after: tuple[Entry, ...] = (),
    ) -> None:
        """Replicate ``entry``, with ``before`` and ``after`` around it in the same
        commit (one LogBatch in the real cluster); ``on_result`` gets ``entry``'s."""
        node = self.nodes[node_id]
        rng = self.loop.rng
        if not node.alive or not node.believes_leader:
            self.loop.after(0, lambda: on_result(ProposeResult(NOT_LEADER)))
            return
        data = encode_entry(entry)
        data_before = [encode_entry(e) for e in before]
        data_after = [encode_entry(e) for e in after]
        term = node.term
        if node_id != self.leader or rng.random() < self.lose_p:
            # A stale leader's proposal never commits; a lost one neither. Both are
            # reported like pysyncobj does: no answer until a timeout, outcome unknown.
            timeout = self.world.config.proposal_timeout_ms
            self.loop.after(timeout, lambda: on_result(ProposeResult(UNKNOWN)))
            return

        def commit() -> None:
            still_leader = self.leader == node_id and node.term == term and node.alive
            if not still_leader and rng.random() < 0.5:
                on_result(ProposeResult(UNKNOWN))  # lost with the leadership
                return
            self.log.extend(data_before)
            self.log.append(data)
            index = len(self.log)
            self.log.extend(data_after)
            if still_leader:
                if rng.random() < self.report_unknown_p:
                    # Applied, but the proposer hears LEADER_CHANGED-style silence.
                    self.loop.after(
                        self.world.config.proposal_timeout_ms,
                        lambda: on_result(ProposeResult(UNKNOWN)),
                    )
                else:
                    node.callbacks[index] = on_result
            else:
                # A new leader committed the old leader's entry after all.
                on_result(ProposeResult(UNKNOWN))
            for n in self.nodes:
                self.loop.after(
                    rng.randint(0, 3) if n == node_id else rng.randint(1, 8),
                    lambda n=n: self.catch_up(n),
                )

        self.loop.after(rng.randint(*self.world.config.commit_ms), commit)

    def catch_up(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            return
        if node_id != self.leader and (
            self.leader is None or self.leader not in self.reach(node_id)
        ):
            return  # cut off from the majority: its state goes stale
        while node.applied_index < len(self.log):
            index = node.applied_index + 1
            entry = decode_entry(self.log[index - 1])
            applied = node.state.apply(entry)
            node.applied_index = index
            for d in applied.decided:
                self.world.history.record(
                    h.DECIDED, node_id, d.round_id, d.decision.value, of=d.kind.value
                )
            callback = node.callbacks.pop(index, None)
            if callback is not None:
                callback(ProposeResult(APPLIED, applied))

    def catch_up_all(self) -> None:
        for n in self.nodes:
            self.catch_up(n)

    # ------------------------------------------------------------------ driver

    def drive(self) -> None:
        """The leader's driver loop: send what the outbox says, propose what is due."""
        for node in self.nodes.values():
            if not (node.alive and node.believes_leader and node.outbox is not None):
                continue
            now = self.loop.now_ms + node.clock_skew_ms
            due = node.outbox.poll(node.state, now, node.term)
            for message in due.sends:
                self.world.send(node.node_id, message.participant_id, message)
            for entry in due.proposals:
                self.propose(node.node_id, entry, _ignore)

    def on_message(self, node_id: str, src: str, payload: Any) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            return
        match payload:
            case ClientRequest():
                self._on_client_request(node, src, payload)
            case StatusRequest():
                self._on_status(node, src, payload)
            case OutcomeQuery():
                self._on_outcome_query(node, src, payload)
            case EscalationsRequest():
                self._on_escalations(node, src, payload)
            case _ if isinstance(payload, FromParticipant):
                early = node.early.get(payload.round_id)
                if early is not None:
                    if early[0].on_reply(payload):
                        early[1]()
                elif node.outbox is not None:
                    node.outbox.on_reply(payload)

    def _hint(self, node_id: str) -> str | None:
        return (
            self.leader if self.leader is not None and self.leader in self.reach(node_id) else None
        )

    def _on_client_request(self, node: CoordinatorNode, src: str, req: ClientRequest) -> None:
        if not node.believes_leader:
            self.world.send(
                node.node_id,
                src,
                ClientReply(req.request_id, ProposeResult(NOT_LEADER), self._hint(node.node_id)),
            )
            return
        # The entry carries the leader's time, not the client's.
        now_ms = self.loop.now_ms + node.clock_skew_ms
        entry = _with_time(req.entry, now_ms)
        begin = () if req.begin is None else (_with_time(req.begin, now_ms),)

        def reply(result: ProposeResult) -> None:
            self.world.send(node.node_id, src, ClientReply(req.request_id, result))

        if isinstance(entry, RequestCommit) and self._prepare_early(node, entry, begin, reply):
            return
        self.propose(node.node_id, entry, reply, before=begin)

    def _prepare_early(
        self,
        node: CoordinatorNode,
        commit: RequestCommit,
        begin: tuple[BeginTxn, ...],
        reply: Callable[[ProposeResult], None],
    ) -> bool:
        """The real leader's early path (coordinator/core/early.py); False: not taken."""
        txn_id = commit.txn_id
        chosen, session_id = plan_early_prepare(node.state, txn_id, begin[0] if begin else None)
        if not chosen or txn_id in node.early or len(node.early) >= EARLY_PREPARES_MAX:
            return False
        votes, prepares = self.early_votes.start(txn_id, session_id, chosen, node.term)

        def finish() -> None:
            if node.early.get(txn_id, (None,))[0] is not votes:
                return  # proposed already, or the node crashed
            del node.early[txn_id]
            now_ms = self.loop.now_ms + node.clock_skew_ms
            collected = votes.collected()
            self.early_commits += 1
            self.early_commits_short += len(collected) < len(chosen)
            after = (RecordVotes(votes=collected, now_ms=now_ms),) if collected else ()
            self.propose(node.node_id, _with_time(commit, now_ms), reply, before=begin, after=after)

        node.early[txn_id] = (votes, finish)
        for prepare in prepares:
            self.world.send(node.node_id, prepare.participant_id, prepare)
        self.loop.after(EARLY_VOTES_WAIT_MS, finish)
        return True

    def _on_status(self, node: CoordinatorNode, src: str, req: StatusRequest) -> None:
        if not node.believes_leader:
            reply = StatusReply(
                req.request_id, found=False, leader=False, leader_hint=self._hint(node.node_id)
            )
        else:
            rnd = node.state.get(req.round_id)
            if rnd is None:
                reply = StatusReply(req.request_id, found=False, leader=True)
            else:
                decision = rnd.decision.value if rnd.decision else ""
                reply = StatusReply(
                    req.request_id,
                    found=True,
                    leader=True,
                    phase=rnd.phase.value,
                    decision=decision,
                )
        self.world.send(node.node_id, src, reply)

    def _on_escalations(self, node: CoordinatorNode, src: str, req: EscalationsRequest) -> None:
        if not node.believes_leader:
            reply = EscalationsReply(
                req.request_id, leader=False, leader_hint=self._hint(node.node_id)
            )
        else:
            escalated = tuple(
                (rnd.round_id, index, step.participant_id)
                for rnd in node.state.open_rounds()
                for index, step in enumerate(rnd.steps)
                if step.status is StepStatus.ESCALATED
            )
            reply = EscalationsReply(req.request_id, leader=True, escalated=escalated)
        self.world.send(node.node_id, src, reply)

    def _on_outcome_query(self, node: CoordinatorNode, src: str, query: OutcomeQuery) -> None:
        if not node.believes_leader:
            return  # the participant asks another node next time
        rnd = node.state.get(query.round_id)
        if rnd is not None and rnd.phase not in UNDECIDED:
            self._answer(node, src, query)
            return
        # Unknown here: presumed abort; ACTIVE, asked by a participant: its commit
        # request was lost. Either only through the log (rule 9), and never while this
        # leader is committing it early (the real servicer's guard).
        now_ms = self.loop.now_ms + node.clock_skew_ms
        entry = node.state.entry_for_outcome_query(query.round_id, query.participant_id, now_ms)
        if entry is None or query.round_id in node.early:
            return  # the participant asks again
        self.propose(node.node_id, entry, lambda result: self._answer(node, src, query))

    def _answer(self, node: CoordinatorNode, src: str, query: OutcomeQuery) -> None:
        rnd = node.state.get(query.round_id)
        if rnd is None or rnd.decision is None or not node.believes_leader:
            return
        decide = Decide(
            round_id=rnd.round_id,
            kind=rnd.kind,
            participant_id=query.participant_id,
            decision=rnd.decision,
            checkpoint_id=rnd.checkpoint_id,
            term=node.term,
        )
        self.world.send(node.node_id, src, decide)


def _ignore(result: ProposeResult) -> None:
    pass


def _with_time(entry: Entry, now_ms: int) -> Entry:
    return replace(entry, now_ms=now_ms)
