"""The participant's durable store: records, term, the agent's state, held branches,
checkpoints and the audit log, written together.

Theory of operation
-------------------
``ParticipantCore`` returns a ``Step``: records to persist and actions on the agent's
state. Rule 1 says all of it must be durable, in one atomic write, before the reply is
sent. Every write here goes through one ``StoreWriter`` (``store.write()``): a single
write transaction in which any number of Steps are applied in order (group commit),
read back through the same transaction (so a vote later in a batch sees the effect of
a decision earlier in it), and made durable together when the context exits. If any
part fails, nothing of it is written: the caller's core is then ahead of the disk and
must stop (see ``Step``).

Tables (LMDB named sub-databases; dicts in ``MemoryStore``):

- ``records``: round id -> ``RoundRecord`` (JSON)
- ``steps``: ``saga id#step`` -> ``StepRecord`` (JSON; payload and result base64)
- ``meta``: term, participant id, format version, audit head
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
- ``audit``: sequence number -> hash-chained JSON event (vote, decision applied,
  checkpoint taken/dropped/restored, term raised, and what the agent records with
  ``audit_event``: effects, compensations, triggers, breakers). Past
  ``audit_events_max`` the oldest are pruned; ``meta`` keeps the last pruned event's
  sequence number and hash (``audit_anchor``), so what is kept still verifies.

The LMDB backend opens the environment with ``sync=True, metasync=True``: a write
transaction's commit returns only after fsync. Every value it stores is sealed with a
CRC-32 of the table, key and value, checked on every read: a damaged value is named
(table, key, data dir) and refused, never served as data. Before LMDB maps the data
file, ``coordinator.lmdbfile`` refuses one that is empty or truncated.

One backend, one set of rules: both backends share ``_apply_step`` over a small table
interface, and one contract test suite (tests/participant/test_store_contract.py) runs
against each.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from coordinator.core.types import Kind
from coordinator.lmdbfile import DamagedFile, check_data_file
from participant_sdk.core import (
    ApplyBranch,
    DiscardBranch,
    DropCheckpoint,
    ForgetRecord,
    ForgetStep,
    HoldBranch,
    LocalState,
    RestoreCheckpoint,
    RoundRecord,
    RunCompensation,
    RunStep,
    Step,
    StepRecord,
    StepState,
    TakeCheckpoint,
    TermRecord,
)
from participant_sdk.isolation import (
    NEVER_WRITTEN,
    Add,
    BranchWork,
    Footprint,
    Version,
    Write,
)

__all__ = [
    "AuditEvent",
    "CheckpointInfo",
    "LmdbStore",
    "MemoryStore",
    "ParticipantStore",
    "StoreError",
    "StoreLimitError",
    "StoreLimits",
    "StoreWriter",
    "Writes",
]

# key -> new value, None to delete the key, or an Add.
Writes = Mapping[str, Write]

# 2: versions, tombstones, held reads and scans, sealed values (a format-1 store is
# upgraded on open: values sealed; its keys read as never written, which is what they
# are to any branch begun after).
FORMAT_VERSION = 2
UPGRADABLE_RAW = (b"1",)  # format_version values (stored bare) upgraded on open
_SEP = b"\x00"
_TABLES = (
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
_GENESIS_HASH = "0" * 64
_PUT, _DELETE, _ADD, _READ = b"P", b"D", b"A", b"R"
_AGENT_RESTORE = b"agent_restore_pending/"


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
        if not encoded or len(encoded) > self.id_bytes_max or _SEP in encoded:
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


def _encode_record(record: RoundRecord) -> bytes:
    return json.dumps(
        {
            "round_id": record.round_id,
            "kind": record.kind.value,
            "state": record.state.value,
            "voted_yes": record.voted_yes,
            "reason": record.reason,
            "checkpoint_id": record.checkpoint_id,
            "updated_ms": record.updated_ms,
        },
        sort_keys=True,
    ).encode()


def _decode_record(raw: bytes) -> RoundRecord:
    data = json.loads(raw)
    return RoundRecord(
        round_id=data["round_id"],
        kind=Kind(data["kind"]),
        state=LocalState(data["state"]),
        voted_yes=data["voted_yes"],
        reason=data["reason"],
        checkpoint_id=data["checkpoint_id"],
        updated_ms=data["updated_ms"],
    )


def _encode_step(record: StepRecord) -> bytes:
    return json.dumps(
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
        },
        sort_keys=True,
    ).encode()


def _decode_step(raw: bytes) -> StepRecord:
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


def _audit_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


def _decode_audit(raw: bytes) -> AuditEvent:
    data = json.loads(raw)
    return AuditEvent(**data)


# ---------------------------------------------------------------------- tables


class _Tables(ABC):
    """One open write (or read) transaction over the named tables."""

    @abstractmethod
    def get(self, table: str, key: bytes) -> bytes | None: ...

    @abstractmethod
    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def delete(self, table: str, key: bytes) -> None: ...

    @abstractmethod
    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Key order. The caller may not write to ``table`` while iterating."""


