"""The leader's outbox: what should be in flight now, and what to propose.

Theory of operation
-------------------
The outbox reads replicated state and answers, for a given ``now_ms``:

- a ``Prepare`` to every participant of a VOTING round whose vote is not applied;
- a ``Decide`` to every participant of a DECIDED round whose ack is not applied;
- a ``Timeout`` proposal for every undecided round whose deadline has passed;
- for a saga: ``ExecuteStep`` for its current step while VOTING, and once aborted a
  ``CompensateStep`` for the one step to undo next (reverse order; none while that
  step is escalated); once that is over, ``Decide`` like a transaction;
- ``RecordVotes`` / ``RecordAcks`` / ``RecordStepReports`` proposals for the replies
  received since the last poll, batched (at most ``entry_batch_max`` per entry) and
  filtered against state so a repeated reply never costs a log entry. Acks of
  transactions wait up to ``ack_flush_delay_ms`` to share an entry: nothing waits on
  them (a rollback or checkpoint round's are sent at once: its participants are BUSY
  for commits until it is done).

Nothing here is replicated: retry timers live only on the leader, and a new leader
starts with an empty outbox, so it simply resends whatever state says is missing
(messages are idempotent, rule 5). Decisions are only ever read from applied state,
never from a reply or a proposal in flight (rule 1, rule 9).

Retries back off exponentially from ``retry_backoff_initial_ms`` to
``retry_backoff_max_ms`` per (round, participant, message).

Participants that never registered (``registry=True``, the real cluster: a leader
reaches a participant only through the endpoint it registered, ``RegisterParticipant``)
cannot be reached at all, so the outbox does not wait for them:

- a VOTING round (transaction, rollback or checkpoint) still waiting for the vote of
  one gets no Prepare: an ``Abort`` naming it is proposed (``participant 'x' is not
  registered``). It could only commit if that participant registered before the
  round's timeout, and its other participants would hold their YES (and their keys)
  that long;
- a round decided ABORT is acknowledged on behalf of a participant that is not
  registered. It never got a Prepare (no leader ever had its endpoint: registrations
  are never removed, so it was unregistered in every state up to the decision, and
  Prepares are sent only while the round was undecided), so it has nothing to apply;
  without this the round stayed DECIDED forever, holding its other participants
  against rollback and checkpoint rounds. If it registers later, it has no vote to
  ask about; an outcome query is answered ABORT by the round, or by presumed abort
  once the round is forgotten (rule 3).

Sagas are left as they are. The simulator addresses participants without a registry
and keeps the default (``registry=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.core.entries import (
    Abort,
    Ack,
    Entry,
    RecordAcks,
    RecordStepReports,
    RecordVotes,
    StepReport,
    Timeout,
    Vote,
)
from coordinator.core.limits import Limits
from coordinator.core.messages import (
    AckReply,
    CompensateStep,
    Decide,
    ExecuteStep,
    FromParticipant,
    Prepare,
    Refused,
    StepReply,
    ToParticipant,
    VoteReply,
)
from coordinator.core.state import (
    STEP_MAY_HAVE_RUN,
    UNDECIDED,
    CoordinatorState,
    Phase,
    Round,
    StepStatus,
)
from coordinator.core.types import Decision, Kind, StepOutcome

TIMEOUT_SLOT = ""  # retry key for a round's Timeout proposal (no participant)
UNREGISTERED_SLOT = ""  # retry key for the Abort of a round naming an unregistered participant


@dataclass(slots=True)
class _Retry:
    attempts: int
    next_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Due:
    sends: tuple[ToParticipant, ...]
    proposals: tuple[Entry, ...]


def unregistered_reason(participants: list[str], limit_bytes: int) -> str:
    """The reason of the Abort of a round that needs participants nobody can reach,
    naming as many as fit in ``limit_bytes`` (``reason_bytes_max``: a longer reason
    would get the Abort refused)."""
    names = [repr(p) for p in participants]
    candidates = [
        f"participant {names[0]} is not registered"
        if len(names) == 1
        else f"participants {', '.join(names)} are not registered",
        *(
            f"participants {', '.join(names[:kept])} and {len(names) - kept} more "
            "are not registered"
            for kept in range(len(names) - 1, 0, -1)
        ),
        f"{len(names)} participants are not registered",
    ]
    for reason in candidates:
        if len(reason.encode()) <= limit_bytes:
            return reason
    return candidates[-1].encode()[:limit_bytes].decode(errors="ignore")


NOTHING_DUE = Due(sends=(), proposals=())
# UNDECIDED as a tuple: ``in`` finds an enum member by identity, where a frozenset
# would call Enum.__hash__ (Python code) for every open round of every poll.
_UNDECIDED = tuple(UNDECIDED)
_NEVER_MS = 2**63


class Outbox:
    def __init__(self, limits: Limits, *, registry: bool = False) -> None:
        """``registry``: participants are reached only through their registered
        endpoints (``state.endpoints``), as in the real cluster; see the module doc."""
        self.limits = limits
        self.registry = registry
        self._retries: dict[tuple[str, str, str], _Retry] = {}
        self._votes: dict[tuple[str, str], Vote] = {}
        self._acks: set[tuple[str, str]] = set()
        self._acks_since_ms: int | None = None  # the poll that first saw unflushed acks
        self._reports: dict[tuple[str, int, StepOutcome], StepReport] = {}
        self.refusals = 0  # participants that fenced us off: a sign we are deposed
        # A poll that would find nothing to do is skipped: nothing new was applied and
        # no reply came since the last one (same state, applied count and term), and
        # no retry or deadline is due before ``_next_due_ms``. Acks that wait to share
        # an entry do not make the next polls walk the rounds again unless more came
        # (``_acks_walked``: how many the last walk saw) or they are flushed.
        self._polled: tuple[int, int, int] | None = None
        self._next_due_ms = 0
        self._acks_walked = 0

    def on_reply(self, reply: FromParticipant) -> None:
        match reply:
            case VoteReply():
                key = (reply.round_id, reply.participant_id)
                self._votes.setdefault(
                    key,
                    Vote(
                        round_id=reply.round_id,
                        participant_id=reply.participant_id,
                        yes=reply.yes,
                        reason=reply.reason,
                        result=reply.result,
                    ),
                )
            case AckReply():
                self._acks.add((reply.round_id, reply.participant_id))
            case StepReply():
                if reply.outcome is not StepOutcome.RUNNING:
                    self._reports.setdefault(
                        (reply.round_id, reply.step, reply.outcome),
                        StepReport(
                            saga_id=reply.round_id,
                            step=reply.step,
                            participant_id=reply.participant_id,
                            outcome=reply.outcome,
                            reason=reply.reason,
                            result=reply.result,
                        ),
                    )
            case Refused():
                self.refusals += 1

    def poll(self, state: CoordinatorState, now_ms: int, term: int) -> Due:
        polled = (id(state), state.applied_count, term)
        quiet = (
            polled == self._polled
            and now_ms < self._next_due_ms
            and not self._votes
            and not self._reports
        )
        flushed_acks: list[Entry] | None = None
        if quiet:
            if not self._acks:
                return NOTHING_DUE
            if len(self._acks) == self._acks_walked:
                # Only acks waiting to share an entry, the same ones the last walk saw
                # (acks only come in between polls): a walk would find what it found
                # then (nothing due), unless they are flushed now (into an entry, or
                # dropped as already applied), which makes their rounds' Decides count
                # again.
                flushed_acks = self._flush_acks(state, now_ms)
                if not flushed_acks and self._acks:
                    return NOTHING_DUE
        self._polled = polled
        next_due_ms = _NEVER_MS
        proposals: list[Entry] = [
            *self._flush_votes(state, now_ms),
            *(self._flush_acks(state, now_ms) if flushed_acks is None else flushed_acks),
            *self._flush_reports(state, now_ms),
        ]
        sends: list[ToParticipant] = []
        live: set[tuple[str, str, str]] = set()
        for rnd in state.open_rounds():
            if rnd.kind is Kind.SAGA and _saga_stepping(rnd):
                # The message is built only when due: most polls find it is not yet.
                step = _saga_step(rnd)
                if step is not None:
                    index, message = step
                    key = (rnd.round_id, f"step {index}", message.__name__)
                    if self._due(key, now_ms, live):
                        sends.append(_saga_send(rnd, index, message, term))
            elif rnd.phase is Phase.VOTING:
                pending = rnd.pending_voters()
                unreachable = self._unregistered(state, rnd, pending)
                if unreachable:
                    key = (rnd.round_id, UNREGISTERED_SLOT, "abort")
                    if self._due(key, now_ms, live):
                        limit = self.limits.reason_bytes_max
                        reason = unregistered_reason(unreachable, limit)
                        proposals.append(Abort(round_id=rnd.round_id, reason=reason, now_ms=now_ms))
                else:
                    for participant_id in pending:
                        if self._due((rnd.round_id, participant_id, "prepare"), now_ms, live):
                            sends.append(_prepare(rnd, participant_id, term))
            elif rnd.phase is Phase.DECIDED:
                pending = rnd.pending_ackers()
                if rnd.decision is Decision.ABORT:
                    for participant_id in self._unregistered(state, rnd, pending):
                        # Never reached, nothing to apply: acknowledged on its behalf.
                        self._acks.add((rnd.round_id, participant_id))
                        if self._acks_since_ms is None:
                            self._acks_since_ms = now_ms
                for participant_id in pending:
                    if (rnd.round_id, participant_id) in self._acks:
                        continue  # acknowledged, waiting to share an entry: no resend
                    if self._due((rnd.round_id, participant_id, "decide"), now_ms, live):
                        sends.append(_decide(rnd, participant_id, term))
            if rnd.phase in _UNDECIDED:
                if now_ms < rnd.deadline_ms:
                    next_due_ms = min(next_due_ms, rnd.deadline_ms)
                elif self._due((rnd.round_id, TIMEOUT_SLOT, "timeout"), now_ms, live):
                    proposals.append(Timeout(round_id=rnd.round_id, now_ms=now_ms))
        if len(live) < len(self._retries):  # every live key is in _retries
            for key in self._retries.keys() - live:
                del self._retries[key]
        for retry in self._retries.values():
            next_due_ms = min(next_due_ms, retry.next_ms)
        self._next_due_ms = next_due_ms
        self._acks_walked = len(self._acks)
        if not sends and not proposals:
            return NOTHING_DUE
        return Due(sends=tuple(sends), proposals=tuple(proposals))

    def _unregistered(
        self, state: CoordinatorState, rnd: Round, participants: list[str]
    ) -> list[str]:
        """Those of ``participants`` no leader can reach: not registered (registry
        mode only; never for a saga)."""
        if not self.registry or rnd.kind is Kind.SAGA:
            return []
        return [p for p in participants if p not in state.endpoints]

    def reset_backoff(self, round_id: str) -> int:
        """Make every pending send of ``round_id`` due at the next poll (an operator's
        `concord txn retry`); returns how many were waiting. Idempotent messages make
        an early resend harmless (rule 5)."""
        keys = [key for key in self._retries if key[0] == round_id]
        for key in keys:
            del self._retries[key]
        self._polled = None
        return len(keys)

    def _due(self, key: tuple[str, str, str], now_ms: int, live: set[tuple[str, str, str]]) -> bool:
        live.add(key)
        retry = self._retries.get(key)
        if retry is None:
            self._retries[key] = _Retry(
                attempts=1, next_ms=now_ms + self.limits.retry_backoff_initial_ms
            )
            return True
        if now_ms < retry.next_ms:
            return False
        backoff_ms = min(
            self.limits.retry_backoff_initial_ms << min(retry.attempts, 20),
            self.limits.retry_backoff_max_ms,
        )
        retry.attempts += 1
        retry.next_ms = now_ms + backoff_ms
        return True

    def _flush_votes(self, state: CoordinatorState, now_ms: int) -> list[Entry]:
        if not self._votes:
            return []
        wanted = []
        for (round_id, participant_id), vote in self._votes.items():
            rnd = state.get(round_id)
            if rnd is not None and rnd.phase is Phase.VOTING and participant_id not in rnd.votes:
                wanted.append(vote)
        self._votes.clear()
        size = self.limits.entry_batch_max
        return [
            RecordVotes(votes=tuple(wanted[i : i + size]), now_ms=now_ms)
            for i in range(0, len(wanted), size)
        ]

    def _flush_acks(self, state: CoordinatorState, now_ms: int) -> list[Entry]:
        if not self._acks:
            return []
        if self._acks_since_ms is None:
            self._acks_since_ms = now_ms
        waited_ms = now_ms - self._acks_since_ms
        if (
            waited_ms < self.limits.ack_flush_delay_ms
            and len(self._acks) < self.limits.entry_batch_max
            and not any(_holds_others(state.get(round_id)) for round_id, _ in self._acks)
        ):
            return []
        self._acks_since_ms = None
        wanted = []
        for round_id, participant_id in sorted(self._acks):
            rnd = state.get(round_id)
            if rnd is not None and rnd.phase is Phase.DECIDED and participant_id not in rnd.acks:
                wanted.append(Ack(round_id=round_id, participant_id=participant_id))
        self._acks.clear()
        size = self.limits.entry_batch_max
        return [
            RecordAcks(acks=tuple(wanted[i : i + size]), now_ms=now_ms)
            for i in range(0, len(wanted), size)
        ]

    def _flush_reports(self, state: CoordinatorState, now_ms: int) -> list[Entry]:
        if not self._reports:
            return []
        wanted = [r for r in self._reports.values() if _report_changes(state.get(r.saga_id), r)]
        self._reports.clear()
        size = self.limits.entry_batch_max
        return [
            RecordStepReports(reports=tuple(wanted[i : i + size]), now_ms=now_ms)
            for i in range(0, len(wanted), size)
        ]


def _holds_others(rnd: Round | None) -> bool:
    """A rollback or checkpoint round still unacknowledged makes commits of its
    participants BUSY (and a saga's end may be awaited): its acks do not wait."""
    return rnd is not None and rnd.kind is not Kind.TXN


def _report_changes(rnd: Round | None, report: StepReport) -> bool:
    """Would applying the report change the saga? A repeat must not cost an entry."""
    if rnd is None or not 0 <= report.step < len(rnd.steps):
        return False
    status = rnd.steps[report.step].status
    if report.outcome in (StepOutcome.DONE, StepOutcome.FAILED):
        return status is StepStatus.PENDING and rnd.phase in (Phase.VOTING, Phase.DECIDED)
    if report.outcome is StepOutcome.ESCALATED:
        return rnd.phase is Phase.DECIDED and status is not StepStatus.ESCALATED
    return rnd.phase is Phase.DECIDED and status in STEP_MAY_HAVE_RUN


def _saga_stepping(rnd: Round) -> bool:
    """Running its steps, or compensating them; afterwards a saga is acknowledged like
    a transaction (Decide to every participant)."""
    return rnd.phase is Phase.VOTING or (
        rnd.phase is Phase.DECIDED and rnd.next_compensation() is not None
    )


def _saga_step(rnd: Round) -> tuple[int, type[ExecuteStep | CompensateStep]] | None:
    """The step a stepping saga sends for now, and what it sends: ``ExecuteStep`` for
    its current step while VOTING, once aborted ``CompensateStep`` for the step to
    undo next. None: finished, or waiting for an operator to resolve an escalation."""
    if rnd.phase is Phase.VOTING:
        return rnd.current_step(), ExecuteStep
    undo = rnd.next_compensation()  # DECIDED here (see _saga_stepping)
    if undo is None or rnd.steps[undo].status is StepStatus.ESCALATED:
        return None
    return undo, CompensateStep


def _saga_send(
    rnd: Round, index: int, message: type[ExecuteStep | CompensateStep], term: int
) -> ExecuteStep | CompensateStep:
    step = rnd.steps[index]
    if message is ExecuteStep:
        return ExecuteStep(
            round_id=rnd.round_id,
            step=index,
            participant_id=step.participant_id,
            action=step.action,
            payload=step.payload,
            term=term,
        )
    return CompensateStep(
        round_id=rnd.round_id,
        step=index,
        participant_id=step.participant_id,
        action=step.action,
        payload=step.payload,
        result=step.result,
        term=term,
    )


def _prepare(rnd: Round, participant_id: str, term: int) -> Prepare:
    action = rnd.actions.get(participant_id)  # a one-shot transaction's
    return Prepare(
        round_id=rnd.round_id,
        kind=rnd.kind,
        participant_id=participant_id,
        session_id=rnd.session_id,
        checkpoint_id=rnd.checkpoint_id,
        label=rnd.label,
        term=term,
        action="" if action is None else action.action,
        payload=b"" if action is None else action.payload,
    )


def _decide(rnd: Round, participant_id: str, term: int) -> Decide:
    if rnd.decision is None:
        raise AssertionError(f"decide for undecided {rnd.round_id!r}")
    return Decide(
        round_id=rnd.round_id,
        kind=rnd.kind,
        participant_id=participant_id,
        decision=rnd.decision,
        checkpoint_id=rnd.checkpoint_id,
        term=term,
    )
