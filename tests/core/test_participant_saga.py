"""The participant core's saga steps: the barrier, the intent, crash recovery.

Every Step here is "made durable" by keeping its StepRecords, as the real caller
does; a crash rebuilds the core from them (``recover``), losing what ran in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.core.messages import CompensateStep, Decide, ExecuteStep, StepReply
from coordinator.core.types import Decision, Kind, StepOutcome
from participant_sdk.core import (
    ForgetStep,
    ParticipantCore,
    RunCompensation,
    RunStep,
    Step,
    StepRecord,
    StepState,
)


@dataclass
class Harness:
    core: ParticipantCore = field(default_factory=lambda: ParticipantCore("p"))
    disk: dict[str, StepRecord] = field(default_factory=dict)
    now_ms: int = 0

    def durable(self, step: Step) -> Step:
        for item in step.persist:
            if isinstance(item, StepRecord):
                self.disk[item.key] = item
            elif isinstance(item, ForgetStep):
                self.disk.pop(item.key, None)
        return step

    def execute(self, index: int, term: int = 1) -> Step:
        self.now_ms += 1
        msg = ExecuteStep(round_id="s", step=index, participant_id="p", action="book", term=term)
        return self.durable(self.core.on_execute(msg, self.now_ms))

    def compensate(self, index: int, term: int = 1) -> Step:
        self.now_ms += 1
        msg = CompensateStep(round_id="s", step=index, participant_id="p", action="book", term=term)
        return self.durable(self.core.on_compensate(msg, self.now_ms))

    def finish(self, index: int, ok: bool = True, result: bytes = b"r") -> Step:
        self.now_ms += 1
        return self.durable(
            self.core.step_finished(
                "s", index, ok=ok, result=result, reason="" if ok else "boom", now_ms=self.now_ms
            )
        )

    def compensated(self, index: int, ok: bool = True) -> Step:
        self.now_ms += 1
        return self.durable(
            self.core.compensation_finished(
                "s", index, ok=ok, reason="" if ok else "gave up", now_ms=self.now_ms
            )
        )

    def crash(self) -> None:
        self.core = ParticipantCore.recover(
            "p", [], self.core.term_seen, steps=list(self.disk.values())
        )


def outcome(step: Step) -> StepOutcome:
    assert isinstance(step.reply, StepReply)
    return step.reply.outcome


def test_a_step_runs_once_after_its_intent_is_durable() -> None:
    h = Harness()
    first = h.execute(0)
    assert first.actions == (RunStep(saga_id="s", step=0, action="book", payload=b""),)
    assert h.disk["s#0"].state is StepState.RUNNING  # the intent, before the action runs
    assert outcome(first) is StepOutcome.RUNNING
    again = h.execute(0)  # a retry while it runs: no second run
    assert again.actions == () and outcome(again) is StepOutcome.RUNNING
    done = h.finish(0, result=b"FL-1")
    assert outcome(done) is StepOutcome.DONE and done.reply.result == b"FL-1"  # type: ignore[union-attr]
    repeat = h.execute(0)
    assert repeat.actions == () and outcome(repeat) is StepOutcome.DONE


def test_a_step_interrupted_by_a_crash_runs_again_or_is_compensated_unknown() -> None:
    h = Harness()
    h.execute(0)
    h.crash()  # the action may or may not have had its effect
    rerun = h.execute(0)
    assert [type(a) for a in rerun.actions] == [RunStep]
    h.crash()
    undo = h.compensate(0)
    assert undo.actions == (
        RunCompensation(
            saga_id="s", step=0, action="book", payload=b"", result=b"", outcome_known=False
        ),
    )


def test_compensating_a_step_that_never_ran_leaves_a_barrier() -> None:
    h = Harness()
    undo = h.compensate(1)
    assert undo.actions == () and outcome(undo) is StepOutcome.COMPENSATED
    assert h.disk["s#1"].ran is False
    late = h.execute(1)  # a late ExecuteStep must never run it now
    assert late.actions == () and outcome(late) is StepOutcome.COMPENSATED
    h.crash()
    assert h.execute(1).actions == ()


def test_a_done_step_is_compensated_once_with_its_outcome_known() -> None:
    h = Harness()
    h.execute(0)
    h.finish(0, result=b"FL-1")
    undo = h.compensate(0)
    (run,) = undo.actions
    assert isinstance(run, RunCompensation) and run.outcome_known and run.result == b"FL-1"
    assert h.compensate(0).actions == ()  # a retry while it runs
    assert outcome(h.compensated(0)) is StepOutcome.COMPENSATED
    assert h.compensate(0).actions == ()
    # Interrupted compensation: runs again after a crash, still with the outcome known.
    h2 = Harness()
    h2.execute(0)
    h2.finish(0)
    h2.compensate(0)
    h2.crash()
    (again,) = h2.compensate(0).actions
    assert isinstance(again, RunCompensation) and again.outcome_known


def test_a_failed_step_has_nothing_to_undo_and_an_escalation_sticks() -> None:
    h = Harness()
    h.execute(0)
    assert outcome(h.finish(0, ok=False)) is StepOutcome.FAILED
    undo = h.compensate(0)
    assert undo.actions == () and outcome(undo) is StepOutcome.COMPENSATED
    h.execute(1)
    h.finish(1)
    h.compensate(1)
    assert outcome(h.compensated(1, ok=False)) is StepOutcome.ESCALATED
    assert h.compensate(1).actions == ()  # never looped: an operator resolves it


def test_completed_steps_become_final_and_are_forgotten_after_retention() -> None:
    h = Harness()
    h.execute(0)
    h.finish(0)
    done = h.durable(
        h.core.on_decide(
            Decide(
                round_id="s", kind=Kind.SAGA, participant_id="p", decision=Decision.COMMIT, term=1
            ),
            h.now_ms,
        )
    )
    assert h.disk["s#0"].state is StepState.COMPLETED and done.reply is not None
    assert h.durable(h.core.expire(h.now_ms + 1)).persist == ()
    forgotten = h.durable(h.core.expire(h.now_ms + h.core.record_retention_ms))
    assert forgotten.persist == (ForgetStep(key="s#0"),) and not h.disk


def test_a_done_step_of_an_open_saga_is_never_forgotten() -> None:
    h = Harness()
    h.execute(0)
    h.finish(0)
    assert h.durable(h.core.expire(h.now_ms + 10 * h.core.record_retention_ms)).persist == ()


def test_an_older_leader_is_fenced_off() -> None:
    h = Harness()
    h.execute(0, term=5)
    stale = h.compensate(0, term=4)
    assert stale.actions == () and stale.persist == ()


def test_an_escalated_step_is_kept_until_its_saga_is_over() -> None:
    """Forgotten early, a CompensateStep resent by a leader that never logged the
    escalation would find no record and answer "never ran here" (simulator seed 316)."""
    h = Harness()
    h.execute(0)
    h.finish(0)
    h.compensate(0)
    h.compensated(0, ok=False)
    assert h.durable(h.core.expire(h.now_ms + 10 * h.core.record_retention_ms)).persist == ()
    again = h.compensate(0)
    assert again.actions == () and outcome(again) is StepOutcome.ESCALATED
    over = Decide(round_id="s", kind=Kind.SAGA, participant_id="p", decision=Decision.ABORT, term=1)
    h.durable(h.core.on_decide(over, h.now_ms))
    assert h.disk["s#0"].state is StepState.SETTLED
    forgotten = h.durable(h.core.expire(h.now_ms + h.core.record_retention_ms))
    assert forgotten.persist == (ForgetStep(key="s#0"),)
