"""What the dashboard shows, as plain values: snapshots of a node's state taken under
its state lock (``*_of`` functions, pure functions of a ``CoordinatorState`` and audit
records), rendered to HTML by coordinator/ui/render.py. Nothing here does I/O."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.state import CoordinatorState, Phase, Round, StepStatus
from coordinator.core.types import Kind, decision_name

ROUNDS_SHOWN_MAX = 200
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class FilterError(ValueError):
    """A filter value the dashboard cannot read; the message says what it takes."""


@dataclass(frozen=True, kw_only=True)
class NodeView:
    node_id: str
    grpc: str
    reachable: bool  # connected to this node over Raft (or this node itself)
    answered: bool  # answered NodeStatus just now
    leader_id: str = ""
    term: int = 0
    commit_index: int = 0
    applied_index: int = 0
    rounds_inflight: int = 0
    rounds_in_doubt: int = 0
    rounds_escalated: int = 0
    audit_head: str = ""
    audit_head_hash: str = ""
    problem: str = ""


@dataclass(frozen=True, kw_only=True)
class TermChange:
    at_ms: int
    leader: str
    term: int
    previous: str


@dataclass(frozen=True, kw_only=True)
class ClusterView:
    node_id: str  # the node serving the page
    leader_id: str
    term: int
    commit_index: int
    applied_index: int
    nodes: tuple[NodeView, ...]
    term_changes: tuple[TermChange, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RoundFilter:
    state: str = ""  # a phase, a decision name, IN_DOUBT or ESCALATED
    kind: str = ""
    participant: str = ""
    age_s: int = 0  # begun within this many seconds; 0: any

    @classmethod
    def parse(cls, query: dict[str, str]) -> RoundFilter:
        state = query.get("state", "").strip().upper()
        kind = query.get("kind", "").strip().upper()
        if kind and kind not in Kind.__members__:
            raise FilterError(f"kind {kind!r}: one of {', '.join(Kind.__members__)}")
        if state and state not in STATES:
            raise FilterError(f"state {state!r}: one of {', '.join(STATES)}")
        return cls(
            state=state,
            kind=kind,
            participant=query.get("participant", "").strip(),
            age_s=parse_age(query.get("age", "")),
        )

    def query(self) -> str:
        parts = [
            f"{k}={v}"
            for k, v in (
                ("state", self.state),
                ("kind", self.kind),
                ("participant", self.participant),
                ("age", f"{self.age_s}s" if self.age_s else ""),
            )
            if v
        ]
        return "&".join(parts)


STATES = (
    "IN_DOUBT",
    "ESCALATED",
    *(p.value for p in Phase),
    "COMMIT",
    "ABORT",
    "EXECUTE",
    "REJECT",
    "KEEP",
    "DISCARD",
    "COMPLETED",
    "COMPENSATED",
)


def parse_age(text: str) -> int:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d`` -> seconds; empty -> 0 (any age)."""
    text = text.strip().lower()
    if not text:
        return 0
    unit = AGE_UNITS.get(text[-1])
    number = text[:-1] if unit else text
    if not number.isdigit() or int(number) <= 0:
        raise FilterError(f"age {text!r}: a whole number of seconds, or with s, m, h or d")
    return int(number) * (unit or 1)


@dataclass(frozen=True, kw_only=True)
class RoundRow:
    round_id: str
    kind: str
    state: str  # the phase while undecided, else the decision's name
    phase: str
    participants: tuple[str, ...]
    begun_ms: int
    decided_ms: int | None
    in_doubt: bool
    escalated: bool
    session_id: str = ""
    reason: str = ""

    @property
    def attention(self) -> bool:
        return self.in_doubt or self.escalated


@dataclass(frozen=True, kw_only=True)
class VoteView:
    participant: str
    voted: bool
    yes: bool = False
    reason: str = ""
    acknowledged: bool = False


@dataclass(frozen=True, kw_only=True)
class StepView:
    index: int
    participant: str
    action: str
    status: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class TimelineEvent:
    at_ms: int
    index: int  # Raft log index of the entry (0: this node's local record)
    event: str
    text: str


