"""The participant store's table layout: what each table holds and how its keys and
values are encoded, over the key-value interface (participant_sdk/storage/kv.py).

Tables:

- ``records``: round id -> ``RoundRecord`` (JSON)
- ``steps``: ``saga id#step`` -> ``StepRecord`` (JSON; payload and result base64)
- ``meta``: term, participant id, format version, commit sequence, audit head and
  anchor, agent restores pending
- ``state``: the agent's own key-value state
- ``held``: what branches that voted YES hold until their decision, ``txn id \\0 key``:
  a value to put (``P``), a delete (``D``), an add (``A`` + JSON) or a key only read
  (``R``); ``held_scans``: the prefixes they scanned, ``txn id \\0 prefix``
- ``versions``: key -> the version of its last committed write (``isolation.Version``:
  the commit sequence in ``meta`` and the writer's txn id); a deleted key keeps its
  version (a tombstone) until no active branch can have read it, ``tombstones`` lists
  them by sequence number for pruning
- ``checkpoints``: full copies of ``state``, ``checkpoint id \\0 key``
- ``checkpoint_info``: checkpoint id -> label and metadata (JSON)
- ``audit``: sequence number -> hash-chained JSON event

Every value is sealed with a CRC-32 of the table, key and value (``SealedTx``),
checked on every read: a damaged value is named (table, key, store) and refused,
never served as data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.core.types import Kind
from participant_sdk.core import LocalState, RoundRecord, StepRecord, StepState
from participant_sdk.isolation import NEVER_WRITTEN, Add, Version, Write
from participant_sdk.storage.kv import Tx

# ``json.dumps(value, sort_keys=True)`` and the audit hash's canonical form, with the
# encoder made once (``json.dumps`` builds one per call when given options).
_SORTED_JSON = json.JSONEncoder(sort_keys=True)
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))

__all__ = [
    "AuditEvent",
    "CheckpointInfo",
    "DamagedValue",
    "SealedTx",
    "StoreError",
    "StoreLimitError",
    "StoreLimits",
    "Writes",
]

# key -> new value, None to delete the key, or an Add.
Writes = Mapping[str, Write]

# upgraded on open: values sealed; its keys read as never written, which is what they
# are to any branch begun after).
FORMAT_VERSION = 2
UPGRADABLE_RAW = (b"1",)  # format_version values (stored bare) upgraded on open
SEP = b"\x00"
TABLES = (
    "records",
    "meta",
    "state",
    "held",
    "checkpoints",
    "checkpoint_info",
    "audit",
    "steps",
    "versions",
    "tombstones",
    "held_scans",
)
GENESIS_HASH = "0" * 64
PUT, DELETE, ADD, READ = b"P", b"D", b"A", b"R"
AGENT_RESTORE = b"agent_restore_pending/"


class StoreError(Exception):
    """The store cannot be used as asked: wrong or damaged data dir, a full map, a
    broken invariant. The message names the path (if any) and what to do."""


class StoreLimitError(StoreError, ValueError):
    """A named size limit (``StoreLimits``) was exceeded."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreLimits:
    key_bytes_max: int = 256  # LMDB keys are at most 511 bytes, ids and separator included
    id_bytes_max: int = 128
    value_bytes_max: int = 1 << 20
    writes_per_branch_max: int = 10_000
    reads_per_branch_max: int = 10_000  # keys read plus prefixes scanned
    checkpoints_max: int = 64
    audit_events_max: int = 100_000  # oldest events are pruned; the chain stays checkable
    audit_detail_bytes_max: int = 4096  # detail of one audit event from ``audit_event``
    map_size_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be positive, got {getattr(self, name)}")
        if self.key_bytes_max + self.id_bytes_max + 1 > 511:
            raise ValueError("key_bytes_max + id_bytes_max + 1 must fit LMDB's 511-byte keys")

    def check_key(self, key: str) -> bytes:
        if not isinstance(key, str):
            raise TypeError(f"state keys are str, got {type(key).__name__}")
        encoded = key.encode()
        if not encoded or len(encoded) > self.key_bytes_max:
            raise StoreLimitError(
                f"key {key[:40]!r} is {len(encoded)} bytes; keys must be 1..key_bytes_max="
                f"{self.key_bytes_max} bytes"
            )
        return encoded

    def check_id(self, what: str, value: str) -> bytes:
        encoded = value.encode()
        if not encoded or len(encoded) > self.id_bytes_max or SEP in encoded:
            raise StoreLimitError(
                f"{what} {value[:40]!r} must be 1..id_bytes_max={self.id_bytes_max} bytes "
                "without NUL"
            )
        return encoded

    def check_value(self, key: str, value: Write) -> None:
        if value is None or isinstance(value, Add):
            return
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"value of {key!r} must be bytes, got {type(value).__name__}")
        if len(value) > self.value_bytes_max:
            raise StoreLimitError(
                f"value of {key[:40]!r} is {len(value)} bytes > value_bytes_max="
                f"{self.value_bytes_max}"
            )

    def check_writes(self, txn_id: str, writes: Writes) -> None:
        if len(writes) > self.writes_per_branch_max:
            raise StoreLimitError(
                f"txn {txn_id!r} stages {len(writes)} writes > writes_per_branch_max="
                f"{self.writes_per_branch_max}"
            )
        for key, value in writes.items():
            self.check_key(key)
            self.check_value(key, value)


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointInfo:
    checkpoint_id: str
    label: str
    keys: int
    taken_ms: int


