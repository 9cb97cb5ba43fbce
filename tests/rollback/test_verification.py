"""Verification after compensation: a failed check escalates, it is never hidden."""

from __future__ import annotations

import threading

from coordinator.core.types import Decision
from participant_sdk.core import ParticipantCore, RunCompensation, Step
from participant_sdk.effects import Effect, EffectLog, EffectStatus
from participant_sdk.saga import SagaActions, SagaRunner, StepContext


def test_an_effect_whose_compensation_does_not_verify_is_escalated() -> None:
    log = EffectLog(sleep=lambda s: None)
    refunded: set[str] = set()
    landed: set[str] = set()  # what the bank really shows

    def refund(effect: Effect) -> None:
        refunded.add(effect.key)
        if effect.key != "lost":
            landed.add(effect.key)

    @log.compensable(compensate=refund, verify=lambda e: e.key in landed, name="charge")
    def charge(amount: int) -> int:
        return amount

    with log.transaction("t1"):
        charge(5, idempotency_key="ok")
        charge(7, idempotency_key="lost")
    log.on_decision("t1", Decision.ABORT)
    assert refunded == {"ok", "lost"}
    assert log.get("ok").status is EffectStatus.COMPENSATED
    lost = log.get("lost")
    assert lost.status is EffectStatus.ESCALATED and "verification" in lost.error
    assert [e.key for e in log.escalations()] == ["lost"]
    assert log.counters.verifications_failed == 1


def test_a_saga_compensation_that_does_not_verify_escalates_the_step() -> None:
    finished: list[tuple[bool, str]] = []
    done = threading.Event()

    class FakeCore(ParticipantCore):
        def compensation_finished(  # type: ignore[override]
            self, saga_id: str, step: int, *, ok: bool, reason: str, now_ms: int
        ) -> Step:
            finished.append((ok, reason))
            done.set()
            return Step()

    core = FakeCore("p")
    actions = SagaActions()
    actions.add(
        "book",
        lambda step: b"",
        lambda step: None,
        verify=lambda step: step.json()["seat"] != "13A",  # 13A never gets released
    )

    def finish(make):  # type: ignore[no-untyped-def]
        make(core, 0)

    runner = SagaRunner(actions, "p", finish)
    try:
        for seat in ("12A", "13A"):
            done.clear()
            runner.submit(
                RunCompensation(
                    saga_id="s",
                    step=0,
                    action="book",
                    payload=f'{{"seat": "{seat}"}}'.encode(),
                    result=b"",
                    outcome_known=True,
                )
            )
            assert done.wait(10)
    finally:
        runner.stop()
    assert finished == [(True, ""), (False, "verification after compensation failed")]
    assert StepContext(saga_id="s", step=1, action="a", payload=b"").idempotency_key == "s/1"


def test_an_effect_for_an_aborted_transaction_is_refused_before_it_runs() -> None:
    import pytest

    from participant_sdk.effects import EffectError

    log = EffectLog(sleep=lambda s: None)
    charged: list[str] = []

    @log.compensable(compensate=lambda e: None, name="charge")
    def charge(amount: int, idempotency_key: str) -> int:
        charged.append(idempotency_key)
        return amount

    log.on_decision("t1", Decision.ABORT)
    with log.transaction("t1"), pytest.raises(EffectError, match="already aborted"):
        charge(5, idempotency_key="late")
    assert charged == []


def test_an_abort_while_the_tool_runs_compensates_it_once_it_returned() -> None:
    log = EffectLog(sleep=lambda s: None)
    bank: list[tuple[str, str]] = []
    started, release = threading.Event(), threading.Event()

    def refund(effect: Effect) -> None:
        bank.append(("refund", effect.key))

    def was_charged(effect: Effect) -> bool:
        return ("charge", effect.key) in bank

    @log.compensable(compensate=refund, probe=was_charged, name="charge")
    def charge(amount: int, idempotency_key: str) -> int:
        started.set()
        assert release.wait(10)
        bank.append(("charge", idempotency_key))  # the effect lands after the abort
        return amount

    def call() -> None:
        with log.transaction("t1"):
            charge(5, idempotency_key="k")

    worker = threading.Thread(target=call)
    worker.start()
    assert started.wait(10)
    log.on_decision("t1", Decision.ABORT)  # the probe would see nothing yet
    release.set()
    worker.join(10)
    assert bank == [("charge", "k"), ("refund", "k")]
    assert log.get("k").status is EffectStatus.COMPENSATED