@dataclass(frozen=True, kw_only=True)
class RoundDetail:
    round_id: str
    node_id: str  # the node that applied the entries shown
    row: RoundRow | None  # None: forgotten by the cluster (or never begun)
    votes: tuple[VoteView, ...] = ()
    steps: tuple[StepView, ...] = ()
    timeline: tuple[TimelineEvent, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ParticipantRow:
    participant_id: str
    endpoint: str
    last_seen_ms: int | None  # newest round it voted or acknowledged in (retained rounds)
    rounds_open: int
    in_doubt: tuple[str, ...]
    escalations: tuple[str, ...]
    # The leader's stream to it (dialled, or attached by an outbound participant):
    # "open", "none", or "" on a node that does not lead (only the leader holds them).
    stream: str = ""


@dataclass(frozen=True, kw_only=True)
class Verification:
    at_ms: int
    ok: bool
    records: int
    head: str
    problem: str
    local_ok: bool
    local_records: int


@dataclass(frozen=True, kw_only=True)
class AuditView:
    node_id: str
    heads: tuple[NodeView, ...]
    verification: Verification | None


@dataclass(frozen=True, kw_only=True)
class Sample:
    at_ms: int
    decided: float  # rounds decided in all, by entries applied on this node
    latency_sum_s: float
    latency_count: float


@dataclass(frozen=True, kw_only=True)
class Interval:
    end_ms: int
    seconds: float
    decided: int
    per_s: float
    mean_latency_ms: float | None


@dataclass(frozen=True, kw_only=True)
class ThroughputView:
    node_id: str
    intervals: tuple[Interval, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------- from state


def in_doubt(rnd: Round) -> bool:
    """Some participant voted YES and has not acknowledged a decision (the same rule as
    the ``concord_rounds_in_doubt`` metric, coordinator/runtime/metrics.py; a test
    holds the two together: this package does not import the runtime that serves it)."""
    if rnd.phase is Phase.DONE:
        return False
    return any(vote.yes and p not in rnd.acks for p, vote in rnd.votes.items())


def _state_of(rnd: Round) -> str:
    if rnd.decision is None:
        return rnd.phase.value
    return decision_name(rnd.kind, rnd.decision)


def row_of(rnd: Round) -> RoundRow:
    return RoundRow(
        round_id=rnd.round_id,
        kind=rnd.kind.value,
        state=_state_of(rnd),
        phase=rnd.phase.value,
        participants=tuple(rnd.participants),
        begun_ms=rnd.begun_ms,
        decided_ms=rnd.decided_ms,
        in_doubt=in_doubt(rnd),
        escalated=any(s.status is StepStatus.ESCALATED for s in rnd.steps),
        session_id=rnd.session_id,
        reason=rnd.decision_reason,
    )


def _matches(row: RoundRow, flt: RoundFilter, now_ms: int) -> bool:
    if flt.kind and row.kind != flt.kind:
        return False
    if flt.participant and flt.participant not in row.participants:
        return False
    if flt.age_s and row.begun_ms < now_ms - flt.age_s * 1000:
        return False
    if flt.state == "IN_DOUBT":
        return row.in_doubt
    if flt.state == "ESCALATED":
        return row.escalated
    return not flt.state or flt.state in (row.state, row.phase)


def rounds_of(
    state: CoordinatorState, flt: RoundFilter, now_ms: int, limit: int = ROUNDS_SHOWN_MAX
) -> tuple[list[RoundRow], int]:
    """(rounds to show, how many matched): in doubt and escalated first, then newest
    first."""
    rows = [r for r in map(row_of, state.rounds.values()) if _matches(r, flt, now_ms)]
    rows.sort(key=lambda r: (not r.attention, -r.begun_ms, r.round_id))
    return rows[:limit], len(rows)


def detail_of(
    state: CoordinatorState, round_id: str, node_id: str, records: Iterable[dict[str, Any]]
) -> RoundDetail:
    """A round's page: its replicated state (if retained) and its audit records."""
    rnd = state.get(round_id)
    timeline = tuple(timeline_event(r) for r in records)
    if rnd is None:
        return RoundDetail(round_id=round_id, node_id=node_id, row=None, timeline=timeline)
    votes = tuple(
        VoteView(
            participant=p,
            voted=p in rnd.votes,
            yes=p in rnd.votes and rnd.votes[p].yes,
            reason=rnd.votes[p].reason if p in rnd.votes else "",
            acknowledged=p in rnd.acks,
        )
        for p in rnd.participants
    )
    steps = tuple(
        StepView(
            index=i, participant=s.participant_id, action=s.action, status=s.status.value,
            reason=s.reason,
        )
        for i, s in enumerate(rnd.steps)
    )  # fmt: skip
    return RoundDetail(
        round_id=round_id, node_id=node_id, row=row_of(rnd), votes=votes, steps=steps,
        timeline=timeline,
    )  # fmt: skip


def timeline_event(record: dict[str, Any]) -> TimelineEvent:
    """One audit record (coordinator/audit/derive.py) as a line of a round's timeline."""
    event = str(record.get("event", ""))
    detail = record.get("detail") or {}
    who = detail.get("participant", "")
    match event:
        case "vote":
            text = f"{who} voted {'YES' if detail.get('yes') else 'NO'}"
            if detail.get("reason"):
                text += f": {detail['reason']}"
        case "ack":
            text = f"{who} acknowledged"
        case "decision":
            text = f"decided {detail.get('decision', '')}"
            if detail.get("reason"):
                text += f": {detail['reason']}"
        case "txn_begun" | "round_begun" | "saga_begun":
            names = detail.get("participants") or [
                s["participant"] for s in detail.get("steps", [])
            ]
            text = (
                f"begun ({detail.get('kind', event.split('_')[0]).lower()}) with {', '.join(names)}"
            )
        case "step_report":
            text = f"step {detail.get('step')} at {who}: {detail.get('outcome')}"
            if detail.get("reason"):
                text += f" ({detail['reason']})"
        case "step_resolved":
            text = f"step {detail.get('step')} resolved by an operator: {detail.get('note', '')}"
        case "branch_enlisted":
            text = f"{who} enlisted"
        case "commit_requested":
            text = "commit requested: Prepare sent to every participant"
        case "abort_requested":
            by = "an operator" if detail.get("operator") else "the initiator"
            text = f"abort requested by {by}: {detail.get('reason', '')}"
        case _:
            text = ", ".join(f"{k}={v}" for k, v in sorted(detail.items())) if detail else ""
    index = record.get("index")
    return TimelineEvent(
        at_ms=int(record.get("at_ms", 0)),
        index=int(index) if isinstance(index, int) else 0,
        event=event,
        text=text,
    )


def participants_of(
    state: CoordinatorState, streams: Mapping[str, bool] | None = None
) -> list[ParticipantRow]:
    """Every registered participant (and any named by a retained round). ``streams``:
    on the leader, which participants its stream reaches now (ParticipantLinks)."""
    seen: dict[str, int] = {}
    open_count: dict[str, int] = {}
    doubt: dict[str, list[str]] = {}
    for rnd in state.rounds.values():
        when = rnd.decided_ms or rnd.begun_ms
        for p in rnd.participants:
            if p in rnd.votes or p in rnd.acks:
                seen[p] = max(seen.get(p, 0), when)
            if rnd.phase is not Phase.DONE:
                open_count[p] = open_count.get(p, 0) + 1
                vote = rnd.votes.get(p)
                if vote is not None and vote.yes and p not in rnd.acks:
                    doubt.setdefault(p, []).append(rnd.round_id)
    escalated: dict[str, list[str]] = {}
    for p, notes in state.escalations.items():
        escalated.setdefault(p, []).extend(f"{n.round_id} ({n.key})" for n in notes)
    for rnd in state.open_rounds():
        for i, step in enumerate(rnd.steps):
            if step.status is StepStatus.ESCALATED:
                escalated.setdefault(step.participant_id, []).append(
                    f"{rnd.round_id} step {i} ({step.action})"
                )
    names = sorted(set(state.endpoints) | set(open_count) | set(escalated))
    return [
        ParticipantRow(
            participant_id=p,
            endpoint=state.endpoints.get(p, ""),
            last_seen_ms=seen.get(p),
            rounds_open=open_count.get(p, 0),
            in_doubt=tuple(doubt.get(p, ())),
            escalations=tuple(escalated.get(p, ())),
            stream="" if streams is None else ("open" if streams.get(p) else "none"),
        )
        for p in names
    ]


def term_changes_of(records: Iterable[dict[str, Any]], limit: int = 20) -> tuple[TermChange, ...]:
    """The newest ``leader_changed`` records of this node's local audit chain."""
    changes = [
        TermChange(
            at_ms=int(r.get("at_ms", 0)),
            leader=str(r["detail"].get("leader", "")),
            term=int(r["detail"].get("term", 0)),
            previous=str(r["detail"].get("previous") or ""),
        )
        for r in records
        if r.get("event") == "leader_changed" and isinstance(r.get("detail"), dict)
    ]
    return tuple(reversed(changes[-limit:]))


def intervals_of(samples: Iterable[Sample]) -> tuple[Interval, ...]:
    """Throughput and mean decision latency between consecutive samples, newest first."""
    ordered = list(samples)
    out = []
    for before, after in itertools.pairwise(ordered):
        seconds = max(0.001, (after.at_ms - before.at_ms) / 1000)
        decided = max(0, round(after.decided - before.decided))
        count = after.latency_count - before.latency_count
        mean = (after.latency_sum_s - before.latency_sum_s) / count * 1000 if count > 0 else None
        out.append(
            Interval(
                end_ms=after.at_ms, seconds=seconds, decided=decided, per_s=decided / seconds,
                mean_latency_ms=mean,
            )
        )  # fmt: skip
    return tuple(reversed(out))
