"""Agent checkpoints: durable snapshots of an agent's own state, full plus deltas.

Theory of operation
-------------------
A *state* is a mapping of top-level str keys to JSON-serialisable values or bytes
(working memory, context, variables, plan). Each ``save`` appends one *record* with a
new sequence number, the checkpoint's *generation*:

- a **full** record holds the whole state;
- a **delta** record holds the keys changed or removed since the chain's *base*: the
  latest full record before it (a differential delta: each delta is taken against
  the base, not against the save just before it, so a restore reads at most two
  records: the base and the delta).

A full record is written every ``full_every_n`` saves, or when the delta would exceed
``delta_fraction_max`` of the full size; so a delta is never more than that share of
the state, and a delta chain's base is at most ``full_every_n`` saves back.
Every record (and every info entry) starts with the crc32 of the rest; it is checked
on every read from disk, and a record that fails it raises ``CheckpointCorrupt``: it is
reported, never restored. (crc32 catches the random damage a disk or a stray write
does, at ~4 GB/s; sha256 ran at ~1.8 GB/s and cost more than a whole SqliteSaver
read of a 64 KiB state. Neither would stop someone who can write the file.)

Records are immutable and a generation is never reused, so a record once read and
verified is kept in memory (``cache_bytes_max``, least recently used out): repeated
loads skip the disk read, the checksum and the decoding, and get their own copy.
``verify()`` always reads the disk; a record it finds damaged leaves the cache.

*Retention* decides which checkpoints stay visible (listed, restorable by id): the last
``keep_last_n``, every labelled one (``keep_labelled``), minus those dropped by hand or
by ``end_txn``. A record that is no longer visible is deleted as soon as no visible
checkpoint needs it as its base, so storage is bounded by ``2 * checkpoints_max``
records of at most ``state_bytes_max`` each. The
latest record (the *head*) is always kept: the next delta is taken against it.

``restore(id)`` appends a full record with the target's state (``restored_from`` set):
one atomic write, so a process killed during a restore comes back with the head it
had or with the restored state, never a mix. The higher layers (reversion.py) run
cleanup hooks and compensations after it, idempotently, and redo them on recovery.

Durability: ``LmdbCheckpointStore`` makes every save, restore, drop and ``end_txn``
durable before it returns, atomically, with one flush: each is one record of a
write-ahead log (participant_sdk/wal.py, one ``fdatasync``), and a full log moves into
LMDB in one commit opened with ``sync=True, metasync=True``. Writing LMDB directly
would cost two ordered flushes per save (data pages, then the meta page);
``metasync=False`` would save one, but then "a system crash may undo the last
committed transaction" (LMDB, MDB_NOMETASYNC). ``MemoryCheckpointStore`` has the same
semantics without durability (tests). One contract suite
(tests/rollback/test_checkpoint_contract.py) runs against both.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import marshal
import os
import struct
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import lmdb

from coordinator.lmdbfile import DamagedFile, check_data_file
from participant_sdk.replay import REPLAY_KEY, Replay
from participant_sdk.wal import LogError, WriteAheadLog

__all__ = [
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointLimitError",
    "CheckpointLimits",
    "CheckpointNotFound",
    "CheckpointPolicy",
    "CheckpointStore",
    "Checkpointer",
    "LmdbCheckpointStore",
    "MemoryCheckpointStore",
    "When",
    "checkpoints_dir",
    "should_checkpoint",
]

# Reserved for the SDK (the replay recorder); agents' keys must not start with it.
RESERVED_PREFIX = "__concord_"
FORMAT_VERSION = 3  # 2: crc32 (was sha256), raw top-level text values; 3: the log
_CHECKSUM_BYTES = 4
_U32 = struct.Struct(">I")
_TABLES = ("records", "info", "ids", "meta")


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
class CheckpointPolicy:
    """What kind of record to write and what to keep."""

    full_every_n: int = 16  # a full record at least every n saves
    delta_fraction_max: float = 0.5  # a delta bigger than this share of the full is written full
    keep_last_n: int = 32
    keep_labelled: bool = True  # labelled checkpoints survive keep_last_n (not drop/end_txn)

    def __post_init__(self) -> None:
        if self.full_every_n < 1 or self.keep_last_n < 1:
            raise ValueError("full_every_n and keep_last_n must be at least 1")
        if not 0.0 < self.delta_fraction_max <= 1.0:
            raise ValueError("delta_fraction_max must be in (0, 1]")


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


class _Encoded:
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
_JSON, _BYTES, _TEXT = b"J", b"B", b"T"
# Shorter top-level strings stay in the JSON object: a raw entry costs more to parse.
_TEXT_RAW_CHARS_MIN = 256


def _encode_state(state: Mapping[str, Any], limits: CheckpointLimits) -> _Encoded:
    encoded = _Encoded()
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
            entry = (_TEXT, value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, bytes | bytearray | memoryview):
            entry = (_BYTES, bytes(value))
        else:
            try:
                raw = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"state[{key!r}] is not JSON-serialisable or bytes: {error}"
                ) from None
            entry = (_JSON, raw)
        values[key] = entry
        size += key_bytes + len(entry[1]) + 8
    if size > limits.state_bytes_max:
        raise CheckpointLimitError(
            f"state is {size} bytes encoded > state_bytes_max={limits.state_bytes_max}: "
            "keep large blobs outside the agent state, or raise the limit"
        )
    encoded.size = size
    return encoded


def _payload(values: Mapping[str, tuple[bytes, bytes]], removed: Iterable[str]) -> bytes:
    """u32 length | JSON object of the JSON values | u32 length | removed keys,
    NUL-separated | then per raw value: kind | u32 length | key | u32 length | raw."""
    obj = (
        b"{"
        + b",".join(
            json.dumps(k).encode() + b":" + raw
            for k, (kind, raw) in values.items()
            if kind == _JSON
        )
        + b"}"
    )
    gone = "\x00".join(sorted(removed)).encode()
    parts = [_U32.pack(len(obj)), obj, _U32.pack(len(gone)), gone]
    for key, (kind, raw) in values.items():
        if kind != _JSON:
            key_raw = key.encode()
            parts += [kind, _U32.pack(len(key_raw)), key_raw, _U32.pack(len(raw)), raw]
    return b"".join(parts)


_JSON_DECODER = json.JSONDecoder()


def _decode_payload(
    payload: memoryview,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(JSON values, raw values (str or bytes), removed keys). A memoryview: large
    values are decoded or copied once, straight from the record."""
    (n,) = _U32.unpack_from(payload, 0)
    values: dict[str, Any] = _JSON_DECODER.decode(str(payload[4 : 4 + n], "utf-8"))
    raw_values: dict[str, Any] = {}
    at = 4 + n
    (m,) = _U32.unpack_from(payload, at)
    removed = str(payload[at + 4 : at + 4 + m], "utf-8").split("\x00") if m else []
    at += 4 + m
    end = len(payload)
    while at < end:
        kind = payload[at : at + 1]
        (k,) = _U32.unpack_from(payload, at + 1)
        key = str(payload[at + 5 : at + 5 + k], "utf-8")
        at += 5 + k
        (v,) = _U32.unpack_from(payload, at)
        raw = payload[at + 4 : at + 4 + v]
        at += 4 + v
        if kind == _TEXT:
            raw_values[key] = str(raw, "utf-8", "surrogatepass")
        elif kind == _BYTES:
            raw_values[key] = bytes(raw)
        else:  # the checksum matched, so this is a writer's bug, not bit rot
            raise CheckpointCorrupt(f"unknown value kind {bytes(kind)!r} for state key {key!r}")
    return values, raw_values, removed


