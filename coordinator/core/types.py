"""The protocol's vocabulary, shared by the coordinator core and the participant core."""

from __future__ import annotations

from enum import Enum


class Kind(Enum):
    """What a round decides. All three run the same vote-then-decide protocol."""

    TXN = "TXN"  # two-phase commit of a transaction: COMMIT or ABORT
    ROLLBACK = "ROLLBACK"  # revert participants to a checkpoint: EXECUTE or REJECT
    CHECKPOINT = "CHECKPOINT"  # a global checkpoint (consistent cut): KEEP or DISCARD


class Decision(Enum):
    COMMIT = "COMMIT"
    ABORT = "ABORT"


# How a decision reads for each kind of round, for humans (docs, CLI, traces).
DECISION_NAMES: dict[tuple[Kind, Decision], str] = {
    (Kind.TXN, Decision.COMMIT): "COMMIT",
    (Kind.TXN, Decision.ABORT): "ABORT",
    (Kind.ROLLBACK, Decision.COMMIT): "EXECUTE",
    (Kind.ROLLBACK, Decision.ABORT): "REJECT",
    (Kind.CHECKPOINT, Decision.COMMIT): "KEEP",
    (Kind.CHECKPOINT, Decision.ABORT): "DISCARD",
}


def decision_name(kind: Kind, decision: Decision) -> str:
    return DECISION_NAMES[(kind, decision)]
