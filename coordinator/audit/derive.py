"""Audit records from applied entries: a pure function of (log index, entry, Applied).

Every node applies the same entries at the same indexes with the same results, so
every node derives the same records, in the same order, with the same timestamps
(``at_ms`` is the entry's own ``now_ms``: the proposer's time, never a local clock).
Chained (coordinator/audit/chain.py), they hash identically on every node.

One applied entry gives one or more records, numbered ``sub`` 0, 1, ... within its
log index. Events (``event``):

| entry | records |
|---|---|
| BeginTxn | ``txn_begun`` |
| Enlist | ``branch_enlisted`` |
| RequestCommit | ``commit_requested`` |
| BeginRound | ``round_begun`` (kind ROLLBACK: a rollback round; CHECKPOINT: a checkpoint) |
| RecordVotes | ``vote`` per vote |
| RecordAcks | ``ack`` per acknowledgement |
| Abort | ``abort_requested`` (``operator`` true when the reason starts ``operator:``) |
| Timeout | ``timeout`` |
| PresumeAbort | ``presumed_abort`` |
| RegisterParticipant | ``participant_registered`` |
| BeginSaga | ``saga_begun`` (its steps: participant and action) |
| RecordStepReports | ``step_report`` per report (outcome DONE, FAILED, COMPENSATED, ESCALATED) |
| ResolveStep | ``step_resolved`` (an operator settled an escalated compensation) |
| RecordEscalations | ``escalations_reported`` (a participant's open escalated effects) |
| UnregisterParticipant | ``participant_unregistered`` (an operator removed it) |
| any | then ``decision`` per round decided, ``rejected`` if refused, ``ignored`` per note |

A repeated request that the core treats as a no-op (a retried BeginTxn) is recorded
again: the record says what was applied, the ``decision`` records say what it did.
"""

from __future__ import annotations

from typing import Any

from coordinator.core.entries import (
    Abort,
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
    Timeout,
    UnregisterParticipant,
)
from coordinator.core.state import Applied
from coordinator.core.types import decision_name

OPERATOR_PREFIX = "operator:"  # an Abort whose reason starts so came from `concord txn abort`


def position(index: int, sub: int) -> str:
    """A record's place in the chain, sortable as text: ``<index>.<sub>``, zero-padded."""
    return f"{index:012d}.{sub:04d}"


def derive(index: int, entry: Entry, applied: Applied, sub_start: int = 0) -> list[dict[str, Any]]:
    """The record bodies (unsealed) for one applied entry, in order. One Raft entry
    (a LogBatch) may carry several core entries: the caller numbers their records on
    from ``sub_start`` so every record has its own position."""
    at_ms = entry.now_ms
    bodies: list[tuple[str, str, dict[str, Any]]] = []  # (event, round id, detail)
    match entry:
        case BeginTxn():
            bodies.append(
                (
                    "txn_begun",
                    entry.txn_id,
                    {
                        "session_id": entry.session_id,
                        "participants": list(entry.participants),
                        "timeout_ms": entry.timeout_ms,
                    },
                )
            )
        case Enlist():
            bodies.append(("branch_enlisted", entry.txn_id, {"participant": entry.participant_id}))
        case RequestCommit():
            bodies.append(("commit_requested", entry.txn_id, {}))
        case BeginRound():
            bodies.append(
                (
                    "round_begun",
                    entry.round_id,
                    {
                        "kind": entry.kind.value,
                        "session_id": entry.session_id,
                        "participants": list(entry.participants),
                        "checkpoint_id": entry.checkpoint_id,
                        "label": entry.label,
                        "timeout_ms": entry.timeout_ms,
                    },
                )
            )
        case RecordVotes():
            for vote in entry.votes:
                detail = {
                    "participant": vote.participant_id,
                    "yes": vote.yes,
                    "reason": vote.reason,
                }
                bodies.append(("vote", vote.round_id, detail))
        case RecordAcks():
            for ack in entry.acks:
                bodies.append(("ack", ack.round_id, {"participant": ack.participant_id}))
        case Abort():
            operator = entry.reason.startswith(OPERATOR_PREFIX)
            detail = {"reason": entry.reason, "operator": operator}
            bodies.append(("abort_requested", entry.round_id, detail))
        case Timeout():
            bodies.append(("timeout", entry.round_id, {}))
        case PresumeAbort():
            bodies.append(("presumed_abort", entry.round_id, {}))
        case RegisterParticipant():
            detail = {"participant": entry.participant_id, "endpoint": entry.endpoint}
            bodies.append(("participant_registered", "", detail))
        case BeginSaga():
            steps = [{"participant": s.participant_id, "action": s.action} for s in entry.steps]
            detail = {
                "session_id": entry.session_id,
                "steps": steps,
                "step_timeout_ms": entry.step_timeout_ms,
            }
            bodies.append(("saga_begun", entry.saga_id, detail))
        case RecordStepReports():
            for report in entry.reports:
                detail = {
                    "step": report.step,
                    "participant": report.participant_id,
                    "outcome": report.outcome.value,
                    "reason": report.reason,
                }
                bodies.append(("step_report", report.saga_id, detail))
        case ResolveStep():
            detail = {"step": entry.step, "note": entry.note}
            bodies.append(("step_resolved", entry.saga_id, detail))
        case UnregisterParticipant():
            detail = {
                "participant": entry.participant_id,
                "drop_escalations": entry.drop_escalations,
            }
            bodies.append(("participant_unregistered", "", detail))
        case RecordEscalations():
            notes = [{"round_id": n.round_id, "key": n.key} for n in entry.escalations]
            detail = {"participant": entry.participant_id, "escalations": notes}
            bodies.append(("escalations_reported", "", detail))
        case _:
            bodies.append(("unknown_entry", "", {"type": type(entry).__name__}))
    for decided in applied.decided:
        detail = {
            "kind": decided.kind.value,
            "decision": decision_name(decided.kind, decided.decision),
            "reason": decided.reason,
        }
        bodies.append(("decision", decided.round_id, detail))
    if applied.error is not None:
        round_id = bodies[0][1] if bodies else ""
        detail = {"code": applied.error.code.value, "message": applied.error.message}
        bodies.append(("rejected", round_id, detail))
    for note in applied.ignored:
        bodies.append(("ignored", bodies[0][1] if bodies else "", {"note": note}))
    return [
        {
            "index": index,
            "sub": sub,
            "at_ms": at_ms,
            "event": event,
            "round_id": round_id,
            "detail": detail,
        }
        for sub, (event, round_id, detail) in enumerate(bodies, start=sub_start)
    ]
