"""The checkpoint store's table layout and record format.

Tables (over the key-value interface of participant_sdk/storage/kv.py):

- ``records``: generation (u64 big-endian) -> a sealed record: crc32 | kind byte
  (``F`` full, ``D`` delta) | payload (``payload`` below);
- ``info``: generation -> the sealed JSON of its ``CheckpointInfo``;
- ``ids``: visible checkpoint id -> generation;
- ``meta``: ``format_version`` (and the write-ahead log's epoch, kept by
  ``LoggedLmdbKv``).

Every record and info entry starts with the crc32 of the rest, checked on every read
from the store: a record that fails it raises ``CheckpointCorrupt`` and is reported,
never restored. crc32 catches the random damage a disk or a stray write does; it
would not stop someone who can write the file.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from participant_sdk.replay import REPLAY_KEY, Replay

__all__ = [
    "DELTA",
    "FULL",
    "RESERVED_PREFIX",
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointLimitError",
    "CheckpointLimits",
    "CheckpointNotFound",
    "Encoded",
    "check_meta",
    "checkpoint_of",
    "decode_info",
    "decode_payload",
    "encode_info",
    "encode_payload",
    "encode_state",
    "seal",
    "seq_key",
    "unseal",
]

# Reserved for the SDK (the replay recorder); agents' keys must not start with it.
RESERVED_PREFIX = "__concord_"
FORMAT_VERSION = 3  # 2: crc32 (was sha256), raw top-level text values; 3: the log
CHECKSUM_BYTES = 4
U32 = struct.Struct(">I")
# The order is part of the format: the write-ahead log names a table by its index.
TABLES = ("records", "info", "ids", "meta")


class CheckpointError(Exception):
    """The checkpoint store cannot do what was asked; the message says why."""


class CheckpointLimitError(CheckpointError, ValueError):
    """A named limit (``CheckpointLimits``) was exceeded."""


class CheckpointNotFound(CheckpointError, KeyError):
    """No visible checkpoint has this id (never taken, dropped, or pruned)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class CheckpointCorrupt(CheckpointError):
    """A record failed its checksum: it is reported and never restored."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointLimits:
    state_bytes_max: int = 16 << 20  # the encoded full state
    key_bytes_max: int = 256
    id_bytes_max: int = 128
    label_bytes_max: int = 256
    metadata_bytes_max: int = 4096  # JSON-encoded
    checkpoints_max: int = 256  # visible checkpoints; labelled ones count too
    map_size_bytes: int = 1 << 30
    # Verified records kept in memory, counted by their stored size (what they take
    # there too). A bigger record is not cached.
    cache_bytes_max: int = 32 << 20
    # The write-ahead log's file (LMDB backend): writes wait there, and in memory,
    # until it is full; a write bigger than the log goes to LMDB directly.
    wal_size_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointInfo:
    checkpoint_id: str
    generation: int  # the record's sequence number: increases with every save
    label: str
    metadata: Mapping[str, Any]
    txn_id: str
    created_ms: int
    kind: str  # "full" | "delta"
    state_bytes: int  # encoded size of the whole state
    stored_bytes: int  # size of this record on disk
    restored_from: str = ""  # set on the record a restore appended


@dataclass(frozen=True, kw_only=True, slots=True)
class Checkpoint:
    info: CheckpointInfo
    state: Mapping[str, Any]
    replay: Replay | None = None


# ---------------------------------------------------------------------- encoding


class Encoded:
    """A state encoded key by key, so deltas compare bytes and a full payload is a
    concatenation. Each value is ``(kind, raw)``: JSON text, raw bytes, or a long
    top-level str as raw UTF-8 (JSON escapes and unescapes a string char by char:
    ~2 us per KiB each way, the bulk of a save or load of a text-heavy state)."""

    __slots__ = ("size", "values")

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, bytes]] = {}
        self.size = 0


# Value kinds. Comparing (kind, raw) pairs keeps a delta exact when a value changes
# kind but not bytes (b"5" -> 5).
JSON, BYTES, TEXT = b"J", b"B", b"T"
# Shorter top-level strings stay in the JSON object: a raw entry costs more to parse.
_TEXT_RAW_CHARS_MIN = 256


def encode_state(state: Mapping[str, Any], limits: CheckpointLimits) -> Encoded:
    encoded = Encoded()
    values = encoded.values
    size = 0
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state keys are str, got {type(key).__name__}")
        key_bytes = len(key.encode())
        if not key_bytes or key_bytes > limits.key_bytes_max:
            raise CheckpointLimitError(
                f"state key {key[:40]!r} is {key_bytes} bytes; keys must be "
                f"1..key_bytes_max={limits.key_bytes_max} bytes"
            )
        if isinstance(value, str) and len(value) >= _TEXT_RAW_CHARS_MIN:
            # surrogatepass: any str round-trips, lone surrogates included.
            entry = (TEXT, value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, bytes | bytearray | memoryview):
            entry = (BYTES, bytes(value))
        else:
            try:
                raw = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"state[{key!r}] is not JSON-serialisable or bytes: {error}"
                ) from None
            entry = (JSON, raw)
        values[key] = entry
        size += key_bytes + len(entry[1]) + 8
    if size > limits.state_bytes_max:
        raise CheckpointLimitError(
            f"state is {size} bytes encoded > state_bytes_max={limits.state_bytes_max}: "
            "keep large blobs outside the agent state, or raise the limit"
        )
    encoded.size = size
    return encoded


def encode_payload(values: Mapping[str, tuple[bytes, bytes]], removed: Iterable[str]) -> bytes:
    """u32 length | JSON object of the JSON values | u32 length | removed keys,
    NUL-separated | then per raw value: kind | u32 length | key | u32 length | raw."""
    obj = (
        b"{"
        + b",".join(
            json.dumps(k).encode() + b":" + raw for k, (kind, raw) in values.items() if kind == JSON
        )
        + b"}"
    )
    gone = "\x00".join(sorted(removed)).encode()
    parts = [U32.pack(len(obj)), obj, U32.pack(len(gone)), gone]
    for key, (kind, raw) in values.items():
        if kind != JSON:
            key_raw = key.encode()
            parts += [kind, U32.pack(len(key_raw)), key_raw, U32.pack(len(raw)), raw]
    return b"".join(parts)


_JSON_DECODER = json.JSONDecoder()


def decode_payload(
    payload: memoryview,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(JSON values, raw values (str or bytes), removed keys). A memoryview: large
    values are decoded or copied once, straight from the record."""
    (n,) = U32.unpack_from(payload, 0)
    values: dict[str, Any] = _JSON_DECODER.decode(str(payload[4 : 4 + n], "utf-8"))
    raw_values: dict[str, Any] = {}
    at = 4 + n
    (m,) = U32.unpack_from(payload, at)
    removed = str(payload[at + 4 : at + 4 + m], "utf-8").split("\x00") if m else []
    at += 4 + m
    end = len(payload)
    while at < end:
        kind = payload[at : at + 1]
        (k,) = U32.unpack_from(payload, at + 1)
        key = str(payload[at + 5 : at + 5 + k], "utf-8")
        at += 5 + k
        (v,) = U32.unpack_from(payload, at)
        raw = payload[at + 4 : at + 4 + v]
        at += 4 + v
        if kind == TEXT:
            raw_values[key] = str(raw, "utf-8", "surrogatepass")
        elif kind == BYTES:
            raw_values[key] = bytes(raw)
        else:  # the checksum matched, so this is a writer's bug, not bit rot
            raise CheckpointCorrupt(f"unknown value kind {bytes(kind)!r} for state key {key!r}")
    return values, raw_values, removed


