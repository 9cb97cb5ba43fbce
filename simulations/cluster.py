"""A simulated coordinator cluster: a replicated log, and nodes that apply it and run
the production ``Leader`` (coordinator/core/leader.py).

The log is modelled at the level the protocol sees, not as Raft messages:

- one committed log (what a majority holds); each node applies its prefix in order,
  with a delay, and only while it can reach the leader (a cut-off node goes stale);
- a proposal is *applied*, *not applied* (refused before sending: not the leader) or
  *unknown* (pysyncobj's LEADER_CHANGED/timeout): it may be lost, or applied and still
  reported as failed, and a stale leader's proposals never apply;
- leaders change after crashes, partitions and forced step-downs, with a new term; a
  new leader catches up with the log only once its election entry commits (reads
  wait for that, as the real node waits for pysyncobj's no-op entry);
- two leaders at once: a leader cut off from the majority keeps believing it leads for
  a while (pysyncobj's leaderFallbackTimeout) and keeps driving participants from its
  stale state, with its old term;
- each node's journal: the prefix of the log it holds, and how much of it is synced.
  An entry commits once the leader and a majority hold it, synced (the journal syncs
  before it acknowledges); a power cut drops what a node had not synced; a node wins
  an election only with a log at least as long as a majority's (Raft's vote rule),
  and the log is what the new leader holds. With a journal that syncs, no power cut
  loses a committed entry; with one that does not, a cut of a majority does.

Entries pass through the real protobuf codec on their way into the log, as they do
in the real cluster. Each node runs the real ``CoordinatorState``; while it leads it
drives the real ``Leader`` exactly as coordinator/runtime/node.py does — leadership,
requests, replies, ticks and proposal results in, ``take_ready()`` executed — and
this module only carries messages, so no protocol decision is made here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from coordinator.core.entries import BeginTxn, Entry, RequestCommit
from coordinator.core.leader import Answer, Leader, Proposal, ProposeResult, ProposeStatus, Ready
from coordinator.core.limits import Limits
from coordinator.core.messages import FromParticipant
from coordinator.core.state import Applied, CoordinatorState, Round, StepStatus
from coordinator.core.types import Decision
from coordinator.replication.codec import decode_entry, encode_entry
from simulations import history as h

if TYPE_CHECKING:
    from simulations.world import World


# Sim-only request/response shapes between clients, participants and nodes: the
# gRPC calls of the real cluster.
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
    """``leader`` False: not answered here (not the leader, or not caught up yet)."""

    request_id: int
    found: bool
    leader: bool
    phase: str = ""
    decision: str = ""
    leader_hint: str | None = None


@dataclass(frozen=True, slots=True)
class ListRequest:
    """Several rounds at once (``concord txn list``): each answer is a read."""

    request_id: int
    round_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListReply:
    request_id: int
    leader: bool
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
    """An in-doubt participant asks for a round's decision (QueryOutcome)."""

    round_id: str
    participant_id: str


@dataclass(frozen=True, slots=True)
class OutcomeReply:
    """The decision, when there is one (QueryOutcomeReply)."""

    round_id: str
    decision: Decision


