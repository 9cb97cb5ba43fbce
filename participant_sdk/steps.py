"""What the participant core records and asks its caller to do: round and saga-step
records, the actions on the agent's state, and the ``Step`` that makes them durable
(core.py says when each is made)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from coordinator.core.messages import FromParticipant
from coordinator.core.types import Kind, StepOutcome

__all__ = [
    "FINAL_STEP_STATES",
    "SAGA_OVER",
    "STEP_OUTCOMES",
    "Action",
    "ApplyBranch",
    "BranchClosed",
    "DiscardBranch",
    "DropCheckpoint",
    "ForgetRecord",
    "ForgetStep",
    "HoldBranch",
    "LocalState",
    "MustAsk",
    "Persist",
    "RestoreCheckpoint",
    "RoundRecord",
    "RunCompensation",
    "RunStep",
    "Step",
    "StepRecord",
    "StepState",
    "TakeCheckpoint",
    "TermRecord",
    "step_key",
]


class LocalState(Enum):
    PREPARED = "PREPARED"
    COMMITTED = "COMMITTED"
    ABORTED = "ABORTED"


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundRecord:
    """The durable record of one round at this participant."""

    round_id: str
    kind: Kind
    state: LocalState
    voted_yes: bool
    reason: str = ""
    checkpoint_id: str = ""
    updated_ms: int = 0
    # A YES to a Prepare that carried an action (one-shot): the action's result (JSON),
    # sent again with the vote when the Prepare is repeated.
    result: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TermRecord:
    term: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ForgetRecord:
    round_id: str


class StepState(Enum):
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    ESCALATED = "ESCALATED"
    COMPLETED = "COMPLETED"
    SETTLED = "SETTLED"  # escalated, and the saga is over (an operator resolved it)


# What each step state answers, and which states are final (forgettable after retention).
STEP_OUTCOMES: dict[StepState, StepOutcome] = {
    StepState.RUNNING: StepOutcome.RUNNING,
    StepState.DONE: StepOutcome.DONE,
    StepState.FAILED: StepOutcome.FAILED,
    StepState.COMPENSATING: StepOutcome.RUNNING,
    StepState.COMPENSATED: StepOutcome.COMPENSATED,
    StepState.ESCALATED: StepOutcome.ESCALATED,
    StepState.COMPLETED: StepOutcome.DONE,
    StepState.SETTLED: StepOutcome.ESCALATED,
}
# Forgettable after retention. Not ESCALATED: until the saga is over the coordinator
# may resend CompensateStep, and with no record left that would read "never ran here".
FINAL_STEP_STATES = frozenset(
    {StepState.FAILED, StepState.COMPENSATED, StepState.COMPLETED, StepState.SETTLED}
)


@dataclass(frozen=True, kw_only=True, slots=True)
class StepRecord:
    """The durable record of one saga step at this participant."""

    saga_id: str
    step: int
    action: str
    state: StepState
    payload: bytes = b""
    result: bytes = b""
    reason: str = ""
    # The action started here (False for a barrier written before it ever ran), and
    # it returned (its effect is known to exist).
    ran: bool = True
    returned: bool = False
    updated_ms: int = 0

    @property
    def key(self) -> str:
        return step_key(self.saga_id, self.step)


# What a step's record becomes when its saga is over (Decide of kind SAGA).
SAGA_OVER = {StepState.DONE: StepState.COMPLETED, StepState.ESCALATED: StepState.SETTLED}


def step_key(saga_id: str, step: int) -> str:
    return f"{saga_id}#{step}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ForgetStep:
    key: str


Persist = RoundRecord | TermRecord | ForgetRecord | StepRecord | ForgetStep


# Actions on the agent's own state, made durable in the same write as the records.
@dataclass(frozen=True, kw_only=True, slots=True)
class HoldBranch:
    """The branch voted YES: its staged work must be durable with the vote, since a
    COMMIT may arrive after a restart and must still find it."""

    txn_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ApplyBranch:
    txn_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DiscardBranch:
    txn_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TakeCheckpoint:
    checkpoint_id: str
    label: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DropCheckpoint:
    checkpoint_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RestoreCheckpoint:
    checkpoint_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RunStep:
    """Run a saga step's action (outside the core, after the intent is durable)."""

    saga_id: str
    step: int
    action: str
    payload: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class RunCompensation:
    """Run a saga step's compensation. ``outcome_known`` is False when the action was
    interrupted (a crash): the compensation must tolerate an effect that never was."""

    saga_id: str
    step: int
    action: str
    payload: bytes
    result: bytes
    outcome_known: bool


Action = (
    HoldBranch
    | ApplyBranch
    | DiscardBranch
    | TakeCheckpoint
    | DropCheckpoint
    | RestoreCheckpoint
    | RunStep
    | RunCompensation
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """Persist and act (one atomic, synced write), then send ``reply``.

    The core has already moved its memory to the state after the step. If the write
    fails, memory is ahead of disk: the process must stop and recover from disk, never
    retry the write or go on answering."""

    persist: tuple[Persist, ...] = ()
    actions: tuple[Action, ...] = ()
    reply: FromParticipant | None = None
    # A coordinator message that contradicts what this participant durably knows: a
    # peer's fault, reported loudly by the caller, never acted on.
    violation: str = ""

    @property
    def needs_sync(self) -> bool:
        return bool(self.persist or self.actions)


class BranchClosed(Exception):
    """Local misuse: work for a transaction this participant has already voted on or
    seen aborted (for example a late request after an empty rollback)."""


class MustAsk(Exception):
    """Local misuse: aborting alone a branch that voted YES (rule 3). Ask the cluster."""
