"""Round trips and strict decoding of the log entry codec and the participant
message converters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord.v1 import common_pb2, log_pb2, participant_pb2
from coordinator import protomap
from coordinator.core import entries, messages
from coordinator.core.limits import BATCH_ITEMS_MAX
from coordinator.core.types import Decision, Kind, StepOutcome
from coordinator.replication.codec import (
    SCHEMA_VERSION,
    CodecError,
    decode_batch,
    decode_entry,
    encode_batch,
    encode_entry,
)

UINT64_MAX = 2**64 - 1

texts = st.text()
uint64s = st.integers(min_value=0, max_value=UINT64_MAX)
text_tuples = st.lists(texts, max_size=5).map(tuple)
kinds = st.sampled_from(Kind)
decisions = st.sampled_from(Decision)
outcomes = st.sampled_from(StepOutcome)
uint32s = st.integers(min_value=0, max_value=2**32 - 1)


def _build(cls: type, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.builds(cls, **fields)


votes = _build(entries.Vote, round_id=texts, participant_id=texts, yes=st.booleans(), reason=texts)
acks = _build(entries.Ack, round_id=texts, participant_id=texts)

ENTRY_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    entries.BeginTxn: _build(
        entries.BeginTxn,
        txn_id=texts,
        session_id=texts,
        participants=text_tuples,
        timeout_ms=uint64s,
        now_ms=uint64s,
        owner=texts,
    ),
    entries.Enlist: _build(entries.Enlist, txn_id=texts, participant_id=texts, now_ms=uint64s),
    entries.RequestCommit: _build(entries.RequestCommit, txn_id=texts, now_ms=uint64s),
    entries.BeginRound: _build(
        entries.BeginRound,
        round_id=texts,
        kind=kinds,
        session_id=texts,
        participants=text_tuples,
        checkpoint_id=texts,
        label=texts,
        timeout_ms=uint64s,
        now_ms=uint64s,
        owner=texts,
    ),
    entries.RecordVotes: _build(
        entries.RecordVotes, votes=st.lists(votes, max_size=4).map(tuple), now_ms=uint64s
    ),
    entries.RecordAcks: _build(
        entries.RecordAcks, acks=st.lists(acks, max_size=4).map(tuple), now_ms=uint64s
    ),
    entries.Abort: _build(entries.Abort, round_id=texts, reason=texts, now_ms=uint64s),
    entries.Timeout: _build(entries.Timeout, round_id=texts, now_ms=uint64s),
    entries.PresumeAbort: _build(entries.PresumeAbort, round_id=texts, now_ms=uint64s),
    entries.RegisterParticipant: _build(
        entries.RegisterParticipant, participant_id=texts, endpoint=texts, now_ms=uint64s
    ),
}
ENTRY_STRATEGIES[entries.BeginSaga] = _build(
    entries.BeginSaga,
    saga_id=texts,
    session_id=texts,
    steps=st.lists(
        _build(entries.SagaStepSpec, participant_id=texts, action=texts, payload=st.binary()),
        max_size=3,
    ).map(tuple),
    step_timeout_ms=uint64s,
    now_ms=uint64s,
    owner=texts,
)
ENTRY_STRATEGIES[entries.RecordStepReports] = _build(
    entries.RecordStepReports,
    reports=st.lists(
        _build(
            entries.StepReport,
            saga_id=texts,
            step=uint32s,
            participant_id=texts,
            outcome=outcomes,
            reason=texts,
            result=st.binary(),
        ),
        max_size=3,
    ).map(tuple),
    now_ms=uint64s,
)
ENTRY_STRATEGIES[entries.ResolveStep] = _build(
    entries.ResolveStep, saga_id=texts, step=uint32s, note=texts, now_ms=uint64s
)
ENTRY_STRATEGIES[entries.RecordEscalations] = _build(
    entries.RecordEscalations,
    participant_id=texts,
    escalations=st.lists(
        _build(entries.EscalationNote, round_id=texts, key=texts, detail=texts), max_size=3
    ).map(tuple),
    now_ms=uint64s,
)
ENTRY_STRATEGIES[entries.UnregisterParticipant] = _build(
    entries.UnregisterParticipant,
    participant_id=texts,
    drop_escalations=st.booleans(),
    now_ms=uint64s,
)
any_entry = st.one_of(*ENTRY_STRATEGIES.values())

to_participant = st.one_of(
    _build(
        messages.Prepare,
        round_id=texts,
        kind=kinds,
        participant_id=texts,
        session_id=texts,
        checkpoint_id=texts,
        label=texts,
        term=uint64s,
    ),
    _build(
        messages.Decide,
        round_id=texts,
        kind=kinds,
        participant_id=texts,
        decision=decisions,
        checkpoint_id=texts,
        term=uint64s,
    ),
    _build(
        messages.ExecuteStep,
        round_id=texts,
        step=uint32s,
        participant_id=texts,
        action=texts,
        payload=st.binary(),
        term=uint64s,
    ),
    _build(
        messages.CompensateStep,
        round_id=texts,
        step=uint32s,
        participant_id=texts,
        action=texts,
        payload=st.binary(),
        result=st.binary(),
        term=uint64s,
    ),
)
from_participant = st.one_of(
    _build(
        messages.VoteReply, round_id=texts, participant_id=texts, yes=st.booleans(), reason=texts
    ),
    _build(messages.AckReply, round_id=texts, participant_id=texts),
    _build(messages.Refused, round_id=texts, participant_id=texts, term_seen=uint64s, reason=texts),
    _build(
        messages.StepReply,
        round_id=texts,
        step=uint32s,
        participant_id=texts,
        outcome=outcomes,
        reason=texts,
        result=st.binary(),
    ),
)


def test_strategies_cover_every_entry_type() -> None:
    entry_types = set(entries.Entry.__args__)
    assert set(ENTRY_STRATEGIES) == entry_types


# --- log entries --------------------------------------------------------------------


@given(any_entry)
def test_entry_round_trip(entry: entries.Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


@given(st.lists(any_entry, min_size=1, max_size=8))
def test_batch_round_trip(batch: list[entries.Entry]) -> None:
    assert decode_batch(encode_batch(batch)) == tuple(batch)


@given(any_entry, st.data())
def test_every_truncation_of_an_entry_is_refused(entry: entries.Entry, data: st.DataObject) -> None:
    encoded = encode_entry(entry)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1), label="cut")
    with pytest.raises(CodecError):
        decode_entry(encoded[:cut])


@given(st.binary())
def test_arbitrary_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    # A few short byte strings happen to be valid entries; nothing may escape as another
    # exception type, and whatever decodes must encode back to a valid entry.
    try:
        entry = decode_entry(data)
    except CodecError:
        return
    assert decode_entry(encode_entry(entry)) == entry


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"\xff\xff\xff", "not a valid concord.v1.LogEntry"),
        (b"\x08\x01", "no entry set"),
        (b"\x08\x01\x4a\x03\x0a\x01", "not a valid"),  # timeout entry cut mid-field
        (b"garbage that is not protobuf at all", "not a valid"),
    ],
)
def test_garbage_is_refused_with_a_message(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_entry(data)


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1, 2**32 - 1])
def test_unknown_schema_version_is_refused(version: int) -> None:
    proto = log_pb2.LogEntry(
        schema_version=version, timeout=log_pb2.Timeout(round_id="r", now_ms=1)
    )
    with pytest.raises(CodecError, match=f"schema version {version} is not supported"):
        decode_entry(proto.SerializeToString())


def test_unknown_fields_are_refused() -> None:
    known = encode_entry(entries.Timeout(round_id="r", now_ms=1))
    with pytest.raises(CodecError, match=r"concord.v1.LogEntry has unknown fields \[31\]"):
        decode_entry(known + b"\xf8\x01\x01")  # field 31, varint 1

    # Also inside a nested message: an Ack carrying a field this version does not know.
    ack = log_pb2.Ack(round_id="r").SerializeToString() + b"\xf8\x01\x01"
    acks = log_pb2.RecordAcks.FromString(b"\x0a" + bytes([len(ack)]) + ack)
    nested = log_pb2.LogEntry(schema_version=SCHEMA_VERSION, record_acks=acks)
    with pytest.raises(CodecError, match=r"concord\.v1\.Ack has unknown fields"):
        decode_entry(nested.SerializeToString())


def test_unset_kind_is_refused() -> None:
    proto = log_pb2.LogEntry(
        schema_version=SCHEMA_VERSION, begin_round=log_pb2.BeginRound(round_id="r")
    )
    with pytest.raises(CodecError, match="Kind value 0 is unset or unknown"):
        decode_entry(proto.SerializeToString())


def test_out_of_range_integer_is_refused_on_encode() -> None:
    with pytest.raises(CodecError, match="cannot encode Timeout"):
        encode_entry(entries.Timeout(round_id="r", now_ms=-1))
    with pytest.raises(CodecError, match="cannot encode Timeout"):
        encode_entry(entries.Timeout(round_id="r", now_ms=UINT64_MAX + 1))


def test_empty_batch_is_refused() -> None:
    with pytest.raises(CodecError, match="empty batch"):
        encode_batch([])
    with pytest.raises(CodecError, match="empty input"):
        decode_batch(log_pb2.LogBatch().SerializeToString())


def test_batch_with_a_bad_entry_is_refused() -> None:
    good = log_pb2.LogEntry.FromString(encode_entry(entries.Timeout(round_id="r", now_ms=1)))
    bad = log_pb2.LogEntry(schema_version=SCHEMA_VERSION + 1, timeout=good.timeout)
    batch = log_pb2.LogBatch(entries=[good, bad]).SerializeToString()
    with pytest.raises(CodecError, match="schema version"):
        decode_batch(batch)


def test_encoding_a_non_entry_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not a log entry"):
        encode_entry(entries.Vote(round_id="r", participant_id="p", yes=True))  # type: ignore[arg-type]


# --- participant messages -----------------------------------------------------------


@given(st.one_of(to_participant, from_participant))
def test_message_round_trip(message: protomap.ParticipantMessage) -> None:
    proto = protomap.message_to_proto(message)
    wire = type(proto).FromString(proto.SerializeToString())
    assert protomap.message_from_proto(wire) == message


@given(uint64s, st.lists(to_participant, max_size=8))
def test_coordinator_batch_round_trip(term: int, items: list[Any]) -> None:
    batch = protomap.to_coordinator_batch(term, items)
    wire = participant_pb2.CoordinatorBatch.FromString(batch.SerializeToString())
    got_term, got = protomap.from_coordinator_batch(wire)
    assert got_term == term
    # grouped by type, order kept within each type
    order = (messages.Prepare, messages.Decide, messages.ExecuteStep, messages.CompensateStep)
    assert got == tuple(i for t in order for i in items if isinstance(i, t))


@given(st.lists(from_participant, max_size=8))
def test_participant_batch_round_trip(items: list[Any]) -> None:
    batch = protomap.to_participant_batch(items)
    wire = participant_pb2.ParticipantBatch.FromString(batch.SerializeToString())
    order = (messages.VoteReply, messages.AckReply, messages.Refused, messages.StepReply)
    expected = tuple(i for t in order for i in items if isinstance(i, t))
    assert protomap.from_participant_batch(wire) == expected


def test_unset_decision_is_refused() -> None:
    proto = participant_pb2.Decide(round_id="r", kind=common_pb2.KIND_TXN)
    with pytest.raises(CodecError, match="Decision value 0 is unset or unknown"):
        protomap.message_from_proto(proto)


def test_unknown_enum_number_is_refused() -> None:
    proto = participant_pb2.Prepare.FromString(b"\x10\x63")  # kind = 99
    with pytest.raises(CodecError, match="Kind value 99"):
        protomap.message_from_proto(proto)


def test_a_reply_in_a_coordinator_batch_is_a_type_error() -> None:
    reply = messages.AckReply(round_id="r", participant_id="p")
    with pytest.raises(TypeError, match="does not belong"):
        protomap.to_coordinator_batch(1, [reply])  # type: ignore[list-item]


def test_a_reply_decision_is_none_until_decided_and_unknown_ones_are_refused() -> None:
    assert protomap.decision_to_proto(None) == common_pb2.DECISION_UNSPECIFIED
    assert protomap.decision_from_proto(common_pb2.DECISION_UNSPECIFIED) is None
    for decision in Decision:
        assert protomap.decision_from_proto(protomap.decision_to_proto(decision)) is decision
    with pytest.raises(CodecError, match="Decision value 99"):
        protomap.decision_from_proto(99)


def test_a_reply_kind_is_none_when_unset_and_unknown_ones_are_refused() -> None:
    assert protomap.kind_from_proto(common_pb2.KIND_UNSPECIFIED) is None
    for kind in Kind:
        assert protomap.kind_from_proto(protomap.KIND.to_wire(kind)) is kind
    with pytest.raises(CodecError, match="Kind value 99"):
        protomap.kind_from_proto(99)


def test_every_kind_of_message_counts_against_the_batch_bound() -> None:
    step = {"round_id": "s", "participant_id": "p", "action": "a"}
    items: list[messages.ToParticipant] = [
        messages.Prepare(round_id="r", kind=Kind.TXN, participant_id="p", session_id=""),
        messages.Decide(round_id="r", kind=Kind.TXN, participant_id="p", decision=Decision.ABORT),
        messages.ExecuteStep(step=0, **step),
        messages.CompensateStep(step=0, **step),
    ]
    assert protomap.coordinator_batch_size(protomap.to_coordinator_batch(1, items)) == 4
    too_many = [messages.ExecuteStep(step=i, **step) for i in range(BATCH_ITEMS_MAX // 2 + 1)]
    too_many += [messages.CompensateStep(step=i, **step) for i in range(BATCH_ITEMS_MAX // 2 + 1)]
    with pytest.raises(CodecError, match=f"> BATCH_ITEMS_MAX={BATCH_ITEMS_MAX}"):
        protomap.to_coordinator_batch(1, too_many)


def test_the_codec_bench_runs() -> None:
    """scripts/bench_codec.py (docs/performance.md), on a small batch."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_codec.py"
    done = subprocess.run(
        [sys.executable, str(script), "--txns", "2", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "6 entries, 2 transactions" in done.stdout and "decode" in done.stdout, done.stdout
