"""The effect log: effectful tools, their compensations, exactly once in effect.

Theory of operation
-------------------
An agent declares each effectful tool with its class in one line::

    @effects.compensable(compensate=refund)      # runs now; undone by refund on abort
    @effects.bufferable()                        # held; runs only after COMMIT
    @effects.irreversible()                      # held; runs after COMMIT and approve()

Every call is an *effect* with an idempotency key (``idempotency_key=`` at the call,
or a fresh one), the transaction of the enclosing ``effects.transaction(txn_id)``
block and the current checkpoint generation. Its record moves through:

    compensable:  INTENT -> DONE -> (COMPENSATING -> COMPENSATED | ESCALATED)
                  INTENT -> NOT_APPLIED        (the tool raised NotApplied)
    bufferable:   BUFFERED -> (COMMIT) INTENT -> DONE      | (ABORT) DISCARDED
    irreversible: BUFFERED -> (COMMIT) AWAITING_APPROVAL -> (approve) INTENT -> DONE

The rules that make compensation exactly once in effect:

1. **Intent before the act.** INTENT is durable before the tool runs and DONE after
   it returns. A record found in INTENT after a crash (or after the tool raised
   anything but ``NotApplied``) has an *unknown outcome*.
2. **Never compensate what did not happen.** A tool that raises ``NotApplied`` is
   NOT_APPLIED and never compensated. An unknown outcome is resolved by the tool's
   ``probe`` when it has one (did the effect with this key happen?); without a probe
   it is compensated with ``Effect.outcome_known`` False, and the compensation must
   then be a no-op for a key the outside world never saw.
3. **Compensations are idempotent by key.** A compensation is called with the
   effect's idempotency key; COMPENSATING is durable before each attempt and
   COMPENSATED after. A crash between the two re-runs it with the same key on
   ``recover()``, so the compensation must be idempotent by that key (like a refund
   API that accepts an idempotency key). At least once + idempotent = exactly once
   in effect.
4. **Bounded retries.** A compensation that raises is retried with exponential
   backoff up to ``compensation_attempts_max`` attempts, then ESCALATED: visible in
   ``escalations()`` and ``status()`` until an operator ``resolve``s it. An escalated
   effect does not block the others' compensation.
5. **Reverse order.** On abort or restore, compensations run newest effect first.
6. **Irreversible is never retried blindly.** An irreversible effect found in INTENT
   is resolved by its probe, or ESCALATED. Bufferable tools are re-run with the same
   key after a crash (they must be idempotent by key, or have a probe).

Decisions and restores are made durable first (one write marking every affected
record), then acted on; ``recover()`` after a restart finishes whatever was marked.
The records and where they are kept (``LmdbEffectBacking``: every write one synced
LMDB transaction; ``MemoryEffectBacking``: the same semantics for tests) are in
participant_sdk/storage/effect_records.py.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import inspect
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from coordinator.core.types import Decision
from participant_sdk.storage.effect_records import (
    FINAL,
    Effect,
    EffectBacking,
    EffectClass,
    EffectError,
    EffectLimitError,
    EffectStatus,
    LmdbEffectBacking,
    MemoryEffectBacking,
    effects_dir,
    escalations,
)

__all__ = [
    "Effect",
    "EffectBacking",
    "EffectClass",
    "EffectError",
    "EffectLimitError",
    "EffectLog",
    "EffectStatus",
    "LmdbEffectBacking",
    "MemoryEffectBacking",
    "NotApplied",
    "effects_dir",
    "escalations",
]


ABORTED_TXNS_KEPT_MAX = 10_000  # aborted txn ids remembered to refuse late effects


class NotApplied(Exception):
    """Raised by a tool when it is certain its effect did not happen."""


# ---------------------------------------------------------------------- the log


@dataclass(frozen=True, slots=True)
class _Tool:
    name: str
    fn: Callable[..., Any]
    effect_class: EffectClass
    compensate: Callable[[Effect], Any] | None
    probe: Callable[[Effect], bool] | None
    takes_key: bool
    verify: Callable[[Effect], bool] | None = None


@dataclass(slots=True)
class _Counters:
    compensations_run: int = 0
    compensation_failures: int = 0
    verifications_failed: int = 0
    executed: int = 0
    deduplicated: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class EffectLog:
    def __init__(
        self,
        backing: EffectBacking | None = None,
        *,
        compensation_attempts_max: int = 5,
        backoff_initial_ms: int = 50,
        backoff_max_ms: int = 5_000,
        open_effects_max: int = 10_000,
        finished_effects_kept_max: int = 1_000,
        args_bytes_max: int = 64 << 10,
        sleep: Callable[[float], None] = time.sleep,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if compensation_attempts_max < 1:
            raise ValueError("compensation_attempts_max must be at least 1")
        self.backing = backing or MemoryEffectBacking()
        self.compensation_attempts_max = compensation_attempts_max
        self.backoff_initial_ms = backoff_initial_ms
        self.backoff_max_ms = backoff_max_ms
        self.open_effects_max = open_effects_max
        self.finished_effects_kept_max = finished_effects_kept_max
        self.args_bytes_max = args_bytes_max
        self._sleep = sleep
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._lock = threading.RLock()
        self._tools: dict[str, _Tool] = {}
        self._effects: dict[int, Effect] = {e.seq: e for e in self.backing.load()}
        self._by_key = {e.key: e.seq for e in self._effects.values()}
        self._next_seq = max(self._effects, default=0) + 1
        self._txn: contextvars.ContextVar[str] = contextvars.ContextVar("txn", default="")
        self.generation = 0  # set by the reversion engine after each save or restore
        self.counters = _Counters()
        # Effects whose tool runs right now: a decision that dooms one meanwhile leaves
        # its compensation to the call, once the tool has returned.
        self._running: set[int] = set()
        # Transactions aborted here lately (bounded): an effect called for one is
        # refused before its tool runs (the barrier, as for a late Prepare).
        self._aborted: collections.OrderedDict[str, None] = collections.OrderedDict()

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], **options: Any) -> EffectLog:
        """The LMDB-backed log of a participant data dir."""
        return cls(LmdbEffectBacking(effects_dir(data_dir)), **options)

    def close(self) -> None:
        self.backing.close()

    # ------------------------------------------------------------ declaring tools

    def compensable(
        self,
        *,
        compensate: Callable[[Effect], Any],
        probe: Callable[[Effect], bool] | None = None,
        name: str | None = None,
        verify: Callable[[Effect], bool] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``verify(effect)``, if given, runs after each successful compensation and
        checks the outside world (e.g. the refund is visible); False or an exception
        ESCALATES the effect: a failed verification is never hidden."""
        return self._declare(EffectClass.COMPENSABLE, compensate, probe, name, verify)

    def bufferable(
        self, *, probe: Callable[[Effect], bool] | None = None, name: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._declare(EffectClass.BUFFERABLE, None, probe, name)

    def irreversible(
        self, *, probe: Callable[[Effect], bool] | None = None, name: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._declare(EffectClass.IRREVERSIBLE, None, probe, name)

    def _declare(
        self,
        effect_class: EffectClass,
        compensate: Callable[[Effect], Any] | None,
        probe: Callable[[Effect], bool] | None,
        name: str | None,
        verify: Callable[[Effect], bool] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            tool_name = name or f"{fn.__module__}.{fn.__qualname__}"
            takes_key = "idempotency_key" in inspect.signature(fn).parameters
            self._tools[tool_name] = _Tool(
                tool_name, fn, effect_class, compensate, probe, takes_key, verify
            )

            @functools.wraps(fn)
            def call(*args: Any, idempotency_key: str | None = None, **kwargs: Any) -> Any:
                return self._call(tool_name, args, kwargs, idempotency_key)

            call.effect_name = tool_name  # type: ignore[attr-defined]
            return call

        return decorate

    @contextlib.contextmanager
    def transaction(self, txn_id: str) -> Iterator[None]:
        """Effects called inside belong to ``txn_id`` (``on_decision`` acts on them)."""
        token = self._txn.set(txn_id)
        try:
            yield
        finally:
            self._txn.reset(token)

    # ------------------------------------------------------------ calling

    def _call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], key: str | None
    ) -> Any:
        tool = self._tools[name]
        key = key or uuid.uuid4().hex
        with self._lock:
            txn_id = self._txn.get()
            if txn_id and txn_id in self._aborted:
                raise EffectError(
                    f"{name}: transaction {txn_id!r} is already aborted here; the effect "
                    "was not run"
                )
            existing = self._by_key.get(key)
            if existing is not None:
                effect = self._effects[existing]
                if effect.name != name:
                    raise EffectError(
                        f"idempotency key {key!r} belongs to {effect.name!r}, not {name!r}"
                    )
                self.counters.deduplicated += 1
                if effect.status is EffectStatus.DONE:
                    return effect.result
                if effect.status is not EffectStatus.INTENT:
                    return None
                # INTENT: a retry of a call whose outcome is unknown: run it again
                # with the same key (the tool dedupes by key) below.
            else:
                encoded = json.dumps([list(args), kwargs])
                if len(encoded) > self.args_bytes_max:
                    raise EffectLimitError(
                        f"{name}: arguments are {len(encoded)} bytes > args_bytes_max="
                        f"{self.args_bytes_max}"
                    )
                open_count = sum(1 for e in self._effects.values() if e.status not in FINAL)
                if open_count >= self.open_effects_max:
                    raise EffectLimitError(
                        f"{open_count} open effects = open_effects_max={self.open_effects_max}: "
                        "finish transactions (decide them) before new effects"
                    )
                status = (
                    EffectStatus.INTENT
                    if tool.effect_class is EffectClass.COMPENSABLE
                    else EffectStatus.BUFFERED
                )
                self._next_seq += 1
                effect = Effect(
                    seq=self._next_seq - 1,
                    key=key,
                    name=name,
                    effect_class=tool.effect_class,
                    txn_id=self._txn.get(),
                    generation=self.generation,
                    args=tuple(args),
                    kwargs=dict(kwargs),
                    status=status,
                    updated_ms=self._clock_ms(),
                )
                self._persist([effect])
                if status is EffectStatus.BUFFERED:
                    return None
        return self._execute(effect, tool)

    def _execute(self, effect: Effect, tool: _Tool) -> Any:
        """Run the tool once for a record durably in INTENT. A decision may doom the
        effect while the tool runs (``recover`` leaves running effects alone): the
        outcome is then written onto the current record and compensated here."""
        kwargs = dict(effect.kwargs)
        if tool.takes_key:
            kwargs["idempotency_key"] = effect.key
        with self._lock:
            self._running.add(effect.seq)
        try:
            result = tool.fn(*effect.args, **kwargs)
            json.dumps(result)  # a result that cannot be stored is a bug in the tool
        except NotApplied as error:
            self._settle(effect.seq, status=EffectStatus.NOT_APPLIED, error=str(error))
            raise
        except Exception as error:
            self._settle(effect.seq, outcome_known=False, error=f"{type(error).__name__}: {error}")
            raise
        self.counters.executed += 1
        self._settle(effect.seq, status=EffectStatus.DONE, result=result, error="")
        return result

    def _settle(self, seq: int, **changes: Any) -> None:
        with self._lock:
            self._running.discard(seq)
            current = self._effects[seq]
            if current.status is not EffectStatus.INTENT:
                return  # finished meanwhile (a decision found it NOT_APPLIED by probe)
            if current.doomed and changes.get("status") is EffectStatus.NOT_APPLIED:
                changes["doomed"] = False  # nothing happened: nothing to undo
            current = replace(current, **changes)
            self._persist([current])
        if current.doomed:
            self._compensate(current)  # aborted while the tool ran

    # ------------------------------------------------------------ 2PC and restore

    def on_decision(self, txn_id: str, decision: Decision) -> None:
        """COMMIT: run buffered effects, irreversible ones once approved. ABORT:
        discard buffered effects and compensate the executed ones, newest first.
        Idempotent; a crash part-way is finished by ``recover()``."""
        with self._lock:
            if decision is Decision.ABORT:
                self._aborted[txn_id] = None
                while len(self._aborted) > ABORTED_TXNS_KEPT_MAX:
                    self._aborted.popitem(last=False)
            mine = [e for e in self._effects.values() if e.txn_id == txn_id]
            marked = []
            for e in mine:
                if decision is Decision.COMMIT and not e.committed:
                    status = e.status
                    if (
                        e.effect_class is EffectClass.IRREVERSIBLE
                        and status is EffectStatus.BUFFERED
                    ):
                        status = EffectStatus.AWAITING_APPROVAL
                    marked.append(replace(e, committed=True, status=status))
                elif decision is Decision.ABORT and e.status not in FINAL and not e.doomed:
                    if e.status in (EffectStatus.BUFFERED, EffectStatus.AWAITING_APPROVAL):
                        marked.append(replace(e, status=EffectStatus.DISCARDED))
                    elif e.effect_class is EffectClass.COMPENSABLE:
                        marked.append(replace(e, doomed=True))
            if marked:
                self._persist(marked)
        self.recover()

    def on_restore(self, generation: int, until: int | None = None) -> None:
        """The agent's state went back to checkpoint ``generation``: compensate every
        effect called at or after it (newest first), discard buffered ones. ``until``
        (the generation of the restore's own record) spares the effects called after
        the restore: redone after a restart, the restore must not undo them too."""
        with self._lock:
            marked = []
            for e in self._effects.values():
                if e.generation < generation or e.status in FINAL or e.doomed:
                    continue
                if until is not None and e.generation >= until:
                    continue
                if e.status in (EffectStatus.BUFFERED, EffectStatus.AWAITING_APPROVAL):
                    marked.append(replace(e, status=EffectStatus.DISCARDED))
                elif e.effect_class is EffectClass.COMPENSABLE:
                    marked.append(replace(e, doomed=True))
                elif e.status is EffectStatus.DONE:  # irreversible or bufferable: done for good
                    marked.append(
                        replace(
                            e,
                            status=EffectStatus.ESCALATED,
                            error=f"restore to generation {generation}: a {e.effect_class.value} "
                            "effect cannot be undone",
                        )
                    )
            if marked:
                self._persist(marked)
        self.recover()

    def approve(self, key: str) -> Any:
        """Allow an irreversible effect; it runs now if its txn committed (else at
        COMMIT)."""
        with self._lock:
            effect = self.get(key)
            if effect.effect_class is not EffectClass.IRREVERSIBLE:
                raise EffectError(
                    f"effect {key!r} is {effect.effect_class.value}, not irreversible"
                )
            if not effect.approved:
                self._persist([replace(effect, approved=True)])
        self.recover()
        return self.get(key).result

    def recover(self) -> None:
        """Finish what durable records ask for: compensations marked (newest first),
        buffered effects of committed txns, approved irreversible ones. Call after a
        restart, once the tools are declared again."""
        for effect in sorted(self.pending(), key=lambda e: -e.seq):
            if effect.doomed and effect.seq not in self._running:
                self._compensate(effect)
        for effect in sorted(self.pending(), key=lambda e: e.seq):
            if not effect.committed or effect.doomed:
                continue
            if effect.effect_class is EffectClass.BUFFERABLE:
                self._run_committed(effect, retry_unknown=True)
            elif effect.effect_class is EffectClass.IRREVERSIBLE and effect.approved:
                self._run_committed(effect, retry_unknown=False)
        self._forget_finished()

    def resume(self, decision_of: Callable[[str], Decision | None]) -> None:
        """After a restart: a decision made durable by the participant just before a
        crash may not have reached ``on_decision``. For every transaction with open
        effects, ask ``decision_of`` (e.g. from ``Participant.record``) and apply it."""
        for txn_id in sorted({e.txn_id for e in self.pending() if e.txn_id}):
            decision = decision_of(txn_id)
            if decision is not None:
                self.on_decision(txn_id, decision)
        self.recover()

    def _run_committed(self, effect: Effect, *, retry_unknown: bool) -> None:
        tool = self._tool(effect)
        if effect.status is EffectStatus.INTENT:  # outcome unknown (crash or raise)
            if tool.probe is not None:
                if tool.probe(effect):
                    self._persist([replace(effect, status=EffectStatus.DONE, outcome_known=True)])
                    return
            elif not retry_unknown:
                self._escalate(effect, "irreversible effect with unknown outcome and no probe")
                return
        elif effect.status not in (EffectStatus.BUFFERED, EffectStatus.AWAITING_APPROVAL):
            return
        effect = replace(effect, status=EffectStatus.INTENT)
        self._persist([effect])
        for attempt in range(1, self.compensation_attempts_max + 1):
            try:
                self._execute(self._effects[effect.seq], tool)
                return
            except NotApplied:
                return
            except Exception as error:
                if not retry_unknown:
                    self._escalate(self._effects[effect.seq], f"{type(error).__name__}: {error}")
                    return
                if attempt == self.compensation_attempts_max:
                    self._escalate(self._effects[effect.seq], f"{type(error).__name__}: {error}")
                    return
                self._sleep(self._backoff_s(attempt))

    def _compensate(self, effect: Effect) -> None:
        tool = self._tool(effect)
        # Unknown outcome: never assume it happened; ask the probe when there is one.
        if effect.status is EffectStatus.INTENT and tool.probe is not None:
            if not tool.probe(effect):
                self._persist([replace(effect, status=EffectStatus.NOT_APPLIED, doomed=False)])
                return
            effect = replace(effect, outcome_known=True)
        if effect.status is EffectStatus.ESCALATED:
            return
        assert tool.compensate is not None, effect
        attempts = effect.attempts
        while True:
            effect = replace(effect, status=EffectStatus.COMPENSATING, attempts=attempts)
            self._persist([effect])  # intent before each attempt
            try:
                tool.compensate(effect)
            except Exception as error:
                attempts += 1
                self.counters.compensation_failures += 1
                message = f"{type(error).__name__}: {error}"
                if attempts >= self.compensation_attempts_max:
                    self._escalate(
                        replace(effect, attempts=attempts),
                        f"compensation failed {attempts} times "
                        f"(compensation_attempts_max={self.compensation_attempts_max}): {message}",
                    )
                    return
                self._persist([replace(effect, attempts=attempts, error=message)])
                self._sleep(self._backoff_s(attempts))
                continue
            self.counters.compensations_run += 1
            problem = _verification_problem(tool, effect)
            if problem:
                self.counters.verifications_failed += 1
                self._escalate(effect, problem)
                return
            self._persist([replace(effect, status=EffectStatus.COMPENSATED, error="")])
            return

    def _escalate(self, effect: Effect, why: str) -> None:
        self._persist([replace(effect, status=EffectStatus.ESCALATED, error=why)])

    def resolve(self, key: str, note: str = "resolved by an operator") -> None:
        """Close an escalation (an operator handled it by hand)."""
        with self._lock:
            effect = self.get(key)
            if effect.status is not EffectStatus.ESCALATED:
                raise EffectError(f"effect {key!r} is {effect.status.value}, not escalated")
            self._persist([replace(effect, status=EffectStatus.RESOLVED, doomed=False, error=note)])

    # ------------------------------------------------------------ reading

    def get(self, key: str) -> Effect:
        with self._lock:
            seq = self._by_key.get(key)
            if seq is None:
                raise EffectError(f"no effect with idempotency key {key!r} here")
            return self._effects[seq]

    def effects(self, txn_id: str | None = None) -> list[Effect]:
        with self._lock:
            return [
                e for _, e in sorted(self._effects.items()) if txn_id is None or e.txn_id == txn_id
            ]

    def pending(self) -> list[Effect]:
        """Effects not in a final state, ESCALATED excluded (an operator owns those)."""
        with self._lock:
            return [
                e
                for e in self._effects.values()
                if e.status not in FINAL and e.status is not EffectStatus.ESCALATED
            ]

    def escalations(self) -> list[Effect]:
        """Effects that need an operator (shown by ``concord effects`` and, later,
        ``concord txn show``)."""
        with self._lock:
            return [e for e in self.effects() if e.status is EffectStatus.ESCALATED]

    def status(self) -> dict[str, Any]:
        with self._lock:
            counts: dict[str, int] = {}
            for e in self._effects.values():
                counts[e.status.value] = counts.get(e.status.value, 0) + 1
            return {
                "effects": counts,
                "escalations": [
                    {"key": e.key, "name": e.name, "txn_id": e.txn_id, "error": e.error}
                    for e in self.escalations()
                ],
                "compensations_run": self.counters.compensations_run,
                "compensation_failures": self.counters.compensation_failures,
            }

    # ------------------------------------------------------------ mechanics

    def _tool(self, effect: Effect) -> _Tool:
        tool = self._tools.get(effect.name)
        if tool is None:
            raise EffectError(
                f"effect {effect.key!r} needs tool {effect.name!r}, which is not declared in "
                "this process: declare every tool before recover()"
            )
        return tool

    def _backoff_s(self, attempt: int) -> float:
        return min(self.backoff_initial_ms << (attempt - 1), self.backoff_max_ms) / 1000

    def _persist(self, effects: Sequence[Effect], forget: Sequence[int] = ()) -> None:
        now = self._clock_ms()
        stamped = [replace(e, updated_ms=now) for e in effects]
        with self._lock:
            self.backing.write(stamped, forget)
            for e in stamped:
                self._effects[e.seq] = e
                self._by_key[e.key] = e.seq
            for seq in forget:
                gone = self._effects.pop(seq, None)
                if gone is not None:
                    self._by_key.pop(gone.key, None)

    def _forget_finished(self) -> None:
        """Keep at most ``finished_effects_kept_max`` finished records (oldest go):
        the log stays bounded. Their keys are then forgotten too."""
        with self._lock:
            finished = sorted(s for s, e in self._effects.items() if e.status in FINAL)
            excess = len(finished) - self.finished_effects_kept_max
            if excess > 0:
                self._persist([], forget=finished[:excess])


def _verification_problem(tool: _Tool, effect: Effect) -> str:
    """Why the outside world does not look compensated, or "" when it does."""
    if tool.verify is None:
        return ""
    try:
        ok = tool.verify(effect)
    except Exception as error:
        return f"verification after compensation raised {type(error).__name__}: {error}"
    return "" if ok else "verification after compensation failed: the outside world disagrees"
