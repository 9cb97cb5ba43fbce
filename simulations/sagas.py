"""Sagas in the tier-1 simulator: the outside world their steps act on, the plan a
client gives each step, and the operator who settles escalated compensations.

The outside world is what a saga step changes and a crash cannot undo: a booking
service, a payment API. It keeps, per step (participant, saga, step), how many times
the step's effect was applied and undone, and records each change as a fact the
checkers read:

- an action applies its effect idempotently by its idempotency key (the service
  remembers keys it has seen), so a rerun after a crash applies nothing new;
- a compensation is idempotent by its idempotency key too (the step's key, as the
  SDK hands it: ``StepContext.idempotency_key``): a repeat with a key the service has
  seen does nothing. A compensation with a key it has not seen is a new one and has
  its effect, even on a step already undone (a second refund). When the step returned
  (``outcome_known``) it undoes without looking, as a refund of a known charge does;
  when the outcome is unknown it looks first and tolerates an effect that never
  happened. Every call is counted per step (``compensation_calls``) and each new one
  recorded with its count, so a checker sees a step compensated twice in effect, not
  only the net effect;
- a compensation may fail a few times before it works, or fail until the
  participant gives up and escalates; the operator (``workload.Operator``) then
  undoes the effect by hand and resolves the step (``ResolveStep``).

What each step does is decided by the client and travels in the step's payload
(``StepPlan``): whether its action fails, whether it is slow (outlives the step
timeout), how many times its compensation fails first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from simulations import history as h
from simulations.history import History


@dataclass(frozen=True, kw_only=True, slots=True)
class StepPlan:
    """What one saga step will do, chosen by the client (deterministic per seed)."""

    fails: bool = False  # the action raises: no effect
    slow_ms: int = 0  # the action takes this long (0: its usual few ms)
    undo_failures: int = 0  # the compensation fails this many times before it works

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: bytes) -> StepPlan:
        return cls(**json.loads(payload)) if payload else cls()


def step_name(participant_id: str, saga_id: str, step: int) -> str:
    return f"{participant_id}/{saga_id}#{step}"


class OutsideWorld:
    """The services saga steps act on. Survives every crash; nothing here is undone by
    a restart. Membership checks only (no iteration over sets), so runs replay."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.net: dict[str, int] = {}  # step name -> effects applied minus undone
        self._keys_seen: set[str] = set()  # idempotency keys of applied actions
        self._undo_keys_seen: set[str] = set()  # idempotency keys of compensations
        self.compensation_calls: dict[str, int] = {}  # step name -> calls, repeats too
        self._failures_left: dict[str, int] = {}

    def call(
        self, participant_id: str, saga_id: str, step: int, idempotency_key: str, *, fails: bool
    ) -> None:
        """The action reaches the service: refused (no effect), or its effect, once per
        idempotency key."""
        record = self.history.record
        if fails:
            result = "refused"
        elif idempotency_key in self._keys_seen:
            result = "repeat"
        else:
            result = "applied"
            self._keys_seen.add(idempotency_key)
            name = step_name(participant_id, saga_id, step)
            self.net[name] = self.net.get(name, 0) + 1
        record(h.STEP_CALL, participant_id, saga_id, str(step), result=result)
        if result == "applied":
            record(h.STEP_EFFECT, participant_id, saga_id, str(step))

    def compensation_fails(
        self, participant_id: str, saga_id: str, step: int, plan: StepPlan
    ) -> bool:
        """One attempt of the compensation: does the service refuse it this time?"""
        name = step_name(participant_id, saga_id, step)
        left = self._failures_left.setdefault(name, plan.undo_failures)
        if left <= 0:
            return False
        self._failures_left[name] = left - 1
        return True

    def undo(
        self,
        participant_id: str,
        saga_id: str,
        step: int,
        idempotency_key: str,
        *,
        outcome_known: bool,
        by: str,
    ) -> None:
        """The compensation reaches the service: its effect once per idempotency key."""
        name = step_name(participant_id, saga_id, step)
        calls = self.compensation_calls[name] = self.compensation_calls.get(name, 0) + 1
        if idempotency_key in self._undo_keys_seen:
            return  # the service recognises it as done
        self._undo_keys_seen.add(idempotency_key)
        if not outcome_known and self.net.get(name, 0) <= 0:
            effect = "nothing"  # looked first: no effect left to undo
        else:
            self.net[name] = self.net.get(name, 0) - 1
            effect = "undone"
        self.history.record(
            h.STEP_UNDONE, participant_id, saga_id, str(step), effect=effect, by=by, call=str(calls)
        )
