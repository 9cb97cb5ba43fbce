"""The protocol on the wire, in one place: core values <-> protobuf messages, the core
enums <-> their protobuf enums, the participant protocol's messages and batches, and
the gRPC metadata keys both sides read. The coordinator and the participant SDK both
import this module (tests/test_import_graph.py: it is protocol, not coordinator).

Each wire type is described once, by a ``MessageMap``: the dataclass, the protobuf
class, and converters for the few fields that are not plain scalars (repeated fields,
enums, nested messages). Everything else is copied by name. When a map is built it
checks that the dataclass and the protobuf message have exactly the same field names,
so a field added on one side only fails at import time, not in production.

Decoding is strict: a message with fields this version does not know, an unset (zero)
enum or an enum value we have no name for is rejected with ``CodecError``. Replicas
apply entries deterministically; silently dropping what we do not understand could
make two replicas of different versions diverge.

Participant messages (coordinator/core/messages.py <-> participant.proto): the batch
helpers pack what the leader has due for one participant into one stream message and
unpack a participant's replies, since the fixed cost of a gRPC message dwarfs that of
an item. A message that does not convert (an unset kind or decision, unknown fields)
raises ``CodecError``: the peer sent something this version cannot act on.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from concord.v1 import common_pb2, participant_pb2
from coordinator.core import messages
from coordinator.core.limits import BATCH_ITEMS_MAX
from coordinator.core.messages import FromParticipant, ToParticipant, TxnAction
from coordinator.core.types import Decision, Kind, StepOutcome

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

# Trailing metadata a follower sets on a call it forwarded: the gRPC address of the
# leader, so the client sends its next call there directly.
LEADER_HINT = "x-concord-leader"
# The endpoint a participant that only connects out registers: it serves nothing and
# opens CoordinatorService.Attach to the leader itself, which never dials it.
ATTACHED_ENDPOINT = "attached"
# The leader sends a heartbeat on an attached stream idle this long; a participant that
# hears nothing on its stream for ATTACH_SILENCE_MS attaches again (its leader may be
# gone without a reset: a host down, a partition).
ATTACH_HEARTBEAT_MS = 1_000
ATTACH_SILENCE_MS = 4_000


class CodecError(ValueError):
    """Bytes or a protobuf message that do not describe a valid core value."""


@dataclass(frozen=True, slots=True)
class FieldConverter:
    to_wire: Callable[[Any], Any]
    from_wire: Callable[[Any], Any]


def repeated_scalars() -> FieldConverter:
    """``tuple[str, ...]`` <-> a repeated scalar field."""
    return FieldConverter(to_wire=list, from_wire=tuple)


def enum_field(core_enum: type[E], wire_enum: Any, prefix: str) -> FieldConverter:
    """A core ``Enum`` <-> a protobuf enum whose values are ``PREFIX_<core name>``.

    The protobuf zero value (``PREFIX_UNSPECIFIED``) has no core counterpart and is
    rejected on decode: proto3 cannot tell "unset" from "set to zero".
    """
    to_number = {member: wire_enum.Value(f"{prefix}_{member.name}") for member in core_enum}
    from_number = {number: member for member, number in to_number.items()}
    if 0 in from_number:
        raise AssertionError(f"{prefix}: zero must stay UNSPECIFIED, not a core value")

    def decode(number: int) -> E:
        try:
            return from_number[number]
        except KeyError:
            raise CodecError(
                f"{core_enum.__name__} value {number} is unset or unknown "
                f"(known: {sorted(from_number)})"
            ) from None

    return FieldConverter(to_wire=to_number.__getitem__, from_wire=decode)


def repeated_messages(item_map: MessageMap[Any]) -> FieldConverter:
    """``tuple[Item, ...]`` <-> a repeated message field, each item by ``item_map``."""
    return FieldConverter(
        to_wire=lambda items: [item_map.to_proto(item) for item in items],
        from_wire=lambda protos: tuple(item_map.from_proto(proto) for proto in protos),
    )


@dataclass(frozen=True, slots=True)
class MessageMap(Generic[T]):
    core_type: type[T]
    proto_type: type[Message]
    converters: Mapping[str, FieldConverter] = field(default_factory=dict)
    _plain: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _to_wire: tuple[tuple[str, Callable[[Any], Any]], ...] = field(
        init=False, repr=False, compare=False
    )
    _from_wire: tuple[tuple[str, Callable[[Any], Any]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        core_fields = {f.name for f in dataclasses.fields(self.core_type)}  # type: ignore[arg-type]
        wire_fields = {f.name for f in self.proto_type.DESCRIPTOR.fields}
        if core_fields != wire_fields:
            raise AssertionError(
                f"{self.core_type.__name__} and {self.proto_type.DESCRIPTOR.full_name} "
                f"disagree: only in core {sorted(core_fields - wire_fields)}, "
                f"only on the wire {sorted(wire_fields - core_fields)}"
            )
        unknown = set(self.converters) - core_fields
        if unknown:
            raise AssertionError(f"converters for unknown fields {sorted(unknown)}")
        # Resolved once: these run for every entry on every node (apply) and for every
        # message on the streams.
        names = tuple(f.name for f in self.proto_type.DESCRIPTOR.fields)
        object.__setattr__(
            self, "_to_wire", tuple((n, self.converters[n].to_wire) for n in self.converters)
        )
        object.__setattr__(self, "_plain", tuple(n for n in names if n not in self.converters))
        object.__setattr__(
            self, "_from_wire", tuple((n, self.converters[n].from_wire) for n in self.converters)
        )

    def to_proto(self, value: T) -> Message:
        if type(value) is not self.core_type:
            raise TypeError(f"expected {self.core_type.__name__}, got {type(value).__name__}")
        wire: dict[str, Any] = {name: getattr(value, name) for name in self._plain}
        for name, to_wire in self._to_wire:
            wire[name] = to_wire(getattr(value, name))
        try:
            return self.proto_type(**wire)
        except (TypeError, ValueError) as error:
            # e.g. a negative or too large integer for an unsigned 64-bit field
            raise CodecError(f"cannot encode {self.core_type.__name__}: {error}") from None

    def from_proto(self, proto: Message) -> T:
        if type(proto) is not self.proto_type:
            raise TypeError(
                f"expected {self.proto_type.DESCRIPTOR.full_name}, got {type(proto).__name__}"
            )
        core: dict[str, Any] = {name: getattr(proto, name) for name in self._plain}
        for name, from_wire in self._from_wire:
            core[name] = from_wire(getattr(proto, name))
        return self.core_type(**core)


def by_core_type(maps: Iterable[MessageMap[Any]]) -> dict[type, MessageMap[Any]]:
    return {m.core_type: m for m in maps}


def by_proto_type(maps: Iterable[MessageMap[Any]]) -> dict[type, MessageMap[Any]]:
    return {m.proto_type: m for m in maps}


def reject_unknown_fields(proto: Message) -> None:
    """Raise ``CodecError`` if ``proto`` or any message inside it carries fields this
    version's schema does not define.

    Every message decoded on a node passes here (each log entry is decoded on every
    node), so the common case is one test in C: a copy without unknown fields
    serializes to fewer bytes than the message exactly when it had some (each takes
    at least a tag and a value). Only then does the walk below name them."""
    known = type(proto)()
    known.CopyFrom(proto)
    known.DiscardUnknownFields()
    if known.ByteSize() == proto.ByteSize():
        return
    _name_unknown_fields(proto)
    raise CodecError(f"{proto.DESCRIPTOR.full_name} has unknown fields")


def _name_unknown_fields(proto: Message) -> None:
    unknown = UnknownFieldSet(proto)
    if len(unknown):
        numbers = sorted({f.field_number for f in unknown})
        raise CodecError(f"{proto.DESCRIPTOR.full_name} has unknown fields {numbers}")
    for descriptor, value in proto.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:  # a map: check message values
            values = descriptor.message_type.fields_by_name["value"]
            children = tuple(value.values()) if values.message_type is not None else ()
        else:
            children = value if descriptor.is_repeated else (value,)
        for child in children:
            _name_unknown_fields(child)


# ---------------------------------------------------------------------- core enums

KIND = enum_field(Kind, common_pb2.Kind, "KIND")
DECISION = enum_field(Decision, common_pb2.Decision, "DECISION")
STEP_OUTCOME = enum_field(StepOutcome, common_pb2.StepOutcome, "STEP_OUTCOME")


def decision_to_proto(decision: Decision | None) -> int:
    """A round's decision for a reply: ``DECISION_UNSPECIFIED`` while it has none."""
    return common_pb2.DECISION_UNSPECIFIED if decision is None else int(DECISION.to_wire(decision))


