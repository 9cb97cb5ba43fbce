"""Table-driven mapping between frozen core dataclasses and protobuf messages.

Each wire type is described once, by a ``MessageMap``: the dataclass, the protobuf
class, and converters for the few fields that are not plain scalars (repeated fields,
enums, nested messages). Everything else is copied by name. When a map is built it
checks that the dataclass and the protobuf message have exactly the same field names,
so a field added on one side only fails at import time, not in production.

Decoding is strict: a message with fields this version does not know, an unset (zero)
enum or an enum value we have no name for is rejected with ``CodecError``. Replicas
apply entries deterministically; silently dropping what we do not understand could
make two replicas of different versions diverge.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


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

    def to_proto(self, value: T) -> Message:
        if type(value) is not self.core_type:
            raise TypeError(f"expected {self.core_type.__name__}, got {type(value).__name__}")
        wire: dict[str, Any] = {}
        for f in dataclasses.fields(value):  # type: ignore[arg-type]
            converter = self.converters.get(f.name)
            raw = getattr(value, f.name)
            wire[f.name] = converter.to_wire(raw) if converter else raw
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
        core: dict[str, Any] = {}
        for name in (f.name for f in self.proto_type.DESCRIPTOR.fields):
            converter = self.converters.get(name)
            raw = getattr(proto, name)
            core[name] = converter.from_wire(raw) if converter else raw
        return self.core_type(**core)


def by_core_type(maps: Iterable[MessageMap[Any]]) -> dict[type, MessageMap[Any]]:
    return {m.core_type: m for m in maps}


def by_proto_type(maps: Iterable[MessageMap[Any]]) -> dict[type, MessageMap[Any]]:
    return {m.proto_type: m for m in maps}


def reject_unknown_fields(proto: Message) -> None:
    """Raise ``CodecError`` if ``proto`` or any message inside it carries fields this
    version's schema does not define."""
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
            reject_unknown_fields(child)