# Audit event kinds: written by the store itself, and accepted from ``audit_event``.
AUDIT_STORE_EVENTS = frozenset(
    {"vote", "decision_applied", "checkpoint_taken", "checkpoint_dropped",
     "checkpoint_restored", "term"}
)  # fmt: skip
AUDIT_AGENT_EVENTS = frozenset(
    {"checkpoint_taken", "checkpoint_restored", "effect_executed", "compensation_run",
     "compensation_failed", "trigger_fired", "breaker_tripped", "breaker_reset",
     "verification_failed", "note"}
)  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEvent:
    seq: int
    at_ms: int
    event: str  # vote | decision_applied | checkpoint_taken | ... | term
    round_id: str
    detail: str
    prev_hash: str
    hash: str


# ---------------------------------------------------------------------- encoding


def encode_record(record: RoundRecord) -> bytes:
    fields: dict[str, object] = {
        "round_id": record.round_id,
        "kind": record.kind.value,
        "state": record.state.value,
        "voted_yes": record.voted_yes,
        "reason": record.reason,
        "checkpoint_id": record.checkpoint_id,
        "updated_ms": record.updated_ms,
    }
    if record.result:  # only one-shot votes have one: other records stay as they were
        fields["result"] = record.result
    return _SORTED_JSON.encode(fields).encode()


def decode_record(raw: bytes) -> RoundRecord:
    data = json.loads(raw)
    return RoundRecord(
        round_id=data["round_id"],
        kind=Kind(data["kind"]),
        state=LocalState(data["state"]),
        voted_yes=data["voted_yes"],
        reason=data["reason"],
        checkpoint_id=data["checkpoint_id"],
        updated_ms=data["updated_ms"],
        result=data.get("result", ""),
    )


def encode_step(record: StepRecord) -> bytes:
    return _SORTED_JSON.encode(
        {
            "saga_id": record.saga_id,
            "step": record.step,
            "action": record.action,
            "state": record.state.value,
            "payload": base64.b64encode(record.payload).decode(),
            "result": base64.b64encode(record.result).decode(),
            "reason": record.reason,
            "ran": record.ran,
            "returned": record.returned,
            "updated_ms": record.updated_ms,
        }
    ).encode()


def decode_step(raw: bytes) -> StepRecord:
    data = json.loads(raw)
    return StepRecord(
        saga_id=data["saga_id"],
        step=data["step"],
        action=data["action"],
        state=StepState(data["state"]),
        payload=base64.b64decode(data["payload"]),
        result=base64.b64decode(data["result"]),
        reason=data["reason"],
        ran=data["ran"],
        returned=data["returned"],
        updated_ms=data["updated_ms"],
    )


def audit_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    canonical = _CANONICAL_JSON.encode(body).encode()
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


def seal_audit_event(
    prev_hash: str, seq: int, at_ms: int, event: str, round_id: str, detail: str
) -> tuple[str, bytes]:
    """An audit event chained after ``prev_hash``: its hash (``audit_hash`` of its
    body) and the JSON stored for it (``json.dumps(..., sort_keys=True)`` of the body
    with ``prev_hash`` and ``hash``). The store writes one with every record, so both
    are built here directly, byte for byte what the ``json`` module makes of them."""
    if not _plain(seq, at_ms, event, round_id, detail, prev_hash):
        body = {"seq": seq, "at_ms": at_ms, "event": event, "round_id": round_id}
        body["detail"] = detail
        digest = audit_hash(prev_hash, body)
        stored = _SORTED_JSON.encode({**body, "prev_hash": prev_hash, "hash": digest})
        return digest, stored.encode()
    quote = _json_str
    detail_json, event_json, round_json = quote(detail), quote(event), quote(round_id)
    canonical = (
        f'{{"at_ms":{at_ms},"detail":{detail_json},"event":{event_json},'
        f'"round_id":{round_json},"seq":{seq}}}'
    )
    digest = hashlib.sha256(prev_hash.encode() + canonical.encode()).hexdigest()
    stored = (
        f'{{"at_ms": {at_ms}, "detail": {detail_json}, "event": {event_json}, '
        f'"hash": {quote(digest)}, "prev_hash": {quote(prev_hash)}, '
        f'"round_id": {round_json}, "seq": {seq}}}'
    )
    return digest, stored.encode()


