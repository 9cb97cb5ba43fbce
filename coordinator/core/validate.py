"""What every log entry must satisfy before it may be proposed, and again when applied.

``check_entry(entry, limits)`` runs every check of an entry that needs no state: ids,
texts, sizes, counts, timeouts (coordinator/core/limits.py holds the rules). The gRPC
servicers call it on the entry they built from a request, before ``propose``: a bad
request never reaches the Raft log or the audit log. ``CoordinatorState`` calls the
same per-entry functions when it applies an entry (the last line of defence: an entry
of another proposer, or a log written before these checks), so the edge and the apply
path refuse with the same words, from the same limits.

Entries that carry participants' replies (votes, acknowledgements, step reports) are
checked one item at a time (``check_vote``, ``check_ack``, ``check_step_report``): in a
batch, one bad reply is a note and costs the others nothing.

Stateful admission (rounds in flight, per caller and in all; a round id in use) is
``CoordinatorState.admission_error``: it needs the state, and is checked at the edge
under the state lock, and again when applied.
"""

from __future__ import annotations

from coordinator.core.entries import (
    Abort,
    Ack,
    BeginRound,
    BeginSaga,
    BeginTxn,
    Enlist,
    Entry,
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
from coordinator.core.errors import ErrorCode, ProtocolError
from coordinator.core.limits import (
    Limits,
    check_bytes,
    check_count,
    check_id,
    check_text,
    check_text_size,
    check_timeout,
)
from coordinator.core.types import Kind, StepOutcome

__all__ = [
    "check_ack",
    "check_entry",
    "check_participants",
    "check_step_report",
    "check_vote",
]


def check_participants(limits: Limits, participants: tuple[str, ...], *, allow_empty: bool) -> None:
    if not participants and not allow_empty:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "a round needs at least one participant")
    check_count(limits, "participants", len(participants), "participants_per_round_max")
    for participant in participants:
        check_id(limits, "participant_id", participant)
    if len(set(participants)) != len(participants):
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "participants are listed twice")


def _owner(limits: Limits, owner: str) -> None:
    check_id(limits, "owner", owner, allow_empty=True, limit_name="owner_bytes_max")


def check_begin_txn(limits: Limits, entry: BeginTxn) -> None:
    check_id(limits, "txn_id", entry.txn_id)
    check_id(limits, "session_id", entry.session_id, allow_empty=True)
    check_participants(limits, entry.participants, allow_empty=True)
    check_timeout(limits, "timeout_ms", entry.timeout_ms)
    _owner(limits, entry.owner)
    seen: set[str] = set()
    for action in entry.actions:
        if action.participant_id not in entry.participants:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT,
                f"an action for {action.participant_id[:128]!r}, not a participant of the txn",
            )
        if action.participant_id in seen:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT,
                f"two actions for {action.participant_id[:128]!r}: one per participant",
            )
        seen.add(action.participant_id)
        check_id(limits, "action", action.action)
        check_bytes(limits, "action payload", action.payload, "step_payload_bytes_max")


def check_enlist(limits: Limits, entry: Enlist) -> None:
    check_id(limits, "txn_id", entry.txn_id)
    check_id(limits, "participant_id", entry.participant_id)


def check_begin_round(limits: Limits, entry: BeginRound) -> None:
    if entry.kind not in (Kind.ROLLBACK, Kind.CHECKPOINT):
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "BeginRound is for rollback or checkpoint")
    check_id(limits, "round_id", entry.round_id)
    check_id(limits, "session_id", entry.session_id, allow_empty=True)
    check_id(limits, "checkpoint_id", entry.checkpoint_id)
    check_text(limits, "label", entry.label, "label_bytes_max")
    check_participants(limits, entry.participants, allow_empty=False)
    check_timeout(limits, "timeout_ms", entry.timeout_ms)
    _owner(limits, entry.owner)


def check_begin_saga(limits: Limits, entry: BeginSaga) -> None:
    check_id(limits, "saga_id", entry.saga_id)
    check_id(limits, "session_id", entry.session_id, allow_empty=True)
    if not entry.steps:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "a saga needs at least one step")
    check_count(limits, "steps", len(entry.steps), "saga_steps_max")
    for spec in entry.steps:
        check_id(limits, "participant_id", spec.participant_id)
        check_id(limits, "action", spec.action)
        check_bytes(limits, "payload", spec.payload, "step_payload_bytes_max")
    check_timeout(limits, "step_timeout_ms", entry.step_timeout_ms)
    _owner(limits, entry.owner)