def _state_items(tables: _Tables, prefix: str) -> list[tuple[str, bytes]]:
    return [(k.decode(), v) for k, v in tables.scan("state", prefix.encode())]


class StoreWriter:
    """One atomic write: apply Steps, read through it; durable when the ``write()``
    context exits without an error, discarded entirely otherwise."""

    def __init__(self, tables: _Tables, limits: StoreLimits, clock_ms: Callable[[], int]):
        self._tables = tables
        self._limits = limits
        self._clock_ms = clock_ms
        self.events: list[AuditEvent] = []  # audit events of this write (for listeners)

    def get(self, key: str) -> bytes | None:
        return self._tables.get("state", key.encode())

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        return _state_items(self._tables, prefix)

    def version(self, key: str) -> Version:
        return _version(self._tables, key.encode())

    def newest_under(self, prefix: str, after_seq: int) -> tuple[str, Version] | None:
        for raw, value in self._tables.scan("versions", prefix.encode()):
            version = Version.decode(value)
            if version.seq > after_seq:
                return raw.decode(), version
        return None

    def commit_seq(self) -> int:
        return _commit_seq(self._tables)

    def prune_tombstones(self, below_seq: int, count_max: int) -> int:
        """Forget versions of deleted keys written before ``below_seq`` (no active
        branch began before them, so none can have read them), at most ``count_max``."""
        t = self._tables
        due = []
        for raw, key in t.scan("tombstones"):
            seq = int.from_bytes(raw[:8], "big")
            if seq >= below_seq or len(due) >= count_max:
                break
            due.append((raw, key, seq))
        for raw, key, seq in due:
            t.delete("tombstones", raw)
            # Only if it is still that tombstone: the key may have been written since.
            if t.get("state", key) is None and _version(t, key).seq == seq:
                t.delete("versions", key)
        return len(due)

    def has_checkpoint(self, checkpoint_id: str) -> bool:
        return self._tables.get("checkpoint_info", checkpoint_id.encode()) is not None

    def checkpoint_count(self) -> int:
        return sum(1 for _ in self._tables.scan("checkpoint_info"))

    def apply(self, step: Step, staged: Mapping[str, BranchWork]) -> None:
        """All of ``step.persist`` and ``step.actions``, in order; ``staged``: the
        active branches' work, by txn id (what a HoldBranch makes durable)."""
        for item in step.persist:
            self._persist(item)
        for action in step.actions:
            self._act(action, staged)

    # -------------------------------------------------------------- persist

    def _persist(self, item: object) -> None:
        t = self._tables
        if isinstance(item, TermRecord):
            if item.term < _read_term(t):
                raise StoreError(f"term would go back from {_read_term(t)} to {item.term}")
            t.put("meta", b"term", str(item.term).encode())
            self._audit("term", "", str(item.term))
        elif isinstance(item, RoundRecord):
            key = self._limits.check_id("round id", item.round_id)
            before_raw = t.get("records", key)
            before = _decode_record(before_raw) if before_raw is not None else None
            t.put("records", key, _encode_record(item))
            if before is not None and before.state is LocalState.PREPARED:
                event = "decision_applied"
            else:
                event = "vote"
            detail = f"{item.kind.value} {item.state.value} yes={item.voted_yes} {item.reason}"
            self._audit(event, item.round_id, detail.strip())
        elif isinstance(item, ForgetRecord):
            t.delete("records", item.round_id.encode())
        elif isinstance(item, StepRecord):
            key = self._limits.check_key(item.key)
            t.put("steps", key, _encode_step(item))
            self._audit(
                "saga_step",
                item.saga_id,
                f"step {item.step} {item.action} {item.state.value} {item.reason}".strip(),
            )
        elif isinstance(item, ForgetStep):
            t.delete("steps", item.key.encode())
        else:
            raise TypeError(f"not a record: {item!r}")

    # -------------------------------------------------------------- actions

    def _act(self, action: object, staged: Mapping[str, BranchWork]) -> None:
        t = self._tables
        if isinstance(action, HoldBranch):
            work = staged.get(action.txn_id, BranchWork())
            self._limits.check_writes(action.txn_id, work.writes)
            prefix = self._limits.check_id("txn id", action.txn_id) + _SEP
            for key, value in work.writes.items():
                t.put("held", prefix + key.encode(), _encode_held(value, read=key in work.reads))
            for key in work.reads:
                if key not in work.writes:
                    t.put("held", prefix + key.encode(), _READ)
            for scanned in work.scans:
                t.put("held_scans", prefix + scanned.encode(), b"")
        elif isinstance(action, ApplyBranch):
            held = self._take_held(action.txn_id)
            if any(tagged[:1] != _READ for _, tagged in held):
                version = Version(_commit_seq(t) + 1, action.txn_id)
                t.put("meta", b"commit_seq", str(version.seq).encode())
                for key, tagged in held:
                    tag = tagged[:1]
                    if tag == _PUT:
                        self._write_state(key, tagged[1:], version)
                    elif tag == _DELETE:
                        self._write_state(key, None, version)
                    elif tag == _ADD:
                        add = _decode_add(tagged[1:])
                        self._write_state(key, add.applied_to(t.get("state", key)), version)
        elif isinstance(action, DiscardBranch):
            self._take_held(action.txn_id)
        elif isinstance(action, TakeCheckpoint):
            cp = self._limits.check_id("checkpoint id", action.checkpoint_id)
            self._drop_checkpoint(cp)
            copied = list(t.scan("state"))
            for key, value in copied:
                t.put("checkpoints", cp + _SEP + key, value)
            info = {"label": action.label, "keys": len(copied), "taken_ms": self._clock_ms()}
            t.put("checkpoint_info", cp, json.dumps(info, sort_keys=True).encode())
            self._audit("checkpoint_taken", action.checkpoint_id, f"{len(copied)} keys")
        elif isinstance(action, DropCheckpoint):
            self._drop_checkpoint(action.checkpoint_id.encode())
            self._audit("checkpoint_dropped", action.checkpoint_id, "")
        elif isinstance(action, RestoreCheckpoint):
            cp = action.checkpoint_id.encode()
            if t.get("checkpoint_info", cp) is None:
                raise StoreError(f"restore of checkpoint {action.checkpoint_id!r}: not here")
            copied = {k[len(cp) + 1 :]: v for k, v in t.scan("checkpoints", cp + _SEP)}
            now = dict(t.scan("state"))
            # Every key the restore changes gets a new version, as a committed write:
            # a branch that read it before must not validate (none survive a restore
            # anyway: the core discards active work when a rollback executes).
            version = Version(_commit_seq(t) + 1, f"rollback:{action.checkpoint_id}")
            t.put("meta", b"commit_seq", str(version.seq).encode())
            for key in sorted(now.keys() | copied.keys()):
                if now.get(key) != copied.get(key):
                    self._write_state(key, copied.get(key), version)
            # The agent's own restore (AgentRollback) runs after this write: the marker
            # makes a restart finish it if the process dies first.
            t.put("meta", _AGENT_RESTORE + cp, b"1")
            self._audit("checkpoint_restored", action.checkpoint_id, f"{len(copied)} keys")
        elif isinstance(action, RunStep | RunCompensation):
            pass  # run by the participant once this write is durable
        else:
            raise TypeError(f"not an action: {action!r}")

    def _take_held(self, txn_id: str) -> list[tuple[bytes, bytes]]:
        prefix = txn_id.encode() + _SEP
        held = [(k[len(prefix) :], v) for k, v in self._tables.scan("held", prefix)]
        for key, _ in held:
            self._tables.delete("held", prefix + key)
        for key in [k for k, _ in self._tables.scan("held_scans", prefix)]:
            self._tables.delete("held_scans", key)
        return held

    def _write_state(self, key: bytes, value: bytes | None, version: Version) -> None:
        t = self._tables
        if value is None:
            t.delete("state", key)
            t.put("tombstones", version.seq.to_bytes(8, "big") + key, key)
        else:
            t.put("state", key, value)
        t.put("versions", key, version.encode())

    def _drop_checkpoint(self, cp: bytes) -> None:
        for key in [k for k, _ in self._tables.scan("checkpoints", cp + _SEP)]:
            self._tables.delete("checkpoints", key)
        self._tables.delete("checkpoint_info", cp)

    # -------------------------------------------------------------- audit

    def _audit(self, event: str, round_id: str, detail: str) -> AuditEvent:
        t = self._tables
        head = t.get("meta", b"audit_head")
        seq, prev_hash = (0, _GENESIS_HASH) if head is None else _split_head(head)
        seq += 1
        body = {"seq": seq, "at_ms": self._clock_ms(), "event": event, "round_id": round_id}
        body["detail"] = detail
        digest = _audit_hash(prev_hash, body)
        record = {**body, "prev_hash": prev_hash, "hash": digest}
        t.put("audit", seq.to_bytes(8, "big"), json.dumps(record, sort_keys=True).encode())
        t.put("meta", b"audit_head", f"{seq} {digest}".encode())
        oldest = seq - self._limits.audit_events_max
        if oldest > 0:
            pruned = t.get("audit", oldest.to_bytes(8, "big"))
            if pruned is not None:
                anchor = f"{oldest} {_decode_audit(pruned).hash}"
                t.put("meta", b"audit_anchor", anchor.encode())
                t.delete("audit", oldest.to_bytes(8, "big"))
        event = _decode_audit(t.get("audit", seq.to_bytes(8, "big")) or b"")
        self.events.append(event)
        return event

    def audit_event(self, kind: str, detail: str, round_id: str = "") -> AuditEvent:
        """Record an agent-level event (an effect executed, a compensation run, a
        trigger fired, a breaker tripped) in this write."""
        if kind not in AUDIT_AGENT_EVENTS:
            known = sorted(AUDIT_AGENT_EVENTS)
            raise ValueError(f"audit event kind {kind!r} is not one of {known}")
        size = len(detail.encode())
        if size > self._limits.audit_detail_bytes_max:
            raise StoreLimitError(
                f"audit detail is {size} bytes > audit_detail_bytes_max="
                f"{self._limits.audit_detail_bytes_max}"
            )
        if round_id:
            self._limits.check_id("round id", round_id)
        return self._audit(kind, round_id, detail)


