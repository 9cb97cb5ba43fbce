"""coordinator/core/messages.py dataclasses <-> concord.v1 participant.proto messages.

One ``MessageMap`` per message type (see coordinator/protomap.py); the batch helpers
pack what the leader has due for one participant into one stream message and unpack a
participant's replies, since the fixed cost of a gRPC message dwarfs that of an item.

A message that does not convert (an unset kind or decision, unknown fields) raises
``CodecError``: the peer sent something this version cannot act on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from concord.v1 import common_pb2, participant_pb2
from coordinator.core import messages
from coordinator.core.messages import FromParticipant, ToParticipant
from coordinator.core.types import Decision, Kind, StepOutcome
from coordinator.protomap import (
    CodecError,
    MessageMap,
    by_core_type,
    by_proto_type,
    enum_field,
    reject_unknown_fields,
)

__all__ = [
    "CodecError",
    "from_coordinator_batch",
    "from_participant_batch",
    "from_proto",
    "to_coordinator_batch",
    "to_participant_batch",
    "to_proto",
]

_KIND = enum_field(Kind, common_pb2.Kind, "KIND")
_DECISION = enum_field(Decision, common_pb2.Decision, "DECISION")
_OUTCOME = enum_field(StepOutcome, common_pb2.StepOutcome, "STEP_OUTCOME")

_MAPS: tuple[MessageMap[Any], ...] = (
    MessageMap(messages.Prepare, participant_pb2.Prepare, {"kind": _KIND}),
    MessageMap(messages.Decide, participant_pb2.Decide, {"kind": _KIND, "decision": _DECISION}),
    MessageMap(messages.VoteReply, participant_pb2.VoteReply),
    MessageMap(messages.AckReply, participant_pb2.AckReply),
    MessageMap(messages.Refused, participant_pb2.Refused),
    MessageMap(messages.ExecuteStep, participant_pb2.ExecuteStep),
    MessageMap(messages.CompensateStep, participant_pb2.CompensateStep),
    MessageMap(messages.StepReply, participant_pb2.StepReply, {"outcome": _OUTCOME}),
)
_BY_CORE_TYPE = by_core_type(_MAPS)
_BY_PROTO_TYPE = by_proto_type(_MAPS)

Message = ToParticipant | FromParticipant

# Batch field -> the message type it repeats.
_COORDINATOR_BATCH_FIELDS: dict[str, type] = {
    "prepares": messages.Prepare,
    "decides": messages.Decide,
    "executes": messages.ExecuteStep,
    "compensates": messages.CompensateStep,
}
_PARTICIPANT_BATCH_FIELDS: dict[str, type] = {
    "votes": messages.VoteReply,
    "acks": messages.AckReply,
    "refused": messages.Refused,
    "steps": messages.StepReply,
}


def to_proto(message: Message) -> Any:
    mapping = _BY_CORE_TYPE.get(type(message))
    if mapping is None:
        raise TypeError(f"not a participant protocol message: {type(message).__name__}")
    return mapping.to_proto(message)


def from_proto(proto: Any) -> Message:
    mapping = _BY_PROTO_TYPE.get(type(proto))
    if mapping is None:
        raise TypeError(f"not a participant protocol message: {type(proto).__name__}")
    reject_unknown_fields(proto)
    message: Message = mapping.from_proto(proto)
    return message


def _group(fields: dict[str, type], items: Iterable[Message]) -> dict[str, list[Any]]:
    field_by_type = {message_type: name for name, message_type in fields.items()}
    grouped: dict[str, list[Any]] = {name: [] for name in fields}
    for item in items:
        name = field_by_type.get(type(item))
        if name is None:
            raise TypeError(f"{type(item).__name__} does not belong in this batch")
        grouped[name].append(to_proto(item))
    return grouped


def _ungroup(fields: dict[str, type], batch: Any) -> tuple[Message, ...]:
    reject_unknown_fields(batch)
    return tuple(from_proto(proto) for name in fields for proto in getattr(batch, name))


def to_coordinator_batch(
    term: int, items: Iterable[ToParticipant]
) -> participant_pb2.CoordinatorBatch:
    try:
        return participant_pb2.CoordinatorBatch(
            term=term, **_group(_COORDINATOR_BATCH_FIELDS, items)
        )
    except ValueError as error:
        raise CodecError(f"cannot encode coordinator batch: {error}") from None


def from_coordinator_batch(
    batch: participant_pb2.CoordinatorBatch,
) -> tuple[int, tuple[ToParticipant, ...]]:
    """The batch's term and its messages, grouped by type in the batch's field order."""
    items: tuple[Any, ...] = _ungroup(_COORDINATOR_BATCH_FIELDS, batch)
    return batch.term, items


def to_participant_batch(items: Iterable[FromParticipant]) -> participant_pb2.ParticipantBatch:
    return participant_pb2.ParticipantBatch(**_group(_PARTICIPANT_BATCH_FIELDS, items))


def from_participant_batch(batch: participant_pb2.ParticipantBatch) -> tuple[FromParticipant, ...]:
    """The batch's replies, grouped by type in the batch's field order."""
    items: tuple[Any, ...] = _ungroup(_PARTICIPANT_BATCH_FIELDS, batch)
    return items