def check_abort(limits: Limits, entry: Abort) -> None:
    check_id(limits, "round_id", entry.round_id)
    check_text(limits, "reason", entry.reason, "reason_bytes_max")


def check_register(limits: Limits, entry: RegisterParticipant) -> None:
    check_id(limits, "participant_id", entry.participant_id)
    if not entry.endpoint:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "endpoint must not be empty")
    check_id(limits, "endpoint", entry.endpoint)
    if " " in entry.endpoint:
        raise ProtocolError(
            ErrorCode.INVALID_ARGUMENT, "endpoint holds a space; it must be HOST:PORT"
        )


def check_unregister(limits: Limits, entry: UnregisterParticipant) -> None:
    check_id(limits, "participant_id", entry.participant_id)


def check_resolve_step(limits: Limits, entry: ResolveStep) -> None:
    check_id(limits, "saga_id", entry.saga_id)
    check_text(limits, "note", entry.note, "reason_bytes_max")
    if entry.step < 0:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"step {entry.step} is negative")


def check_record_escalations(limits: Limits, entry: RecordEscalations) -> None:
    check_id(limits, "participant_id", entry.participant_id)
    check_count(
        limits,
        "escalations",
        len(entry.escalations),
        "escalations_per_participant_max",
    )
    for note in entry.escalations:
        check_id(limits, "escalation round_id", note.round_id, allow_empty=True)
        check_id(limits, "escalation key", note.key, allow_empty=True)
        check_text(limits, "escalation detail", note.detail, "reason_bytes_max")


def check_vote(limits: Limits, vote: Vote) -> None:
    check_id(limits, "round_id", vote.round_id)
    check_id(limits, "participant_id", vote.participant_id)
    check_text_size(limits, "reason", vote.reason, "reason_bytes_max")
    check_bytes(limits, "action result", vote.result, "step_payload_bytes_max")


def check_ack(limits: Limits, ack: Ack) -> None:
    check_id(limits, "round_id", ack.round_id)
    check_id(limits, "participant_id", ack.participant_id)


def check_step_report(limits: Limits, report: StepReport) -> None:
    check_id(limits, "saga_id", report.saga_id)
    check_id(limits, "participant_id", report.participant_id)
    check_text_size(limits, "reason", report.reason, "reason_bytes_max")
    check_bytes(limits, "result", report.result, "step_payload_bytes_max")
    if report.outcome is StepOutcome.RUNNING:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "RUNNING is not a recordable outcome")


def _batch(limits: Limits, name: str, count: int) -> None:
    check_count(limits, name, count, "entry_batch_max", ErrorCode.INVALID_ARGUMENT)


def check_entry(limits: Limits, entry: Entry) -> None:
    """Raise ``ProtocolError`` if ``entry`` breaks a rule that needs no state. For
    batches of replies, every item must pass (the edge proposes whole batches only)."""
    match entry:
        case BeginTxn():
            check_begin_txn(limits, entry)
        case Enlist():
            check_enlist(limits, entry)
        case RequestCommit():
            check_id(limits, "txn_id", entry.txn_id)
        case BeginRound():
            check_begin_round(limits, entry)
        case BeginSaga():
            check_begin_saga(limits, entry)
        case Abort():
            check_abort(limits, entry)
        case Timeout() | PresumeAbort():
            check_id(limits, "round_id", entry.round_id)
        case RegisterParticipant():
            check_register(limits, entry)
        case UnregisterParticipant():
            check_unregister(limits, entry)
        case ResolveStep():
            check_resolve_step(limits, entry)
        case RecordEscalations():
            check_record_escalations(limits, entry)
        case RecordVotes():
            _batch(limits, "votes", len(entry.votes))
            for vote in entry.votes:
                check_vote(limits, vote)
        case RecordAcks():
            _batch(limits, "acks", len(entry.acks))
            for ack in entry.acks:
                check_ack(limits, ack)
        case RecordStepReports():
            _batch(limits, "step reports", len(entry.reports))
            for report in entry.reports:
                check_step_report(limits, report)
        case _:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, f"not a log entry: {type(entry).__name__}"
            )
