"""What the client's calls return: transaction status, saga and round results,
built from the cluster's replies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from concord.v1 import coordinator_pb2
from coordinator.core.types import Decision, Kind, decision_name
from coordinator.protomap import decision_from_proto, kind_from_proto

__all__ = [
    "ParticipantStatus",
    "RoundResult",
    "SagaResult",
    "SagaStep",
    "SagaStepStatus",
    "TxnStatus",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ParticipantStatus:
    participant_id: str
    voted: bool
    yes: bool
    reason: str
    acked: bool
    # A one-shot transaction's participant that voted YES: its action's result (JSON;
    # None when it had no action).
    result: Any = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TxnStatus:
    round_id: str
    kind: Kind | None
    session_id: str
    phase: str
    decision: Decision | None
    participants: tuple[ParticipantStatus, ...]
    deadline_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaStep:
    """One step to run: ``action`` (declared by the participant with its compensation)
    at ``participant_id``. ``payload``: bytes, str, or anything JSON can encode."""

    participant_id: str
    action: str
    payload: Any = b""


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaStepStatus:
    participant_id: str
    action: str
    status: str  # PENDING, DONE, FAILED, COMPENSATED, ESCALATED, RESOLVED
    reason: str
    result: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaResult:
    saga_id: str
    phase: str
    outcome: str  # COMPLETED, COMPENSATED, or "" while undecided
    reason: str
    steps: tuple[SagaStepStatus, ...]

    @property
    def finished(self) -> bool:
        return self.phase == "DONE"

    @property
    def escalated(self) -> list[int]:
        """Steps whose compensation waits for an operator (`concord txn resolve`)."""
        return [i for i, s in enumerate(self.steps) if s.status == "ESCALATED"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundResult:
    """A rollback or checkpoint round; ``decision`` None: not decided within the call."""

    round_id: str
    decision: Decision | None


def txn_status_from_wire(reply: coordinator_pb2.GetTxnReply) -> TxnStatus:
    return TxnStatus(
        round_id=reply.round_id,
        kind=kind_from_proto(reply.kind),
        session_id=reply.session_id,
        phase=reply.phase,
        decision=decision_from_proto(reply.decision),
        participants=tuple(
            ParticipantStatus(
                participant_id=p.participant_id,
                voted=p.voted,
                yes=p.yes,
                reason=p.reason,
                acked=p.acked,
                result=json.loads(p.result) if p.result else None,
            )
            for p in reply.participants
        ),
        deadline_ms=reply.deadline_ms,
    )


def payload_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, sort_keys=True).encode()


def saga_result_from_wire(reply: coordinator_pb2.GetTxnReply) -> SagaResult:
    decision = decision_from_proto(reply.decision)
    return SagaResult(
        saga_id=reply.round_id,
        phase=reply.phase,
        outcome="" if decision is None else decision_name(Kind.SAGA, decision),
        reason=reply.decision_reason,
        steps=tuple(
            SagaStepStatus(
                participant_id=s.participant_id,
                action=s.action,
                status=s.status,
                reason=s.reason,
                result=s.result,
            )
            for s in reply.steps
        ),
    )
