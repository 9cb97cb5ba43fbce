"""Saga steps at a participant: the actions an agent offers, with their compensations.

A saga is driven by the cluster (``ConcordClient.run_saga``): it sends ``ExecuteStep``
for one step at a time and, if the saga aborts, ``CompensateStep`` for every step that
may have run, in reverse order. The participant core (participant_sdk/core.py) keeps a
durable record per step and decides *whether* to run something; this module runs it:

    actions = SagaActions()

    @actions.action("charge", compensate=refund)
    def charge(step: StepContext) -> bytes:
        return payments.charge(step.json()["amount"], key=step.idempotency_key)

    Participant("payments", data_dir, coordinators, saga_actions=actions)

Contract of an action (what "exactly once in effect" rests on):
- It is idempotent on ``step.idempotency_key``: after a crash mid-action the step runs
  again with the same key, so the outside world must apply it at most once.
- It raises only when it had no effect (a declined card, a sold-out flight): the step
  is FAILED and nothing is compensated for it. If it cannot tell (a timeout after the
  request left), it raises ``StepOutcomeUnknown``: nothing is recorded and the step is
  run again when the coordinator asks again (or compensated with
  ``outcome_known=False`` if the saga gives up on it).
- What it returns (bytes, str, or None) is the step's result: kept by the cluster and
  handed to the compensation as ``step.result``.

Contract of a compensation: idempotent on the same key, and it tolerates an effect that
never happened when ``step.outcome_known`` is False. An optional ``verify`` runs after
it and checks the outside world; False escalates the step at once (a verify that
raises counts as a failed attempt of the compensation). It is retried with backoff up to
``compensation_attempts_max`` times; after that the step is ESCALATED: the cluster
holds the saga and shows it in ``concord txn show`` until an operator settles it
(``concord txn resolve SAGA --step N``). It never loops forever.

Actions run on a bounded pool of worker threads (``workers_max``), never on the gRPC
event loop; a coordinator message that arrives while its step runs is answered
RUNNING.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from participant_sdk.core import ParticipantCore, RunCompensation, RunStep, Step

__all__ = ["SagaActions", "StepContext", "StepOutcomeUnknown"]

log = logging.getLogger(__name__)

RESULT_BYTES_MAX = 65_536  # the cluster's step_payload_bytes_max


class StepOutcomeUnknown(Exception):
    """Raised by an action that cannot tell whether its effect happened."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StepContext:
    saga_id: str
    step: int
    action: str
    payload: bytes
    result: bytes = b""  # for a compensation: what the action returned
    outcome_known: bool = True  # for a compensation: False if the action was interrupted

    @property
    def idempotency_key(self) -> str:
        return f"{self.saga_id}/{self.step}"

    def json(self) -> Any:
        """The payload decoded as JSON (None when empty)."""
        return json.loads(self.payload) if self.payload else None


Run = Callable[[StepContext], bytes | str | None]
Compensate = Callable[[StepContext], None]
F = TypeVar("F", bound=Run)


Verify = Callable[[StepContext], bool]


@dataclass(frozen=True, slots=True)
class SagaAction:
    name: str
    run: Run
    compensate: Compensate
    verify: Verify | None = None


class SagaActions:
    """The saga actions one participant offers, by name."""

    def __init__(
        self,
        *,
        compensation_attempts_max: int = 5,
        compensation_backoff_initial_s: float = 0.05,
        compensation_backoff_max_s: float = 2.0,
        workers_max: int = 4,
    ) -> None:
        if compensation_attempts_max < 1 or workers_max < 1:
            raise ValueError("compensation_attempts_max and workers_max must be at least 1")
        self.compensation_attempts_max = compensation_attempts_max
        self.compensation_backoff_initial_s = compensation_backoff_initial_s
        self.compensation_backoff_max_s = compensation_backoff_max_s
        self.workers_max = workers_max
        self._actions: dict[str, SagaAction] = {}

    def action(
        self, name: str, *, compensate: Compensate, verify: Verify | None = None
    ) -> Callable[[F], F]:
        """Declare an action and its compensation in one line (a decorator).
        ``verify``: after each compensation, does the outside world look undone?"""

        def register(run: F) -> F:
            self.add(name, run, compensate, verify=verify)
            return run

        return register

    def add(
        self, name: str, run: Run, compensate: Compensate, *, verify: Verify | None = None
    ) -> None:
        if not name:
            raise ValueError("a saga action needs a name")
        if name in self._actions:
            raise ValueError(f"saga action {name!r} is declared twice")
        self._actions[name] = SagaAction(name, run, compensate, verify)

    def get(self, name: str) -> SagaAction | None:
        return self._actions.get(name)

    def names(self) -> list[str]:
        return sorted(self._actions)