def _seal(body: bytes) -> bytes:
    return _U32.pack(zlib.crc32(body)) + body


def _unseal(raw: bytes, what: str) -> memoryview:
    """The body of a sealed entry after checking its crc32 (a view: no copy)."""
    body = memoryview(raw)[_CHECKSUM_BYTES:]
    if len(raw) < _CHECKSUM_BYTES or _U32.unpack_from(raw)[0] != zlib.crc32(body):
        raise CheckpointCorrupt(f"{what} failed its crc32 checksum: not restored")
    return body


def _seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


# A record is: crc32 | kind byte (F/D) | payload.
_FULL, _DELTA = b"F", b"D"


# ---------------------------------------------------------------------- tables


class _Tx(ABC):
    @abstractmethod
    def get(self, table: str, key: bytes) -> bytes | None: ...

    @abstractmethod
    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def delete(self, table: str, key: bytes) -> None: ...

    @abstractmethod
    def scan(self, table: str) -> list[tuple[bytes, bytes]]: ...


@dataclass(slots=True)
class _Entry:
    """The in-memory index of one record (rebuilt from ``info`` on open)."""

    seq: int
    kind: bytes
    checkpoint_id: str
    label: str
    txn_id: str
    visible: bool
    base_seq: int  # the last full record at or before it; 0: none (damaged store)


@dataclass(slots=True)
class _Head:
    seq: int
    chain_len: int  # deltas since the last full record
    base: _Encoded = field(default_factory=_Encoded)  # the last full record's state


# A verified record held in memory: kind (F/D), its JSON values marshalled (in this
# process only: marshal.loads makes a fresh copy ~2.5x faster than json.loads
# decodes one), its raw values (str and bytes: immutable, shared) and removed keys.
_Record = tuple[bytes, bytes, dict[str, Any], list[str]]


class _RecordCache:
    """Records already read and checksum-verified, by generation; least recently
    used out first, at most ``bytes_max`` of stored size (an entry takes about its
    stored size). A record never changes once written and its generation is never
    reused, so an entry is right until the record is deleted (``discard``). Nothing
    mutable is shared with readers: each load unmarshals its own copy."""

    def __init__(self, bytes_max: int) -> None:
        self._bytes_max = bytes_max
        self._entries: OrderedDict[int, tuple[_Record, int]] = OrderedDict()
        self.bytes = 0

    def get(self, seq: int) -> _Record | None:
        entry = self._entries.get(seq)
        if entry is None:
            return None
        self._entries.move_to_end(seq)
        return entry[0]

    def fits(self, stored_bytes: int) -> bool:
        return stored_bytes <= self._bytes_max

    def put(self, seq: int, record: _Record, stored_bytes: int) -> None:
        if not self.fits(stored_bytes):
            return
        self.discard(seq)
        self._entries[seq] = (record, stored_bytes)
        self.bytes += stored_bytes
        while self.bytes > self._bytes_max:
            _, (_, size) = self._entries.popitem(last=False)
            self.bytes -= size

    def discard(self, seq: int) -> None:
        entry = self._entries.pop(seq, None)
        if entry is not None:
            self.bytes -= entry[1]


