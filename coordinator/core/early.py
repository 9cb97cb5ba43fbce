"""Early Prepare: a commit's votes asked for while the commit travels into the log.

The normal path costs a commit two Raft rounds in a row: the commit request is
applied, the driver sends Prepare, and the votes are applied in a second entry. On
the early path the leader sends Prepare as soon as the commit request arrives and
puts the votes it hears into the commit's own replicated batch (BeginTxn if it came
along, RequestCommit, RecordVotes): one Raft round. Nothing about the decision
changes: the core decides from applied entries only (rule 2), so the votes count
only if the batch is applied, after the commit request.

Why sending Prepare before the commit is in the log is safe: a Prepare promises
nothing on the coordinator's side. A participant makes its vote durable before it
answers (rule 1); if the batch never reaches the log (the leader died, leadership
moved), a participant that voted YES is in doubt, asks, and is told ABORT through a
PresumeAbort entry (rule 3); a begin that arrives after that finds the txn aborted.
``CoordinatorState.early_prepare_set`` says when the leader may do it at all.

``EarlyVotes`` is the pure part; the ``Leader`` (coordinator/core/leader.py) holds a
commit request while its votes come in and proposes it when they are ``settled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.core.entries import BeginTxn, Vote
from coordinator.core.messages import FromParticipant, Prepare, Refused, TxnAction, VoteReply
from coordinator.core.state import CoordinatorState
from coordinator.core.types import Kind

# The early path waits this long for every vote; then the commit goes into the log
# with the votes it has, and the normal path (the outbox) asks the others.
EARLY_VOTES_WAIT_MS = 100
# Commits preparing early at once on one leader; beyond it, the normal path. One: the
# early path saves a Raft round when the leader is quiet, but it sends each commit's
# Prepares and votes on their own; as soon as commits overlap, the normal path folds
# them into one stream message and one entry, which is worth more under load
# (docs/performance.md, "What limits throughput and latency today").
EARLY_PREPARES_MAX = 1


@dataclass(frozen=True, slots=True)
class EarlyPlan:
    """Who to prepare early (no one: take the normal path), the session id to tell
    them, and the action each one's Prepare carries (a one-shot transaction)."""

    participants: tuple[str, ...]
    session_id: str = ""
    actions: Mapping[str, TxnAction] = field(default_factory=dict)


def plan_early_prepare(state: CoordinatorState, txn_id: str, begin: BeginTxn | None) -> EarlyPlan:
    """The early Prepare of a commit request (``begin``: the one it carries, if any)."""
    rnd = state.get(txn_id)
    if rnd is not None:
        session_id, actions = rnd.session_id, rnd.actions
    elif begin is not None:
        session_id, actions = begin.session_id, {a.participant_id: a for a in begin.actions}
    else:
        session_id, actions = "", {}
    participants = None if begin is None else begin.participants
    owner = "" if begin is None else begin.owner
    chosen = state.early_prepare_set(txn_id, participants, owner)
    return EarlyPlan(chosen, session_id, actions)


@dataclass(slots=True)
class EarlyVotes:
    """Votes for one commit's early Prepare. ``settled`` once every participant
    answered, or one voted NO (the commit aborts either way), or one refused (fenced
    or conflicting: the normal path sorts it out)."""

    txn_id: str
    waiting: set[str]
    votes: list[Vote] = field(default_factory=list)
    settled: bool = False

    @classmethod
    def start(cls, txn_id: str, plan: EarlyPlan, term: int) -> tuple[EarlyVotes, list[Prepare]]:
        prepares = []
        for participant_id in plan.participants:
            action = plan.actions.get(participant_id)
            prepares.append(
                Prepare(
                    round_id=txn_id,
                    kind=Kind.TXN,
                    participant_id=participant_id,
                    session_id=plan.session_id,
                    term=term,
                    action="" if action is None else action.action,
                    payload=b"" if action is None else action.payload,
                )
            )
        return cls(txn_id=txn_id, waiting=set(plan.participants)), prepares

    def collected(self) -> tuple[Vote, ...]:
        """The votes to put in the commit's batch, once the wait is over."""
        return tuple(self.votes)

    def on_reply(self, reply: FromParticipant) -> bool:
        """Take one reply for this txn; True when it settles the wait."""
        if self.settled:
            return False
        if isinstance(reply, VoteReply) and reply.participant_id in self.waiting:
            self.waiting.discard(reply.participant_id)
            self.votes.append(
                Vote(
                    round_id=reply.round_id,
                    participant_id=reply.participant_id,
                    yes=reply.yes,
                    reason=reply.reason,
                    result=reply.result,
                )
            )
            self.settled = not self.waiting or not reply.yes
        elif isinstance(reply, Refused):
            self.settled = True
        return self.settled
