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

from dataclasses import dataclass, field

from coordinator.core.entries import BeginTxn, Vote
from coordinator.core.messages import FromParticipant, Prepare, Refused, VoteReply
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


def plan_early_prepare(
    state: CoordinatorState, txn_id: str, begin: BeginTxn | None
) -> tuple[tuple[str, ...], str]:
    """Who to prepare early for a commit request (``begin``: the one it carries, if
    any), and the session id to tell them; no one: take the normal path."""
    rnd = state.get(txn_id)
    if (rnd is not None and rnd.actions) or (rnd is None and begin is not None and begin.actions):
        # A one-shot transaction: its Prepares carry actions, which the outbox sends.
        return (), ""
    session_id = rnd.session_id if rnd is not None else begin.session_id if begin else ""
    participants = None if begin is None else begin.participants
    owner = "" if begin is None else begin.owner
    return state.early_prepare_set(txn_id, participants, owner), session_id


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
    def start(
        cls, txn_id: str, session_id: str, participants: tuple[str, ...], term: int
    ) -> tuple[EarlyVotes, list[Prepare]]:
        prepares = [
            Prepare(
                round_id=txn_id,
                kind=Kind.TXN,
                participant_id=participant_id,
                session_id=session_id,
                term=term,
            )
            for participant_id in participants
        ]
        return cls(txn_id=txn_id, waiting=set(participants)), prepares

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