# ---------------------------------------------------------------------- interface


class CheckpointStore(ABC):
    """Durable checkpoints of one agent. Thread-safe; one writer at a time."""

    def __init__(
        self,
        policy: CheckpointPolicy | None = None,
        limits: CheckpointLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.policy = policy or CheckpointPolicy()
        self.limits = limits or CheckpointLimits()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._lock = threading.RLock()
        self._index: dict[int, _Entry] = {}
        self._head: _Head | None = None
        self._ids: dict[str, int] | None = None  # visible id -> seq, rebuilt on change
        self._infos: dict[int, CheckpointInfo] = {}
        self._cache = _RecordCache(self.limits.cache_bytes_max)

    # ------------------------------------------------------------ backend

    @abstractmethod
    @contextlib.contextmanager
    def _tx(self, write: bool) -> Iterator[_Tx]:
        """A transaction; for ``write``, committed (durably) on a clean exit."""

    def close(self) -> None:  # noqa: B027 (optional for backends holding nothing)
        """Release the store. Idempotent."""

    def _load_index(self) -> None:
        with self._tx(write=False) as tx:
            visible = {int.from_bytes(v, "big") for _, v in tx.scan("ids")}
            base_seq = 0
            for key, raw in tx.scan("info"):  # in generation order
                seq = int.from_bytes(key, "big")
                info = self._decode_info(raw, seq)
                self._infos[seq] = info
                kind = _FULL if info.kind == "full" else _DELTA
                if kind == _FULL:
                    base_seq = seq
                self._index[seq] = _Entry(
                    seq=seq,
                    kind=kind,
                    checkpoint_id=info.checkpoint_id,
                    label=info.label,
                    txn_id=info.txn_id,
                    visible=seq in visible,
                    base_seq=base_seq,
                )
            if self._index:
                head_seq = max(self._index)
                try:
                    chain = self._chain(head_seq)
                    base = self._materialise(chain[:1], tx)
                except CheckpointCorrupt:
                    # Still open (to list, inspect and verify); the next save is full.
                    self._head = _Head(seq=head_seq, chain_len=self.policy.full_every_n)
                    return
                encoded = _encode_state(base, CheckpointLimits(state_bytes_max=1 << 62))
                deltas = sum(1 for s in self._index if chain[0] < s <= head_seq)
                self._head = _Head(seq=head_seq, chain_len=deltas, base=encoded)

    # ------------------------------------------------------------ API

    def save(
        self,
        state: Mapping[str, Any],
        *,
        label: str = "",
        metadata: Mapping[str, Any] | None = None,
        checkpoint_id: str | None = None,
        txn_id: str = "",
        replay: Replay | None = None,
    ) -> CheckpointInfo:
        """Append a checkpoint of ``state`` (durable when this returns)."""
        for key in state:
            if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
                raise ValueError(f"state key {key!r}: the prefix {RESERVED_PREFIX!r} is reserved")
        if replay is not None:
            state = {**state, REPLAY_KEY: replay.to_json()}
        encoded = _encode_state(state, self.limits)
        return self._append(encoded, label, metadata, checkpoint_id, txn_id, restored_from="")

    def load(self, checkpoint_id: str) -> Checkpoint:
        """The checkpoint's state, every record of its chain checksum-verified."""
        with self._lock:
            seq = self._visible_seq(checkpoint_id)
            state = self._materialise(self._chain(seq))
            info = self._read_info(seq)
        return _checkpoint(info, state)

    def latest(self) -> Checkpoint | None:
        """The head: the last save or restore (visible or not), or None when empty."""
        with self._lock:
            if self._head is None:
                return None
            seq = self._head.seq
            state = self._materialise(self._chain(seq))
            info = self._read_info(seq)
        return _checkpoint(info, state)

    @property
    def generation(self) -> int:
        """The head's generation (0 when nothing was saved)."""
        head = self._head
        return 0 if head is None else head.seq

    def list(self) -> list[CheckpointInfo]:
        """Visible checkpoints, oldest first."""
        with self._lock:
            return [self._read_info(e.seq) for e in self._index.values() if e.visible]

    def info(self, checkpoint_id: str) -> CheckpointInfo:
        with self._lock:
            seq = self._visible_seq(checkpoint_id)
            return self._read_info(seq)

    def restore(self, checkpoint_id: str) -> Checkpoint:
        """Make the target's state the head again, atomically (one durable write)."""
        with self._lock:
            target = self._visible_seq(checkpoint_id)
            state = self._materialise(self._chain(target))
            encoded = _encode_state(state, CheckpointLimits(state_bytes_max=1 << 62))
            info = self._append(
                encoded,
                label="",
                metadata={"restored_generation": target},
                checkpoint_id=f"restore-{target}-at-{self.generation + 1}",
                txn_id="",
                restored_from=checkpoint_id,
                force_full=True,
            )
        return _checkpoint(info, state)

    def drop(self, checkpoint_id: str) -> None:
        """Hide one checkpoint now (labelled or not); its records go when unneeded."""
        with self._lock:
            seq = self._visible_seq(checkpoint_id)
            self._hide_and_prune(lambda e: e.seq == seq)

    def end_txn(self, txn_id: str) -> int:
        """Drop the unlabelled checkpoints taken for ``txn_id`` (it has ended)."""
        with self._lock:
            doomed = [e for e in self._index.values() if e.visible and e.txn_id == txn_id]
            doomed = [e for e in doomed if not (e.label and self.policy.keep_labelled)]
            seqs = {e.seq for e in doomed}
            if seqs:
                self._hide_and_prune(lambda e: e.seq in seqs)
            return len(seqs)

    def verify(self) -> list[str]:
        """Check every stored record and info entry on disk (not the cache); return
        the problems found. A bad record also leaves the cache: from now on loads of
        it fail, as they would after a restart."""
        problems = []
        with self._lock, self._tx(write=False) as tx:
            for seq in sorted(self._index):
                for table, what in (("records", "record"), ("info", "info")):
                    raw = tx.get(table, _seq_key(seq))
                    if raw is None:
                        problems.append(f"generation {seq}: {what} missing")
                        continue
                    try:
                        _unseal(raw, f"generation {seq} {what}")
                    except CheckpointCorrupt as error:
                        problems.append(str(error))
                        self._cache.discard(seq)
            wal = getattr(self, "_wal", None)  # the LMDB backend's write-ahead log
            if wal is not None:
                problems += wal.check()
        return problems

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "visible": sum(1 for e in self._index.values() if e.visible),
                "records": len(self._index),
                "generation": self.generation,
                "cache_bytes": self._cache.bytes,
            }

    # ------------------------------------------------------------ mechanics

    def _visible_seq(self, checkpoint_id: str) -> int:
        ids = self._ids
        if ids is None:
            ids = {e.checkpoint_id: e.seq for e in self._index.values() if e.visible}
            self._ids = ids
        seq = ids.get(checkpoint_id)
        if seq is not None and seq in self._index and self._index[seq].visible:
            return seq
        raise CheckpointNotFound(
            f"no checkpoint {checkpoint_id!r} here (dropped, pruned or never taken)"
        )

    def _chain(self, seq: int) -> list[int]:
        """The records to read for ``seq``: the last full one at or before it (its
        base), then the record itself when it is a delta."""
        entry = self._index.get(seq)
        if entry is None:
            raise CheckpointCorrupt(f"generation {seq} record is missing (damaged store)")
        if entry.kind == _FULL:
            return [seq]
        if not entry.base_seq:
            raise CheckpointCorrupt(
                f"generation {seq} has no full record before it (damaged store)"
            )
        return [entry.base_seq, seq]

    def _materialise(self, chain: list[int], tx: _Tx | None = None) -> dict[str, Any]:
        """The state of the last record of ``chain``: a fresh copy, sharing nothing
        mutable with the cache or another load. Records not cached are read in one
        read transaction (``tx`` or a new one), checksum-verified, and cached."""
        cached = [self._cache.get(seq) for seq in chain]
        if tx is None and None in cached:
            with self._tx(write=False) as tx:
                return self._merge(chain, cached, tx)
        return self._merge(chain, cached, tx)

    def _merge(
        self, chain: list[int], cached: list[_Record | None], tx: _Tx | None
    ) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for seq, record in zip(chain, cached, strict=True):
            if record is not None:
                kind, json_values, raw_values, removed = record
                values = marshal.loads(json_values)  # a fresh copy
            else:
                assert tx is not None
                kind, values, raw_values, removed = self._read_record(tx, seq)
            values.update(raw_values)
            if kind == _FULL:
                state = values
            else:
                state.update(values)
                for key in removed:
                    state.pop(key, None)
        return state

    def _read_record(
        self, tx: _Tx, seq: int
    ) -> tuple[bytes, dict[str, Any], dict[str, Any], list[str]]:
        """Read, verify and cache one record; its values freshly decoded (not cached)."""
        raw = tx.get("records", _seq_key(seq))
        if raw is None:
            raise CheckpointCorrupt(f"generation {seq} record is missing (damaged store)")
        body = _unseal(raw, f"checkpoint record generation {seq}")
        kind = bytes(body[:1])
        json_values, raw_values, removed = _decode_payload(body[1:])
        if self._cache.fits(len(raw)):
            record = (kind, marshal.dumps(json_values), raw_values, removed)
            self._cache.put(seq, record, len(raw))
        return kind, json_values, raw_values, removed

    def _read_info(self, seq: int) -> CheckpointInfo:
        # Every info entry is read (and verified) at open or written by this process.
        info = self._infos.get(seq)
        if info is None:
            raise CheckpointCorrupt(f"generation {seq} info is missing (damaged store)")
        return info

    @staticmethod
    def _decode_info(raw: bytes, seq: int) -> CheckpointInfo:
        data = json.loads(bytes(_unseal(raw, f"checkpoint info generation {seq}")))
        return CheckpointInfo(**data)

    def _check_meta(
        self, label: str, metadata: Mapping[str, Any] | None, checkpoint_id: str | None
    ) -> bytes:
        if len(label.encode()) > self.limits.label_bytes_max:
            raise CheckpointLimitError(
                f"label is {len(label.encode())} bytes > label_bytes_max="
                f"{self.limits.label_bytes_max}"
            )
        if checkpoint_id is not None:
            size = len(checkpoint_id.encode())
            if not size or size > self.limits.id_bytes_max:
                raise CheckpointLimitError(
                    f"checkpoint id {checkpoint_id[:40]!r} must be 1..id_bytes_max="
                    f"{self.limits.id_bytes_max} bytes"
                )
            if any(e.visible and e.checkpoint_id == checkpoint_id for e in self._index.values()):
                raise CheckpointError(f"checkpoint id {checkpoint_id!r} already exists here")
        try:
            meta = json.dumps(dict(metadata or {}), sort_keys=True).encode()
        except (TypeError, ValueError) as error:
            raise TypeError(f"checkpoint metadata must be JSON-serialisable: {error}") from None
        if len(meta) > self.limits.metadata_bytes_max:
            raise CheckpointLimitError(
                f"metadata is {len(meta)} bytes > metadata_bytes_max="
                f"{self.limits.metadata_bytes_max}"
            )
        return meta

    def _append(
        self,
        encoded: _Encoded,
        label: str,
        metadata: Mapping[str, Any] | None,
        checkpoint_id: str | None,
        txn_id: str,
        *,
        restored_from: str,
        force_full: bool = False,
    ) -> CheckpointInfo:
        with self._lock:
            self._check_meta(label, metadata, checkpoint_id)
            head = self._head
            seq = 1 if head is None else head.seq + 1
            cp_id = checkpoint_id or f"cp-{seq}"
            kind = _FULL
            payload = b""
            if (
                head is not None
                and not force_full
                and head.chain_len + 1 < self.policy.full_every_n
            ):
                base = head.base
                changed = {k: v for k, v in encoded.values.items() if base.values.get(k) != v}
                removed = base.values.keys() - encoded.values.keys()
                delta = _payload(changed, removed)
                if len(delta) <= self.policy.delta_fraction_max * encoded.size:
                    kind, payload = _DELTA, delta
            if kind == _FULL:
                payload = _payload(encoded.values, ())
            record = _seal(kind + payload)
            info = CheckpointInfo(
                checkpoint_id=cp_id,
                generation=seq,
                label=label,
                metadata=dict(metadata or {}),
                txn_id=txn_id,
                created_ms=self._clock_ms(),
                kind="full" if kind == _FULL else "delta",
                state_bytes=encoded.size,
                stored_bytes=len(record),
                restored_from=restored_from,
            )
            info_raw = _seal(json.dumps(_info_dict(info), sort_keys=True).encode())
            entry = _Entry(
                seq=seq,
                kind=kind,
                checkpoint_id=cp_id,
                label=label,
                txn_id=txn_id,
                visible=True,
                base_seq=seq if head is None or kind == _FULL else self._index[head.seq].base_seq,
            )
            self._index[seq] = entry
            self._ids = None
            chain_len = 0 if kind == _FULL else head.chain_len + 1  # type: ignore[union-attr]
            try:
                hidden, visible_count = self._retention_victims()
                if visible_count - len(hidden) > self.limits.checkpoints_max:
                    raise CheckpointLimitError(
                        f"{self.limits.checkpoints_max} checkpoints are kept (labelled ones "
                        f"included) = checkpoints_max: drop some, or raise checkpoints_max"
                    )
                with self._tx(write=True) as tx:
                    tx.put("records", _seq_key(seq), record)
                    tx.put("info", _seq_key(seq), info_raw)
                    tx.put("ids", cp_id.encode(), _seq_key(seq))
                    self._prune(tx, hidden, head_seq=seq)
            except BaseException:
                del self._index[seq]
                self._restore_visibility()
                raise
            self._infos[seq] = info
            base_state = encoded if kind == _FULL else head.base  # type: ignore[union-attr]
            self._head = _Head(seq=seq, chain_len=chain_len, base=base_state)
            return info

    def _retention_victims(self) -> tuple[set[int], int]:
        """Visible checkpoints that retention hides now (beyond the last keep_last_n,
        unless labelled and keep_labelled), and how many are visible."""
        visible = [e for e in self._index.values() if e.visible]  # the index is in seq order
        old = visible[: max(0, len(visible) - self.policy.keep_last_n)]
        keep_labelled = self.policy.keep_labelled
        return {e.seq for e in old if not (e.label and keep_labelled)}, len(visible)

    def _hide_and_prune(self, doomed: Callable[[_Entry], bool]) -> None:
        hidden = {e.seq for e in self._index.values() if e.visible and doomed(e)}
        head_seq = self.generation
        try:
            with self._tx(write=True) as tx:
                self._prune(tx, hidden, head_seq=head_seq)
        except BaseException:
            self._restore_visibility()
            raise

    def _prune(self, tx: _Tx, hidden: set[int], *, head_seq: int) -> None:
        """Hide ``hidden`` and delete every record no visible checkpoint (nor the head)
        needs. Runs inside the caller's write transaction; the index follows it."""
        self._undo = {s: self._index[s].visible for s in hidden}
        for seq in hidden:
            entry = self._index[seq]
            entry.visible = False
            tx.delete("ids", entry.checkpoint_id.encode())
        # A visible record (or the head) needs itself and its base.
        needed = set()
        for entry in self._index.values():
            if entry.visible or entry.seq == head_seq:
                needed.add(entry.seq)
                needed.add(entry.base_seq)
        for seq in [s for s in self._index if s not in needed]:
            tx.delete("records", _seq_key(seq))
            tx.delete("info", _seq_key(seq))
            self._pending_delete.append(seq)

    _undo: dict[int, bool]
    _pending_delete: list[int]

    def _restore_visibility(self) -> None:
        self._ids = None
        for seq, visible in getattr(self, "_undo", {}).items():
            if seq in self._index:
                self._index[seq].visible = visible
        self._pending_delete = []

    def _committed(self) -> None:
        self._ids = None
        for seq in self._pending_delete:
            self._index.pop(seq, None)
            self._infos.pop(seq, None)
            self._cache.discard(seq)
        self._pending_delete = []
        self._undo = {}


