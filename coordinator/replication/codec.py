"""Versioned wire form of replicated log entries (``concord.v1.LogEntry``).

pysyncobj only orders opaque commands; this codec is what a command means. Every
entry carries ``SCHEMA_VERSION`` and a decoder refuses any version it does not know:
a replica that guessed at an entry from a newer (or corrupt) writer could apply it
differently from its peers. Decoding is strict in the same spirit (see
coordinator/protomap.py): unknown fields, unset enums and a missing entry are errors.

One ``MessageMap`` per entry type, keyed by the ``LogEntry`` oneof case, is the whole
codec; adding an entry type is one row in ``_ENTRY_MAPS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError

from concord.v1 import log_pb2
from coordinator.core import entries
from coordinator.core.entries import Entry
from coordinator.protomap import (
    KIND,
    STEP_OUTCOME,
    TXN_ACTION,
    CodecError,
    MessageMap,
    reject_unknown_fields,
    repeated_messages,
    repeated_scalars,
)

__all__ = [
    "SCHEMA_VERSION",
    "CodecError",
    "decode_batch",
    "decode_entry",
    "encode_batch",
    "encode_entry",
]

SCHEMA_VERSION = 1

_VOTE = MessageMap(entries.Vote, log_pb2.Vote)
_ACK = MessageMap(entries.Ack, log_pb2.Ack)
_STEP_SPEC = MessageMap(entries.SagaStepSpec, log_pb2.SagaStepSpec)
_STEP_REPORT = MessageMap(
    entries.StepReport,
    log_pb2.StepReport,
    {"outcome": STEP_OUTCOME},
)

# LogEntry oneof case -> how that entry type maps.
_ENTRY_MAPS: dict[str, MessageMap[Any]] = {
    "begin_txn": MessageMap(
        entries.BeginTxn,
        log_pb2.BeginTxn,
        {"participants": repeated_scalars(), "actions": repeated_messages(TXN_ACTION)},
    ),
    "enlist": MessageMap(entries.Enlist, log_pb2.Enlist),
    "request_commit": MessageMap(entries.RequestCommit, log_pb2.RequestCommit),
    "begin_round": MessageMap(
        entries.BeginRound,
        log_pb2.BeginRound,
        {"participants": repeated_scalars(), "kind": KIND},
    ),
    "record_votes": MessageMap(
        entries.RecordVotes, log_pb2.RecordVotes, {"votes": repeated_messages(_VOTE)}
    ),
    "record_acks": MessageMap(
        entries.RecordAcks, log_pb2.RecordAcks, {"acks": repeated_messages(_ACK)}
    ),
    "abort": MessageMap(entries.Abort, log_pb2.Abort),
    "timeout": MessageMap(entries.Timeout, log_pb2.Timeout),
    "presume_abort": MessageMap(entries.PresumeAbort, log_pb2.PresumeAbort),
    "register_participant": MessageMap(entries.RegisterParticipant, log_pb2.RegisterParticipant),
    "begin_saga": MessageMap(
        entries.BeginSaga, log_pb2.BeginSaga, {"steps": repeated_messages(_STEP_SPEC)}
    ),
    "record_step_reports": MessageMap(
        entries.RecordStepReports,
        log_pb2.RecordStepReports,
        {"reports": repeated_messages(_STEP_REPORT)},
    ),
    "resolve_step": MessageMap(entries.ResolveStep, log_pb2.ResolveStep),
    "unregister_participant": MessageMap(
        entries.UnregisterParticipant, log_pb2.UnregisterParticipant
    ),
    "record_escalations": MessageMap(
        entries.RecordEscalations,
        log_pb2.RecordEscalations,
        {
            "escalations": repeated_messages(
                MessageMap(entries.EscalationNote, log_pb2.EscalationNote)
            )
        },
    ),
}
_CASE_BY_TYPE: dict[type, str] = {m.core_type: case for case, m in _ENTRY_MAPS.items()}

_ONEOF = log_pb2.LogEntry.DESCRIPTOR.oneofs_by_name["entry"]
if {f.name for f in _ONEOF.fields} != set(_ENTRY_MAPS):
    raise AssertionError("log.proto LogEntry.entry cases and _ENTRY_MAPS disagree")


def _to_log_entry(entry: Entry) -> log_pb2.LogEntry:
    case = _CASE_BY_TYPE.get(type(entry))
    if case is None:
        raise TypeError(f"not a log entry: {type(entry).__name__}")
    return log_pb2.LogEntry(
        schema_version=SCHEMA_VERSION, **{case: _ENTRY_MAPS[case].to_proto(entry)}
    )


def _from_log_entry(proto: log_pb2.LogEntry) -> Entry:
    if proto.schema_version != SCHEMA_VERSION:
        raise CodecError(
            f"log entry schema version {proto.schema_version} is not supported "
            f"(this build reads version {SCHEMA_VERSION})"
        )
    case = proto.WhichOneof("entry")
    if case is None:
        raise CodecError("log entry has no entry set (empty or from an unknown entry type)")
    entry: Entry = _ENTRY_MAPS[case].from_proto(getattr(proto, case))
    return entry


def _parse(message_type: type[Any], data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if not data:
        raise CodecError(f"empty input is not a {message_type.DESCRIPTOR.full_name}")
    try:
        proto = message_type.FromString(bytes(data))
    except DecodeError as error:
        raise CodecError(
            f"{len(data)} bytes are not a valid {message_type.DESCRIPTOR.full_name}: {error}"
        ) from None
    reject_unknown_fields(proto)
    return proto


def encode_entry(entry: Entry) -> bytes:
    data: bytes = _to_log_entry(entry).SerializeToString()
    return data


def decode_entry(data: bytes) -> Entry:
    return _from_log_entry(_parse(log_pb2.LogEntry, data))


def encode_batch(batch: Iterable[Entry]) -> bytes:
    """Several entries as one replicated command. An empty batch is refused: it would
    take a Raft round trip to say nothing."""
    protos = [_to_log_entry(entry) for entry in batch]
    if not protos:
        raise CodecError("cannot encode an empty batch")
    data: bytes = log_pb2.LogBatch(entries=protos).SerializeToString()
    return data


def decode_batch(data: bytes) -> tuple[Entry, ...]:
    batch = _parse(log_pb2.LogBatch, data)  # empty input (no entries) is refused there
    return tuple(_from_log_entry(proto) for proto in batch.entries)
