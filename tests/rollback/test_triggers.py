"""Triggers, the rollback policy and the circuit breaker: table-driven, pure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from participant_sdk.triggers import (
    Action,
    BreakerConfig,
    BreakerPhase,
    BreakerState,
    CheckpointRef,
    DownstreamFailure,
    GuardrailViolation,
    Inconsistency,
    LowConfidence,
    RollbackPolicy,
    Rule,
    Target,
    TriggerKind,
    UserRejected,
    ValidatorRejected,
    breaker_allows,
    breaker_failure,
    breaker_success,
    decide,
)

CPS = (
    CheckpointRef(checkpoint_id="cp-1", generation=1, label="start"),
    CheckpointRef(checkpoint_id="cp-2", generation=2, label="plan"),
    CheckpointRef(checkpoint_id="cp-3", generation=3),
)
POLICY = RollbackPolicy(
    confidence_threshold=0.6,
    rules={
        TriggerKind.LOW_CONFIDENCE: Rule(retries_max=1, rollbacks_max=1),
        TriggerKind.GUARDRAIL: Rule(rollbacks_max=1, target=Target.LABELLED, label="start"),
        TriggerKind.INCONSISTENCY: Rule(rollbacks_max=1, target=Target.FIRST),
        TriggerKind.VALIDATOR_REJECTED: Rule(retries_max=2, rollbacks_max=0),
        TriggerKind.USER_REJECTED: Rule(rollbacks_max=1, target=Target.LABELLED, label="plan"),
        TriggerKind.DOWNSTREAM_FAILURE: Rule(retries_max=0, rollbacks_max=0),
    },
)
WIDE = BreakerConfig(failures_max=100, window_ms=1000, cooldown_ms=500, trips_max=3)


@pytest.mark.parametrize(
    ("triggers", "expected"),
    [
        # (sequence of triggers at one step) -> actions, in order
        ([LowConfidence(confidence=0.9)], [(Action.NONE, "")]),
        (
            # a rollback gives the step its retries again; rollbacks_max bounds it
            [LowConfidence(confidence=0.1)] * 4,
            [(Action.RETRY, ""), (Action.ROLLBACK, "cp-3"), (Action.RETRY, ""), (Action.ABORT, "")],
        ),
        ([GuardrailViolation(rule="pii")] * 2, [(Action.ROLLBACK, "cp-1"), (Action.ABORT, "")]),
        ([Inconsistency(detail="sum")], [(Action.ROLLBACK, "cp-1")]),
        (
            [ValidatorRejected(validator="schema")] * 3,
            [(Action.RETRY, ""), (Action.RETRY, ""), (Action.ABORT, "")],
        ),
        ([UserRejected(reason="no")], [(Action.ROLLBACK, "cp-2")]),
        ([DownstreamFailure(service="bank")], [(Action.ABORT, "")]),
    ],
)
def test_policy_table(triggers: list, expected: list[tuple[Action, str]]) -> None:
    state = BreakerState()
    got = []
    for at, trigger in enumerate(triggers):
        outcome, state = decide(POLICY, WIDE, state, trigger, CPS, now_ms=at)
        got.append((outcome.action, outcome.checkpoint_id))
    assert got == expected


def test_labelled_target_missing_aborts() -> None:
    outcome, _ = decide(POLICY, WIDE, BreakerState(), GuardrailViolation(rule="x"), CPS[2:], 0)
    assert outcome.action is Action.ABORT and "no checkpoint" in outcome.reason


def test_success_resets_the_step_counters() -> None:
    state = BreakerState()
    trig = LowConfidence(confidence=0.0)
    _, state = decide(POLICY, WIDE, state, trig, CPS, 0)
    state = breaker_success(WIDE, state, 1)
    outcome, _ = decide(POLICY, WIDE, state, trig, CPS, 2)
    assert outcome.action is Action.RETRY


BREAKER = BreakerConfig(failures_max=3, window_ms=100, cooldown_ms=50, trips_max=2)


@pytest.mark.parametrize(
    ("events", "phase", "allows"),
    [
        # events: ("f", t) failure at t, ("s", t) success at t; checked at the last t
        ([("f", 0), ("f", 10)], BreakerPhase.CLOSED, True),
        ([("f", 0), ("f", 10), ("f", 20)], BreakerPhase.OPEN, False),
        ([("f", 0), ("f", 10), ("f", 200)], BreakerPhase.CLOSED, True),  # window slid
        ([("f", 0), ("f", 1), ("f", 2), ("f", 30)], BreakerPhase.OPEN, False),
        ([("f", 0), ("f", 1), ("f", 2), ("s", 60)], BreakerPhase.CLOSED, True),  # half-open ok
        ([("f", 0), ("f", 1), ("f", 2), ("f", 60)], BreakerPhase.ESCALATED, False),  # 2nd trip
    ],
)
def test_breaker_table(events: list[tuple[str, int]], phase: BreakerPhase, allows: bool) -> None:
    state = BreakerState()
    for kind, at in events:
        state = (breaker_failure if kind == "f" else breaker_success)(BREAKER, state, at)
    assert state.phase is phase
    assert breaker_allows(BREAKER, state, events[-1][1]) is allows


def test_breaker_open_aborts_then_escalates_a_loop() -> None:
    """A rollback-retry loop cannot run forever: it ends in ESCALATE."""
    policy = replace(
        POLICY, rules={TriggerKind.INCONSISTENCY: Rule(retries_max=10**6, rollbacks_max=0)}
    )
    state = BreakerState()
    actions = []
    now = 0
    for _ in range(100):
        outcome, state = decide(policy, BREAKER, state, Inconsistency(detail="x"), CPS, now)
        actions.append(outcome.action)
        if outcome.action is Action.ESCALATE:
            break
        now += 60 if outcome.action is Action.ABORT else 1
    assert actions[-1] is Action.ESCALATE and len(actions) < 20
    assert Action.ABORT in actions


def test_triggers_module_is_pure() -> None:
    from pathlib import Path

    from tests.test_core_purity import impure_imports

    source = Path(__file__).resolve().parents[2] / "participant_sdk" / "triggers.py"
    assert impure_imports(source.read_text()) == []