def seal(body: bytes) -> bytes:
    return U32.pack(zlib.crc32(body)) + body


def unseal(raw: bytes, what: str) -> memoryview:
    """The body of a sealed entry after checking its crc32 (a view: no copy)."""
    body = memoryview(raw)[CHECKSUM_BYTES:]
    if len(raw) < CHECKSUM_BYTES or U32.unpack_from(raw)[0] != zlib.crc32(body):
        raise CheckpointCorrupt(f"{what} failed its crc32 checksum: not restored")
    return body


def seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


# A record is: crc32 | kind byte (F/D) | payload.
FULL, DELTA = b"F", b"D"


def check_meta(
    limits: CheckpointLimits,
    label: str,
    metadata: Mapping[str, Any] | None,
    checkpoint_id: str | None,
) -> None:
    """Refuse a label, metadata or checkpoint id over its limit, or metadata that is
    not JSON."""
    if len(label.encode()) > limits.label_bytes_max:
        raise CheckpointLimitError(
            f"label is {len(label.encode())} bytes > label_bytes_max={limits.label_bytes_max}"
        )
    if checkpoint_id is not None:
        size = len(checkpoint_id.encode())
        if not size or size > limits.id_bytes_max:
            raise CheckpointLimitError(
                f"checkpoint id {checkpoint_id[:40]!r} must be 1..id_bytes_max="
                f"{limits.id_bytes_max} bytes"
            )
    try:
        meta = json.dumps(dict(metadata or {}), sort_keys=True).encode()
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {error}") from None
    if len(meta) > limits.metadata_bytes_max:
        raise CheckpointLimitError(
            f"metadata is {len(meta)} bytes > metadata_bytes_max={limits.metadata_bytes_max}"
        )


def encode_info(info: CheckpointInfo) -> bytes:
    """The sealed ``info`` entry of a record."""
    data = {name: getattr(info, name) for name in CheckpointInfo.__slots__}
    return seal(json.dumps(data, sort_keys=True).encode())


def decode_info(raw: bytes, seq: int) -> CheckpointInfo:
    data = json.loads(bytes(unseal(raw, f"checkpoint info generation {seq}")))
    return CheckpointInfo(**data)


def checkpoint_of(info: CheckpointInfo, state: dict[str, Any]) -> Checkpoint:
    """A loaded checkpoint: the replay recorder's entry taken out of the state."""
    raw_replay = state.pop(REPLAY_KEY, None)
    replay = None if raw_replay is None else Replay.from_json(raw_replay)
    return Checkpoint(info=info, state=state, replay=replay)
