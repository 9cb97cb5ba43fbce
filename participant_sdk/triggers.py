"""Rollback triggers and the decision what to do about them: pure, no I/O, no clock.

Theory of operation
-------------------
A *trigger* says something went wrong, from inside the agent (confidence below a
threshold, a guardrail violation, an inconsistency it noticed) or from outside (a
validator rejected an output, a user rejected a result, a downstream failure). The
agent hands each trigger, with the time (``now_ms``, given, never read) and the
checkpoints it has, to ``decide``; it gets back an ``Outcome`` (RETRY, ROLLBACK to a
named checkpoint, ABORT, or ESCALATE) and the next ``BreakerState``.

The ``RollbackPolicy`` is a table: for each trigger kind, a ``Rule`` saying how many
plain retries come first, which checkpoint to roll back to after that
(``LATEST``, ``LABELLED`` with a label, or ``FIRST``) and how many rollbacks before
giving up with ABORT. A ``LowConfidence`` at or above the threshold is no trigger.

A circuit breaker keeps retry/rollback loops finite: every trigger is a failure; at
``failures_max`` failures within ``window_ms`` it *opens*: every trigger is then
answered ABORT until ``cooldown_ms`` has passed; then it is *half-open*: one attempt
is allowed; a failure re-opens it (one more trip), a ``success`` closes it. After
``trips_max`` trips it stays open and answers ESCALATE: an operator must look.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

__all__ = [
    "Action",
    "BreakerConfig",
    "BreakerPhase",
    "BreakerState",
    "CheckpointRef",
    "DownstreamFailure",
    "GuardrailViolation",
    "Inconsistency",
    "LowConfidence",
    "Outcome",
    "RollbackPolicy",
    "Rule",
    "Target",
    "Trigger",
    "TriggerKind",
    "UserRejected",
    "ValidatorRejected",
    "breaker_allows",
    "breaker_failure",
    "breaker_success",
    "decide",
]


class TriggerKind(Enum):
    LOW_CONFIDENCE = "low_confidence"
    GUARDRAIL = "guardrail"
    INCONSISTENCY = "inconsistency"
    VALIDATOR_REJECTED = "validator_rejected"
    USER_REJECTED = "user_rejected"
    DOWNSTREAM_FAILURE = "downstream_failure"


@dataclass(frozen=True, kw_only=True, slots=True)
class LowConfidence:
    confidence: float
    kind: TriggerKind = TriggerKind.LOW_CONFIDENCE


@dataclass(frozen=True, kw_only=True, slots=True)
class GuardrailViolation:
    rule: str
    kind: TriggerKind = TriggerKind.GUARDRAIL


@dataclass(frozen=True, kw_only=True, slots=True)
class Inconsistency:
    detail: str
    kind: TriggerKind = TriggerKind.INCONSISTENCY


@dataclass(frozen=True, kw_only=True, slots=True)
class ValidatorRejected:
    validator: str
    reason: str = ""
    kind: TriggerKind = TriggerKind.VALIDATOR_REJECTED


@dataclass(frozen=True, kw_only=True, slots=True)
class UserRejected:
    reason: str = ""
    kind: TriggerKind = TriggerKind.USER_REJECTED


@dataclass(frozen=True, kw_only=True, slots=True)
class DownstreamFailure:
    service: str
    reason: str = ""
    kind: TriggerKind = TriggerKind.DOWNSTREAM_FAILURE


Trigger = (
    LowConfidence
    | GuardrailViolation
    | Inconsistency
    | ValidatorRejected
    | UserRejected
    | DownstreamFailure
)


class Target(Enum):
    LATEST = "latest"  # the newest checkpoint
    LABELLED = "labelled"  # the newest checkpoint with Rule.label
    FIRST = "first"  # the oldest checkpoint kept


class Action(Enum):
    NONE = "none"  # not a trigger (confidence high enough)
    RETRY = "retry"
    ROLLBACK = "rollback"
    ABORT = "abort"
    ESCALATE = "escalate"


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    retries_max: int = 0  # plain retries of the same step before rolling back
    rollbacks_max: int = 1  # rollbacks before ABORT
    target: Target = Target.LATEST
    label: str = ""  # for Target.LABELLED


@dataclass(frozen=True, kw_only=True, slots=True)
class RollbackPolicy:
    confidence_threshold: float = 0.5
    rules: Mapping[TriggerKind, Rule] = field(
        default_factory=lambda: {
            TriggerKind.LOW_CONFIDENCE: Rule(retries_max=2, rollbacks_max=1),
            TriggerKind.GUARDRAIL: Rule(retries_max=0, rollbacks_max=1),
            TriggerKind.INCONSISTENCY: Rule(retries_max=0, rollbacks_max=2),
            TriggerKind.VALIDATOR_REJECTED: Rule(retries_max=1, rollbacks_max=1),
            TriggerKind.USER_REJECTED: Rule(retries_max=0, rollbacks_max=1),
            TriggerKind.DOWNSTREAM_FAILURE: Rule(retries_max=3, rollbacks_max=0),
        }
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointRef:
    checkpoint_id: str
    generation: int
    label: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig:
    failures_max: int = 5
    window_ms: int = 60_000
    cooldown_ms: int = 30_000
    trips_max: int = 3

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class BreakerPhase(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    ESCALATED = "escalated"


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerState:
    phase: BreakerPhase = BreakerPhase.CLOSED
    failures_ms: tuple[int, ...] = ()  # times of failures inside the window
    opened_ms: int = 0
    trips: int = 0
    # Per trigger kind, for the current step: retries and rollbacks used so far.
    retries: Mapping[TriggerKind, int] = field(default_factory=dict)
    rollbacks: Mapping[TriggerKind, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    action: Action
    checkpoint_id: str = ""  # for ROLLBACK
    reason: str = ""


def _phase_at(config: BreakerConfig, state: BreakerState, now_ms: int) -> BreakerPhase:
    if state.phase is BreakerPhase.OPEN and now_ms >= state.opened_ms + config.cooldown_ms:
        return BreakerPhase.HALF_OPEN
    return state.phase


def breaker_allows(config: BreakerConfig, state: BreakerState, now_ms: int) -> bool:
    """May the agent attempt (retry, roll back) now?"""
    return _phase_at(config, state, now_ms) in (BreakerPhase.CLOSED, BreakerPhase.HALF_OPEN)


def breaker_failure(config: BreakerConfig, state: BreakerState, now_ms: int) -> BreakerState:
    phase = _phase_at(config, state, now_ms)
    if phase is BreakerPhase.ESCALATED:
        return state
    if phase is BreakerPhase.OPEN:
        return state  # failures while open do not extend the cooldown
    if phase is BreakerPhase.HALF_OPEN:
        return _trip(config, state, now_ms)
    recent = (*(t for t in state.failures_ms if t > now_ms - config.window_ms), now_ms)
    if len(recent) >= config.failures_max:
        return _trip(config, replace(state, failures_ms=recent), now_ms)
    return replace(state, failures_ms=recent)


def _trip(config: BreakerConfig, state: BreakerState, now_ms: int) -> BreakerState:
    trips = state.trips + 1
    phase = BreakerPhase.ESCALATED if trips >= config.trips_max else BreakerPhase.OPEN
    return replace(state, phase=phase, opened_ms=now_ms, trips=trips, failures_ms=())


def breaker_success(config: BreakerConfig, state: BreakerState, now_ms: int) -> BreakerState:
    """The step succeeded: close a half-open breaker and reset the step's counters."""
    phase = _phase_at(config, state, now_ms)
    if phase is BreakerPhase.ESCALATED:
        return state
    if phase is BreakerPhase.OPEN:
        return replace(state, retries={}, rollbacks={})
    return replace(state, phase=BreakerPhase.CLOSED, failures_ms=(), retries={}, rollbacks={})