def read_audit_offline(path: Path) -> tuple[list[tuple[bytes, bytes]], bytes | None, bytes | None]:
    """The raw audit rows, anchor and head of a participant data dir that no process has
    open (``concord audit`` offline); values checked and unsealed. ``StoreError`` names
    the problem."""
    try:
        check_data_file(path / "data.mdb")
    except DamagedFile as error:
        raise StoreError(str(error)) from None
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=len(_TABLES) + 1)
    except lmdb.Error as error:
        raise StoreError(f"{path} cannot be read ({error})") from None
    try:
        try:
            dbs = {name: env.open_db(name.encode(), create=False) for name in ("audit", "meta")}
        except lmdb.Error:
            raise StoreError(f"{path} is not a participant data dir (no audit table)") from None
        with env.begin() as txn:
            t = _LmdbTables(txn, dbs, path)
            return (
                list(t.scan("audit")),
                t.get("meta", b"audit_anchor"),
                t.get("meta", b"audit_head"),
            )
    finally:
        env.close()


def verify_audit_chain(
    raw: Sequence[tuple[bytes, bytes]], anchor: bytes | None, head: bytes | None
) -> Any:
    """Verify raw ``audit`` rows (key, value) against the anchor and head in ``meta``."""
    from coordinator.audit.chain import Anchor, verify

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for key, value in raw:
            try:
                record = json.loads(value)
            except ValueError:
                record = {"unreadable": value.decode(errors="replace")}
            yield str(int.from_bytes(key, "big")), record

    def hash_of(prev_hash: str, record: Mapping[str, Any]) -> str:
        body = {k: record.get(k) for k in ("seq", "at_ms", "event", "round_id", "detail")}
        return _audit_hash(prev_hash, body)

    start = Anchor(position=None)
    if anchor is not None:
        seq, digest = _split_head(anchor)
        start = Anchor(position=str(seq), hash=digest)
    end = None
    if head is not None:
        seq, digest = _split_head(head)
        end = (str(seq), digest)
    return verify(
        rows(),
        anchor=start,
        head=end,
        position_of=lambda r: str(r.get("seq")),
        hash_of=hash_of,
    )