# Makes a Step from the running core and the participant's clock; the participant
# runs it under its lock and makes it durable.
Finish = Callable[[Callable[[ParticipantCore, int], Step]], None]


class SagaRunner:
    """Runs RunStep / RunCompensation actions on worker threads and reports back."""

    def __init__(self, actions: SagaActions | None, participant_id: str, finish: Finish):
        self.actions = actions or SagaActions()
        self.participant_id = participant_id
        self._finish = finish
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(
            max_workers=self.actions.workers_max, thread_name_prefix=f"saga-{participant_id}"
        )

    def submit(self, action: RunStep | RunCompensation) -> None:
        if self._stopping.is_set():
            return  # the step stays RUNNING/COMPENSATING: it runs again after a restart
        if isinstance(action, RunStep):
            self._pool.submit(self._guarded, self._run_step, action)
        else:
            self._pool.submit(self._guarded, self._run_compensation, action)

    def stop(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _guarded(fn: Callable[[Any], None], action: Any) -> None:
        try:
            fn(action)
        except Exception:  # pragma: no cover - a bug here must not kill the worker silently
            log.exception("saga worker failed on %r", action)

    def _run_step(self, action: RunStep) -> None:
        spec = self.actions.get(action.action)
        context = StepContext(
            saga_id=action.saga_id, step=action.step, action=action.action, payload=action.payload
        )
        result, reason, ok = b"", "", False
        if spec is None:
            reason = f"no saga action {action.action!r} at {self.participant_id}"
        else:
            try:
                result, ok = _as_bytes(spec.run(context)), True
            except StepOutcomeUnknown as unknown:
                log.warning(
                    "saga %s step %d: outcome unknown (%s)", action.saga_id, action.step, unknown
                )
                self._finish(
                    lambda core, now: core.step_outcome_unknown(action.saga_id, action.step)
                )
                return
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
        if len(result) > RESULT_BYTES_MAX:
            # It ran: the effect stands; only its result is too large to keep.
            reason = f"result of {len(result)} bytes dropped (limit {RESULT_BYTES_MAX})"
            result = b""
        self._finish(
            lambda core, now: core.step_finished(
                action.saga_id, action.step, ok=ok, result=result, reason=reason, now_ms=now
            )
        )

    def _run_compensation(self, action: RunCompensation) -> None:
        spec = self.actions.get(action.action)
        context = StepContext(
            saga_id=action.saga_id,
            step=action.step,
            action=action.action,
            payload=action.payload,
            result=action.result,
            outcome_known=action.outcome_known,
        )
        ok, reason = False, f"no saga action {action.action!r} at {self.participant_id}"
        backoff_s = self.actions.compensation_backoff_initial_s
        attempts = 0
        while spec is not None and attempts < self.actions.compensation_attempts_max:
            attempts += 1
            try:
                spec.compensate(context)
                ok, reason = True, ""
                if spec.verify is not None and not spec.verify(context):
                    # Reported and escalated, never hidden; not retried blindly either.
                    ok, reason = False, "verification after compensation failed"
                break
            except Exception as error:
                reason = (
                    f"compensation failed {attempts} times, last: {type(error).__name__}: {error}"
                )
                log.warning("saga %s step %d: %s", action.saga_id, action.step, reason)
            if self._stopping.wait(backoff_s):
                return  # stopping: COMPENSATING stays durable and runs again after a restart
            backoff_s = min(backoff_s * 2, self.actions.compensation_backoff_max_s)
        self._finish(
            lambda core, now: core.compensation_finished(
                action.saga_id, action.step, ok=ok, reason=reason, now_ms=now
            )
        )


def _as_bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a saga action returns bytes, str or None, not {type(value).__name__}")
