"""How ``ConcordSaver`` lays out a graph's checkpoints in its store: the tables,
the keys, the values, and the deletion of checkpoints with what only they refer to.

Keys are length-prefixed UTF-8 parts (``make_key``), so a prefix of parts selects
exactly those parts. Every value but the ``runs`` index is sealed (``seal``: a crc32
checked on every read). The tables (langgraph.py's docstring tells what each holds):
``checkpoints``, ``blobs``, ``writes``, ``latest``, ``runs`` and ``meta``.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from langgraph.checkpoint.base import Checkpoint, CheckpointMetadata
from langgraph.checkpoint.serde.base import SerializerProtocol

from participant_sdk.storage.checkpoint_format import U32, CheckpointError, seal, unseal
from participant_sdk.storage.kv import Tx

TABLES = ("checkpoints", "blobs", "writes", "latest", "runs", "meta")
FORMAT_VERSION = 1
_LEN = struct.Struct(">I")
_IDX = struct.Struct(">q")


def make_key(*parts: str) -> bytes:
    """Length-prefixed UTF-8 parts: a prefix of parts selects exactly those parts."""
    out = bytearray()
    for part in parts:
        raw = part.encode()
        out += _LEN.pack(len(raw)) + raw
    return bytes(out)


def split_key(raw: bytes, count: int) -> tuple[list[str], bytes]:
    """The first ``count`` parts of a key, and what follows them."""
    parts = []
    at = 0
    for _ in range(count):
        (size,) = _LEN.unpack_from(raw, at)
        at += _LEN.size
        parts.append(raw[at : at + size].decode())
        at += size
    return parts, raw[at:]


def pack(*fields: bytes) -> bytes:
    """Length-prefixed fields, each copied once, into the result."""
    parts: list[bytes] = []
    for field in fields:
        parts += (_LEN.pack(len(field)), field)
    return b"".join(parts)


def sealed(*fields: bytes) -> bytes:
    """``seal(pack(*fields))``, each field copied once (the crc32 runs over the parts)."""
    parts = [b""]
    crc = 0
    for field in fields:
        size = _LEN.pack(len(field))
        crc = zlib.crc32(field, zlib.crc32(size, crc))
        parts += (size, field)
    parts[0] = U32.pack(crc)
    return b"".join(parts)


def unpack(body: bytes | memoryview) -> list[bytes]:
    """The fields ``pack`` made."""
    fields = []
    at = 0
    view = memoryview(body)
    while at < len(view):
        (size,) = _LEN.unpack_from(view, at)
        at += _LEN.size
        fields.append(bytes(view[at : at + size]))
        at += size
    return fields


@functools.lru_cache(maxsize=1024)
def channel_key(channel: str) -> bytes:
    """``make_key(channel)``, remembered: a graph has few channels."""
    return make_key(channel)


def version_part(version: Any) -> str:
    """A channel version as a key part (LangGraph's are int, float or str)."""
    if type(version) is str:
        return version
    if isinstance(version, bool) or not isinstance(version, (int, float, str)):
        raise CheckpointError(f"channel version {version!r}: not an int, float or str")
    return f"{type(version).__name__[0]}{version!r}" if not isinstance(version, str) else version


EMPTY_BLOB = sealed(b"empty", b"")  # a channel stored empty at a version


def typed(value: tuple[str, bytes]) -> tuple[bytes, bytes]:
    """A serde's (type, data) as two fields."""
    return value[0].encode(), value[1]


class PendingWrites:
    """The pending writes of one checkpoint: (task_id, idx) -> (channel, type, data,
    task_path), one sealed value."""

    @staticmethod
    def decode(raw: bytes | None, what: str) -> dict[tuple[str, int], tuple[str, str, bytes, str]]:
        if raw is None:
            return {}
        fields = unpack(unseal(raw, what))
        out = {}
        for at in range(0, len(fields), 6):
            task_id, idx, channel, type_, data, path = fields[at : at + 6]
            out[(task_id.decode(), _IDX.unpack(idx)[0])] = (
                channel.decode(),
                type_.decode(),
                data,
                path.decode(),
            )
        return out

    @staticmethod
    def encode(writes: Mapping[tuple[str, int], tuple[str, str, bytes, str]]) -> bytes:
        parts: list[bytes] = []
        for (task_id, idx), (channel, type_, data, path) in writes.items():
            parts += [
                task_id.encode(),
                _IDX.pack(idx),
                channel.encode(),
                type_.encode(),
                data,
                path.encode(),
            ]
        return sealed(*parts)


def stored_checkpoint(serde: SerializerProtocol, raw: bytes, checkpoint_id: str) -> Checkpoint:
    """The checkpoint (without its channel values) of a ``checkpoints`` value."""
    _, c_type, c_data, _, _ = unpack(unseal(raw, f"checkpoint {checkpoint_id}"))
    checkpoint: Checkpoint = serde.loads_typed((c_type.decode(), c_data))
    return checkpoint


def stored_metadata(
    serde: SerializerProtocol, raw: bytes, checkpoint_id: str
) -> CheckpointMetadata:
    """The metadata of a ``checkpoints`` value."""
    _, _, _, m_type, m_data = unpack(unseal(raw, f"checkpoint {checkpoint_id}"))
    metadata: CheckpointMetadata = serde.loads_typed((m_type.decode(), m_data))
    return metadata


def delete_checkpoints(
    tx: Tx, serde: SerializerProtocol, thread_id: str, ns: str, ids: set[str]
) -> None:
    """Delete ``ids`` of one (thread, ns) with their writes and run index entries,
    then every blob no remaining checkpoint refers to; ``latest`` follows."""
    where = make_key(thread_id, ns)
    for checkpoint_id in ids:
        raw = tx.get("checkpoints", where + checkpoint_id.encode())
        if raw is None:
            continue
        metadata = stored_metadata(serde, raw, checkpoint_id)
        tx.delete("checkpoints", where + checkpoint_id.encode())
        tx.delete("writes", where + checkpoint_id.encode())
        if metadata.get("run_id"):
            tx.delete("runs", make_key(str(metadata["run_id"])) + where + checkpoint_id.encode())
    needed: set[bytes] = set()
    remaining = []
    for key, raw in list(tx.scan("checkpoints", where)):
        remaining.append(key[len(where) :].decode())
        checkpoint = stored_checkpoint(serde, raw, remaining[-1])
        for channel, version in checkpoint["channel_versions"].items():
            needed.add(where + make_key(channel) + version_part(version).encode())
    for key in [k for k, _ in tx.scan("blobs", where) if k not in needed]:
        tx.delete("blobs", key)
    if remaining:
        tx.put("latest", where, seal(max(remaining).encode()))
    else:
        tx.delete("latest", where)
