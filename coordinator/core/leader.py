"""The leader, sans I/O: what a coordinator node does while it leads, in one object.

Production (coordinator/runtime/node.py) and the simulator (simulations/cluster.py)
drive the same ``Leader``, the way etcd's ``RawNode`` is driven through ``Ready``. The
driver feeds it what happened — leadership won or lost, the leader caught up with
its term, a client's write, commit, outcome query or read, a participant's reply, a
tick, the results of a proposal — and then executes what ``take_ready()`` returns:
messages to send, entries to propose, answers to the callers. The leader never
blocks, reads no clock and does no I/O; the applied state is handed to it, read only,
by whoever holds it (production: under the state lock).

What it decides, and why here rather than in a servicer:

- A write is admitted (``CoordinatorState.admission_error``) before it is proposed:
  a write the leader can tell would be refused costs no log entry (rule 13).
- A commit may take the early path (coordinator/core/early.py): Prepare goes out at
  once and the votes heard go into the log with the commit, one Raft round instead
  of two. A commit request waits here while its early votes are collected.
- An outcome query is answered from applied state once the round is decided; an
  unknown or still-ACTIVE round is resolved through the log only (a ``PresumeAbort``
  or ``Abort`` entry, rules 3 and 9), and never while this leader is committing it.
- Nothing is read from applied state before the leader caught up with its term
  (the entry it appended when elected has applied): before that, its state may
  miss a decision an earlier leader applied and a client was told. So reads,
  early Prepares and the outbox wait for it; writes and outcome queries go through
  the log, which orders them after everything committed before.
- Every tick, the outbox (coordinator/core/outbox.py) says what to resend and
  propose so that every open round finishes.

A proposal's results come back through ``on_proposed``; each ticket is answered
exactly once: with the results, with a refusal, or NOT_LEADER when leadership ends
before anything was proposed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from coordinator.core.early import (
    EARLY_PREPARES_MAX,
    EARLY_VOTES_WAIT_MS,
    EarlyVotes,
    plan_early_prepare,
)
from coordinator.core.entries import BeginTxn, Entry, RecordVotes, RequestCommit, rounds_touched
from coordinator.core.errors import ProtocolError
from coordinator.core.limits import Limits
from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.core.outbox import Outbox
from coordinator.core.state import Applied, CoordinatorState
from coordinator.core.types import Decision


class ProposeStatus(Enum):
    APPLIED = "APPLIED"
    NOT_LEADER = "NOT_LEADER"  # refused before sending: definitely not applied
    UNKNOWN = "UNKNOWN"  # maybe applied: resolve by reading state (rule 8)
    OVERLOADED = "OVERLOADED"  # refused before sending: definitely not applied


@dataclass(frozen=True)
class ProposeResult:
    status: ProposeStatus
    applied: Applied | None = None
    index: int = 0  # Raft log index of the applied batch (APPLIED only)
    leader_id: str | None = None


NOT_LEADER = ProposeResult(ProposeStatus.NOT_LEADER)


@dataclass(frozen=True, slots=True)
class Proposal:
    """Entries to propose together, in this order (one replicated batch when the
    driver can). The results of the first ``answered`` entries come back through
    ``Leader.on_proposed(ticket, ...)``; ticket 0: nobody waits for them."""

    entries: tuple[Entry, ...]
    ticket: int = 0
    answered: int = 0


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one ticket. ``refused``: nothing was proposed, this is why.
    ``results``: one per answered entry of the proposal. ``decision``: the round's
    decision in applied state when the answer was made (None: not decided yet)."""

    ticket: int
    results: tuple[ProposeResult, ...] = ()
    refused: ProtocolError | None = None
    decision: Decision | None = None

    def outcome(self) -> ProposeResult:
        """The caller's view of a write: the first result that did not apply cleanly,
        else the last one (a commit's own, after the begin it carried)."""
        for result in self.results:
            if result.status is not ProposeStatus.APPLIED or (
                result.applied is not None and result.applied.error is not None
            ):
                return result
        return self.results[-1] if self.results else NOT_LEADER


@dataclass(frozen=True, slots=True)
class Ready:
    sends: tuple[ToParticipant, ...] = ()
    proposals: tuple[Proposal, ...] = ()
    answers: tuple[Answer, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.sends or self.proposals or self.answers)


_NOTHING = Ready()


@dataclass(slots=True)
class _EarlyCommit:
    """A commit request waiting for its early votes."""

    ticket: int
    votes: EarlyVotes
    entries: tuple[Entry, ...]  # (its begin, if it carried one, and) the RequestCommit
    participants: int
    deadline_ms: int


