"""The protocol's vocabulary, shared by the coordinator core and the participant core."""

from __future__ import annotations

from enum import Enum


class Kind(Enum):
    """What a round decides. All three run the same vote-then-decide protocol."""

    TXN = "TXN"  # two-phase commit of a transaction: COMMIT or ABORT
    ROLLBACK = "ROLLBACK"  # revert participants to a checkpoint: EXECUTE or REJECT
    CHECKPOINT = "CHECKPOINT"  # a global checkpoint (consistent cut): KEEP or DISCARD
    SAGA = "SAGA"  # steps run in order; a failure compensates them: COMPLETED or COMPENSATED


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
    (Kind.SAGA, Decision.COMMIT): "COMPLETED",
    (Kind.SAGA, Decision.ABORT): "COMPENSATED",
}


class StepOutcome(Enum):
    """What a participant reports about one saga step."""

    RUNNING = "RUNNING"  # in progress here: ask again later (never recorded)
    DONE = "DONE"  # the step's action ran and returned
    FAILED = "FAILED"  # the action raised: it had no effect
    COMPENSATED = "COMPENSATED"  # undone, or nothing to undo (it never ran here)
    ESCALATED = "ESCALATED"  # the compensation keeps failing: an operator must act


def decision_name(kind: Kind, decision: Decision) -> str:
    return DECISION_NAMES[(kind, decision)]
