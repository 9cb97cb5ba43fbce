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
Every record (and every info entry) starts with the crc32 of the rest; it is checked
on every read from the store, and a record that fails it raises ``CheckpointCorrupt``:
it is reported, never restored. The tables and the record format are in
participant_sdk/storage/checkpoint_format.py.

Records are immutable and a generation is never reused, so a record once read and
verified is kept in memory (``cache_bytes_max``, least recently used out; see
participant_sdk/storage/checkpoint_cache.py). ``verify()`` always reads the store; a
record it finds damaged leaves the cache.
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

Durability: ``LmdbCheckpointStore`` keeps its tables in a ``LoggedLmdbKv``
(participant_sdk/storage/logged.py): every save, restore, drop and ``end_txn`` is one
atomic write, durable before it returns with one flush (one record of a write-ahead
log); a full log moves into LMDB in one synced commit. ``MemoryCheckpointStore`` keeps
them in a ``MemoryKv``: the same semantics without durability (tests). One contract
suite (tests/rollback/test_checkpoint_contract.py) runs against both. Policy (what to
write and keep, when to checkpoint) is in participant_sdk/checkpoint_policy.py.
"""

from __future__ import annotations

import builtins
import contextlib
import marshal
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from participant_sdk.checkpoint_policy import (
    Checkpointer,
    CheckpointPolicy,
    When,
    should_checkpoint,
)
from participant_sdk.replay import REPLAY_KEY, Replay
from participant_sdk.storage.checkpoint_cache import CachedRecord, Head, IndexEntry, RecordCache
from participant_sdk.storage.checkpoint_format import (
    DELTA,
    FORMAT_VERSION,
    FULL,
    RESERVED_PREFIX,
    TABLES,
    Checkpoint,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointInfo,
    CheckpointLimitError,
    CheckpointLimits,
    CheckpointNotFound,
    Encoded,
    check_meta,
    checkpoint_of,
    decode_info,
    decode_payload,
    encode_info,
    encode_payload,
    encode_state,
    seal,
    seq_key,
    unseal,
)
from participant_sdk.storage.kv import KvStore, Names, Tx
from participant_sdk.storage.logged import LoggedLmdbKv
from participant_sdk.storage.memory import MemoryKv

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


class CheckpointStore:
    """Durable checkpoints of one agent, in the tables of ``kv``. Thread-safe; one
    writer at a time (the key-value store's lock also guards the index here)."""

    def __init__(
        self,
        kv: KvStore,
        policy: CheckpointPolicy | None = None,
        limits: CheckpointLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.kv = kv
        self.policy = policy or CheckpointPolicy()
        self.limits = limits or CheckpointLimits()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._lock = kv.lock
        self._index: dict[int, IndexEntry] = {}
        self._head: Head | None = None
        self._ids: dict[str, int] | None = None  # visible id -> seq, rebuilt on change
        self._infos: dict[int, CheckpointInfo] = {}
        self._cache = RecordCache(self.limits.cache_bytes_max)
        # A write's index changes, applied (or undone) once it commits (or fails).
        self._undo: dict[int, bool] = {}
        self._pending_delete: list[int] = []
        try:
            self._load_index()
        except BaseException:
            kv.close()
            raise

    # ------------------------------------------------------------ backend

    @contextlib.contextmanager
    def _tx(self, write: bool) -> Iterator[Tx]:
        """A transaction; for ``write``, committed (durably) on a clean exit."""
        if not write:
            with self.kv.read() as tx:
                yield tx
            return
        with self.kv.write() as tx:
            yield tx
        self._committed()

    def close(self) -> None:
        """Release the store. Idempotent."""
        self.kv.close()

    def _load_index(self) -> None:
        with self._tx(write=False) as tx:
            visible = {int.from_bytes(v, "big") for _, v in tx.scan("ids")}
            base_seq = 0
            for key, raw in tx.scan("info"):  # in generation order
                seq = int.from_bytes(key, "big")
                info = decode_info(raw, seq)
                self._infos[seq] = info
                kind = FULL if info.kind == "full" else DELTA
                if kind == FULL:
                    base_seq = seq
                self._index[seq] = IndexEntry(
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
                    self._head = Head(seq=head_seq, chain_len=self.policy.full_every_n)
                    return
                encoded = encode_state(base, CheckpointLimits(state_bytes_max=1 << 62))
                deltas = sum(1 for s in self._index if chain[0] < s <= head_seq)
                self._head = Head(seq=head_seq, chain_len=deltas, base=encoded)

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
        encoded = encode_state(state, self.limits)
        return self._append(encoded, label, metadata, checkpoint_id, txn_id, restored_from="")

    def load(self, checkpoint_id: str) -> Checkpoint:
        """The checkpoint's state, every record of its chain checksum-verified."""
        with self._lock:
            seq = self._visible_seq(checkpoint_id)
            state = self._materialise(self._chain(seq))
            info = self._read_info(seq)
        return checkpoint_of(info, state)

    def latest(self) -> Checkpoint | None:
        """The head: the last save or restore (visible or not), or None when empty."""
        with self._lock:
            if self._head is None:
                return None
            seq = self._head.seq
            state = self._materialise(self._chain(seq))
            info = self._read_info(seq)
        return checkpoint_of(info, state)

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
            encoded = encode_state(state, CheckpointLimits(state_bytes_max=1 << 62))
            info = self._append(
                encoded,
                label="",
                metadata={"restored_generation": target},
                checkpoint_id=f"restore-{target}-at-{self.generation + 1}",
                txn_id="",
                restored_from=checkpoint_id,
                force_full=True,
            )
        return checkpoint_of(info, state)

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

    def verify(self) -> builtins.list[str]:
        """Check every stored record and info entry on disk (not the cache); return
        the problems found. A bad record also leaves the cache: from now on loads of
        it fail, as they would after a restart."""
        problems = []
        with self._lock, self._tx(write=False) as tx:
            for seq in sorted(self._index):
                for table, what in (("records", "record"), ("info", "info")):
                    raw = tx.get(table, seq_key(seq))
                    if raw is None:
                        problems.append(f"generation {seq}: {what} missing")
                        continue
                    try:
                        unseal(raw, f"generation {seq} {what}")
                    except CheckpointCorrupt as error:
                        problems.append(str(error))
                        self._cache.discard(seq)
            problems += self.kv.check()
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

    def _chain(self, seq: int) -> builtins.list[int]:
        """The records to read for ``seq``: the last full one at or before it (its
        base), then the record itself when it is a delta."""
        entry = self._index.get(seq)
        if entry is None:
            raise CheckpointCorrupt(f"generation {seq} record is missing (damaged store)")
        if entry.kind == FULL:
            return [seq]
        if not entry.base_seq:
            raise CheckpointCorrupt(
                f"generation {seq} has no full record before it (damaged store)"
            )
        return [entry.base_seq, seq]

    def _materialise(self, chain: builtins.list[int], tx: Tx | None = None) -> dict[str, Any]:
        """The state of the last record of ``chain``: a fresh copy, sharing nothing
        mutable with the cache or another load. Records not cached are read in one
        read transaction (``tx`` or a new one), checksum-verified, and cached."""
        cached = [self._cache.get(seq) for seq in chain]
        if tx is None and None in cached:
            with self._tx(write=False) as tx:
                return self._merge(chain, cached, tx)
        return self._merge(chain, cached, tx)

    def _merge(
        self, chain: builtins.list[int], cached: builtins.list[CachedRecord | None], tx: Tx | None
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
            if kind == FULL:
                state = values
            else:
                state.update(values)
                for key in removed:
                    state.pop(key, None)
        return state

    def _read_record(
        self, tx: Tx, seq: int
    ) -> tuple[bytes, dict[str, Any], dict[str, Any], builtins.list[str]]:
        """Read, verify and cache one record; its values freshly decoded (not cached)."""
        raw = tx.get("records", seq_key(seq))
        if raw is None:
            raise CheckpointCorrupt(f"generation {seq} record is missing (damaged store)")
        body = unseal(raw, f"checkpoint record generation {seq}")
        kind = bytes(body[:1])
        json_values, raw_values, removed = decode_payload(body[1:])
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

    def _check_meta(
        self, label: str, metadata: Mapping[str, Any] | None, checkpoint_id: str | None
    ) -> None:
        check_meta(self.limits, label, metadata, checkpoint_id)
        if checkpoint_id is not None and any(
            e.visible and e.checkpoint_id == checkpoint_id for e in self._index.values()
        ):
            raise CheckpointError(f"checkpoint id {checkpoint_id!r} already exists here")

    def _append(
        self,
        encoded: Encoded,
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
            kind = FULL
            payload = b""
            if (
                head is not None
                and not force_full
                and head.chain_len + 1 < self.policy.full_every_n
            ):
                base = head.base
                changed = {k: v for k, v in encoded.values.items() if base.values.get(k) != v}
                removed = base.values.keys() - encoded.values.keys()
                delta = encode_payload(changed, removed)
                if len(delta) <= self.policy.delta_fraction_max * encoded.size:
                    kind, payload = DELTA, delta
            if kind == FULL:
                payload = encode_payload(encoded.values, ())
            record = seal(kind + payload)
            info = CheckpointInfo(
                checkpoint_id=cp_id,
                generation=seq,
                label=label,
                metadata=dict(metadata or {}),
                txn_id=txn_id,
                created_ms=self._clock_ms(),
                kind="full" if kind == FULL else "delta",
                state_bytes=encoded.size,
                stored_bytes=len(record),
                restored_from=restored_from,
            )
            info_raw = encode_info(info)
            entry = IndexEntry(
                seq=seq,
                kind=kind,
                checkpoint_id=cp_id,
                label=label,
                txn_id=txn_id,
                visible=True,
                base_seq=seq if head is None or kind == FULL else self._index[head.seq].base_seq,
            )
            self._index[seq] = entry
            self._ids = None
            chain_len = 0 if kind == FULL else head.chain_len + 1  # type: ignore[union-attr]
            try:
                hidden, visible_count = self._retention_victims()
                if visible_count - len(hidden) > self.limits.checkpoints_max:
                    raise CheckpointLimitError(
                        f"{self.limits.checkpoints_max} checkpoints are kept (labelled ones "
                        f"included) = checkpoints_max: drop some, or raise checkpoints_max"
                    )
                with self._tx(write=True) as tx:
                    tx.put("records", seq_key(seq), record)
                    tx.put("info", seq_key(seq), info_raw)
                    tx.put("ids", cp_id.encode(), seq_key(seq))
                    self._prune(tx, hidden, head_seq=seq)
            except BaseException:
                del self._index[seq]
                self._restore_visibility()
                raise
            self._infos[seq] = info
            base_state = encoded if kind == FULL else head.base  # type: ignore[union-attr]
            self._head = Head(seq=seq, chain_len=chain_len, base=base_state)
            return info

    def _retention_victims(self) -> tuple[set[int], int]:
        """Visible checkpoints that retention hides now (beyond the last keep_last_n,
        unless labelled and keep_labelled), and how many are visible."""
        visible = [e for e in self._index.values() if e.visible]  # the index is in seq order
        old = visible[: max(0, len(visible) - self.policy.keep_last_n)]
        keep_labelled = self.policy.keep_labelled
        return {e.seq for e in old if not (e.label and keep_labelled)}, len(visible)

    def _hide_and_prune(self, doomed: Callable[[IndexEntry], bool]) -> None:
        hidden = {e.seq for e in self._index.values() if e.visible and doomed(e)}
        head_seq = self.generation
        try:
            with self._tx(write=True) as tx:
                self._prune(tx, hidden, head_seq=head_seq)
        except BaseException:
            self._restore_visibility()
            raise

    def _prune(self, tx: Tx, hidden: set[int], *, head_seq: int) -> None:
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
            tx.delete("records", seq_key(seq))
            tx.delete("info", seq_key(seq))
            self._pending_delete.append(seq)

    def _restore_visibility(self) -> None:
        self._ids = None
        for seq, visible in self._undo.items():
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


class MemoryCheckpointStore(CheckpointStore):
    """Same semantics as LMDB, in this process only (tests, demos)."""

    def __init__(
        self,
        policy: CheckpointPolicy | None = None,
        limits: CheckpointLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        names = Names(what="memory checkpoint store", error=CheckpointError)
        super().__init__(MemoryKv(TABLES, names), policy, limits, clock_ms)


def checkpoints_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Where a participant's checkpoints live: their own LMDB env, beside (not inside)
    the participant store's env, so that store's format is untouched."""
    return Path(data_dir) / "rollback" / "checkpoints"


class LmdbCheckpointStore(CheckpointStore):
    """LMDB behind a write-ahead log (``LoggedLmdbKv``): a write returns once it is
    flushed to the log.

    ``path`` is the env directory (``checkpoints_dir(data_dir)`` for a participant).
    One process writes it (an exclusive lock); ``readonly=True`` opens it beside a
    running writer, for inspection (the CLI): a view of the store as it was then."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        policy: CheckpointPolicy | None = None,
        limits: CheckpointLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
        *,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        limits = limits or CheckpointLimits()
        if readonly and not (self.path / "data.mdb").exists():
            raise CheckpointError(f"no checkpoint store at {self.path}")
        names = Names(
            what=f"checkpoint store {self.path}",
            error=CheckpointError,
            full_error=CheckpointLimitError,
            full_hint="drop checkpoints or raise map_size_bytes",
        )
        kv = LoggedLmdbKv(
            self.path,
            TABLES,
            names,
            map_size_bytes=limits.map_size_bytes,
            log_size_bytes=limits.wal_size_bytes,
            readonly=readonly,
            on_open=self._check_format,
            damaged=CheckpointCorrupt,
        )
        super().__init__(kv, policy, limits, clock_ms)

    def _check_format(self, tx: Tx) -> None:
        version = tx.get("meta", b"format_version")
        # Format 2 had no log: the same tables, opened here as an empty log.
        if version is not None and int(version) not in (2, FORMAT_VERSION):
            raise CheckpointError(
                f"checkpoint store {self.path} has format {version!r}, this SDK "
                f"reads {FORMAT_VERSION}"
            )
        if version is None or int(version) != FORMAT_VERSION:
            tx.put("meta", b"format_version", str(FORMAT_VERSION).encode())