def decision_from_proto(number: int) -> Decision | None:
    """A reply's decision: None for ``DECISION_UNSPECIFIED`` (not decided yet);
    ``CodecError`` for a value this version has no name for."""
    if number == common_pb2.DECISION_UNSPECIFIED:
        return None
    decision: Decision = DECISION.from_wire(number)
    return decision


def kind_from_proto(number: int) -> Kind | None:
    """A reply's kind: None for ``KIND_UNSPECIFIED`` (a round the reply does not
    describe); ``CodecError`` for a value this version has no name for."""
    if number == common_pb2.KIND_UNSPECIFIED:
        return None
    kind: Kind = KIND.from_wire(number)
    return kind


TXN_ACTION: MessageMap[TxnAction] = MessageMap(TxnAction, common_pb2.TxnAction)


# ---------------------------------------------------------------------- participant messages


_MAPS: tuple[MessageMap[Any], ...] = (
    MessageMap(messages.Prepare, participant_pb2.Prepare, {"kind": KIND}),
    MessageMap(messages.Decide, participant_pb2.Decide, {"kind": KIND, "decision": DECISION}),
    MessageMap(messages.VoteReply, participant_pb2.VoteReply),
    MessageMap(messages.AckReply, participant_pb2.AckReply),
    MessageMap(messages.Refused, participant_pb2.Refused),
    MessageMap(messages.ExecuteStep, participant_pb2.ExecuteStep),
    MessageMap(messages.CompensateStep, participant_pb2.CompensateStep),
    MessageMap(messages.StepReply, participant_pb2.StepReply, {"outcome": STEP_OUTCOME}),
)
_BY_CORE_TYPE = by_core_type(_MAPS)
_BY_PROTO_TYPE = by_proto_type(_MAPS)