@dataclass(slots=True)
class _Waiting:
    """A ticket whose proposal is in flight: the round its answer reports on."""

    round_id: str
    committing: bool = False


@dataclass
class LeaderStats:
    early_commits: int = 0  # commits proposed with their early votes
    early_commits_short: int = 0  # ... with fewer votes than participants


class Leader:
    def __init__(
        self,
        *,
        outbox_factory: Callable[[Limits], Outbox] = Outbox,
        early_votes: type[EarlyVotes] = EarlyVotes,
        registry: bool = False,
    ) -> None:
        """``registry``: participants are reached only through their registered
        endpoints, as in the real cluster (an early Prepare needs every endpoint)."""
        self._outbox_factory = outbox_factory
        self._early_votes = early_votes
        self._registry = registry
        self.term: int | None = None  # None: not leading
        self.caught_up = False
        self.stats = LeaderStats()
        self._outbox: Outbox | None = None
        self._early: dict[str, _EarlyCommit] = {}
        self._waiting: dict[int, _Waiting] = {}
        self._committing: Counter[str] = Counter()
        self._sends: list[ToParticipant] = []
        self._proposals: list[Proposal] = []
        self._answers: list[Answer] = []

    # ------------------------------------------------------------------ leadership

    def start_term(self, term: int, state: CoordinatorState) -> None:
        """Leading in ``term`` from now on. A fresh outbox: it resends whatever the
        applied state says is missing, which resumes every open round after a
        failover. Reads wait for ``on_caught_up``."""
        if self.term == term:
            return
        self.stop()
        self.term = term
        self._outbox = self._outbox_factory(state.limits)

    def stop(self) -> None:
        """Not leading any more: commits still collecting early votes are answered
        NOT_LEADER (nothing of theirs was proposed); proposals in flight are answered
        when their results come back."""
        self.term = None
        self.caught_up = False
        self._outbox = None
        early, self._early = self._early, {}
        for txn_id, commit in early.items():
            self._uncommit(txn_id)
            self._answer(commit.ticket, results=(NOT_LEADER,) * len(commit.entries))

    def on_caught_up(self) -> None:
        """The entry this leader appended for its term has applied here: everything
        committed in earlier terms has applied too."""
        if self.term is not None:
            self.caught_up = True

    @property
    def serves_reads(self) -> bool:
        return self.term is not None and self.caught_up

    # ------------------------------------------------------------------ requests

    def write(self, ticket: int, entry: Entry, state: CoordinatorState) -> None:
        """Propose one client entry, once admitted; the answer carries its result."""
        if self.term is None:
            self._answer(ticket, results=(NOT_LEADER,))
            return
        refused = self._admission_error(entry, state)
        if refused is not None:
            self._answer(ticket, refused=refused)
            return
        self._waiting[ticket] = _Waiting(next(iter(rounds_touched(entry)), ""))
        self._proposals.append(Proposal((entry,), ticket, answered=1))

    def commit(
        self,
        ticket: int,
        commit: RequestCommit,
        begin: BeginTxn | None,
        state: CoordinatorState,
        now_ms: int,
    ) -> None:
        """A client's commit request (with its begin, when it carries one). The answer
        holds the begin's result and the commit's. Prepared early when
        ``plan_early_prepare`` allows it; then proposed with the votes heard."""
        entries: tuple[Entry, ...] = (commit,) if begin is None else (begin, commit)
        if self.term is None:
            self._answer(ticket, results=(NOT_LEADER,) * len(entries))
            return
        refused = self._admission_error(entries[0], state)  # a carried begin creates the txn
        if refused is not None:
            self._answer(ticket, refused=refused)
            return
        txn_id = commit.txn_id
        self._committing[txn_id] += 1
        plan = plan_early_prepare(state, txn_id, begin)
        chosen = plan.participants
        if (
            chosen
            and self.caught_up
            and txn_id not in self._early
            and len(self._early) < EARLY_PREPARES_MAX
            and (not self._registry or all(p in state.endpoints for p in chosen))
        ):
            votes, prepares = self._early_votes.start(txn_id, plan, self.term)
            self._early[txn_id] = _EarlyCommit(
                ticket, votes, entries, len(chosen), now_ms + EARLY_VOTES_WAIT_MS
            )
            self._sends.extend(prepares)
            return
        self._waiting[ticket] = _Waiting(txn_id, committing=True)
        self._proposals.append(Proposal(entries, ticket, answered=len(entries)))

    def outcome_query(
        self, ticket: int, round_id: str, participant_id: str, state: CoordinatorState, now_ms: int
    ) -> None:
        """An in-doubt participant asks for a round's decision. Answered at once when
        applied state has one (or has nothing to propose: ask again later); otherwise
        resolved through the log (``CoordinatorState.entry_for_outcome_query``) — but
        never while this leader is committing the round, whose commit may be on its
        way into the log. Only this node's own commits can be seen here:
        docs/protocol.md, "Early Prepare"."""
        if self.term is None:
            self._answer(ticket, results=(NOT_LEADER,))
            return
        decision = _decision_of(state, round_id)
        if decision is not None:
            self._answer(ticket, decision=decision)
            return
        entry = state.entry_for_outcome_query(round_id, participant_id, now_ms)
        if entry is None or round_id in self._committing:
            self._answer(ticket)
            return
        self._waiting[ticket] = _Waiting(round_id)
        self._proposals.append(Proposal((entry,), ticket, answered=1))

    def retry_now(self, round_id: str) -> int | None:
        """Resend what ``round_id`` waits for at the next tick instead of after its
        backoff; the resets made (None: not leading)."""
        return None if self._outbox is None else self._outbox.reset_backoff(round_id)

    def is_committing(self, txn_id: str) -> bool:
        return txn_id in self._committing

    # ------------------------------------------------------------------ events

    def on_reply(self, reply: FromParticipant, now_ms: int) -> None:
        """A participant's reply: an early vote, or the outbox's."""
        commit = self._early.get(reply.round_id)
        if commit is not None:
            if commit.votes.on_reply(reply):  # the vote travels in the commit's batch
                self._propose_early(reply.round_id, now_ms)
            return
        if self._outbox is not None:
            self._outbox.on_reply(reply)

    def tick(self, state: CoordinatorState, now_ms: int) -> None:
        """Early commits whose wait is over go into the log with the votes they have
        (the outbox asks the others); then what the outbox says is due."""
        if self.term is None or self._outbox is None or not self.caught_up:
            # Before it caught up its applied state may be stale: driving participants
            # from it could re-run a saga step its predecessor already compensated.
            return
        if self._early:
            for txn_id, commit in list(self._early.items()):
                if commit.votes.settled or now_ms >= commit.deadline_ms:
                    self._propose_early(txn_id, now_ms)
        due = self._outbox.poll(state, now_ms, self.term)
        if due.sends:
            self._sends.extend(due.sends)
        if due.proposals:
            self._proposals.extend(Proposal((entry,)) for entry in due.proposals)

    def on_proposed(
        self, ticket: int, results: tuple[ProposeResult, ...], state: CoordinatorState
    ) -> None:
        """The results of a ticket's proposal (its answered entries), once known."""
        waiting = self._waiting.pop(ticket, None)
        if waiting is None:
            return  # not ours: proposed before a restart of this object
        if waiting.committing:
            self._uncommit(waiting.round_id)
        self._answer(ticket, results=results, decision=_decision_of(state, waiting.round_id))

    def take_ready(self) -> Ready:
        if not (self._sends or self._proposals or self._answers):
            return _NOTHING
        ready = Ready(tuple(self._sends), tuple(self._proposals), tuple(self._answers))
        self._sends, self._proposals, self._answers = [], [], []
        return ready

    # ------------------------------------------------------------------ internals

    def _admission_error(self, entry: Entry, state: CoordinatorState) -> ProtocolError | None:
        """A refusal the leader can tell before proposing; none before it caught up
        (stale state could refuse a write the log would take: applying it decides)."""
        return state.admission_error(entry) if self.caught_up else None

    def _propose_early(self, txn_id: str, now_ms: int) -> None:
        commit = self._early.pop(txn_id)
        votes = commit.votes.collected()
        self.stats.early_commits += 1
        self.stats.early_commits_short += len(votes) < commit.participants
        # The commit carries the time it is proposed at, as a commit proposed at once does.
        *begin, request = commit.entries
        entries: tuple[Entry, ...] = (*begin, replace(request, now_ms=now_ms))
        after = (RecordVotes(votes=votes, now_ms=now_ms),) if votes else ()
        self._waiting[commit.ticket] = _Waiting(txn_id, committing=True)
        self._proposals.append(Proposal((*entries, *after), commit.ticket, len(entries)))

    def _uncommit(self, txn_id: str) -> None:
        self._committing[txn_id] -= 1
        if self._committing[txn_id] <= 0:
            del self._committing[txn_id]

    def _answer(
        self,
        ticket: int,
        *,
        results: tuple[ProposeResult, ...] = (),
        refused: ProtocolError | None = None,
        decision: Decision | None = None,
    ) -> None:
        self._answers.append(Answer(ticket, results, refused, decision))


def _decision_of(state: CoordinatorState, round_id: str) -> Decision | None:
    rnd = state.get(round_id)
    return None if rnd is None else rnd.decision