def _target(rule: Rule, checkpoints: Sequence[CheckpointRef]) -> CheckpointRef | None:
    ordered = sorted(checkpoints, key=lambda c: c.generation)
    if not ordered:
        return None
    if rule.target is Target.FIRST:
        return ordered[0]
    if rule.target is Target.LABELLED:
        labelled = [c for c in ordered if c.label == rule.label]
        return labelled[-1] if labelled else None
    return ordered[-1]


def decide(
    policy: RollbackPolicy,
    breaker: BreakerConfig,
    state: BreakerState,
    trigger: Trigger,
    checkpoints: Sequence[CheckpointRef],
    now_ms: int,
) -> tuple[Outcome, BreakerState]:
    """What to do about ``trigger`` now, and the breaker state after it."""
    if isinstance(trigger, LowConfidence) and trigger.confidence >= policy.confidence_threshold:
        return Outcome(action=Action.NONE, reason="confidence above threshold"), state
    phase = _phase_at(breaker, state, now_ms)
    if phase is BreakerPhase.ESCALATED:
        return Outcome(action=Action.ESCALATE, reason="circuit breaker escalated"), state
    if phase is BreakerPhase.OPEN:
        return Outcome(action=Action.ABORT, reason="circuit breaker open"), state
    after = breaker_failure(breaker, state, now_ms)
    if _phase_at(breaker, after, now_ms) is BreakerPhase.ESCALATED:
        return Outcome(
            action=Action.ESCALATE, reason=f"circuit breaker tripped {after.trips} times"
        ), after
    if after.phase is BreakerPhase.OPEN:
        return Outcome(action=Action.ABORT, reason="circuit breaker tripped"), after
    rule = policy.rules.get(trigger.kind, Rule())
    retries = state.retries.get(trigger.kind, 0)
    if retries < rule.retries_max:
        counted = replace(after, retries={**after.retries, trigger.kind: retries + 1})
        return Outcome(
            action=Action.RETRY, reason=f"retry {retries + 1}/{rule.retries_max}"
        ), counted
    rollbacks = state.rollbacks.get(trigger.kind, 0)
    if rollbacks < rule.rollbacks_max:
        target = _target(rule, checkpoints)
        if target is not None:
            counted = replace(
                after,
                rollbacks={**after.rollbacks, trigger.kind: rollbacks + 1},
                retries={**after.retries, trigger.kind: 0},
            )
            return Outcome(
                action=Action.ROLLBACK,
                checkpoint_id=target.checkpoint_id,
                reason=f"rollback {rollbacks + 1}/{rule.rollbacks_max}",
            ), counted
        return Outcome(action=Action.ABORT, reason="no checkpoint to roll back to"), after
    return Outcome(action=Action.ABORT, reason="retries and rollbacks exhausted"), after