ParticipantMessage = ToParticipant | FromParticipant

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


def message_to_proto(message: ParticipantMessage) -> Any:
    mapping = _BY_CORE_TYPE.get(type(message))
    if mapping is None:
        raise TypeError(f"not a participant protocol message: {type(message).__name__}")
    return mapping.to_proto(message)


def message_from_proto(proto: Any) -> ParticipantMessage:
    mapping = _BY_PROTO_TYPE.get(type(proto))
    if mapping is None:
        raise TypeError(f"not a participant protocol message: {type(proto).__name__}")
    reject_unknown_fields(proto)
    message: ParticipantMessage = mapping.from_proto(proto)
    return message


def _group(fields: dict[str, type], items: Iterable[ParticipantMessage]) -> dict[str, list[Any]]:
    field_by_type = {message_type: name for name, message_type in fields.items()}
    grouped: dict[str, list[Any]] = {name: [] for name in fields}
    for item in items:
        name = field_by_type.get(type(item))
        if name is None:
            raise TypeError(f"{type(item).__name__} does not belong in this batch")
        grouped[name].append(message_to_proto(item))
    return grouped


def _ungroup(fields: dict[str, type], batch: Any) -> tuple[ParticipantMessage, ...]:
    reject_unknown_fields(batch)
    return tuple(message_from_proto(proto) for name in fields for proto in getattr(batch, name))


def coordinator_batch_size(batch: participant_pb2.CoordinatorBatch) -> int:
    """The messages in ``batch``, of every kind: what ``BATCH_ITEMS_MAX`` bounds."""
    return sum(len(getattr(batch, name)) for name in _COORDINATOR_BATCH_FIELDS)


def to_coordinator_batch(
    term: int, items: Iterable[ToParticipant]
) -> participant_pb2.CoordinatorBatch:
    """One batch; ``CodecError`` beyond ``BATCH_ITEMS_MAX`` messages (a participant
    would refuse it: split them first)."""
    try:
        batch = participant_pb2.CoordinatorBatch(
            term=term, **_group(_COORDINATOR_BATCH_FIELDS, items)
        )
    except ValueError as error:
        raise CodecError(f"cannot encode coordinator batch: {error}") from None
    size = coordinator_batch_size(batch)
    if size > BATCH_ITEMS_MAX:
        raise CodecError(f"a batch of {size} messages > BATCH_ITEMS_MAX={BATCH_ITEMS_MAX}")
    return batch


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