def _info_dict(info: CheckpointInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in CheckpointInfo.__slots__}


def _checkpoint(info: CheckpointInfo, state: dict[str, Any]) -> Checkpoint:
    raw_replay = state.pop(REPLAY_KEY, None)
    replay = None if raw_replay is None else Replay.from_json(raw_replay)
    return Checkpoint(info=info, state=state, replay=replay)


# ---------------------------------------------------------------------- memory


class _MemoryTx(_Tx):
    def __init__(self, data: dict[str, dict[bytes, bytes]], write: bool) -> None:
        self._data = data
        self._write = write
        self._copies: dict[str, dict[bytes, bytes]] = {}

    def _read(self, table: str) -> dict[bytes, bytes]:
        return self._copies.get(table, self._data[table])

    def _mutable(self, table: str) -> dict[bytes, bytes]:
        if not self._write:
            raise CheckpointError("write in a read transaction")
        if table not in self._copies:
            self._copies[table] = dict(self._data[table])
        return self._copies[table]

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._read(table).get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._mutable(table)[key] = bytes(value)

    def delete(self, table: str, key: bytes) -> None:
        self._mutable(table).pop(key, None)

    def scan(self, table: str) -> list[tuple[bytes, bytes]]:
        data = self._read(table)
        return [(k, data[k]) for k in sorted(data)]


