"""The leader's side of tracing (coordinator/tracing.py): which trace each round
belongs to, and the open prepare and decide span per participant.

Only built when tracing is on (``CoordinatorNode.traces`` is None otherwise). All of
it is leader-local and lost on failover: no trace context is replicated, so a new
leader learns a round's trace when a client call about it (a retried Commit, an
Abort) reaches it, and until then sends that round's messages without one.

Spans, all in the trace of the request that began or committed the round:

- ``concord.coordinator.prepare`` per participant: first Prepare sent .. its vote (or
  refusal) came back; resends add to ``concord.sends``;
- ``concord.coordinator.decide`` per participant: first Decide sent .. acknowledged;
- ``concord.coordinator.decision``: the moment the decision applied on the leader.

Methods run on the node's event loop and never raise into the driver (the tracer
swallows its own errors; what is here is dict bookkeeping).
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from coordinator.core.messages import (
    AckReply,
    Decide,
    FromParticipant,
    Prepare,
    Refused,
    ToParticipant,
    VoteReply,
)

if TYPE_CHECKING:  # never imported at run time: OpenTelemetry loads only when tracing is on
    from coordinator.tracing_otel import Tracer

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

TRACED_ROUNDS_MAX = 10_000  # rounds whose trace the leader remembers; the oldest go first


def _never_raises(default: Callable[[], Any] = lambda: None) -> Callable[[F], F]:
    """A bug here must not stop the driver from sending: log it once, carry on."""

    def wrap(method: F) -> F:
        warned = False

        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            nonlocal warned
            try:
                return method(*args, **kwargs)
            except Exception:
                if not warned:
                    warned = True
                    log.warning("tracing: %s failed; ignored", method.__name__, exc_info=True)
                return default()

        return guarded  # type: ignore[return-value]

    return wrap


@dataclass
class _Open:
    phase: str  # "prepare" | "decide"
    span: Any
    traceparent: str
    sends: int = 0


@dataclass
class _Round:
    traceparent: str
    open: int = 0  # spans open for this round
    decided: bool = False


class RoundTraces:
    def __init__(self, tracer: Tracer, rounds_max: int = TRACED_ROUNDS_MAX) -> None:
        self._tracer = tracer
        self._rounds_max = rounds_max
        self._rounds: collections.OrderedDict[str, _Round] = collections.OrderedDict()
        self._open: dict[tuple[str, str], _Open] = {}

    def __len__(self) -> int:
        return len(self._rounds)

    @_never_raises()
    def remember(self, round_id: str, traceparent: str) -> None:
        """The round's messages belong to the trace of ``traceparent`` from now on."""
        if not round_id or not traceparent:
            return
        known = self._rounds.get(round_id)
        if known is not None:
            known.traceparent = traceparent
            self._rounds.move_to_end(round_id)
            return
        self._rounds[round_id] = _Round(traceparent)
        while len(self._rounds) > self._rounds_max:
            oldest, _ = self._rounds.popitem(last=False)
            self._end_round(oldest, f"forgotten: more than {self._rounds_max} traced rounds")

    @_never_raises(dict)
    def on_send(self, messages: Sequence[ToParticipant]) -> dict[str, str]:
        """Round id -> traceparent to send along with ``messages`` (traced rounds only)."""
        parents: dict[str, str] = {}
        for message in messages:
            known = self._rounds.get(message.round_id)
            if known is None or not isinstance(message, Prepare | Decide):
                continue
            phase = "prepare" if isinstance(message, Prepare) else "decide"
            key = (message.round_id, message.participant_id)
            opened = self._open.get(key)
            if opened is None or opened.phase != phase:
                if opened is not None:  # decided before this participant voted
                    self._close(key, error=f"superseded by {phase}")
                span = self._tracer.start(
                    f"concord.coordinator.{phase}",
                    parent=known.traceparent,
                    attributes=_attributes(message),
                )
                opened = self._open[key] = _Open(phase, span, self._tracer.traceparent(span))
                known.open += 1
            opened.sends += 1
            if opened.traceparent:
                parents[message.round_id] = opened.traceparent
        return parents

    @_never_raises()
    def on_reply(self, reply: FromParticipant) -> None:
        key = (reply.round_id, reply.participant_id)
        opened = self._open.get(key)
        if opened is None:
            return
        match reply:
            case VoteReply() if opened.phase == "prepare":
                self._close(key, attributes={"concord.vote": "YES" if reply.yes else "NO",
                                             "concord.reason": reply.reason})  # fmt: skip
            case AckReply() if opened.phase == "decide":
                self._close(key)
            case Refused():
                self._close(key, error=f"refused: {reply.reason}")
            case _:
                return  # a late reply to an earlier phase

    @_never_raises()
    def on_decided(self, decided: Iterable[Any]) -> None:
        """Decisions applied here (``Applied.decided``): one instant span each."""
        for decision in decided:
            known = self._rounds.get(decision.round_id)
            if known is None:
                continue
            known.decided = True
            span = self._tracer.start(
                "concord.coordinator.decision",
                parent=known.traceparent,
                attributes={
                    "concord.round_id": decision.round_id,
                    "concord.kind": decision.kind.name,
                    "concord.decision": decision.decision.name,
                    "concord.reason": decision.reason,
                },
            )
            self._tracer.end(span)

    @_never_raises()
    def reset(self, why: str) -> None:
        """Leadership lost or changed: end every open span, forget every round."""
        for key in list(self._open):
            self._close(key, error=why)
        self._rounds.clear()

    # ------------------------------------------------------------------ internals

    def _close(
        self, key: tuple[str, str], *, error: str = "", attributes: Mapping[str, Any] | None = None
    ) -> None:
        opened = self._open.pop(key)
        self._tracer.end(
            opened.span,
            error=error,
            attributes={"concord.sends": opened.sends, **(attributes or {})},
        )
        known = self._rounds.get(key[0])
        if known is None:
            return
        known.open -= 1
        if known.decided and known.open == 0 and opened.phase == "decide":
            del self._rounds[key[0]]  # every decide sent was acknowledged: done here

    def _end_round(self, round_id: str, why: str) -> None:
        for key in [k for k in self._open if k[0] == round_id]:
            opened = self._open.pop(key)
            self._tracer.end(opened.span, error=why)


def _attributes(message: Prepare | Decide) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "concord.round_id": message.round_id,
        "concord.participant_id": message.participant_id,
        "concord.kind": message.kind.name,
        "concord.term": message.term,
    }
    decision = getattr(message, "decision", None)
    if decision is not None:
        attributes["concord.decision"] = decision.name
    return attributes


async def traced(
    tracer: Tracer,
    name: str,
    parent: str,
    attributes: Mapping[str, Any],
    run: Callable[[str], Awaitable[R]],
) -> R:
    """``run(traceparent of a new span under parent)``, inside that span."""
    span = tracer.start(name, parent=parent, attributes=attributes)
    try:
        result = await run(tracer.traceparent(span))
    except BaseException as error:
        tracer.end(span, error=f"{type(error).__name__}: {error}"[:256])
        raise
    tracer.end(span)
    return result
