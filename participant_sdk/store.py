"""The participant's durable store: records, term, the agent's state, held branches,
checkpoints and the audit log, written together.

Theory of operation
-------------------
``ParticipantCore`` returns a ``Step``: records to persist and actions on the agent's
state. Rule 1 says all of it must be durable, in one atomic write, before the reply is
sent. Every write here goes through one ``StoreWriter`` (``store.write()``,
participant_sdk/storage/writer.py): a single write transaction in which any number of
Steps are applied in order (group commit), read back through the same transaction,
and made durable together when the context exits. If any part fails, nothing of it is
written: the caller's core is then ahead of the disk and must stop (see ``Step``).

The tables and their encoding are the records layout
(participant_sdk/storage/records.py) over the key-value interface of
participant_sdk/storage/: ``MemoryStore`` runs it on ``MemoryKv``, ``LmdbStore`` on
``LmdbKv`` (``sync=True, metasync=True``: a write returns after fsync; the data file
is checked before LMDB maps it). Every value is sealed with a CRC-32 of the table, key
and value, checked on every read: a damaged value is named (table, key, data dir) and
refused, never served as data. Past ``audit_events_max`` the oldest audit events are
pruned; ``meta`` keeps the last pruned event's sequence number and hash
(``audit_anchor``), so what is kept still verifies.

One set of rules for every backend: the same writer and readers over the same
interface, and one contract test suite (tests/participant/test_store_contract.py)
runs against each.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from participant_sdk.core import RoundRecord, Step, StepRecord
from participant_sdk.isolation import BranchWork, Footprint, Version, Write
from participant_sdk.storage.kv import KvStore, Names, Tx
from participant_sdk.storage.lmdbkv import LmdbKv
from participant_sdk.storage.memory import MemoryKv
from participant_sdk.storage.offline import read_audit_offline, verify_audit_chain
from participant_sdk.storage.records import (
    ADD,
    AGENT_RESTORE,
    AUDIT_AGENT_EVENTS,
    AUDIT_STORE_EVENTS,
    FORMAT_VERSION,
    READ,
    SEP,
    TABLES,
    UPGRADABLE_RAW,
    AuditEvent,
    CheckpointInfo,
    DamagedValue,
    SealedTx,
    StoreError,
    StoreLimitError,
    StoreLimits,
    Writes,
    decode_audit,
    decode_held,
    decode_record,
    decode_step,
    read_commit_seq,
    read_term,
    seal,
    state_items,
    version_of,
)
from participant_sdk.storage.writer import StoreWriter

if TYPE_CHECKING:
    from coordinator.audit.chain import Verdict

__all__ = [
    "AUDIT_AGENT_EVENTS",
    "AUDIT_STORE_EVENTS",
    "AuditEvent",
    "CheckpointInfo",
    "DamagedValue",
    "LmdbStore",
    "MemoryStore",
    "ParticipantStore",
    "StoreError",
    "StoreLimitError",
    "StoreLimits",
    "StoreWriter",
    "Writes",
    "read_audit_offline",
    "verify_audit_chain",
]


class ParticipantStore:
    """Durable storage of one participant over a key-value store ``kv``. Thread-safe;
    one writer at a time (the store's lock)."""

    writer_class: type[StoreWriter] = StoreWriter  # the simulator plants bugs here

    def __init__(
        self,
        kv: KvStore,
        participant_id: str,
        limits: StoreLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.kv = kv
        self.participant_id = participant_id
        self.limits = limits or StoreLimits()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        # Called with the audit events of each write once it is durable (metrics).
        self.audit_listeners: list[Callable[[Sequence[AuditEvent]], None]] = []

    @contextlib.contextmanager
    def _read(self) -> Iterator[Tx]:
        with self.kv.read() as tx:
            yield SealedTx(tx, self.kv.names.what)

    @contextlib.contextmanager
    def write(self) -> Iterator[StoreWriter]:
        """One atomic, durable write for any number of Steps (group commit)."""
        with self.kv.lock:
            with self.kv.write() as tx:
                writer = self.writer_class(
                    SealedTx(tx, self.kv.names.what), self.limits, self._clock_ms
                )
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
        with self._read() as t:
            records = [decode_record(raw) for _, raw in t.scan("records")]
            return records, read_term(t)

    def agent_restores_pending(self) -> list[str]:
        """Checkpoint ids restored by a rollback round whose agent-side restore
        (``AgentRollback``) has not been confirmed done."""
        with self._read() as t:
            return [k[len(AGENT_RESTORE) :].decode() for k, _ in t.scan("meta", AGENT_RESTORE)]

    def agent_restore_done(self, checkpoint_id: str, detail: str) -> None:
        with self.write() as writer:
            writer.agent_restore_done(checkpoint_id, detail)

    def load_steps(self) -> list[StepRecord]:
        """Saga step records, for ``ParticipantCore.recover``."""
        with self._read() as t:
            return [decode_step(raw) for _, raw in t.scan("steps")]

    def get(self, key: str) -> bytes | None:
        with self._read() as t:
            return t.get("state", key.encode())

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        with self._read() as t:
            return state_items(t, prefix)

    def get_versioned(self, key: str) -> tuple[bytes | None, Version]:
        """A committed value and its version, read together."""
        with self._read() as t:
            return t.get("state", key.encode()), version_of(t, key.encode())

    def scan_versioned(self, prefix: str) -> tuple[list[tuple[str, bytes]], int]:
        """The committed items under ``prefix`` and the commit sequence they are as of."""
        with self._read() as t:
            return state_items(t, prefix), read_commit_seq(t)

    def version(self, key: str) -> Version:
        with self._read() as t:
            return version_of(t, key.encode())

    def newest_under(self, prefix: str, after_seq: int) -> tuple[str, Version] | None:
        """A key under ``prefix`` (tombstones included) written after ``after_seq``:
        with ``get`` and ``version``, the ``isolation.Committed`` view outside a write."""
        with self._read() as t:
            return StoreWriter(t, self.limits, self._clock_ms).newest_under(prefix, after_seq)

    def commit_seq(self) -> int:
        """The sequence number of the last committed write here (0: none yet)."""
        with self._read() as t:
            return read_commit_seq(t)

    def held(self, txn_id: str) -> dict[str, Write]:
        """The writes a branch that voted YES will apply on COMMIT."""
        prefix = txn_id.encode() + SEP
        with self._read() as t:
            return {
                k[len(prefix) :].decode(): decode_held(v)
                for k, v in t.scan("held", prefix)
                if v[:1] != READ
            }

    def held_footprints(self) -> dict[str, Footprint]:
        """What every branch that voted YES holds (``isolation.LockTable`` at start)."""
        reads: dict[str, set[str]] = {}
        writes: dict[str, dict[str, Write]] = {}
        scans: dict[str, set[str]] = {}
        with self._read() as t:
            for raw, tagged in t.scan("held"):
                txn_raw, _, key_raw = raw.partition(SEP)
                txn_id, key = txn_raw.decode(), key_raw.decode()
                writes.setdefault(txn_id, {})
                if tagged[:1] == READ or (tagged[:1] == ADD and json.loads(tagged[1:]).get("read")):
                    reads.setdefault(txn_id, set()).add(key)
                if tagged[:1] != READ:
                    writes[txn_id][key] = decode_held(tagged)
            for raw, _ in t.scan("held_scans"):
                txn_raw, _, prefix = raw.partition(SEP)
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
        with self._read() as t:
            return sorted({k.split(SEP, 1)[0].decode() for k, _ in t.scan("held")})

    def checkpoints(self) -> list[CheckpointInfo]:
        with self._read() as t:
            return [
                CheckpointInfo(checkpoint_id=k.decode(), **json.loads(v))
                for k, v in t.scan("checkpoint_info")
            ]

    def checkpoint_items(self, checkpoint_id: str) -> list[tuple[str, bytes]]:
        prefix = checkpoint_id.encode() + SEP
        with self._read() as t:
            return [(k[len(prefix) :].decode(), v) for k, v in t.scan("checkpoints", prefix)]

    def audit(self) -> list[AuditEvent]:
        with self._read() as t:
            return [decode_audit(raw) for _, raw in t.scan("audit")]

    def audit_event(self, kind: str, detail: str, round_id: str = "") -> AuditEvent:
        """Durably record one agent-level event (kinds: ``AUDIT_AGENT_EVENTS``)."""
        with self.write() as writer:
            return writer.audit_event(kind, detail, round_id)

    def audit_verdict(self) -> Verdict:
        """Check the kept audit chain from its anchor to its head; a
        ``coordinator.audit.chain.Verdict`` that names the first bad event."""
        with self._read() as t:
            raw = [(k, v) for k, v in t.scan("audit")]
            anchor, head = t.get("meta", b"audit_anchor"), t.get("meta", b"audit_head")
        return verify_audit_chain(raw, anchor, head)

    def verify_audit(self) -> None:
        """Raise ``StoreError`` unless the kept audit events form an unbroken chain."""
        verdict = self.audit_verdict()
        if not verdict.ok:
            raise StoreError(f"audit chain: event {verdict.first_bad}: {verdict.problem}")

    def close(self) -> None:
        """Release the store. Idempotent."""
        self.kv.close()


class MemoryStore(ParticipantStore):
    """In-process backend (``MemoryKv``): same semantics, no durability across
    processes. ``sync_on_commit=False`` leaves writes unsynced until ``kv.sync()``, and
    ``kv.lose_unsynced()`` drops them, as a power loss would (the simulator)."""

    kv: MemoryKv

    def __init__(
        self,
        participant_id: str,
        limits: StoreLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
        *,
        sync_on_commit: bool = True,
    ) -> None:
        names = Names(what=f"memory store of {participant_id}", error=StoreError)
        kv = MemoryKv(TABLES, names, sync_on_commit=sync_on_commit)
        super().__init__(kv, participant_id, limits, clock_ms)
        with kv.write() as raw:
            t = SealedTx(raw, kv.names.what)
            t.put("meta", b"participant_id", participant_id.encode())
            t.put("meta", b"format_version", str(FORMAT_VERSION).encode())
        kv.sync()


_FIX = "choose another data_dir or move this one aside; it was left untouched"


class LmdbStore(ParticipantStore):
    """LMDB backend (``LmdbKv``): a commit returns after fsync.

    Opening checks that ``path`` is this participant's data dir and takes an exclusive
    lock on it (one process per data dir); it never wipes or rewrites foreign data. A
    data dir of format 1 is upgraded on open (its values sealed)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        participant_id: str,
        limits: StoreLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.path = Path(path)
        limits = limits or StoreLimits()
        what = f"data dir {self.path}"
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{what} is a file, not a directory: {_FIX}")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # "rollback" holds the agent's checkpoint and effect envs (participant_sdk/
        # checkpoints.py, effects.py), which may be created before this store.
        others = [p for p in self.path.iterdir() if p.name != "rollback"]
        if others and not (self.path / "data.mdb").exists():
            raise StoreError(f"{what} is not empty and holds no data.mdb: {_FIX}")
        names = Names(
            what=what,
            error=StoreError,
            fix=_FIX,
            busy_hint="stop it or choose another data_dir",
            full_hint="raise map_size_bytes, drop checkpoints, or shorten record retention",
        )
        self._found: frozenset[str] = frozenset()
        kv = LmdbKv(
            self.path,
            TABLES,
            names,
            map_size_bytes=limits.map_size_bytes,
            check_found=self._check_found,
            on_open=lambda tx: self._check_owner(tx, names, participant_id),
        )
        super().__init__(kv, participant_id, limits, clock_ms)

    def _check_found(self, found: frozenset[str]) -> None:
        what = f"data dir {self.path}"
        foreign = found - set(TABLES)
        if foreign:
            raise StoreError(
                f"{what} is an LMDB env of something else (holds {sorted(foreign)[:3]}): {_FIX}"
            )
        if found and "meta" not in found:
            raise StoreError(f"{what} has no meta table (damaged?): {_FIX}")
        self._found = found

    def _check_owner(self, raw: Tx, names: Names, participant_id: str) -> None:
        """Upgrade a format-1 store, then refuse one that is not this participant's."""
        raw_version = raw.get("meta", b"format_version")
        if raw_version is not None and raw_version in UPGRADABLE_RAW:
            # Format 1 stored values bare: seal them all (the new tables were created
            # on open); the rest is read as format 2.
            for name in TABLES:
                for key, value in list(raw.scan(name)):
                    raw.put(name, key, seal(name, key, value))
            raw.put("meta", b"format_version", seal("meta", b"format_version", b"2"))
        t = SealedTx(raw, names.what)
        owner, version = t.get("meta", b"participant_id"), t.get("meta", b"format_version")
        if owner is None:
            if self._found and next(raw.scan("records"), None) is not None:
                raise StoreError(f"{names.what} has records but no owner: {_FIX}")
            t.put("meta", b"participant_id", participant_id.encode())
            t.put("meta", b"format_version", str(FORMAT_VERSION).encode())
        elif owner.decode() != participant_id:
            raise StoreError(
                f"{names.what} belongs to participant {owner.decode()!r}, not "
                f"{participant_id!r}: start that participant with it, or give "
                f"{participant_id!r} its own data_dir"
            )
        elif version is None or int(version) != FORMAT_VERSION:
            raise StoreError(
                f"{names.what} has format version {version!r}, this SDK reads "
                f"{FORMAT_VERSION}: use a matching SDK version"
            )
