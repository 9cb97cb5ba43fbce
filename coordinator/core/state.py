"""The coordinator's replicated state machine.

Theory of operation
-------------------
Every protocol instance is a *round*: a transaction (two-phase commit), a rollback
round or a global checkpoint round. All three follow one life:

    ACTIVE (txn only: enlisting) -> VOTING -> DECIDED -> DONE -> forgotten
    WAITING (rollback/checkpoint: participants still busy) -> VOTING -> ...

A saga runs the same life. In VOTING its steps run one at a time: a step reported
done is a YES (the last one makes COMPLETED, the COMMIT of a saga), a failed step a
NO. ABORT (COMPENSATED) comes from a failed step, an Abort, or a step that outlives
``step_timeout_ms``; in DECIDED every step that may have run (the current one
included, its outcome unknown) is then compensated in reverse order, one at a time,
each compensation an acknowledgement. A compensation that keeps failing is ESCALATED
and holds the saga until an operator resolves it (``ResolveStep``). Either way the
saga ends like a transaction: every participant acknowledges the decision, so each
may forget its step records (an escalated one must outlive the coordinator's
interest in it: forgotten too early, a resent CompensateStep would find no record
and take the step for one that never ran).

``apply(entry)`` is the only way state changes, and it is called with applied log
entries in log order on every replica, so every replica holds the same state. The
decision is a function of applied entries alone (rules 2, 4, 9):

- the last YES vote applied makes COMMIT; the first NO vote makes ABORT;
- an Abort or a Timeout entry makes ABORT if, and only if, the round is undecided;
- once decided, nothing changes the decision: later votes, aborts and timeouts are
  recorded as ignored, never applied.

Time only comes from entries: ``clock_ms`` is the largest ``now_ms`` applied so far,
which keeps deadlines and retention monotonic across leaders with different clocks.

Rounds of different kinds that share a participant are serialised: a rollback or
checkpoint round waits until no transaction that touches its participants is voting
or decided-but-unacknowledged, and while such a round is open those transactions may
not start to commit. That makes a global checkpoint a consistent cut, and a rollback
never races a commit.

Everything an entry can do is in ``TRANSITIONS``; a move not listed there rejects the
entry with a ``ProtocolError`` (the same rejection on every replica). State the code
itself finds impossible raises ``InvariantError``: our bug, never caught.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from coordinator.core.entries import (
    Abort,
    BeginRound,
    BeginSaga,
    BeginTxn,
    Enlist,
    Entry,
    EscalationNote,
    PresumeAbort,
    RecordAcks,
    RecordEscalations,
    RecordStepReports,
    RecordVotes,
    RegisterParticipant,
    RequestCommit,
    ResolveStep,
    StepReport,
    Timeout,
    UnregisterParticipant,
    Vote,
)
from coordinator.core.errors import ErrorCode, InvariantError, ProtocolError
from coordinator.core.limits import Limits, check_id
from coordinator.core.messages import TxnAction
from coordinator.core.types import Decision, Kind, StepOutcome
from coordinator.core.validate import (
    check_abort,
    check_begin_round,
    check_begin_saga,
    check_begin_txn,
    check_enlist,
    check_record_escalations,
    check_register,
    check_resolve_step,
    check_step_report,
    check_unregister,
    check_vote,
)


class Phase(Enum):
    ACTIVE = "ACTIVE"
    WAITING = "WAITING"
    VOTING = "VOTING"
    DECIDED = "DECIDED"
    DONE = "DONE"


class Event(Enum):
    BEGIN_TXN = "begin_txn"
    BEGIN_ROUND = "begin_round"
    BEGIN_SAGA = "begin_saga"
    ENLIST = "enlist"
    REQUEST_COMMIT = "request_commit"
    PARTICIPANTS_FREE = "participants_free"
    VOTE_YES = "vote_yes"
    LAST_VOTE_YES = "last_vote_yes"
    VOTE_NO = "vote_no"
    ABORT = "abort"
    TIMEOUT = "timeout"
    ACK = "ack"
    LAST_ACK = "last_ack"
    ESCALATE = "escalate"
    FORGET = "forget"


# The whole lifecycle in one place: (phase before, event) -> phase after.
# ``None`` as the phase before means "the round does not exist yet".
TRANSITIONS: dict[tuple[Phase | None, Event], Phase | None] = {
    (None, Event.BEGIN_TXN): Phase.ACTIVE,
    (None, Event.BEGIN_ROUND): Phase.WAITING,
    (None, Event.BEGIN_SAGA): Phase.VOTING,
    (Phase.ACTIVE, Event.ENLIST): Phase.ACTIVE,
    (Phase.ACTIVE, Event.REQUEST_COMMIT): Phase.VOTING,
    (Phase.ACTIVE, Event.ABORT): Phase.DECIDED,
    (Phase.ACTIVE, Event.TIMEOUT): Phase.DECIDED,
    (Phase.WAITING, Event.PARTICIPANTS_FREE): Phase.VOTING,
    (Phase.WAITING, Event.ABORT): Phase.DECIDED,
    (Phase.WAITING, Event.TIMEOUT): Phase.DECIDED,
    (Phase.VOTING, Event.VOTE_YES): Phase.VOTING,
    (Phase.VOTING, Event.LAST_VOTE_YES): Phase.DECIDED,
    (Phase.VOTING, Event.VOTE_NO): Phase.DECIDED,
    (Phase.VOTING, Event.ABORT): Phase.DECIDED,
    (Phase.VOTING, Event.TIMEOUT): Phase.DECIDED,
    (Phase.DECIDED, Event.ACK): Phase.DECIDED,
    (Phase.DECIDED, Event.LAST_ACK): Phase.DONE,
    (Phase.DECIDED, Event.ESCALATE): Phase.DECIDED,
    (Phase.DONE, Event.FORGET): None,
}

# The reason of a PresumeAbort tombstone: the round was unknown when somebody (a
# participant in doubt after an early Prepare, in practice) asked about it.
PRESUMED_ABORT_REASON = "presumed abort: asked about before its commit reached the log"
# Tombstones keep their reason: those written before it changed are still recognised.
TOMBSTONE_REASONS = frozenset({PRESUMED_ABORT_REASON, "presumed abort: unknown round"})

UNDECIDED = frozenset({Phase.ACTIVE, Phase.WAITING, Phase.VOTING})
# Phases in which a transaction holds its participants: a rollback or checkpoint
# round that shares one of them must wait.
TXN_HOLDS_PARTICIPANTS = frozenset({Phase.VOTING, Phase.DECIDED})


class StepStatus(Enum):
    PENDING = "PENDING"  # not run yet, or running: no outcome applied
    DONE = "DONE"
    FAILED = "FAILED"  # the action raised: no effect, nothing to compensate
    COMPENSATED = "COMPENSATED"
    ESCALATED = "ESCALATED"  # its compensation keeps failing: operator attention
    RESOLVED = "RESOLVED"  # an operator settled the escalation by hand


# Steps whose effect may exist: compensated (in reverse order) when a saga aborts.
STEP_MAY_HAVE_RUN = frozenset({StepStatus.PENDING, StepStatus.DONE, StepStatus.ESCALATED})


@dataclass(slots=True)
class SagaStep:
    participant_id: str
    action: str
    payload: bytes
    status: StepStatus = StepStatus.PENDING
    result: bytes = b""
    reason: str = ""


@dataclass(slots=True)
class Round:
    """One round's replicated state. Read it; only ``CoordinatorState`` changes it."""

    round_id: str
    kind: Kind
    session_id: str
    participants: list[str]
    checkpoint_id: str
    label: str
    timeout_ms: int
    begun_ms: int
    phase: Phase
    deadline_ms: int
    decision: Decision | None = None
    decision_reason: str = ""
    decided_ms: int | None = None
    done_ms: int | None = None
    votes: dict[str, Vote] = field(default_factory=dict)
    acks: set[str] = field(default_factory=set)
    # Sagas only: the steps, and the last step that may have run when it aborted.
    steps: list[SagaStep] = field(default_factory=list)
    compensate_from: int = -1
    # Who began it (``BeginTxn.owner``): rounds in flight are bounded per owner.
    owner: str = ""
    # One-shot transactions: participant -> the action its Prepare carries.
    actions: dict[str, TxnAction] = field(default_factory=dict)

    def current_step(self) -> int:
        """Saga in VOTING: the step to run now."""
        for index, step in enumerate(self.steps):
            if step.status is not StepStatus.DONE:
                return index
        raise InvariantError(f"saga {self.round_id!r} has no step left to run")

    def next_compensation(self) -> int | None:
        """Aborted saga: the step to compensate now (reverse order), or None when done."""
        for index in range(self.compensate_from, -1, -1):
            if self.steps[index].status in STEP_MAY_HAVE_RUN:
                return index
        return None

    def __reduce__(self) -> tuple[Callable[..., Round], tuple[object, ...]]:
        """Snapshot format 2: one flat tuple of the fields, votes and actions as tuples
        of theirs, rebuilt by ``_round_from_fields``. Pickle's own form for slotted and
        frozen dataclasses runs dataclasses' Python ``__getstate__`` for every vote;
        this is several times cheaper to write and to read (docs/performance.md,
        "Snapshots"). A format-1 round (pickle's own form) still loads as before."""
        votes = tuple(
            (key, v.round_id, v.participant_id, v.yes, v.reason, v.result)
            for key, v in self.votes.items()
        )
        actions = tuple(
            (key, a.participant_id, a.action, a.payload) for key, a in self.actions.items()
        )
        return _round_from_fields, (
            self.round_id,
            self.kind,
            self.session_id,
            self.participants,
            self.checkpoint_id,
            self.label,
            self.timeout_ms,
            self.begun_ms,
            self.phase,
            self.deadline_ms,
            self.decision,
            self.decision_reason,
            self.decided_ms,
            self.done_ms,
            votes,
            self.acks,
            self.steps,
            self.compensate_from,
            self.owner,
            actions,
        )

    def pending_voters(self) -> list[str]:
        return [p for p in self.participants if p not in self.votes]

    def pending_ackers(self) -> list[str]:
        return [p for p in self.participants if p not in self.acks]