@dataclass
class CoordinatorNode:
    node_id: str
    limits: Limits
    state_factory: Callable[[Limits], CoordinatorState]
    leader_factory: Callable[[], Leader]
    clock_skew_ms: int = 0
    alive: bool = True
    believes_leader: bool = False
    term: int = 0
    stale_until_ms: int = 0
    applied_index: int = 0
    held: int = 0  # how much of the log its journal holds ...
    synced: int = 0  # ... and how much of that a power cut would not lose
    state: CoordinatorState = field(init=False)
    leader: Leader = field(init=False)
    callbacks: dict[int, Callable[[ProposeResult], None]] = field(default_factory=dict)
    # What to do with the leader's answer to each ticket.
    tickets: dict[int, Callable[[Answer], None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = self.state_factory(self.limits)
        self.leader = self.leader_factory()


class SimCluster:
    def __init__(
        self,
        world: World,
        node_ids: list[str],
        limits: Limits,
        *,
        state_factory: Callable[[Limits], CoordinatorState] = CoordinatorState,
        leader_factory: Callable[[], Leader] = Leader,
    ) -> None:
        self.world = world
        self.loop = world.loop
        self.limits = limits
        self.nodes = {
            n: CoordinatorNode(
                n,
                limits,
                state_factory,
                leader_factory,
                clock_skew_ms=self.loop.rng.randint(
                    -world.config.clock_skew_ms, world.config.clock_skew_ms
                ),
            )
            for n in node_ids
        }
        self.log: list[bytes] = []
        self._entries: list[Entry] = []  # the log decoded (once: every node applies it)
        self.term = 0
        self.leader: str | None = None
        self._election_pending = False
        self._tickets = itertools.count(1)
        self._retired_early = (0, 0)  # early commits of leaders lost in crashes
        self._reach: dict[str, tuple[str, ...]] = {}  # see reach()
        self._reach_version = -1
        # Proposal faults, changed by the nemesis.
        self.lose_p = 0.0
        self.report_unknown_p = 0.0

    @property
    def early_commits(self) -> int:
        return self._retired_early[0] + sum(
            n.leader.stats.early_commits for n in self.nodes.values()
        )

    @property
    def early_commits_short(self) -> int:
        return self._retired_early[1] + sum(
            n.leader.stats.early_commits_short for n in self.nodes.values()
        )

    # ------------------------------------------------------------------ topology

    def quorum(self) -> int:
        return len(self.nodes) // 2 + 1

    def reach(self, node_id: str) -> tuple[str, ...]:
        """Live coordinator nodes that ``node_id`` can talk to both ways (itself included).

        Asked several times every driver tick, and the answer changes only when a cut
        starts or heals (``Network.version``) or a node dies or comes back (which clears
        the cache): computed once in between."""
        net = self.world.network
        if net.version != self._reach_version:
            self._reach_version = net.version
            self._reach.clear()
        known = self._reach.get(node_id)
        if known is None:
            known = self._reach[node_id] = tuple(
                n
                for n, node in self.nodes.items()
                if node.alive
                and (n == node_id or (net.connected(node_id, n) and net.connected(n, node_id)))
            )
        return known

    def leads_majority(self, node_id: str) -> bool:
        return self.nodes[node_id].alive and len(self.reach(node_id)) >= self.quorum()

    def now_ms(self, node: CoordinatorNode) -> int:
        """The node's clock: the leader's time goes into the entries it proposes."""
        return self.loop.now_ms + node.clock_skew_ms

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
        candidates = [n for n in self.nodes if self.leads_majority(n) and self._electable(n)]
        if not candidates:
            return  # check_leadership tries again on its next run
        chosen = self.loop.rng.choice(candidates)
        self.term += 1
        self.leader = chosen
        node = self.nodes[chosen]
        node.believes_leader = True
        node.term = self.term
        node.leader.start_term(self.term, node.state)
        self.world.history.record(h.LEADER, chosen, value=str(self.term))
        if node.held < len(self.log):
            self._truncate(node.held)
        # Its election entry commits once a majority holds the log up to it; until then
        # it applies nothing new and serves no reads (what it applied may be stale).
        term = self.term
        delay = self.loop.rng.randint(*self.world.config.catch_up_ms)
        self.loop.after(delay, lambda: self._caught_up(chosen, term))

    def _electable(self, node_id: str) -> bool:
        """Raft's vote rule: enough voters (with the candidate, a majority) hold no
        more of the log than the candidate does."""
        held = self.nodes[node_id].held
        voters = [n for n in self.reach(node_id) if n != node_id and self.nodes[n].held <= held]
        return len(voters) + 1 >= self.quorum()

    def _truncate(self, length: int) -> None:
        """The new leader's log is the log: entries past it were never held by a
        majority that survived (only a journal that skipped its sync loses them)."""
        self.world.history.record(
            h.FAULT, "cluster", value=f"log truncated from {len(self.log)} to {length} entries"
        )
        del self.log[length:]
        del self._entries[length:]
        for node in self.nodes.values():
            node.held = min(node.held, length)
            node.synced = min(node.synced, length)
            lost = [i for i in node.callbacks if i > length]
            for index in lost:
                node.callbacks.pop(index)(ProposeResult(ProposeStatus.UNKNOWN))

    def _hold(self, node: CoordinatorNode, length: int) -> None:
        """The node's journal appends the log up to ``length`` and syncs it."""
        node.held = max(node.held, length)
        self.sync_journal(node)

    def sync_journal(self, node: CoordinatorNode) -> None:
        node.synced = node.held

    def writeback(self) -> None:
        """The operating system writes dirty pages back by itself every few seconds:
        even a journal that never syncs loses only what is recent."""
        for node in self.nodes.values():
            if node.alive:
                node.synced = node.held

    def _caught_up(self, node_id: str, term: int) -> None:
        node = self.nodes[node_id]
        if node.alive and node.believes_leader and node.term == term and self.leader == node_id:
            node.leader.on_caught_up()
            self.catch_up(node_id)

    def step_down_leader(self) -> None:
        """Nemesis: the leader loses its lease (e.g. a long GC pause)."""
        if self.leader is not None:
            self._step_down(self.nodes[self.leader])
            self.leader = None
            self.check_leadership()

    def _step_down(self, node: CoordinatorNode) -> None:
        node.believes_leader = False
        node.leader.stop()
        self._execute(node, node.leader.take_ready())
        callbacks, node.callbacks = node.callbacks, {}
        for callback in callbacks.values():
            callback(ProposeResult(ProposeStatus.UNKNOWN))

    # ------------------------------------------------------------------ crashes

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            return
        node.alive = False
        self._reach.clear()
        node.believes_leader = False
        # The process is gone: nobody will ever answer its callers.
        stats = node.leader.stats
        early, short = self._retired_early
        self._retired_early = (early + stats.early_commits, short + stats.early_commits_short)
        node.leader = node.leader_factory()
        node.callbacks = {}
        node.tickets = {}
        self.world.history.record(h.FAULT, node_id, value="crash")
        self.check_leadership()

    def power_cut(self, node_id: str) -> None:
        """The node's process dies and its journal keeps only what it had synced."""
        node = self.nodes[node_id]
        self.crash(node_id)
        node.held = node.synced
        self.world.history.record(h.FAULT, node_id, value=f"power cut: journal keeps {node.held}")

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive:
            return
        # It loads its last snapshot (some prefix of what its journal holds); the rest
        # of its journal applies only once it learns what is committed: from a leader,
        # or, if it is elected itself, once its election entry commits.
        node.alive = True
        self._reach.clear()
        node.state = node.state_factory(self.limits)
        node.applied_index = 0
        snapshot = self.loop.rng.randint(0, min(node.held, len(self.log)))
        self.world.history.record(h.FAULT, node_id, value=f"restart from snapshot {snapshot}")
        self._apply(node, snapshot)
        self.catch_up(node_id)
        self.check_leadership()

    # ------------------------------------------------------------------ log

    def propose(
        self,
        node_id: str,
        proposal: Proposal,
        on_results: Callable[[tuple[ProposeResult, ...]], None],
    ) -> None:
        """Replicate the proposal's entries in one commit of the log (one LogBatch in
        the real cluster); ``on_results`` gets the results of its answered entries."""
        node = self.nodes[node_id]
        rng = self.loop.rng
        answered = max(proposal.answered, 1)

        def every(result: ProposeResult) -> None:
            on_results((result,) * answered)

        if not node.alive or not node.believes_leader:
            self.loop.after(0, lambda: every(ProposeResult(ProposeStatus.NOT_LEADER)))
            return
        data = [encode_entry(e) for e in proposal.entries]
        term = node.term
        unknown = ProposeResult(ProposeStatus.UNKNOWN)
        if node_id != self.leader or rng.random() < self.lose_p:
            # A stale leader's proposal never commits; a lost one neither. Both are
            # reported like pysyncobj does: no answer until a timeout, outcome unknown.
            timeout = self.world.config.proposal_timeout_ms
            self.loop.after(timeout, lambda: every(unknown))
            return

        def commit() -> None:
            still_leader = self.leader == node_id and node.term == term and node.alive
            if not still_leader and rng.random() < 0.5:
                every(unknown)  # lost with the leadership
                return
            first = len(self.log) + 1
            self.log.extend(data)
            self._entries.extend(decode_entry(d) for d in data)
            # Committed: the leader and a majority hold it (the rest learn it later).
            others = [n for n in self.reach(node_id) if n != node_id]
            holders = {node_id, *rng.sample(others, k=min(len(others), self.quorum() - 1))}
            if self.leader is not None:
                holders.add(self.leader)  # a new leader committing the old one's entry
            for holder in sorted(holders):
                self._hold(self.nodes[holder], len(self.log))
            if still_leader:
                if rng.random() < self.report_unknown_p:
                    # Applied, but the proposer hears LEADER_CHANGED-style silence.
                    self.loop.after(self.world.config.proposal_timeout_ms, lambda: every(unknown))
                else:
                    self._await_applied(node, first, answered, on_results)
            else:
                every(unknown)  # a new leader committed the old leader's entry after all
            # A follower applies once it learns the commit index, from the leader's
            # next append or heartbeat.
            follower_apply_ms = self.world.config.follower_apply_ms
            for n in self.nodes:
                self.loop.after(
                    rng.randint(0, 3) if n == node_id else rng.randint(*follower_apply_ms),
                    lambda n=n: self.catch_up(n),
                )

        self.loop.after(rng.randint(*self.world.config.commit_ms), commit)

    def _await_applied(
        self,
        node: CoordinatorNode,
        first: int,
        answered: int,
        on_results: Callable[[tuple[ProposeResult, ...]], None],
    ) -> None:
        """Answer once the node applied the answered entries (log indexes from
        ``first``): each entry's own result, as pysyncobj reports them."""
        results: dict[int, ProposeResult] = {}

        def one(position: int, result: ProposeResult) -> None:
            results[position] = result
            if len(results) == answered:
                on_results(tuple(results[i] for i in range(answered)))

        for position in range(answered):
            node.callbacks[first + position] = lambda r, p=position: one(p, r)

    def catch_up(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if not node.alive or node.applied_index >= len(self.log):
            return
        if node_id != self.leader and (
            self.leader is None or self.leader not in self.reach(node_id)
        ):
            return  # cut off from the majority: its state goes stale
        if node_id == self.leader and not node.leader.caught_up:
            return  # a new leader: nothing applies before its election entry commits
        self._hold(node, len(self.log))
        self._apply(node, len(self.log))

    def _apply(self, node: CoordinatorNode, length: int) -> None:
        while node.applied_index < length:
            index = node.applied_index + 1
            entry = self._entries[index - 1]
            applied = node.state.apply(entry)
            node.applied_index = index
            for d in applied.decided:
                self.world.history.record(
                    h.DECIDED,
                    node.node_id,
                    d.round_id,
                    d.decision.value,
                    of=d.kind.value,
                    entry_ms=str(entry.now_ms),  # the deciding entry's time (forgetting)
                )
            callback = node.callbacks.pop(index, None)
            if callback is not None:
                callback(ProposeResult(ProposeStatus.APPLIED, applied))

    def catch_up_all(self) -> None:
        length = len(self.log)
        for n, node in self.nodes.items():
            if node.alive and node.applied_index < length:  # else catch_up has nothing to do
                self.catch_up(n)

    # ------------------------------------------------------------------ running the leader

    def drive(self) -> None:
        """A tick of every node that believes it leads (the real node's driver pass)."""
        for node in self.nodes.values():
            if node.alive and node.believes_leader:
                node.leader.tick(node.state, self.now_ms(node))
                self._execute(node, node.leader.take_ready())

    def _execute(self, node: CoordinatorNode, ready: Ready) -> None:
        """What coordinator/runtime/node.py does with a ``Ready``."""
        for message in ready.sends:
            self.world.send(node.node_id, message.participant_id, message)
        for proposal in ready.proposals:
            if proposal.answered:
                ticket = proposal.ticket
                self.propose(
                    node.node_id,
                    proposal,
                    lambda results, t=ticket, n=node: self._proposed(n, t, results),
                )
            else:
                self.propose(node.node_id, proposal, _ignore)
        for answer in ready.answers:
            handle = node.tickets.pop(answer.ticket, None)
            if handle is not None:
                handle(answer)

    def _proposed(
        self, node: CoordinatorNode, ticket: int, results: tuple[ProposeResult, ...]
    ) -> None:
        if ticket not in node.tickets:
            return  # the node crashed since: nobody waits for it
        node.leader.on_proposed(ticket, results, node.state)
        self._execute(node, node.leader.take_ready())

    def _ask(
        self,
        node: CoordinatorNode,
        handle: Callable[[Answer], None],
        request: Callable[[Leader, int], None],
    ) -> None:
        ticket = next(self._tickets)
        node.tickets[ticket] = handle
        request(node.leader, ticket)
        self._execute(node, node.leader.take_ready())

    def on_message(self, node_id: str, src: str, payload: Any) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            return
        match payload:
            case ClientRequest():
                self._on_client_request(node, src, payload)
            case StatusRequest():
                self._on_status(node, src, payload)
            case ListRequest():
                self._on_list(node, src, payload)
            case OutcomeQuery():
                self._on_outcome_query(node, src, payload)
            case EscalationsRequest():
                self._on_escalations(node, src, payload)
            case _ if isinstance(payload, FromParticipant):
                if node.believes_leader:
                    node.leader.on_reply(payload, self.now_ms(node))
                    self._execute(node, node.leader.take_ready())

    def _hint(self, node_id: str) -> str | None:
        return (
            self.leader if self.leader is not None and self.leader in self.reach(node_id) else None
        )

    def _on_client_request(self, node: CoordinatorNode, src: str, req: ClientRequest) -> None:
        if not node.believes_leader:
            not_leader = ProposeResult(ProposeStatus.NOT_LEADER)
            self.world.send(
                node.node_id, src, ClientReply(req.request_id, not_leader, self._hint(node.node_id))
            )
            return

        def reply(answer: Answer) -> None:
            result = answer.outcome()
            if answer.refused is not None:
                # Definite, with the error: to a client, the status code of a refused
                # write is the one applying it would have given.
                result = ProposeResult(ProposeStatus.APPLIED, Applied(error=answer.refused))
            self.world.send(node.node_id, src, ClientReply(req.request_id, result))

        # The entries carry the leader's time, not the client's.
        now_ms = self.now_ms(node)
        entry = replace(req.entry, now_ms=now_ms)
        begin = None if req.begin is None else replace(req.begin, now_ms=now_ms)
        if isinstance(entry, RequestCommit):
            self._ask(
                node,
                reply,
                lambda leader, ticket: leader.commit(ticket, entry, begin, node.state, now_ms),
            )
        else:
            self._ask(node, reply, lambda leader, ticket: leader.write(ticket, entry, node.state))

    def _on_status(self, node: CoordinatorNode, src: str, req: StatusRequest) -> None:
        if not (node.believes_leader and node.leader.serves_reads):
            reply = StatusReply(
                req.request_id, found=False, leader=False, leader_hint=self._hint(node.node_id)
            )
            self.world.send(node.node_id, src, reply)
            return
        rnd = self._read(node, req.round_id)
        decision = rnd.decision.value if rnd is not None and rnd.decision else ""
        if rnd is None:
            reply = StatusReply(req.request_id, found=False, leader=True)
        else:
            reply = StatusReply(
                req.request_id, found=True, leader=True, phase=rnd.phase.value, decision=decision
            )
        self.world.send(node.node_id, src, reply)

    def _on_list(self, node: CoordinatorNode, src: str, req: ListRequest) -> None:
        if not (node.believes_leader and node.leader.serves_reads):
            reply = ListReply(req.request_id, leader=False, leader_hint=self._hint(node.node_id))
        else:
            for round_id in req.round_ids:
                self._read(node, round_id)
            reply = ListReply(req.request_id, leader=True)
        self.world.send(node.node_id, src, reply)

    def _read(self, node: CoordinatorNode, round_id: str) -> Round | None:
        """A read the leader answers, recorded as it is served."""
        rnd = node.state.get(round_id)
        decision = rnd.decision.value if rnd is not None and rnd.decision else ""
        self.world.history.record(
            h.READ,
            node.node_id,
            round_id,
            decision or ("undecided" if rnd is not None else "missing"),
            term=str(node.term),
            current=str(node.node_id == self.leader and node.term == self.term),
        )
        return rnd

    def _on_escalations(self, node: CoordinatorNode, src: str, req: EscalationsRequest) -> None:
        if not (node.believes_leader and node.leader.serves_reads):
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

        def reply(answer: Answer) -> None:
            if answer.decision is not None and node.alive:
                self.world.send(node.node_id, src, OutcomeReply(query.round_id, answer.decision))

        now_ms = self.now_ms(node)
        self._ask(
            node,
            reply,
            lambda leader, ticket: leader.outcome_query(
                ticket, query.round_id, query.participant_id, node.state, now_ms
            ),
        )


def _ignore(results: tuple[ProposeResult, ...]) -> None:
    pass
