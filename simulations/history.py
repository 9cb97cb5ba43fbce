"""The history of one simulated run: every fact the checkers judge, in time order.

Facts are recorded where they become true: a coordinator node's decision when the
node applies it, a participant's vote and outcome when they are durable (synced), a
client's outcome when the client reports it to its user, a saga step's effect (and
its compensation's) when it happens in the outside world.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from participant_sdk.isolation import Add, BranchWork, Footprint, Version

# Kinds of fact.
DECIDED = "decided"  # a coordinator node applied a decision: value COMMIT/ABORT
VOTED = "voted"  # a participant's vote became durable: value yes/no
P_DECIDED = "p_decided"  # a participant's outcome became durable: value COMMIT/ABORT
HELD = "held"  # a branch voted YES and holds its footprint: reads=, scans=, writes=, adds=
APPLIED = "applied"  # a participant applied a committed branch: value the seq installed
RESTORED = "restored"  # a participant restored checkpoint value (rollback executed)
READ = "read"  # the leader answered a read of a round: value its decision, undecided or missing
SNAPSHOT = "snapshot"  # a client's read-only txn read every account: value the total
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
# A compensation with a key the outside world had not seen ran to its end: value step,
# effect=undone|nothing, call=how many compensation calls the step had (repeats too).
STEP_UNDONE = "step_undone"


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


# ---------------------------------------------------------------------- branches
# What a branch read and wrote, as text in a fact's extras (sorted: a run must not
# depend on string hashing).


def encode_branch(work: BranchWork) -> dict[str, str]:
    """The extras of a HELD fact: the version of each key read, the commit sequence
    of each prefix scanned, the keys written, and which of them are blind adds."""
    extras = {
        "reads": ";".join(f"{k}@{v.seq}:{v.txn_id}" for k, v in sorted(work.reads.items())),
        "scans": ";".join(f"{p}@{seq}" for p, seq in sorted(work.scans.items())),
        **encode_writes(work.footprint()),
    }
    return {name: text for name, text in extras.items() if text}


def encode_writes(footprint: Footprint) -> dict[str, str]:
    """The keys written, and which of them are blind adds (an add to a key the branch
    did not read: commutative, it does not order itself against another add)."""
    adds = [
        k for k, w in footprint.writes.items() if isinstance(w, Add) and k not in footprint.reads
    ]
    extras = {"writes": encode_keys(footprint.writes), "adds": encode_keys(adds)}
    return {name: text for name, text in extras.items() if text}


def encode_keys(keys: Iterable[str]) -> str:
    return ";".join(sorted(keys))


def decode_keys(text: str) -> list[str]:
    return text.split(";") if text else []


def decode_reads(text: str) -> dict[str, Version]:
    reads = {}
    for item in decode_keys(text):
        key, _, version = item.partition("@")
        seq, _, txn_id = version.partition(":")
        reads[key] = Version(int(seq), txn_id)
    return reads


def decode_scans(text: str) -> dict[str, int]:
    return {p: int(seq) for p, _, seq in (item.rpartition("@") for item in decode_keys(text))}