def _plain(seq: object, at_ms: object, a: object, b: object, c: object, d: object) -> bool:
    """Exactly ints and strs, which an f-string writes as ``json`` does (a bool, an int
    subclass or anything else goes through the ``json`` module instead)."""
    return (
        type(seq) is int
        and type(at_ms) is int
        and type(a) is str
        and type(b) is str
        and type(c) is str
        and type(d) is str
    )


# A string as ``json.dumps`` writes it (ASCII, escaped): the ``json`` module's own.
_json_str = json.encoder.encode_basestring_ascii


def decode_audit(raw: bytes) -> AuditEvent:
    data = json.loads(raw)
    return AuditEvent(**data)


# ---------------------------------------------------------------------- sealing


class DamagedValue(StoreError):
    """A stored value whose checksum does not match: the disk or the file was damaged."""


def seal(table: str, key: bytes, value: bytes) -> bytes:
    return _checksum(table, key, value) + value


def unseal(table: str, key: bytes, sealed: bytes, where: str) -> bytes:
    value = sealed[4:]
    if len(sealed) < 4 or _checksum(table, key, value) != sealed[:4]:
        shown = key.decode(errors="replace")[:80]
        raise DamagedValue(
            f"{where}: the value of {shown!r} in table {table!r} is damaged "
            "(checksum mismatch); restore this participant's data dir from a backup"
        )
    return value


def _checksum(table: str, key: bytes, value: bytes) -> bytes:
    """CRC-32 of the table's name, the key and the value, chained (4 bytes)."""
    start = _TABLE_CRC.get(table)
    if start is None:
        start = zlib.crc32(table.encode())
    return zlib.crc32(value, zlib.crc32(key, start)).to_bytes(4, "big")


_TABLE_CRC = {table: zlib.crc32(table.encode()) for table in TABLES}  # every value names one


class SealedTx(Tx):
    """A transaction whose values are sealed on write and checked on read."""

    def __init__(self, tx: Tx, where: str) -> None:
        self._tx = tx
        self._where = where

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self._tx.get(table, key)
        return None if value is None else unseal(table, key, value, self._where)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._tx.put(table, key, seal(table, key, bytes(value)))

    def delete(self, table: str, key: bytes) -> None:
        self._tx.delete(table, key)

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._tx.scan(table, prefix):
            yield key, unseal(table, key, value, self._where)


# ---------------------------------------------------------------------- reading


def state_items(tables: Tx, prefix: str) -> list[tuple[str, bytes]]:
    return [(k.decode(), v) for k, v in tables.scan("state", prefix.encode())]


def split_head(head: bytes) -> tuple[int, str]:
    seq, digest = head.decode().split(" ")
    return int(seq), digest


def encode_held(value: Write, *, read: bool) -> bytes:
    if value is None:
        return DELETE
    if isinstance(value, Add):
        body = {"delta": value.delta, "min": value.min, "max": value.max, "read": read}
        return ADD + _SORTED_JSON.encode(body).encode()
    return PUT + bytes(value)


def decode_add(raw: bytes) -> Add:
    data = json.loads(raw)
    return Add(delta=data["delta"], min=data["min"], max=data["max"])


def decode_held(tagged: bytes) -> Write:
    tag = tagged[:1]
    if tag == PUT:
        return tagged[1:]
    if tag == ADD:
        return decode_add(tagged[1:])
    return None


def version_of(tables: Tx, key: bytes) -> Version:
    raw = tables.get("versions", key)
    return NEVER_WRITTEN if raw is None else Version.decode(raw)


def read_commit_seq(tables: Tx) -> int:
    raw = tables.get("meta", b"commit_seq")
    return 0 if raw is None else int(raw)


def read_term(tables: Tx) -> int:
    raw = tables.get("meta", b"term")
    return 0 if raw is None else int(raw)