def _split_head(head: bytes) -> tuple[int, str]:
    seq, digest = head.decode().split(" ")
    return int(seq), digest


def _encode_held(value: Write, *, read: bool) -> bytes:
    if value is None:
        return _DELETE
    if isinstance(value, Add):
        body = {"delta": value.delta, "min": value.min, "max": value.max, "read": read}
        return _ADD + json.dumps(body, sort_keys=True).encode()
    return _PUT + bytes(value)


def _decode_add(raw: bytes) -> Add:
    data = json.loads(raw)
    return Add(delta=data["delta"], min=data["min"], max=data["max"])


def _decode_held(tagged: bytes) -> Write:
    tag = tagged[:1]
    if tag == _PUT:
        return tagged[1:]
    if tag == _ADD:
        return _decode_add(tagged[1:])
    return None


def _version(tables: _Tables, key: bytes) -> Version:
    raw = tables.get("versions", key)
    return NEVER_WRITTEN if raw is None else Version.decode(raw)


def _commit_seq(tables: _Tables) -> int:
    raw = tables.get("meta", b"commit_seq")
    return 0 if raw is None else int(raw)


def _read_term(tables: _Tables) -> int:
    raw = tables.get("meta", b"term")
    return 0 if raw is None else int(raw)


# ---------------------------------------------------------------------- interface


