"""Replicated log entries: the only input that changes coordinator state.

Every entry is proposed by a node (a client request it accepted, or the leader's
driver) and applied in log order on every replica. Entries carry the proposer's time
(``now_ms``) because the core never reads a clock: applying the same log gives the
same state everywhere, whenever and wherever it is applied.

The wire form is ``concord.v1.LogEntry`` (protos/concord/v1/log.proto); the codec lives
in coordinator/replication.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.core.messages import TxnAction
from coordinator.core.types import Kind, StepOutcome


@dataclass(frozen=True, kw_only=True, slots=True)
class BeginTxn:
    """Start a transaction; more participants may be enlisted until commit is requested."""

    txn_id: str
    session_id: str
    participants: tuple[str, ...]
    timeout_ms: int
    now_ms: int
    # Who began it (set by the node that took the request, from the caller's identity;
    # "" for none): rounds in flight are bounded per owner too.
    owner: str = ""
    # One-shot: at most one action per participant, each delivered in its Prepare.
    actions: tuple[TxnAction, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Enlist:
    txn_id: str
    participant_id: str
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestCommit:
    """The initiator asks to commit: phase one (Prepare) starts."""

    txn_id: str
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class BeginRound:
    """Start a rollback round ("revert these participants to checkpoint X") or a
    global checkpoint round ("every participant checkpoints under id X")."""

    round_id: str
    kind: Kind  # ROLLBACK or CHECKPOINT
    session_id: str
    participants: tuple[str, ...]
    checkpoint_id: str
    label: str  # rollback: the reason asked for; checkpoint: its label
    timeout_ms: int
    now_ms: int
    owner: str = ""  # as BeginTxn.owner


@dataclass(frozen=True, kw_only=True, slots=True)
class Vote:
    round_id: str
    participant_id: str
    yes: bool
    reason: str = ""
    result: bytes = b""  # a YES to a Prepare with an action: the action's result


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordVotes:
    """Votes the leader received, batched: one entry for many replies."""

    votes: tuple[Vote, ...]
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    round_id: str
    participant_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordAcks:
    """Participants that have applied a decision; once all have, the round is done."""

    acks: tuple[Ack, ...]
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Abort:
    """An explicit abort (initiator or operator). Aborts only an undecided round."""

    round_id: str
    reason: str
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeout:
    """The leader saw the round's deadline pass at ``now_ms``. Aborts only an
    undecided round whose deadline is really past by the replicated clock."""

    round_id: str
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PresumeAbort:
    """Somebody asked about a round this cluster does not know. Applying it records
    an ABORT tombstone if the round is still unknown, so a late BeginTxn with the same
    id cannot start it afterwards; a known round is left alone."""

    round_id: str
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RegisterParticipant:
    """A participant's gRPC endpoint, replicated so that any new leader can reach it.
    A later registration of the same id replaces the endpoint (the agent moved)."""

    participant_id: str
    endpoint: str
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class UnregisterParticipant:
    """An operator removes a participant from the registry (``concord cluster
    unregister-participant``): refused while any round not yet done names it, and
    while it has open escalations unless ``drop_escalations``. A later registration
    brings it back."""

    participant_id: str
    drop_escalations: bool
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaStepSpec:
    """One step of a saga: ``action`` runs at ``participant_id`` with ``payload``; the
    participant knows the action's compensation."""

    participant_id: str
    action: str
    payload: bytes = b""


@dataclass(frozen=True, kw_only=True, slots=True)
class BeginSaga:
    """Start a saga: its steps run one after another, each within ``step_timeout_ms``.
    A step that fails or times out (or an Abort) compensates, in reverse order, every
    step that may have run."""

    saga_id: str
    session_id: str
    steps: tuple[SagaStepSpec, ...]
    step_timeout_ms: int
    now_ms: int
    owner: str = ""  # as BeginTxn.owner


@dataclass(frozen=True, kw_only=True, slots=True)
class StepReport:
    saga_id: str
    step: int
    participant_id: str
    outcome: StepOutcome
    reason: str = ""
    result: bytes = b""


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordStepReports:
    """Step results and compensations the leader heard of, batched like votes."""

    reports: tuple[StepReport, ...]
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolveStep:
    """An operator settled an escalated compensation by hand (``concord txn resolve``);
    the saga's compensation goes on with the step before it."""

    saga_id: str
    step: int
    note: str
    now_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class EscalationNote:
    """An effect whose compensation a participant gave up on (participant_sdk/effects.py)."""

    round_id: str  # the transaction (or session) the effect belonged to
    key: str  # the effect's idempotency key
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordEscalations:
    """A participant's open escalations, the whole set (it replaces the earlier one;
    empty clears it), so ``concord txn show`` can name them cluster-wide."""

    participant_id: str
    escalations: tuple[EscalationNote, ...]
    now_ms: int


Entry = (
    BeginTxn
    | Enlist
    | RequestCommit
    | BeginRound
    | RecordVotes
    | RecordAcks
    | Abort
    | Timeout
    | PresumeAbort
    | RegisterParticipant
    | BeginSaga
    | RecordStepReports
    | ResolveStep
    | RecordEscalations
    | UnregisterParticipant
)


@dataclass(frozen=True, slots=True)
class RoundChanged:
    """A round that an entry applied at log ``index`` touched (what watchers see)."""

    round_id: str
    index: int


def rounds_touched(entry: Entry) -> tuple[str, ...]:
    """The rounds applying ``entry`` may change."""
    match entry:
        case BeginTxn() | Enlist() | RequestCommit():
            return (entry.txn_id,)
        case BeginRound() | Abort() | Timeout() | PresumeAbort():
            return (entry.round_id,)
        case RecordVotes():
            return tuple(dict.fromkeys(v.round_id for v in entry.votes))
        case RecordAcks():
            return tuple(dict.fromkeys(a.round_id for a in entry.acks))
        case BeginSaga() | ResolveStep():
            return (entry.saga_id,)
        case RecordStepReports():
            return tuple(dict.fromkeys(r.saga_id for r in entry.reports))
        case RecordEscalations():
            return tuple(dict.fromkeys(e.round_id for e in entry.escalations))
        case RegisterParticipant():
            return ()
    return ()