class MemoryCheckpointStore(CheckpointStore):
    """Same semantics as LMDB, in this process only (tests, demos)."""

    def __init__(
        self,
        policy: CheckpointPolicy | None = None,
        limits: CheckpointLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(policy, limits, clock_ms)
        self._data: dict[str, dict[bytes, bytes]] = {name: {} for name in _TABLES}
        self._pending_delete = []
        self._undo = {}

    @contextlib.contextmanager
    def _tx(self, write: bool) -> Iterator[_Tx]:
        tx = _MemoryTx(self._data, write)
        yield tx
        if write:
            self._data = {**self._data, **tx._copies}
            self._committed()

    def corrupt_for_tests(self, generation: int) -> None:
        """Flip one payload byte of a record (the contract suite's corruption test),
        and forget it was read: damage under an open store shows on its next read."""
        self._cache.discard(generation)
        raw = bytearray(self._data["records"][_seq_key(generation)])
        raw[-1] ^= 0xFF
        self._data["records"][_seq_key(generation)] = bytes(raw)


# ---------------------------------------------------------------------- lmdb


def checkpoints_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Where a participant's checkpoints live: its own LMDB env, beside (not inside)
    participant_sdk/store.py's env, so that store's format is untouched."""
    return Path(data_dir) / "rollback" / "checkpoints"


class _LoggedTx(_Tx):
    """A transaction over LMDB and the log's overlay. Reads see this transaction's
    writes, then what the log holds, then LMDB; writes stay here until commit."""

    def __init__(
        self, txn: lmdb.Transaction, dbs: Mapping[str, Any], overlay: Mapping[_Key, bytes | None]
    ) -> None:
        self._txn = txn
        self._dbs = dbs
        self._overlay = overlay
        self.writes: dict[_Key, bytes | None] = {}

    def get(self, table: str, key: bytes) -> bytes | None:
        slot = (table, key)
        if slot in self.writes:
            return self.writes[slot]
        if slot in self._overlay:
            return self._overlay[slot]
        value = self._txn.get(key, db=self._dbs[table])
        return None if value is None else bytes(value)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.writes[(table, key)] = value

    def delete(self, table: str, key: bytes) -> None:
        self.writes[(table, key)] = None

    def scan(self, table: str) -> list[tuple[bytes, bytes]]:
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            rows = {bytes(k): bytes(v) for k, v in cursor}
        for layer in (self._overlay, self.writes):
            for (name, key), value in layer.items():
                if name != table:
                    continue
                if value is None:
                    rows.pop(key, None)
                else:
                    rows[key] = value
        return sorted(rows.items())


_Key = tuple[str, bytes]  # (table, key)
_OP = struct.Struct(">cBHI")  # put/delete, table index, key length, value length
_PUT, _DELETE = b"P", b"D"


def _encode_writes(writes: Mapping[_Key, bytes | None]) -> bytes:
    parts = []
    for (table, key), value in writes.items():
        op = _DELETE if value is None else _PUT
        value = value or b""
        parts += [_OP.pack(op, _TABLES.index(table), len(key), len(value)), key, value]
    return b"".join(parts)


def _decode_writes(body: bytes) -> dict[_Key, bytes | None]:
    writes: dict[_Key, bytes | None] = {}
    offset = 0
    while offset < len(body):
        op, table, key_len, value_len = _OP.unpack_from(body, offset)
        offset += _OP.size
        key = body[offset : offset + key_len]
        offset += key_len
        value = body[offset : offset + value_len]
        offset += value_len
        writes[(_TABLES[table], key)] = None if op == _DELETE else value
    return writes


class LmdbCheckpointStore(CheckpointStore):
    """LMDB behind a write-ahead log (participant_sdk/wal.py): a write returns once
    it is flushed to the log (one ``fdatasync``); when the log is full, what it holds
    goes into LMDB in one synced commit (``sync=True, metasync=True``) that also
    raises the log's epoch, and the log starts again. Until then reads find those
    writes in memory (the *overlay*, at most ``wal_size_bytes`` of them). Opening
    replays the log and moves it into LMDB before anything else.

    ``path`` is the env directory (``checkpoints_dir(data_dir)`` for a participant).
    One process writes it (an exclusive lock); ``readonly=True`` opens it beside a
    running writer, for inspection (the CLI): a view of the store as it was then."""

    _WAL_NAME = "wal"
    _EPOCH_KEY = b"wal_epoch"

    def __init__(
        self,
        path: str | os.PathLike[str],
        policy: CheckpointPolicy | None = None,
        limits: CheckpointLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
        *,
        readonly: bool = False,
    ) -> None:
        super().__init__(policy, limits, clock_ms)
        self.path = Path(path)
        self.readonly = readonly
        self._closed = False
        self._failed: str | None = None
        self._pending_delete = []
        self._undo = {}
        self._overlay: dict[_Key, bytes | None] = {}
        self._wal: WriteAheadLog | None = None
        self._lock_file = None
        if readonly:
            if not (self.path / "data.mdb").exists():
                raise CheckpointError(f"no checkpoint store at {self.path}")
        else:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_file = open(self.path / "concord.lock", "a+b")  # noqa: SIM115
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock_file.close()
                raise CheckpointError(
                    f"checkpoint store {self.path} is in use by another process"
                ) from None
        try:
            check_data_file(self.path / "data.mdb")
            self._env = lmdb.open(
                str(self.path),
                mode=0o600,  # data and lock files: this user's only
                map_size=self.limits.map_size_bytes,
                max_dbs=len(_TABLES),
                sync=True,
                metasync=True,
                readonly=readonly,
                lock=True,
            )
            self._dbs = {
                name: self._env.open_db(name.encode(), create=not readonly) for name in _TABLES
            }
            if readonly:
                self._read_log()
            else:
                self._check_format()
                self._recover_log()
            self._load_index()
        except (lmdb.Error, OSError, LogError, DamagedFile) as error:
            self.close()
            raise CheckpointError(f"checkpoint store {self.path}: {error}") from None
        except BaseException:
            self.close()
            raise

    def _check_format(self) -> None:
        with self._env.begin(write=True) as txn:
            version = txn.get(b"format_version", db=self._dbs["meta"])
            # Format 2 had no log: the same tables, opened here as an empty log.
            if version is not None and int(bytes(version)) not in (2, FORMAT_VERSION):
                raise CheckpointError(
                    f"checkpoint store {self.path} has format {bytes(version)!r}, this SDK "
                    f"reads {FORMAT_VERSION}"
                )
            if version is None or int(bytes(version)) != FORMAT_VERSION:
                txn.put(b"format_version", str(FORMAT_VERSION).encode(), db=self._dbs["meta"])

    def _epoch(self) -> int:
        with self._env.begin() as txn:
            raw = txn.get(self._EPOCH_KEY, db=self._dbs["meta"])
        return 0 if raw is None else int(bytes(raw))

    def _recover_log(self) -> None:
        """Replay what the log acknowledged and move it into LMDB, so a crash at any
        point (mid-append, mid-move) comes back with every acknowledged write."""
        self._wal = WriteAheadLog(
            self.path / self._WAL_NAME, self.limits.wal_size_bytes, self._epoch()
        )
        try:
            bodies = self._wal.replay()
        except LogError as error:
            self._wal.close()
            raise CheckpointCorrupt(f"checkpoint store {self.path}: {error}") from None
        for body in bodies:
            self._overlay.update(_decode_writes(body))
        self._move_log({})

    def _read_log(self) -> None:
        """Read-only: the log's records of LMDB's current epoch. A writer moving the
        log meanwhile changes the epoch: read again (bounded)."""
        path = self.path / self._WAL_NAME
        for _ in range(_READ_LOG_ATTEMPTS_MAX):
            epoch = self._epoch()
            log = WriteAheadLog(path, self.limits.wal_size_bytes, epoch, readonly=True)
            try:
                bodies = log.replay()
            except LogError as error:
                raise CheckpointCorrupt(f"checkpoint store {self.path}: {error}") from None
            finally:
                log.close()
            if self._epoch() == epoch:
                for body in bodies:
                    self._overlay.update(_decode_writes(body))
                return
        raise CheckpointError(
            f"checkpoint store {self.path} changed under every read of its log: try again"
        )

    @contextlib.contextmanager
    def _tx(self, write: bool) -> Iterator[_Tx]:
        if self._closed:
            raise CheckpointError(f"checkpoint store {self.path} is closed")
        if write and self.readonly:
            raise CheckpointError(f"checkpoint store {self.path} is open read-only")
        if write and self._failed is not None:
            raise CheckpointError(self._failed)
        with self._env.begin() as txn:
            tx = _LoggedTx(txn, self._dbs, self._overlay)
            yield tx
        if write and tx.writes:
            self._commit(tx.writes)
        if write:
            self._committed()

    def _commit(self, writes: dict[_Key, bytes | None]) -> None:
        """Durable when this returns: in the log, or (log full) in LMDB."""
        assert self._wal is not None
        try:
            if self._wal.append(_encode_writes(writes)):
                self._overlay.update(writes)
                return
        except OSError as error:
            # After a failed write or flush the file's state is unknown: writing on
            # could acknowledge what is lost. Reopening replays what is intact.
            self._failed = (
                f"checkpoint store {self.path}: writing its log failed ({error}); "
                f"close and reopen the store"
            )
            raise CheckpointError(self._failed) from None
        self._move_log(writes)

    def _move_log(self, writes: Mapping[_Key, bytes | None]) -> None:
        """The overlay and ``writes`` into LMDB with the next epoch, in one synced
        commit; then the log starts again, empty."""
        assert self._wal is not None
        if not self._overlay and not writes and self._wal.used_bytes == 0:
            self._wal.reset(self._wal.epoch)  # nothing to move (a resized log is replaced)
            return
        epoch = self._wal.epoch + 1
        try:
            with self._env.begin(write=True) as txn:
                for layer in (self._overlay, writes):
                    for (table, key), value in layer.items():
                        if value is None:
                            txn.delete(key, db=self._dbs[table])
                        else:
                            txn.put(key, value, db=self._dbs[table])
                txn.put(self._EPOCH_KEY, str(epoch).encode(), db=self._dbs["meta"])
        except lmdb.MapFullError:
            raise CheckpointLimitError(
                f"checkpoint store {self.path} is full (map_size_bytes="
                f"{self.limits.map_size_bytes}): drop checkpoints or raise map_size_bytes"
            ) from None
        self._overlay.clear()
        self._wal.reset(epoch)

    def corrupt_for_tests(self, generation: int) -> None:
        """Flip one payload byte of a record in LMDB (moving the log there first)."""
        self._cache.discard(generation)
        with self._lock:
            self._move_log({})
            with self._env.begin(write=True) as txn:
                raw = bytearray(txn.get(_seq_key(generation), db=self._dbs["records"]))
                raw[-1] ^= 0xFF
                txn.put(_seq_key(generation), bytes(raw), db=self._dbs["records"])

    def close(self) -> None:
        """Release the store. What the log holds stays there (the next open moves it)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            if self._wal is not None:
                self._wal.close()
            env = getattr(self, "_env", None)
            if env is not None:
                env.close()
        if self._lock_file is not None:
            self._lock_file.close()


_READ_LOG_ATTEMPTS_MAX = 5


# ---------------------------------------------------------------------- when


class When(Enum):
    """Moments a ``Checkpointer`` can checkpoint at."""

    STEP = "step"
    TOOL_CALL = "tool_call"
    MUTATIONS = "mutations"  # every ``every_n_mutations`` mutations
    MANUAL = "manual"  # only explicit ``checkpoint()`` calls (always allowed)


def should_checkpoint(
    when: frozenset[When], event: When, mutations_since: int, every_n_mutations: int
) -> bool:
    """Pure: does ``event`` call for a checkpoint under policy ``when``?"""
    if event is When.MANUAL:
        return True
    if event is When.MUTATIONS:
        return When.MUTATIONS in when and mutations_since >= every_n_mutations
    return event in when


class Checkpointer:
    """Applies a 'when' policy: call ``step``, ``tool_call`` or ``mutated`` at those
    moments with the current state; it saves when the policy says so."""

    def __init__(
        self,
        store: CheckpointStore,
        when: frozenset[When] = frozenset({When.STEP}),
        *,
        every_n_mutations: int = 100,
        txn_id: str = "",
    ) -> None:
        if every_n_mutations < 1:
            raise ValueError("every_n_mutations must be at least 1")
        self.store = store
        self.when = when
        self.every_n_mutations = every_n_mutations
        self.txn_id = txn_id
        self._mutations = 0

    def _maybe(self, event: When, state: Mapping[str, Any], label: str) -> CheckpointInfo | None:
        if not should_checkpoint(self.when, event, self._mutations, self.every_n_mutations):
            return None
        self._mutations = 0
        return self.store.save(
            state, label=label, metadata={"when": event.value}, txn_id=self.txn_id
        )

    def step(self, state: Mapping[str, Any], label: str = "") -> CheckpointInfo | None:
        return self._maybe(When.STEP, state, label)

    def tool_call(self, state: Mapping[str, Any], label: str = "") -> CheckpointInfo | None:
        return self._maybe(When.TOOL_CALL, state, label)

    def mutated(self, state: Mapping[str, Any], count: int = 1) -> CheckpointInfo | None:
        self._mutations += count
        return self._maybe(When.MUTATIONS, state, "")

    def checkpoint(self, state: Mapping[str, Any], label: str = "") -> CheckpointInfo:
        info = self._maybe(When.MANUAL, state, label)
        assert info is not None
        return info