class ParticipantStore(ABC):
    """Durable storage of one participant. Thread-safe; one writer at a time."""

    def __init__(
        self,
        participant_id: str,
        limits: StoreLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.participant_id = participant_id
        self.limits = limits or StoreLimits()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._write_lock = threading.Lock()
        # Called with the audit events of each write once it is durable (metrics).
        self.audit_listeners: list[Callable[[Sequence[AuditEvent]], None]] = []

    @abstractmethod
    @contextlib.contextmanager
    def _tables(self, write: bool) -> Iterator[_Tables]:
        """A transaction; for ``write``, committed (durably) on a clean exit."""

    @contextlib.contextmanager
    def write(self) -> Iterator[StoreWriter]:
        """One atomic, durable write for any number of Steps (group commit)."""
        with self._write_lock:
            with self._tables(write=True) as tables:
                writer = StoreWriter(tables, self.limits, self._clock_ms)
                yield writer
            for listener in self.audit_listeners:
                try:
                    listener(writer.events)
                except Exception:  # a listener must never fail a durable write
                    logging.getLogger(__name__).exception("audit listener failed")

    def apply(self, step: Step, staged: Mapping[str, BranchWork]) -> None:
        """``step.persist`` and ``step.actions`` in one durable write transaction."""
        self.apply_all([step], staged)

    def apply_all(self, steps: Sequence[Step], staged: Mapping[str, BranchWork]) -> None:
        if not any(step.needs_sync for step in steps):
            return
        with self.write() as writer:
            for step in steps:
                writer.apply(step, staged)

    def load(self) -> tuple[list[RoundRecord], int]:
        """The records and the highest term seen: what ``ParticipantCore.recover`` takes."""
        with self._tables(write=False) as t:
            records = [_decode_record(raw) for _, raw in t.scan("records")]
            return records, _read_term(t)

    def agent_restores_pending(self) -> list[str]:
        """Checkpoint ids restored by a rollback round whose agent-side restore
        (``AgentRollback``) has not been confirmed done."""
        with self._tables(write=False) as t:
            return [k[len(_AGENT_RESTORE) :].decode() for k, _ in t.scan("meta", _AGENT_RESTORE)]

    def agent_restore_done(self, checkpoint_id: str, detail: str) -> None:
        with self.write() as writer:
            writer._tables.delete("meta", _AGENT_RESTORE + checkpoint_id.encode())
            writer._audit("agent_restored", checkpoint_id, detail)

    def load_steps(self) -> list[StepRecord]:
        """Saga step records, for ``ParticipantCore.recover``."""
        with self._tables(write=False) as t:
            return [_decode_step(raw) for _, raw in t.scan("steps")]

    def get(self, key: str) -> bytes | None:
        with self._tables(write=False) as t:
            return t.get("state", key.encode())

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        with self._tables(write=False) as t:
            return _state_items(t, prefix)

    def get_versioned(self, key: str) -> tuple[bytes | None, Version]:
        """A committed value and its version, read together."""
        with self._tables(write=False) as t:
            return t.get("state", key.encode()), _version(t, key.encode())

    def scan_versioned(self, prefix: str) -> tuple[list[tuple[str, bytes]], int]:
        """The committed items under ``prefix`` and the commit sequence they are as of."""
        with self._tables(write=False) as t:
            return _state_items(t, prefix), _commit_seq(t)

    def version(self, key: str) -> Version:
        with self._tables(write=False) as t:
            return _version(t, key.encode())

    def commit_seq(self) -> int:
        """The sequence number of the last committed write here (0: none yet)."""
        with self._tables(write=False) as t:
            return _commit_seq(t)

    def held(self, txn_id: str) -> dict[str, Write]:
        """The writes a branch that voted YES will apply on COMMIT."""
        prefix = txn_id.encode() + _SEP
        with self._tables(write=False) as t:
            return {
                k[len(prefix) :].decode(): _decode_held(v)
                for k, v in t.scan("held", prefix)
                if v[:1] != _READ
            }

    def held_footprints(self) -> dict[str, Footprint]:
        """What every branch that voted YES holds (``isolation.LockTable`` at start)."""
        reads: dict[str, set[str]] = {}
        writes: dict[str, dict[str, Write]] = {}
        scans: dict[str, set[str]] = {}
        with self._tables(write=False) as t:
            for raw, tagged in t.scan("held"):
                txn_raw, _, key_raw = raw.partition(_SEP)
                txn_id, key = txn_raw.decode(), key_raw.decode()
                writes.setdefault(txn_id, {})
                if tagged[:1] == _READ or (
                    tagged[:1] == _ADD and json.loads(tagged[1:]).get("read")
                ):
                    reads.setdefault(txn_id, set()).add(key)
                if tagged[:1] != _READ:
                    writes[txn_id][key] = _decode_held(tagged)
            for raw, _ in t.scan("held_scans"):
                txn_raw, _, prefix = raw.partition(_SEP)
                writes.setdefault(txn_raw.decode(), {})
                scans.setdefault(txn_raw.decode(), set()).add(prefix.decode())
        return {
            txn_id: Footprint(
                reads=frozenset(reads.get(txn_id, ())),
                writes=txn_writes,
                scans=frozenset(scans.get(txn_id, ())),
            )
            for txn_id, txn_writes in writes.items()
        }

    def held_branches(self) -> list[str]:
        """Ids of the branches whose writes are held (voted YES, no decision applied)."""
        with self._tables(write=False) as t:
            return sorted({k.split(_SEP, 1)[0].decode() for k, _ in t.scan("held")})

    def checkpoints(self) -> list[CheckpointInfo]:
        with self._tables(write=False) as t:
            return [
                CheckpointInfo(checkpoint_id=k.decode(), **json.loads(v))
                for k, v in t.scan("checkpoint_info")
            ]

    def checkpoint_items(self, checkpoint_id: str) -> list[tuple[str, bytes]]:
        prefix = checkpoint_id.encode() + _SEP
        with self._tables(write=False) as t:
            return [(k[len(prefix) :].decode(), v) for k, v in t.scan("checkpoints", prefix)]

    def audit(self) -> list[AuditEvent]:
        with self._tables(write=False) as t:
            return [_decode_audit(raw) for _, raw in t.scan("audit")]

    def audit_event(self, kind: str, detail: str, round_id: str = "") -> AuditEvent:
        """Durably record one agent-level event (kinds: ``AUDIT_AGENT_EVENTS``)."""
        with self.write() as writer:
            return writer.audit_event(kind, detail, round_id)

    def audit_verdict(self) -> Any:
        """Check the kept audit chain from its anchor to its head; a
        ``coordinator.audit.chain.Verdict`` that names the first bad event."""
        with self._tables(write=False) as t:
            raw = [(k, v) for k, v in t.scan("audit")]
            anchor, head = t.get("meta", b"audit_anchor"), t.get("meta", b"audit_head")
        return verify_audit_chain(raw, anchor, head)

    def verify_audit(self) -> None:
        """Raise ``StoreError`` unless the kept audit events form an unbroken chain."""
        verdict = self.audit_verdict()
        if not verdict.ok:
            raise StoreError(f"audit chain: event {verdict.first_bad}: {verdict.problem}")

    def close(self) -> None:  # noqa: B027 (optional for backends holding nothing)
        """Release the store. Idempotent."""


# ---------------------------------------------------------------------- memory


class _MemoryTables(_Tables):
    def __init__(self, data: dict[str, dict[bytes, bytes]], write: bool):
        self._data = data
        self._write = write
        self._copies: dict[str, dict[bytes, bytes]] = {}

    def _read(self, table: str) -> dict[bytes, bytes]:
        return self._copies.get(table, self._data[table])

    def _mutable(self, table: str) -> dict[bytes, bytes]:
        if not self._write:
            raise StoreError("write in a read transaction")
        if table not in self._copies:
            self._copies[table] = dict(self._data[table])
        return self._copies[table]

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._read(table).get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._mutable(table)[key] = bytes(value)

    def delete(self, table: str, key: bytes) -> None:
        self._mutable(table).pop(key, None)

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        data = self._read(table)
        for key in sorted(k for k in data if k.startswith(prefix)):
            yield key, data[key]

    def commit(self) -> None:
        self._data.update(self._copies)


class MemoryStore(ParticipantStore):
    """In-process backend: same semantics, no durability across processes."""

    def __init__(
        self,
        participant_id: str,
        limits: StoreLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(participant_id, limits, clock_ms)
        self._data: dict[str, dict[bytes, bytes]] = {name: {} for name in _TABLES}
        self._data["meta"][b"participant_id"] = participant_id.encode()
        self._data["meta"][b"format_version"] = str(FORMAT_VERSION).encode()
        self._swap_lock = threading.Lock()

    @contextlib.contextmanager
    def _tables(self, write: bool) -> Iterator[_Tables]:
        with self._swap_lock:
            snapshot = dict(self._data)  # tables are replaced, never mutated in place
        tables = _MemoryTables(snapshot, write)
        yield tables
        if write:
            with self._swap_lock:
                tables.commit()
                self._data = snapshot


# ---------------------------------------------------------------------- lmdb


class DamagedValue(StoreError):
    """A stored value whose checksum does not match: the disk or the file was damaged."""


def _seal(table: str, key: bytes, value: bytes) -> bytes:
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(table.encode()))).to_bytes(4, "big") + value


