"""Prometheus metrics of one coordinator node (`concord serve --metrics HOST:PORT`).

Counted as entries apply on this node (so every node reports the same decisions):
``concord_rounds_decided_total{kind,outcome}`` and
``concord_decision_latency_seconds{kind}``, from the round's begin-applied time to its
decision-applied time, both taken from entry times (the replicated clock), never a
local clock. Read at scrape time: leader and term, commit and applied index and their
difference (Raft apply lag), rounds in flight, in doubt and unacknowledged,
proposals refused by backpressure, and the audit log's health.

Each node has its own ``CollectorRegistry``: several nodes in one process (tests) do
not collide, and nothing registers in the global default registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from coordinator.core.entries import Entry
from coordinator.core.state import Applied, CoordinatorState, Phase, Round, StepStatus
from coordinator.core.types import decision_name
from coordinator.metrics_endpoint import MetricsEndpoint

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def in_doubt(rnd: Round) -> bool:
    """Some participant voted YES and has not acknowledged a decision: it may not
    decide alone (rule 3) and waits for the coordinator."""
    if rnd.phase is Phase.DONE:
        return False
    return any(vote.yes and p not in rnd.acks for p, vote in rnd.votes.items())


def round_counts(state: CoordinatorState) -> tuple[int, int, int, int]:
    """(in flight, in doubt, decided but unacknowledged, escalated: sagas held until an
    operator resolves a compensation, plus escalated effects participants reported)."""
    doubt = unacked = escalated = 0
    for rnd in state.open_rounds():
        doubt += in_doubt(rnd)
        unacked += rnd.phase is Phase.DECIDED
        escalated += any(s.status is StepStatus.ESCALATED for s in rnd.steps)
    escalated += sum(len(notes) for notes in state.escalations.values())
    return state.rounds_inflight(), doubt, unacked, escalated


class CoordinatorMetrics(MetricsEndpoint):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decided = Counter(
            "concord_rounds_decided",
            "Rounds decided by entries applied on this node, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "concord_decision_latency_seconds",
            "Begin applied to decision applied, from entry times",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def on_apply(self, entry: Entry, applied: Applied, read_state: Callable[..., Any]) -> None:
        """Raft thread, after the entry applied."""
        del entry
        for decided in applied.decided:
            kind = decided.kind.value
            self.decided.labels(kind, decision_name(decided.kind, decided.decision)).inc()
            rnd = read_state(lambda s, rid=decided.round_id: s.get(rid))
            if rnd is not None and rnd.decided_ms is not None:
                self.latency.labels(kind).observe(max(0, rnd.decided_ms - rnd.begun_ms) / 1000)

    def watch(self, source: Callable[[], dict[str, float]]) -> None:
        """Gauges read from ``source()`` at every scrape."""
        self.registry.register(_Snapshot(source))


# name -> (help, counter?)
GAUGES: dict[str, tuple[str, bool]] = {
    "concord_is_leader": ("1 if this node is the Raft leader", False),
    "concord_term": ("Current Raft term", False),
    "concord_raft_commit_index": ("Raft commit index", False),
    "concord_raft_applied_index": ("Raft last applied index", False),
    "concord_raft_apply_lag": ("Raft commit index minus applied index", False),
    "concord_rounds_inflight": ("Rounds not yet done", False),
    "concord_rounds_in_doubt": ("Rounds with a YES voter still waiting for a decision", False),
    "concord_rounds_unacknowledged": ("Decided rounds with acknowledgements missing", False),
    "concord_rounds_escalated": (
        "Escalated compensations: sagas held (concord txn resolve) and effects reported",
        False,
    ),
    "concord_proposals_overloaded": ("Proposals refused by backpressure", True),
    "concord_audit_mismatches": ("Re-derived audit records that differed on disk", True),
    "concord_audit_write_failures": ("Audit writes that failed", True),
}


class _Snapshot(Collector):  # type: ignore[misc]
    def __init__(self, source: Callable[[], dict[str, float]]) -> None:
        self._source = source

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        try:
            values = self._source()
        except Exception:  # a scrape must not take the node down
            log.exception("metrics snapshot failed")
            return
        for name, (help_text, counter) in GAUGES.items():
            if name not in values:
                continue
            if counter:
                family: Any = CounterMetricFamily(name, help_text, value=values[name])
            else:
                family = GaugeMetricFamily(name, help_text, value=values[name])
            yield family