def _round_from_fields(
    round_id: str,
    kind: Kind,
    session_id: str,
    participants: list[str],
    checkpoint_id: str,
    label: str,
    timeout_ms: int,
    begun_ms: int,
    phase: Phase,
    deadline_ms: int,
    decision: Decision | None,
    decision_reason: str,
    decided_ms: int | None,
    done_ms: int | None,
    votes: tuple[tuple[str, str, str, bool, str, bytes], ...],
    acks: set[str],
    steps: list[SagaStep],
    compensate_from: int,
    owner: str,
    actions: tuple[tuple[str, str, str, bytes], ...],
) -> Round:
    """Unpickles a ``Round`` written by ``Round.__reduce__`` (snapshot format 2). Its
    name, module and parameters are part of that format: snapshots name them. A change
    to them, or a new field of ``Round``, is a new snapshot format (journal.py)."""
    return Round(
        round_id,
        kind,
        session_id,
        participants,
        checkpoint_id,
        label,
        timeout_ms,
        begun_ms,
        phase,
        deadline_ms,
        decision,
        decision_reason,
        decided_ms,
        done_ms,
        {
            key: Vote(round_id=rid, participant_id=pid, yes=yes, reason=reason, result=result)
            for key, rid, pid, yes, reason, result in votes
        },
        acks,
        steps,
        compensate_from,
        owner,
        {
            key: TxnAction(participant_id=pid, action=action, payload=payload)
            for key, pid, action, payload in actions
        },
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Decided:
    """A decision made by one applied entry; for audit, history and waiting clients."""

    round_id: str
    kind: Kind
    decision: Decision
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Applied:
    """What applying one entry did. ``error`` is the deterministic rejection every
    replica reaches for that entry; ``ignored`` notes no-ops (late votes, a timeout
    for a decided round) that are recorded but change nothing."""

    error: ProtocolError | None = None
    decided: tuple[Decided, ...] = ()
    ignored: tuple[str, ...] = ()


class CoordinatorState:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.rounds: dict[str, Round] = {}
        self.clock_ms = 0
        self.applied_count = 0
        # Finished rounds in the order they finished: forgetting is O(1) per round.
        self._done_order: deque[tuple[int, str]] = deque()
        # Rounds not yet DONE, in creation order: what the outbox and the in-flight
        # limit look at, without a scan of every retained round.
        self._open: dict[str, Round] = {}
        # Where each participant listens (gRPC endpoint), for whichever node leads.
        self.endpoints: dict[str, str] = {}
        # Open escalations of transactions' effects, by participant (as last reported).
        self.escalations: dict[str, tuple[EscalationNote, ...]] = {}
        # Rollback and checkpoint rounds not yet done: they hold their participants.
        self._open_coordination: dict[str, Round] = {}
        # Rounds not yet done, per owner (``rounds_inflight_per_caller_max``).
        self._open_by_owner: dict[str, int] = {}

    def __setstate__(self, saved: dict[str, object]) -> None:
        """A snapshot written before rounds had owners: every round is nobody's."""
        self.__dict__.update(saved)
        counts: dict[str, int] = {}
        for rnd in self._open.values():
            if not hasattr(rnd, "owner"):
                rnd.owner = ""
            if rnd.owner:
                counts[rnd.owner] = counts.get(rnd.owner, 0) + 1
        for rnd in self.rounds.values():
            if not hasattr(rnd, "owner"):
                rnd.owner = ""
            if not hasattr(rnd, "actions"):  # nor actions
                rnd.actions = {}
        self._open_by_owner = counts

    # ------------------------------------------------------------------ queries

    def get(self, round_id: str) -> Round | None:
        return self.rounds.get(round_id)

    def call_endpoint(self, txn_id: str, participant_id: str) -> str:
        """Where a transaction action for ``participant_id`` goes (its registered
        endpoint): only while the transaction is ACTIVE (before its commit request;
        after it the branch is voting or voted) and names the participant. Raises
        ``ProtocolError`` saying why not."""
        rnd = self.rounds.get(txn_id)
        if rnd is None or rnd.kind is not Kind.TXN:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no transaction {txn_id!r}")
        if rnd.phase is not Phase.ACTIVE:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"txn {txn_id!r} is {rnd.phase.value}: actions run only before its commit",
            )
        if participant_id not in rnd.participants:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"{participant_id!r} is not enlisted in txn {txn_id!r}",
            )
        endpoint = self.endpoints.get(participant_id)
        if not endpoint:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION, f"participant {participant_id!r} is not registered"
            )
        return endpoint

    def open_rounds(self) -> Iterator[Round]:
        """Rounds with messages to send or a deadline to watch (not DONE)."""
        return iter(self._open.values())

    def rounds_inflight(self) -> int:
        return len(self._open)

    def rounds_inflight_of(self, owner: str) -> int:
        """Rounds not yet done that ``owner`` began."""
        return self._open_by_owner.get(owner, 0)

    def admission_error(self, entry: Entry) -> ProtocolError | None:
        """The refusal applying ``entry`` would meet, as things stand: no room (rounds
        in flight, in all or for its owner; participants registered), a round that does
        not exist (enlist, commit, abort), an id in use by another begin, an
        unregistration refused for any reason. None if there is none (a retried begin
        is a no-op). The edge asks before it proposes, so a refused write costs no log
        entry and no audit record; ``apply`` checks the same again."""
        try:
            match entry:
                case BeginTxn(txn_id=round_id) if round_id in self.rounds:
                    self._check_begin_again(self.rounds[round_id], entry)
                case Enlist(txn_id=round_id) | RequestCommit(txn_id=round_id):
                    self._require(round_id, Kind.TXN)
                case Abort(round_id=round_id) if round_id not in self.rounds:
                    raise ProtocolError(ErrorCode.NOT_FOUND, f"no round {round_id!r}")
                case (
                    BeginTxn(txn_id=round_id)
                    | BeginRound(round_id=round_id)
                    | BeginSaga(saga_id=round_id)
                ):
                    if round_id not in self.rounds:
                        self._check_capacity(entry.owner)
                case RegisterParticipant():
                    self._check_registry_room(entry.participant_id)
                case UnregisterParticipant():
                    self._check_unregister(entry)
        except ProtocolError as error:
            return error
        return None

    def entry_for_outcome_query(
        self, round_id: str, participant_id: str, now_ms: int
    ) -> Entry | None:
        """What to propose so that an outcome query gets a decision (None: answer
        from state as it is; the outbox drives a round that is voting).

        - An unknown round: ``PresumeAbort`` (rule 3), through the log so that no
          stale node answers ABORT for a round the log committed (rule 9).
        - A transaction still ACTIVE that one of its participants asks about:
          ``Abort``. A participant asks only once it voted YES, and it can have voted
          on an ACTIVE transaction only through an early Prepare whose commit request
          is not in the log (its leader died or was deposed, or a client's retry of it
          has not arrived yet). Waiting for its timeout would hold the participant in
          doubt as long. The leader that is still committing it does not ask this
          (the caller's guard); if that commit is in the log after all, it came first
          and the Abort is a no-op. A retry of the commit that arrives after the
          Abort is answered ABORT, with the reason below (docs/protocol.md, "Early
          Prepare": no node can protect a commit that is not travelling through it).

        Either way the decision's reason says why: the tombstone's
        (``PRESUMED_ABORT_REASON``), or one naming the participant that asked."""
        rnd = self.rounds.get(round_id)
        if rnd is None:
            return PresumeAbort(round_id=round_id, now_ms=now_ms)
        asker_voted_early = rnd.phase is Phase.ACTIVE and participant_id in rnd.participants
        if rnd.kind is Kind.TXN and asker_voted_early:
            reason = (
                f"presumed abort: participant {participant_id!r} asked about it "
                "before its commit reached the log"
            )
            return Abort(round_id=round_id, reason=reason, now_ms=now_ms)
        return None

    def early_prepare_set(
        self, txn_id: str, begin_participants: tuple[str, ...] | None, owner: str = ""
    ) -> tuple[str, ...]:
        """Who the leader may send Prepare to while the commit request is still on its
        way into the log (empty: nobody, take the normal path). The votes then travel
        in the commit's own entry, so a commit costs one Raft round instead of two.

        Safe under presumed abort (rule 3): a participant that votes YES for a commit
        the log never records asks, and is told ABORT. Only offered when the commit
        would be accepted as things stand: a transaction still ACTIVE (or unknown,
        with its begin at hand and room for it), participants none of which is held
        by a rollback or checkpoint round (that would be BUSY, which a client retries:
        a Prepare sent now would have turned it into an abort)."""
        rnd = self.rounds.get(txn_id)
        if rnd is None:
            if begin_participants is None:
                return ()
            try:
                self._check_capacity(owner)
            except ProtocolError:
                return ()
            participants: Iterable[str] = begin_participants
        elif rnd.kind is Kind.TXN and rnd.phase is Phase.ACTIVE:
            participants = rnd.participants
        else:
            return ()
        chosen = tuple(dict.fromkeys(participants))
        if not chosen or len(chosen) > self.limits.participants_per_round_max:
            return ()
        if self._open_round_sharing(chosen, exclude=txn_id) is not None:
            return ()
        return chosen

    # ------------------------------------------------------------------ apply

    def apply(self, entry: Entry) -> Applied:
        self.applied_count += 1
        self.clock_ms = max(self.clock_ms, entry.now_ms)
        # Forget first: an entry at time T must not see a round that expired at T.
        self._forget_expired()
        notes: list[str] = []
        decided: list[Decided] = []
        try:
            self._dispatch(entry, decided, notes)
        except ProtocolError as error:
            return Applied(error=error, decided=tuple(decided), ignored=tuple(notes))
        return Applied(decided=tuple(decided), ignored=tuple(notes))

    def _dispatch(self, entry: Entry, decided: list[Decided], notes: list[str]) -> None:
        match entry:
            case BeginTxn():
                self._begin_txn(entry)
            case Enlist():
                self._enlist(entry)
            case RequestCommit():
                self._request_commit(entry, decided)
            case BeginRound():
                self._begin_round(entry)
            case RecordVotes():
                # One bad reply in a batch must not cost the others: it is noted.
                for vote in entry.votes:
                    try:
                        self._record_vote(vote, decided, notes)
                    except ProtocolError as error:
                        notes.append(error.message)
            case RecordAcks():
                for ack in entry.acks:
                    try:
                        self._record_ack(ack.round_id, ack.participant_id, decided, notes)
                    except ProtocolError as error:
                        notes.append(error.message)
            case Abort():
                self._abort(entry, decided, notes)
            case Timeout():
                self._timeout(entry, decided, notes)
            case PresumeAbort():
                self._presume_abort(entry, decided)
            case RegisterParticipant():
                self._register(entry)
            case BeginSaga():
                self._begin_saga(entry)
            case RecordStepReports():
                for report in entry.reports:
                    try:
                        self._record_step_report(report, decided, notes)
                    except ProtocolError as error:
                        notes.append(error.message)
            case ResolveStep():
                self._resolve_step(entry, notes)
            case RecordEscalations():
                self._record_escalations(entry)
            case UnregisterParticipant():
                self._unregister(entry)
            case _:
                raise InvariantError(f"no handler for entry {entry!r}")

    # ------------------------------------------------------------------ handlers

    # Every handler checks its entry (coordinator/core/validate.py) before it looks at
    # state, so an entry is refused here exactly as the edge refused it.

    def _begin_txn(self, entry: BeginTxn) -> None:
        check_begin_txn(self.limits, entry)
        existing = self.rounds.get(entry.txn_id)
        if existing is not None:
            self._check_begin_again(existing, entry)
            return
        self._check_capacity(entry.owner)
        self._create(
            Round(
                round_id=entry.txn_id,
                kind=Kind.TXN,
                session_id=entry.session_id,
                participants=list(entry.participants),
                owner=entry.owner,
                actions={action.participant_id: action for action in entry.actions},
                checkpoint_id="",
                label="",
                timeout_ms=entry.timeout_ms,
                begun_ms=self.clock_ms,
                phase=self._first_phase(Event.BEGIN_TXN),
                deadline_ms=self.clock_ms + entry.timeout_ms,
            )
        )

    @staticmethod
    def _check_begin_again(existing: Round, entry: BeginTxn) -> None:
        """A begin for an id in use is a no-op when it is the same begin retried, or
        when the id was presumed aborted first; anything else is refused."""
        if existing.decision_reason in TOMBSTONE_REASONS and not existing.participants:
            # Presumed aborted before its begin arrived (a participant asked about an
            # early Prepare whose commit never reached the log): it stays so.
            return
        # A client that retried a begin whose outcome it did not learn: a no-op.
        if (
            existing.kind is Kind.TXN
            and existing.session_id == entry.session_id
            and existing.timeout_ms == entry.timeout_ms
            and tuple(existing.participants[: len(entry.participants)]) == entry.participants
            and existing.actions == {a.participant_id: a for a in entry.actions}
        ):
            return
        raise ProtocolError(ErrorCode.ALREADY_EXISTS, f"round id {entry.txn_id!r} is in use")

    def _enlist(self, entry: Enlist) -> None:
        check_enlist(self.limits, entry)
        rnd = self._require(entry.txn_id, Kind.TXN)
        if rnd.phase is Phase.ACTIVE and entry.participant_id in rnd.participants:
            return
        self._move(rnd, Event.ENLIST)
        if len(rnd.participants) >= self.limits.participants_per_round_max:
            raise ProtocolError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"txn {rnd.round_id!r} already has {len(rnd.participants)} participants "
                f"(participants_per_round_max={self.limits.participants_per_round_max})",
            )
        rnd.participants.append(entry.participant_id)

    def _request_commit(self, entry: RequestCommit, decided: list[Decided]) -> None:
        check_id(self.limits, "txn_id", entry.txn_id)
        rnd = self._require(entry.txn_id, Kind.TXN)
        if rnd.phase is not Phase.ACTIVE:
            # Repeated, or too late: the outcome is whatever was decided.
            return
        blocker = self._open_round_sharing(rnd.participants, exclude=rnd.round_id)
        if blocker is not None:
            raise ProtocolError(
                ErrorCode.BUSY,
                f"participants of txn {rnd.round_id!r} are in {blocker.kind.value.lower()} "
                f"round {blocker.round_id!r}; retry when it is done",
            )
        self._move(rnd, Event.REQUEST_COMMIT)
        self._maybe_decide_on_votes(rnd, decided)

    def _begin_round(self, entry: BeginRound) -> None:
        check_begin_round(self.limits, entry)
        existing = self.rounds.get(entry.round_id)
        if existing is not None:
            if (
                existing.kind is entry.kind
                and tuple(existing.participants) == entry.participants
                and existing.checkpoint_id == entry.checkpoint_id
            ):
                return
            raise ProtocolError(ErrorCode.ALREADY_EXISTS, f"round id {entry.round_id!r} is in use")
        self._check_capacity(entry.owner)
        participants = list(entry.participants)
        blocker = self._open_round_sharing(participants, exclude=entry.round_id)
        if blocker is not None:
            raise ProtocolError(
                ErrorCode.BUSY,
                f"participants are in {blocker.kind.value.lower()} round {blocker.round_id!r}; "
                "retry when it is done",
            )
        rnd = Round(
            round_id=entry.round_id,
            kind=entry.kind,
            session_id=entry.session_id,
            participants=participants,
            checkpoint_id=entry.checkpoint_id,
            label=entry.label,
            timeout_ms=entry.timeout_ms,
            begun_ms=self.clock_ms,
            phase=self._first_phase(Event.BEGIN_ROUND),
            deadline_ms=self.clock_ms + entry.timeout_ms,
            owner=entry.owner,
        )
        self._create(rnd)
        self._start_waiting_rounds()

    def _begin_saga(self, entry: BeginSaga) -> None:
        check_begin_saga(self.limits, entry)
        existing = self.rounds.get(entry.saga_id)
        if existing is not None:
            if existing.kind is Kind.SAGA and [
                (s.participant_id, s.action, s.payload) for s in existing.steps
            ] == [(s.participant_id, s.action, s.payload) for s in entry.steps]:
                return  # a retried begin
            raise ProtocolError(ErrorCode.ALREADY_EXISTS, f"round id {entry.saga_id!r} is in use")
        self._check_capacity(entry.owner)
        self._create(
            Round(
                round_id=entry.saga_id,
                kind=Kind.SAGA,
                session_id=entry.session_id,
                participants=list(dict.fromkeys(s.participant_id for s in entry.steps)),
                checkpoint_id="",
                label="",
                timeout_ms=entry.step_timeout_ms,
                begun_ms=self.clock_ms,
                phase=self._first_phase(Event.BEGIN_SAGA),
                deadline_ms=self.clock_ms + entry.step_timeout_ms,
                steps=[SagaStep(s.participant_id, s.action, s.payload) for s in entry.steps],
                owner=entry.owner,
            )
        )

    def _record_step_report(
        self, report: StepReport, decided: list[Decided], notes: list[str]
    ) -> None:
        rnd = self.rounds.get(report.saga_id)
        if rnd is None or rnd.kind is not Kind.SAGA:
            notes.append(f"step report for unknown saga {report.saga_id!r} ignored")
            return
        if not 0 <= report.step < len(rnd.steps):
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, f"saga {rnd.round_id!r} has no step {report.step}"
            )
        step = rnd.steps[report.step]
        if report.participant_id != step.participant_id:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"{report.participant_id!r} reported step {report.step} of {rnd.round_id!r}, "
                f"which runs at {step.participant_id!r}",
            )
        check_step_report(self.limits, report)
        outcome = report.outcome
        if outcome in (StepOutcome.DONE, StepOutcome.FAILED):
            if step.status is not StepStatus.PENDING or rnd.phase is Phase.DONE:
                return  # a duplicate, or a late retry's answer
            started = rnd.current_step() if rnd.phase is Phase.VOTING else rnd.compensate_from
            if report.step > started:
                raise ProtocolError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"step {report.step} of {rnd.round_id!r} reported before it was started",
                )
            step.result, step.reason = report.result, report.reason
            if outcome is StepOutcome.DONE:
                step.status = StepStatus.DONE
                if rnd.phase is Phase.VOTING:
                    self._saga_step_done(rnd, decided)
                else:
                    notes.append(f"step {report.step} of {rnd.round_id!r} ran late")
                return
            step.status = StepStatus.FAILED
            if rnd.phase is Phase.VOTING:
                why = f"step {report.step} ({step.action} at {step.participant_id}) failed"
                reason = f"{why}: {report.reason}" if report.reason else why
                self._decide(rnd, Event.VOTE_NO, Decision.ABORT, reason, decided)
            else:
                self._saga_compensated(rnd)  # it had no effect: nothing to undo
            return
        # COMPENSATED or ESCALATED: only for the step being compensated now.
        if rnd.phase is not Phase.DECIDED or rnd.next_compensation() != report.step:
            notes.append(
                f"{outcome.value.lower()} report for step {report.step} of {rnd.round_id!r} "
                "ignored: not the step being compensated"
            )
            return
        step.reason = report.reason
        if outcome is StepOutcome.ESCALATED:
            if step.status is not StepStatus.ESCALATED:
                step.status = StepStatus.ESCALATED
                self._move(rnd, Event.ESCALATE)
            return
        step.status = StepStatus.COMPENSATED
        self._saga_compensated(rnd)

    def _resolve_step(self, entry: ResolveStep, notes: list[str]) -> None:
        check_resolve_step(self.limits, entry)
        rnd = self._require(entry.saga_id, Kind.SAGA)
        if not 0 <= entry.step < len(rnd.steps):
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, f"saga {rnd.round_id!r} has no step {entry.step}"
            )
        step = rnd.steps[entry.step]
        if step.status is StepStatus.RESOLVED:
            notes.append(f"step {entry.step} of {rnd.round_id!r} is already resolved")
            return
        if step.status is not StepStatus.ESCALATED:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"step {entry.step} of {rnd.round_id!r} is {step.status.value}, not escalated",
            )
        step.status = StepStatus.RESOLVED
        step.reason = f"resolved by operator: {entry.note}" if entry.note else "resolved"
        self._saga_compensated(rnd)

    def _saga_step_done(self, rnd: Round, decided: list[Decided]) -> None:
        if all(s.status is StepStatus.DONE for s in rnd.steps):
            self._decide(rnd, Event.LAST_VOTE_YES, Decision.COMMIT, "all steps done", decided)
            return
        self._move(rnd, Event.VOTE_YES)
        rnd.deadline_ms = self.clock_ms + rnd.timeout_ms  # the next step's own deadline

    def _saga_compensated(self, rnd: Round) -> None:
        """One step of an aborted saga needs no more compensation."""
        self._move(rnd, Event.ACK)

    def _record_vote(self, vote: Vote, decided: list[Decided], notes: list[str]) -> None:
        rnd = self.rounds.get(vote.round_id)
        if rnd is None:
            notes.append(f"vote for unknown round {vote.round_id!r} ignored")
            return
        if rnd.kind is Kind.SAGA:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"{rnd.round_id!r} is a saga")
        if vote.participant_id not in rnd.participants:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"{vote.participant_id!r} is not a participant of {rnd.round_id!r}",
            )
        check_vote(self.limits, vote)
        earlier = rnd.votes.get(vote.participant_id)
        if earlier is not None:
            if earlier.yes != vote.yes:
                raise ProtocolError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"{vote.participant_id!r} changed its vote on {rnd.round_id!r}",
                )
            return  # a duplicate reply
        if rnd.phase in (Phase.DECIDED, Phase.DONE):
            notes.append(f"late vote on decided {rnd.round_id!r} ignored")
            return
        if rnd.phase is not Phase.VOTING:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"{rnd.round_id!r} is {rnd.phase.value}, not collecting votes",
            )
        rnd.votes[vote.participant_id] = vote
        self._maybe_decide_on_votes(rnd, decided)

    def _maybe_decide_on_votes(self, rnd: Round, decided: list[Decided]) -> None:
        no = next((v for v in rnd.votes.values() if not v.yes), None)
        if no is not None:
            self._decide(
                rnd,
                Event.VOTE_NO,
                Decision.ABORT,
                f"{no.participant_id} voted no: {no.reason}",
                decided,
            )
        elif self._all_voted_yes(rnd):
            self._decide(rnd, Event.LAST_VOTE_YES, Decision.COMMIT, "all voted yes", decided)
        elif rnd.votes:
            self._move(rnd, Event.VOTE_YES)

    def _all_voted_yes(self, rnd: Round) -> bool:
        return all(p in rnd.votes for p in rnd.participants)

    def _record_ack(
        self, round_id: str, participant_id: str, decided: list[Decided], notes: list[str]
    ) -> None:
        rnd = self.rounds.get(round_id)
        if rnd is None:
            notes.append(f"ack for unknown round {round_id!r} ignored")
            return
        if participant_id not in rnd.participants:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"{participant_id!r} is not a participant of {round_id!r}",
            )
        if rnd.kind is Kind.SAGA and rnd.next_compensation() is not None:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"ack for saga {round_id!r}, which is still compensating",
            )
        if participant_id in rnd.acks:
            return
        if rnd.phase is not Phase.DECIDED:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"ack from {participant_id!r} for {round_id!r} before any decision",
            )
        rnd.acks.add(participant_id)
        last = not rnd.pending_ackers()
        self._move(rnd, Event.LAST_ACK if last else Event.ACK)
        if last:
            self._finish(rnd)

    def _abort(self, entry: Abort, decided: list[Decided], notes: list[str]) -> None:
        check_abort(self.limits, entry)
        rnd = self.rounds.get(entry.round_id)
        if rnd is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no round {entry.round_id!r}")
        if rnd.phase not in UNDECIDED:
            notes.append(f"abort of decided {rnd.round_id!r} ignored")
            return
        self._decide(
            rnd, Event.ABORT, Decision.ABORT, entry.reason or "aborted on request", decided
        )

    def _timeout(self, entry: Timeout, decided: list[Decided], notes: list[str]) -> None:
        rnd = self.rounds.get(entry.round_id)
        if rnd is None:
            notes.append(f"timeout of {entry.round_id!r} ignored: unknown round")
            return
        if rnd.phase not in UNDECIDED:
            notes.append(f"timeout of {entry.round_id!r} ignored: already decided")
            return
        if self.clock_ms < rnd.deadline_ms:
            notes.append(f"timeout of {entry.round_id!r} ignored: deadline not reached")
            return
        self._decide(rnd, Event.TIMEOUT, Decision.ABORT, "timed out", decided)

    def _presume_abort(self, entry: PresumeAbort, decided: list[Decided]) -> None:
        if entry.round_id in self.rounds:
            return
        check_id(self.limits, "round_id", entry.round_id)
        rnd = Round(
            round_id=entry.round_id,
            kind=Kind.TXN,
            session_id="",
            participants=[],
            checkpoint_id="",
            label="",
            timeout_ms=0,
            begun_ms=self.clock_ms,
            phase=self._first_phase(Event.BEGIN_TXN),
            deadline_ms=self.clock_ms,
        )
        self._create(rnd)
        self._decide(rnd, Event.ABORT, Decision.ABORT, PRESUMED_ABORT_REASON, decided)

    def _register(self, entry: RegisterParticipant) -> None:
        check_register(self.limits, entry)
        self._check_registry_room(entry.participant_id)
        self.endpoints[entry.participant_id] = entry.endpoint

    def _check_registry_room(self, participant_id: str) -> None:
        known = participant_id in self.endpoints
        if not known and len(self.endpoints) >= self.limits.participants_registered_max:
            raise ProtocolError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{len(self.endpoints)} participants registered "
                f"(participants_registered_max={self.limits.participants_registered_max}); "
                "an operator can unregister unused ones",
            )

    def _unregister(self, entry: UnregisterParticipant) -> None:
        """Forget a participant's endpoint (an operator's ``concord cluster
        unregister-participant``). Refused while a round not yet done names it: the
        leader could no longer reach it with that round's Prepare or Decide, and an
        in-doubt participant would wait for a decision nobody sends."""
        self._check_unregister(entry)
        del self.endpoints[entry.participant_id]
        self.escalations.pop(entry.participant_id, None)

    def _check_unregister(self, entry: UnregisterParticipant) -> None:
        """What refuses an unregistration, as things stand (no change)."""
        check_unregister(self.limits, entry)
        participant = entry.participant_id
        if participant not in self.endpoints:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"participant {participant!r} is not registered"
            )
        holding = [r.round_id for r in self._open.values() if participant in r.participants]
        if holding:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"participant {participant!r} is in {len(holding)} round(s) not yet done "
                f"(first: {holding[0]!r}); wait for them, or abort them, then retry",
            )
        escalations = self.escalations.get(participant, ())
        if escalations and not entry.drop_escalations:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"participant {participant!r} has {len(escalations)} open escalation(s) "
                "(concord txn show names them); settle them, or drop them explicitly",
            )

    def _record_escalations(self, entry: RecordEscalations) -> None:
        check_record_escalations(self.limits, entry)
        if entry.participant_id not in self.endpoints:
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"participant {entry.participant_id!r} is not registered",
            )
        if entry.escalations:
            self.escalations[entry.participant_id] = entry.escalations
        else:
            self.escalations.pop(entry.participant_id, None)

    def escalations_of(self, round_id: str) -> list[tuple[str, EscalationNote]]:
        """(participant, escalation) for one transaction, in participant order."""
        return [
            (participant, note)
            for participant, notes in sorted(self.escalations.items())
            for note in notes
            if note.round_id == round_id
        ]

    # ------------------------------------------------------------------ mechanics

    def _decide(
        self, rnd: Round, event: Event, decision: Decision, reason: str, decided: list[Decided]
    ) -> None:
        if rnd.decision is not None:
            raise InvariantError(f"{rnd.round_id!r} decided twice")
        self._move(rnd, event)
        rnd.decision = decision
        rnd.decision_reason = reason
        rnd.decided_ms = self.clock_ms
        decided.append(
            Decided(round_id=rnd.round_id, kind=rnd.kind, decision=decision, reason=reason)
        )
        if rnd.kind is Kind.SAGA:
            if decision is Decision.ABORT:
                # Every step up to the current one may have run (the current one's
                # outcome is unknown unless it was reported): compensate them.
                rnd.compensate_from = next(
                    (i for i, s in enumerate(rnd.steps) if s.status is not StepStatus.DONE),
                    len(rnd.steps) - 1,
                )
            # Then (after the compensations) every participant acknowledges the
            # decision, so each may forget its step records.
        elif not rnd.participants:
            self._move(rnd, Event.LAST_ACK)
            self._finish(rnd)

    def _finish(self, rnd: Round) -> None:
        rnd.done_ms = self.clock_ms
        del self._open[rnd.round_id]
        if rnd.owner:
            left = self._open_by_owner[rnd.owner] - 1
            if left:
                self._open_by_owner[rnd.owner] = left
            else:
                del self._open_by_owner[rnd.owner]
        self._done_order.append((self.clock_ms, rnd.round_id))
        self._open_coordination.pop(rnd.round_id, None)
        self._start_waiting_rounds()

    def _forget_expired(self) -> None:
        horizon = self.clock_ms - self.limits.retention_ms
        while self._done_order and self._done_order[0][0] <= horizon:
            _, round_id = self._done_order.popleft()
            rnd = self.rounds.pop(round_id)
            try:
                self._next(rnd.phase, Event.FORGET, round_id)
            except ProtocolError as error:
                raise InvariantError(f"forgetting {round_id!r}: {error.message}") from None

    def _start_waiting_rounds(self) -> None:
        for rnd in self._open_coordination.values():
            if rnd.phase is Phase.WAITING and not self._txn_holding(rnd.participants):
                self._move(rnd, Event.PARTICIPANTS_FREE)

    def _txn_holding(self, participants: Iterable[str]) -> bool:
        wanted = set(participants)
        return any(
            r.kind is Kind.TXN
            and r.phase in TXN_HOLDS_PARTICIPANTS
            and wanted.intersection(r.participants)
            for r in self.rounds.values()
        )

    def _open_round_sharing(self, participants: Iterable[str], *, exclude: str) -> Round | None:
        wanted = set(participants)
        for r in self._open_coordination.values():
            if r.round_id != exclude and wanted.intersection(r.participants):
                return r
        return None

    def _create(self, rnd: Round) -> None:
        self.rounds[rnd.round_id] = rnd
        self._open[rnd.round_id] = rnd
        if rnd.owner:
            self._open_by_owner[rnd.owner] = self._open_by_owner.get(rnd.owner, 0) + 1
        if rnd.kind in (Kind.ROLLBACK, Kind.CHECKPOINT):
            self._open_coordination[rnd.round_id] = rnd

    def _require(self, round_id: str, kind: Kind) -> Round:
        rnd = self.rounds.get(round_id)
        if rnd is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no {kind.value.lower()} {round_id!r}")
        if rnd.kind is not kind:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, f"{round_id!r} is a {rnd.kind.value.lower()} round"
            )
        return rnd

    def _move(self, rnd: Round, event: Event) -> None:
        rnd.phase = self._next(rnd.phase, event, rnd.round_id)  # type: ignore[assignment]

    @staticmethod
    def _first_phase(event: Event) -> Phase:
        phase = TRANSITIONS[(None, event)]
        if phase is None:
            raise InvariantError(f"{event} creates no round")
        return phase

    @staticmethod
    def _next(phase: Phase | None, event: Event, round_id: str) -> Phase | None:
        try:
            return TRANSITIONS[(phase, event)]
        except KeyError:
            where = phase.value if phase else "unknown"
            raise ProtocolError(
                ErrorCode.FAILED_PRECONDITION,
                f"{round_id!r} is {where}: {event.value.replace('_', ' ')} is not allowed",
            ) from None

    # ------------------------------------------------------------------ admission

    def _check_capacity(self, owner: str = "") -> None:
        """Room for one more round in flight: in all, and for ``owner`` (the caller
        that begins it; "" is nobody's and counts only in all)."""
        if len(self._open) >= self.limits.rounds_inflight_max:
            raise ProtocolError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{len(self._open)} rounds in flight (rounds_inflight_max="
                f"{self.limits.rounds_inflight_max}); retry later",
            )
        if owner:
            mine = self._open_by_owner.get(owner, 0)
            if mine >= self.limits.rounds_inflight_per_caller_max:
                raise ProtocolError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"caller {owner!r} has {mine} rounds in flight (rounds_inflight_per_caller_max="
                    f"{self.limits.rounds_inflight_per_caller_max}); retry when some are done",
                )