def _unseal(table: str, key: bytes, sealed: bytes, path: Path) -> bytes:
    value = sealed[4:]
    if len(sealed) < 4 or _seal(table, key, value)[:4] != sealed[:4]:
        shown = key.decode(errors="replace")[:80]
        raise DamagedValue(
            f"data dir {path}: the value of {shown!r} in table {table!r} is damaged "
            "(checksum mismatch); restore this participant's data dir from a backup"
        )
    return value


class _LmdbTables(_Tables):
    def __init__(self, txn: lmdb.Transaction, dbs: Mapping[str, Any], path: Path):
        self._txn = txn
        self._dbs = dbs
        self._path = path

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._dbs[table])
        return None if value is None else _unseal(table, key, bytes(value), self._path)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, _seal(table, key, bytes(value)), db=self._dbs[table])

    def delete(self, table: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[table])

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            found = cursor.set_range(prefix) if prefix else cursor.first()
            while found:
                key = bytes(cursor.key())
                if not key.startswith(prefix):
                    break
                yield key, _unseal(table, key, bytes(cursor.value()), self._path)
                found = cursor.next()


class LmdbStore(ParticipantStore):
    """LMDB backend. ``sync=True, metasync=True``: a commit returns after fsync.

    Opening checks that ``path`` is this participant's data dir and takes an exclusive
    lock on it (one process per data dir); it never wipes or rewrites foreign data."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        participant_id: str,
        limits: StoreLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(participant_id, limits, clock_ms)
        self.path = Path(path)
        self._closed = False
        fix = "choose another data_dir or move this one aside; it was left untouched"
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"data dir {self.path} is a file, not a directory: {fix}")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # "rollback" holds the agent's checkpoint and effect envs (participant_sdk/
        # checkpoints.py, effects.py), which may be created before this store.
        others = [p for p in self.path.iterdir() if p.name != "rollback"]
        if others and not (self.path / "data.mdb").exists():
            raise StoreError(f"data dir {self.path} is not empty and holds no data.mdb: {fix}")
        try:
            check_data_file(self.path / "data.mdb")
        except DamagedFile as error:
            raise StoreError(f"data dir {self.path}: {error}: {fix}") from None
        self._lock_file = open(self.path / "concord.lock", "a+b")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise StoreError(
                f"data dir {self.path} is in use by another process: stop it or choose "
                "another data_dir"
            ) from None
        try:
            self._env = lmdb.open(
                str(self.path),
                mode=0o600,  # data and lock files: this user's only
                map_size=self.limits.map_size_bytes,
                max_dbs=len(_TABLES) + 1,
                sync=True,
                metasync=True,
                subdir=True,
                lock=True,
            )
        except lmdb.Error as error:
            self._lock_file.close()
            raise StoreError(
                f"data dir {self.path} is not a readable LMDB env ({error}): {fix}"
            ) from None
        try:
            self._dbs = self._open_tables(fix)
        except BaseException:
            self._env.close()
            self._lock_file.close()
            raise

    def _open_tables(self, fix: str) -> dict[str, Any]:
        with self._env.begin() as txn:
            names = {bytes(k).decode(errors="replace") for k, _ in txn.cursor()}
        foreign = names - set(_TABLES)
        if foreign:
            raise StoreError(
                f"data dir {self.path} is an LMDB env of something else "
                f"(holds {sorted(foreign)[:3]}): {fix}"
            )
        if names and "meta" not in names:
            raise StoreError(f"data dir {self.path} has no meta table (damaged?): {fix}")
        try:
            dbs = {name: self._env.open_db(name.encode(), create=True) for name in _TABLES}
            with self._env.begin(write=True) as txn:
                raw_version = txn.get(b"format_version", db=dbs["meta"])
                if raw_version is not None and bytes(raw_version) in UPGRADABLE_RAW:
                    # Format 1 stored values bare: seal them all (the new tables were
                    # created above); the rest is read as format 2.
                    for name in _TABLES:
                        with txn.cursor(db=dbs[name]) as cursor:
                            rows = [(bytes(k), bytes(v)) for k, v in cursor]
                        for key, value in rows:
                            txn.put(key, _seal(name, key, value), db=dbs[name])
                    txn.put(
                        b"format_version", _seal("meta", b"format_version", b"2"), db=dbs["meta"]
                    )
                t = _LmdbTables(txn, dbs, self.path)
                owner, version = t.get("meta", b"participant_id"), t.get("meta", b"format_version")
                if owner is None:
                    if names and txn.stat(dbs["records"])["entries"]:
                        raise StoreError(f"data dir {self.path} has records but no owner: {fix}")
                    t.put("meta", b"participant_id", self.participant_id.encode())
                    t.put("meta", b"format_version", str(FORMAT_VERSION).encode())
                elif owner.decode() != self.participant_id:
                    raise StoreError(
                        f"data dir {self.path} belongs to participant "
                        f"{owner.decode()!r}, not {self.participant_id!r}: start that "
                        f"participant with it, or give {self.participant_id!r} its own data_dir"
                    )
                elif version is None or int(version) != FORMAT_VERSION:
                    raise StoreError(
                        f"data dir {self.path} has format version {version!r}, this SDK "
                        f"reads {FORMAT_VERSION}: use a matching SDK version"
                    )
        except lmdb.Error as error:
            raise StoreError(f"data dir {self.path} cannot be opened ({error}): {fix}") from None
        return dbs

    @contextlib.contextmanager
    def _tables(self, write: bool) -> Iterator[_Tables]:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        try:
            with self._env.begin(write=write) as txn:
                yield _LmdbTables(txn, self._dbs, self.path)
        except lmdb.MapFullError:
            raise StoreError(
                f"data dir {self.path} is full (map_size_bytes={self.limits.map_size_bytes}): "
                "raise map_size_bytes, drop checkpoints, or shorten record retention"
            ) from None
        except lmdb.Error as error:
            raise StoreError(f"data dir {self.path}: LMDB error: {error}") from error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._env.close()
        self._lock_file.close()
