"""The history of one simulated run: every fact the checkers judge, in time order.

Facts are recorded where they become true: a coordinator node's decision when the
node applies it, a participant's vote and outcome when they are durable (synced), a
client's outcome when the client reports it to its user, a saga step's effect (and
its compensation's) when it happens in the outside world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Kinds of fact.
DECIDED = "decided"  # a coordinator node applied a decision: value COMMIT/ABORT
VOTED = "voted"  # a participant's vote became durable: value yes/no
P_DECIDED = "p_decided"  # a participant's outcome became durable: value COMMIT/ABORT
APPLIED_DELTA = "applied_delta"  # a participant applied a committed transfer: value delta
RESTORED = "restored"  # a participant restored checkpoint value (rollback executed)
CLIENT = "client"  # a client reported an outcome: value COMMITTED/ABORTED/UNKNOWN
VIOLATION = "violation"  # a participant refused a coordinator message that broke the protocol
FAULT = "fault"  # a fault started or healed: value describes it
LEADER = "leader"  # a node became leader: value term
BALANCES = "balances"  # the bank's total at a quiet point: value total
# Sagas.
SAGA_PLAN = "saga_plan"  # a client asked for a saga: value the participant of each step
STEP = "step"  # a participant's step record changed: value its state (trace only)
STEP_CALL = "step_call"  # a step's action called the outside world: value step, result=...
STEP_EFFECT = "step_effect"  # a step's action changed the outside world: value step
STEP_UNDONE = "step_undone"  # a compensation ran to its end: value step, effect=undone|nothing


@dataclass(frozen=True, slots=True)
class Fact:
    time_ms: int
    kind: str
    node: str
    round_id: str = ""
    value: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        head = f"{self.time_ms / 1000:9.3f}s {self.node:<7} {self.kind:<13}"
        return f"{head} {self.round_id} {self.value} {extra}".rstrip()


class History:
    def __init__(
        self, clock: Callable[[], int], trace: Callable[[str], None] | None = None
    ) -> None:
        self._clock = clock
        self.trace = trace
        self.facts: list[Fact] = []

    def record(
        self, kind: str, node: str, round_id: str = "", value: str = "", **extra: str
    ) -> None:
        fact = Fact(self._clock(), kind, node, round_id, value, extra)
        self.facts.append(fact)
        if self.trace is not None:
            self.trace(fact.line())

    def note(self, node: str, text: str) -> None:
        """A trace-only line (message traffic); not part of what checkers read."""
        if self.trace is not None:
            self.trace(f"{self._clock() / 1000:9.3f}s {node:<7} {text}")

    def of(self, kind: str) -> list[Fact]:
        return [f for f in self.facts if f.kind == kind]
