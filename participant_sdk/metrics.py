"""Prometheus metrics of one participant (optional; needs ``prometheus-client``).

The SDK counts what its durable audit log records, once each write is durable (the
store's ``audit_listeners``): votes, decisions applied, checkpoints taken and
restored, and the agent-level events recorded with ``Participant.audit_event``
(effects, compensations, triggers, breakers). The number of rounds in doubt is read
from the participant at scrape time.

    p = Participant(...)
    await p.start()
    metrics = ParticipantMetrics("seats")
    metrics.track(p)
    metrics.serve("127.0.0.1:9101")   # optional HTTP exporter; or scrape metrics.registry
    ...
    metrics.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from coordinator.metrics_endpoint import MetricsEndpoint
from participant_sdk.store import AuditEvent, ParticipantStore

__all__ = ["ParticipantMetrics"]


class ParticipantMetrics(MetricsEndpoint):
    def __init__(self, participant_id: str, registry: CollectorRegistry | None = None) -> None:
        self.participant_id = participant_id
        self.registry = registry or CollectorRegistry()
        labels = ["participant"]
        self.votes = Counter(
            "concord_participant_votes", "Votes made durable", [*labels, "vote"],
            registry=self.registry,
        )  # fmt: skip
        self.decisions = Counter(
            "concord_participant_decisions_applied", "Decisions applied, by round kind",
            [*labels, "kind"], registry=self.registry,
        )  # fmt: skip
        self.checkpoints = Counter(
            "concord_participant_checkpoints", "Checkpoints taken", labels, registry=self.registry
        )
        self.restores = Counter(
            "concord_participant_restores", "Checkpoints restored", labels, registry=self.registry
        )
        self.events = Counter(
            "concord_participant_agent_events",
            "Agent-level audit events (effects, compensations, triggers, breakers)",
            [*labels, "event"],
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "concord_participant_breaker_open",
            "1 after a breaker_tripped event, 0 after breaker_reset",
            labels,
            registry=self.registry,
        )
        self.in_doubt = Gauge(
            "concord_participant_in_doubt", "Rounds voted YES here with no decision yet",
            labels, registry=self.registry,
        )  # fmt: skip

    def attach(self, store: ParticipantStore) -> None:
        """Count ``store``'s audit events from now on."""
        store.audit_listeners.append(self.observe)

    def track(self, participant: Any) -> None:
        """Count a started ``Participant``'s events and report its in-doubt rounds."""
        self.attach(participant.store)

        def in_doubt() -> float:
            try:
                return float(len(participant.in_doubt()))
            except Exception:  # stopped: nothing in doubt that this process can see
                return 0.0

        self.in_doubt.labels(self.participant_id).set_function(in_doubt)

    def observe(self, events: Sequence[AuditEvent]) -> None:
        me = self.participant_id
        for event in events:
            if event.event == "vote":
                self.votes.labels(me, "yes" if "yes=True" in event.detail else "no").inc()
            elif event.event == "decision_applied":
                self.decisions.labels(me, event.detail.split(" ", 1)[0]).inc()
            elif event.event == "checkpoint_taken":
                self.checkpoints.labels(me).inc()
            elif event.event == "checkpoint_restored":
                self.restores.labels(me).inc()
            elif event.event not in ("term", "checkpoint_dropped"):
                self.events.labels(me, event.event).inc()
                if event.event == "breaker_tripped":
                    self.breaker_open.labels(me).set(1)
                elif event.event == "breaker_reset":
                    self.breaker_open.labels(me).set(0)
