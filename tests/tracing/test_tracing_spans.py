"""Tracing in one process, spans caught by an in-memory exporter: the leader's round
traces, the initiator's metadata, the participant's spans under the leader's, the
JSON-lines file, and failures that stay inside tracing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from concord.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, participant_pb2_grpc
from coordinator import tracing
from coordinator.core.messages import AckReply, Decide, Prepare, Refused, VoteReply
from coordinator.core.state import Decided
from coordinator.core.types import Decision, Kind
from coordinator.protomap import from_participant_batch, to_coordinator_batch
from coordinator.rpc.traces import RoundTraces
from participant_sdk import ConcordClient, Participant, TransactionAborted

WAIT_S = 10.0


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable("test", exporters=[exporter])
    try:
        yield exporter
    finally:
        tracing.disable()


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracer = tracing.active()
    assert tracer is not None
    assert tracer.flush()
    return list(exporter.get_finished_spans())


def trace_id(traceparent: str) -> str:
    version, trace, span, flags = traceparent.split("-")
    assert (version, len(trace), len(span)) == ("00", 32, 16), traceparent
    assert int(flags, 16) & 1, f"not sampled: {traceparent}"
    return trace


def span_id(traceparent: str) -> str:
    return traceparent.split("-")[2]


def prepare(round_id: str, participant_id: str) -> Prepare:
    return Prepare(
        round_id=round_id, kind=Kind.TXN, participant_id=participant_id, session_id="", term=3
    )


def decide(round_id: str, participant_id: str, decision: Decision = Decision.COMMIT) -> Decide:
    return Decide(
        round_id=round_id,
        kind=Kind.TXN,
        participant_id=participant_id,
        decision=decision,
        term=3,
    )


# ---------------------------------------------------------------------- leader


def test_a_round_s_prepares_decision_and_decides_join_the_trace_it_was_begun_in(
    spans: InMemorySpanExporter,
) -> None:
    tracer = tracing.active()
    assert tracer is not None
    request = tracer.start("request")
    parent = tracer.traceparent(request)
    traces = RoundTraces(tracer)
    traces.remember("t1", parent)

    sent = traces.on_send([prepare("t1", "p1"), prepare("untraced", "p1")])  # one batch
    assert set(sent) == {"t1"}
    assert traces.on_send([prepare("t1", "p1")]) == sent  # a resend: the same open span
    other = traces.on_send([prepare("t1", "p2")])  # each participant's span is its own
    assert other["t1"] != sent["t1"]
    assert trace_id(other["t1"]) == trace_id(sent["t1"]) == trace_id(parent)
    traces.on_reply(VoteReply(round_id="t1", participant_id="p1", yes=True))
    traces.on_reply(VoteReply(round_id="t1", participant_id="p2", yes=False, reason="full"))
    traces.on_decided([Decided(round_id="t1", kind=Kind.TXN, decision=Decision.ABORT, reason="no")])
    traces.on_send([decide("t1", "p1", Decision.ABORT)])
    traces.on_send([decide("t1", "p2", Decision.ABORT)])
    traces.on_reply(AckReply(round_id="t1", participant_id="p1"))
    assert len(traces) == 1
    traces.on_reply(AckReply(round_id="t1", participant_id="p2"))
    assert len(traces) == 0, "a round every decide was acknowledged for is forgotten"
    tracer.end(request)

    got = finished(spans)
    names = sorted(s.name for s in got)
    assert names == sorted(
        ["request", "concord.coordinator.decision"]
        + ["concord.coordinator.prepare"] * 2
        + ["concord.coordinator.decide"] * 2
    )
    assert {f"{s.context.trace_id:032x}" for s in got} == {trace_id(parent)}
    children = [s for s in got if s.name != "request"]
    assert {f"{s.parent.span_id:016x}" for s in children if s.parent} == {span_id(parent)}
    votes = {
        s.attributes["concord.participant_id"]: s.attributes["concord.vote"]
        for s in got
        if s.name == "concord.coordinator.prepare"
    }
    assert votes == {"p1": "YES", "p2": "NO"}
    sends = {
        s.attributes["concord.participant_id"]: s.attributes["concord.sends"]
        for s in got
        if s.name == "concord.coordinator.prepare"
    }
    assert sends == {"p1": 2, "p2": 1}
    (decision,) = [s for s in got if s.name == "concord.coordinator.decision"]
    assert decision.attributes["concord.decision"] == "ABORT"


def test_refusals_leadership_loss_and_the_bound_end_open_spans(
    spans: InMemorySpanExporter,
) -> None:
    tracer = tracing.active()
    assert tracer is not None
    parent = tracer.traceparent(tracer.start("request"))
    traces = RoundTraces(tracer, rounds_max=2)
    for round_id in ("a", "b", "c"):
        traces.remember(round_id, parent)
        traces.on_send([prepare(round_id, "p1")])
    assert len(traces) == 2  # "a" was forgotten, its span ended
    traces.on_reply(Refused(round_id="b", participant_id="p1", term_seen=9, reason="old term"))
    traces.reset("leadership lost")
    assert len(traces) == 0
    errors = sorted(s.status.description or "" for s in finished(spans))
    assert errors == [
        "forgotten: more than 2 traced rounds",
        "leadership lost",
        "refused: old term",
    ]


def test_a_broken_tracer_or_exporter_stays_inside_tracing(spans: InMemorySpanExporter) -> None:
    class Broken:
        def start(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("tracer broken")

    traces = RoundTraces(Broken())  # type: ignore[arg-type]
    traces.remember("t", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert traces.on_send([prepare("t", "p1")]) == {}  # logged once, nothing sent
    traces.on_reply(VoteReply(round_id="t", participant_id="p1", yes=True))

    class Failing(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            raise OSError("collector down")

    tracer = tracing.enable("test", exporters=[Failing()])
    span = tracer.start("x", parent="not a traceparent")
    tracer.end(span, error="e")
    tracer.flush()  # the processor logs the exporter's error; nothing raises here
    tracer.end(None)
    assert tracer.traceparent(None) == ""


# ---------------------------------------------------------------------- initiator


class RecordingCoordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self) -> None:
        self.traceparents: list[tuple[str, str]] = []
        self.decision = common_pb2.DECISION_COMMIT

    def _record(self, method: str, context: Any) -> None:
        self.traceparents.append((method, tracing.traceparent_in(context.invocation_metadata())))

    async def BeginTxn(self, request: Any, context: Any) -> Any:
        self._record("BeginTxn", context)
        return coordinator_pb2.BeginTxnReply(txn_id=request.txn_id)

    async def Commit(self, request: Any, context: Any) -> Any:
        self._record("Commit", context)
        return coordinator_pb2.CommitReply(txn_id=request.txn_id, decision=self.decision)

    async def Abort(self, request: Any, context: Any) -> Any:
        self._record("Abort", context)
        return coordinator_pb2.AbortReply(txn_id=request.txn_id, decision=common_pb2.DECISION_ABORT)

    async def RequestRollback(self, request: Any, context: Any) -> Any:
        self._record("RequestRollback", context)
        return coordinator_pb2.RoundReply(
            round_id=request.round_id, decision=common_pb2.DECISION_COMMIT
        )

    async def GetTxn(self, request: Any, context: Any) -> Any:
        self._record("GetTxn", context)
        return coordinator_pb2.GetTxnReply(round_id=request.round_id, phase="DONE")


async def recording_server() -> tuple[grpc.aio.Server, RecordingCoordinator, str]:
    fake = RecordingCoordinator()
    server = grpc.aio.server()
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, fake, f"127.0.0.1:{port}"


def test_the_initiator_sends_its_transaction_span_as_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    async def body() -> RecordingCoordinator:
        server, fake, address = await recording_server()
        try:
            async with ConcordClient([address]) as client:
                async with client.transaction(["p1"], txn_id="t-ok"):
                    pass
                fake.decision = common_pb2.DECISION_ABORT
                with pytest.raises(TransactionAborted):
                    async with client.transaction(["p1"], txn_id="t-no"):
                        pass
                with pytest.raises(ValueError):
                    async with client.transaction(["p1"], txn_id="t-raise"):
                        raise ValueError("agent failed")
                await client.request_rollback(
                    session_id="s", participants=["p1"], checkpoint_id="c", round_id="r1"
                )
        finally:
            await server.stop(0)
        return fake

    fake = asyncio.run(asyncio.wait_for(body(), WAIT_S))
    got = {s.attributes["concord.round_id"]: s for s in finished(spans)}
    assert {t: s.name for t, s in got.items()} == {
        "t-ok": "concord.transaction",
        "t-no": "concord.transaction",
        "t-raise": "concord.transaction",
        "r1": "concord.RequestRollback",
    }
    calls = [(m, trace_id(tp)) for m, tp in fake.traceparents if m != "GetTxn"]
    ok, no, raised, rollback = (
        f"{got[t].context.trace_id:032x}" for t in ("t-ok", "t-no", "t-raise", "r1")
    )
    # A commit carries its begin; an abort registers the transaction first.
    assert calls == [
        ("Commit", ok),
        ("Commit", no),
        ("BeginTxn", raised), ("Abort", raised),
        ("RequestRollback", rollback),
    ]  # fmt: skip
    assert got["r1"].attributes["concord.decision"] == "COMMIT"
    assert got["t-ok"].attributes["concord.decision"] == "COMMIT"
    assert got["t-ok"].status.is_ok
    assert got["t-no"].attributes["concord.decision"] == "ABORT"
    assert not got["t-no"].status.is_ok
    assert got["t-raise"].attributes["concord.decision"] == "ABORT"
    assert "agent failed" in (got["t-raise"].status.description or "")


# ---------------------------------------------------------------------- participant


def test_the_participant_s_spans_sit_under_the_leader_s(spans: InMemorySpanExporter) -> None:
    tracer = tracing.active()
    assert tracer is not None
    leader_prepare = tracer.start("concord.coordinator.prepare")
    leader_decide = tracer.start("concord.coordinator.decide")

    async def body() -> None:
        p = Participant("p1", None, [])
        await p.start()
        try:
            p.begin("t1").put("k", b"v")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") as channel:
                call = participant_pb2_grpc.ParticipantServiceStub(channel).Exchange()
                for message, span in ((prepare("t1", "p1"), leader_prepare),
                                      (decide("t1", "p1"), leader_decide),
                                      (prepare("untraced", "p1"), None)):  # fmt: skip
                    batch = to_coordinator_batch(3, [message])
                    if span is not None:
                        batch.trace_parents["t1"] = tracer.traceparent(span)
                    await call.write(batch)
                    replies = from_participant_batch(await call.read())
                    assert len(replies) == 1
                await call.done_writing()
            assert p.state.get("k") == b"v"
        finally:
            await p.stop()

    asyncio.run(asyncio.wait_for(body(), WAIT_S))
    tracer.end(leader_prepare)
    tracer.end(leader_decide)
    got = {s.name: s for s in finished(spans)}
    assert set(got) == {
        "concord.coordinator.prepare",
        "concord.coordinator.decide",
        "concord.participant.prepare",
        "concord.participant.decide",
    }
    for phase in ("prepare", "decide"):
        mine, leader = got[f"concord.participant.{phase}"], got[f"concord.coordinator.{phase}"]
        assert mine.parent is not None and mine.parent.span_id == leader.context.span_id
        assert mine.context.trace_id == leader.context.trace_id
        assert mine.attributes["concord.participant_id"] == "p1"
    assert got["concord.participant.prepare"].attributes["concord.vote"] == "YES"
    assert got["concord.participant.decide"].attributes["concord.decision"] == "COMMIT"


# ---------------------------------------------------------------------- files and config


def test_the_json_lines_file_holds_one_span_per_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = tracing.enable(
        "svc", jsonl_path=path, resource_attributes={"service.instance.id": "c1"}
    )
    try:
        parent = tracer.start("parent")
        child = tracer.start("child", parent=tracer.traceparent(parent), attributes={"a": [1, 2]})
        tracer.end(child, error="boom")
        tracer.end(parent)
    finally:
        tracing.disable()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_name = {r["name"]: r for r in records}
    assert set(by_name) == {"parent", "child"}
    assert by_name["child"]["trace_id"] == by_name["parent"]["trace_id"]
    assert by_name["child"]["parent_span_id"] == by_name["parent"]["span_id"]
    assert by_name["child"]["status"] == "ERROR"
    assert by_name["child"]["attributes"] == {"a": [1, 2]}
    assert (by_name["parent"]["service"], by_name["parent"]["instance"]) == ("svc", "c1")


def test_the_environment_turns_tracing_on_only_when_asked(tmp_path: Path) -> None:
    try:
        assert tracing.enable_from_env("x", environ={}) is None
        tracing.disable()
        assert tracing.enable_from_env("x", environ={"OTEL_TRACES_EXPORTER": "none"}) is None
        tracing.disable()
        on = tracing.enable_from_env("x", environ={"CONCORD_TRACE_FILE": str(tmp_path / "f")})
        assert on is not None and tracing.active() is on
        assert tracing.enable_from_env("x", environ={}) is on  # once per process
    finally:
        tracing.disable()
    assert tracing.active() is None
    names, path = tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "OTLP, console,zipkin"})
    assert (names, path) == ({"otlp", "console"}, None)
