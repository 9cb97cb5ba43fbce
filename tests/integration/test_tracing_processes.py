"""One transaction is one trace across every process: the initiator here (spans in
memory), a 3-node cluster of `concord serve` and two participant processes (spans
appended to one JSON-lines file through CONCORD_TRACE_FILE)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coordinator import tracing
from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from coordinator.security.identity import Role
from participant_sdk import SyncConcordClient, TransactionAborted
from tests.integration.conftest import AgentProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def initiator_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable("test-initiator", exporters=[exporter])
    try:
        yield exporter
    finally:
        tracing.disable()


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_one_transaction_is_one_trace_from_initiator_to_every_participant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, initiator_spans: InMemorySpanExporter
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    # Inherited by the agents and this process; the nodes get the flag (a local cluster
    # keeps the environment's CONCORD_* settings from its nodes).
    monkeypatch.setenv("CONCORD_TRACE_FILE", str(spans_file))
    cluster = LocalCluster(tmp_path / "cluster", 3, serve_flags=(f"--trace-file={spans_file}",))
    coordinators = ",".join(cluster.grpc_addresses)
    agents = {
        pid: AgentProcess(
            pid,
            tmp_path / pid,
            tmp_path / f"{pid}.ready",
            tmp_path / f"{pid}.log",
            coordinators,
            cluster.tls_env(Role.PARTICIPANT, pid),
        )
        for pid in ("p1", "p2")
    }
    committed, aborted = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    try:
        cluster.start()
        cluster.leader()
        for agent in agents.values():
            agent.start()
        tls = cluster.transport(Role.CLIENT, CLIENT)
        with SyncConcordClient(cluster.grpc_addresses, tls=tls, call_timeout_s=5.0) as client:
            with client.transaction(["p1", "p2"], txn_id=committed) as txn:
                for pid, agent in agents.items():
                    agent.stage(txn, f"seat-{pid}", "alice")
            assert txn.decision is Decision.COMMIT
            # p2 votes NO: an aborted transaction is one trace too.
            with (
                pytest.raises(TransactionAborted),
                client.transaction(["p1", "p2"], txn_id=aborted) as txn,
            ):
                agents["p1"].stage(txn, "seat-x", "bob")
                agents["p2"].stage(txn, "seat-y", "bob", vote="no")
    finally:
        for agent in agents.values():
            agent.stop()  # SIGTERM: each process flushes its spans as it exits
        cluster.stop()

    tracer = tracing.active()
    assert tracer is not None and tracer.flush()
    initiator = {s.attributes["concord.round_id"]: s for s in initiator_spans.get_finished_spans()}
    assert set(initiator) == {committed, aborted}
    records = _records(spans_file)
    assert records, "no process wrote a span"

    for txn_id, decision, votes in (
        (committed, "COMMIT", {"p1": "YES", "p2": "YES"}),
        (aborted, "ABORT", {"p1": "YES", "p2": "NO"}),
    ):
        trace_id = f"{initiator[txn_id].context.trace_id:032x}"
        assert initiator[txn_id].name == "concord.transaction"
        in_trace = [r for r in records if r["trace_id"] == trace_id]
        names = Counter(r["name"] for r in in_trace)
        # Every step of the transaction, on every process, in the initiator's trace.
        for name, count in {
            "concord.coordinator.Commit": 1,  # carrying the begin: no BeginTxn call
            "concord.coordinator.decision": 1,
            "concord.coordinator.prepare": 2,
            "concord.coordinator.decide": 2,
            "concord.participant.prepare": 2,
            "concord.participant.decide": 2,
        }.items():
            assert names[name] >= count, (txn_id, name, names)
        by_id = {r["span_id"]: r for r in in_trace}
        for phase in ("prepare", "decide"):
            seen = {}
            for r in in_trace:
                if r["name"] != f"concord.participant.{phase}":
                    continue
                parent = by_id[r["parent_span_id"]]  # the leader's span for that message
                assert parent["name"] == f"concord.coordinator.{phase}"
                assert (
                    parent["attributes"]["concord.participant_id"]
                    == (r["attributes"]["concord.participant_id"])
                )
                assert r["service"] == "concord-agent"
                assert parent["service"] == "concord-coordinator" and parent["instance"]
                seen[r["attributes"]["concord.participant_id"]] = r["attributes"]
            assert set(seen) == {"p1", "p2"}, (txn_id, phase, seen)
            if phase == "prepare":
                assert {p: a["concord.vote"] for p, a in seen.items()} == votes
            else:
                assert {a["concord.decision"] for a in seen.values()} == {decision}
        (decided,) = [r for r in in_trace if r["name"] == "concord.coordinator.decision"]
        assert decided["attributes"]["concord.decision"] == decision
    # Spans of other rounds never leak into these traces (registration is untraced).
    assert all(
        r["trace_id"] in {f"{s.context.trace_id:032x}" for s in initiator.values()} for r in records
    )
