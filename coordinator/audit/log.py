"""The coordinator's audit log on disk: ``<data_dir>/audit`` (LMDB), one per node.

Theory of operation
-------------------
Two chains live here.

- The **log chain** is derived from applied entries (coordinator/audit/derive.py) in the
  apply callback, on the raft thread, in log order. Its head (position and hash of the
  last record) is kept *in the replicated state machine* (``ReplicatedMemo``: an
  attribute of the pysyncobj consumer, so it is part of every Raft snapshot). Hashing
  continues from that replicated head, never from what this node happens to hold on
  disk; so the chain is identical on every node, record for record, whatever each node
  held before:
  - after a restart pysyncobj re-applies the entries after its snapshot: records this
    node already holds are compared with the re-derived ones (a mismatch is logged
    CRITICAL and counted), not written again;
  - a node that installs a snapshot from the leader (a new or lagging node), or that
    lost unsynced records in a crash just before a snapshot, never sees some entries:
    it continues the chain from the snapshot's head and writes a *gap* marker (a
    ``Resume``: after which record, resuming with which hash, why). ``verify`` reports
    gaps; the records on both sides are still checked and identical to other nodes'.
- The **local chain** holds what only this node saw, marked ``"local": true``, with its
  own hash chain and this node's wall clock: leader changes as this node observed them
  (pysyncobj elects leaders without log entries), and operator actions that are not
  log entries (``txn retry``, ``cluster transfer-leader``). ``txn abort`` is a log
  entry, so it is in the log chain (``abort_requested`` with ``operator: true``).

Durability: records are queued and written in one synced LMDB transaction at most
every ``flush_interval_ms`` (group commit, off the raft thread's fsync path). What a
crash loses is re-derived from the Raft log on restart, unless a snapshot already
covers it: then it is a recorded gap, never a silent hole.

Retention (rule 10): at most ``records_max`` log-chain records and
``local_records_max`` local records are kept; the oldest are pruned in batches, and
the last pruned record's position and hash become the chain's *anchor*, so what is
kept still verifies from a known point.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from coordinator.audit.chain import GENESIS_HASH, Anchor, Resume, Verdict, seal_encoded, verify
from coordinator.audit.derive import derive, position
from coordinator.core.entries import Entry
from coordinator.core.state import Applied
from coordinator.lmdbfile import DamagedFile, check_data_file

log = logging.getLogger(__name__)

AUDIT_DIR = "audit"
AUDIT_RECORDS_MAX = 1_000_000  # log-chain records kept on a node
AUDIT_LOCAL_RECORDS_MAX = 100_000  # local records kept on a node
AUDIT_PRUNE_BATCH = 1_000  # prune this many at once, so pruning is not per record
AUDIT_FLUSH_INTERVAL_MS = 50
AUDIT_PENDING_RECORDS_MAX = 2_000  # queued records beyond this are written at once
AUDIT_MAP_BYTES = 1 << 32
AUDIT_ATTACH_WAIT_S = 30.0
MEMO_ATTRIBUTE = "audit_chain"  # the replicated head, on the pysyncobj consumer

_DBS = (b"records", b"local", b"resumes", b"meta")


class AuditError(Exception):
    """The audit directory cannot be used; the message names the path."""


@dataclass(frozen=True, slots=True)
class Head:
    position: str | None
    hash: str = GENESIS_HASH


class ReplicatedMemo:
    """The log chain's head, kept as an attribute of the replicated state machine (the
    pysyncobj consumer), so Raft snapshots carry it. Only the raft thread touches it."""

    def __init__(self) -> None:
        self._machine: Any = None
        self._attached = threading.Event()

    def attach(self, machine: Any) -> None:
        self._machine = machine
        self._attached.set()

    def get(self) -> Head:
        if not self._attached.wait(AUDIT_ATTACH_WAIT_S):
            raise AuditError("the audit log was never attached to the state machine")
        value = getattr(self._machine, MEMO_ATTRIBUTE, None)
        return Head(None) if value is None else Head(value[0], value[1])

    def set(self, head: Head) -> None:
        setattr(self._machine, MEMO_ATTRIBUTE, (head.position, head.hash))


def _dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        node_id: str = "",
        records_max: int = AUDIT_RECORDS_MAX,
        local_records_max: int = AUDIT_LOCAL_RECORDS_MAX,
        flush_interval_ms: int = AUDIT_FLUSH_INTERVAL_MS,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if records_max <= 0 or local_records_max <= 0:
            raise AuditError("audit retention limits must be positive")
        self.path = Path(path)
        self.node_id = node_id
        self._batch_index = -1  # the Raft index of the LogBatch being applied
        self._batch_next_sub = 0  # the next record position within it
        self.records_max = records_max
        self.local_records_max = local_records_max
        self.readonly = readonly
        self._clock = clock
        self._lock = threading.RLock()
        # (db, position, record, its JSON)
        self._pending: list[tuple[bytes, str, dict[str, Any], bytes]] = []
        self._pending_resumes: list[tuple[str, dict[str, Any]]] = []
        self._pending_anchor: Anchor | None = None
        self.mismatches = 0  # re-derived records that differ from the stored ones
        self.failures = 0  # writes that failed
        self._closed = False
        if readonly and not (self.path / "data.mdb").exists():
            raise AuditError(f"{self.path} holds no audit log (no data.mdb)")
        try:
            if not readonly:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_data_file(self.path / "data.mdb")
            self._env = lmdb.open(
                str(self.path),
                mode=0o600,  # data and lock files: this user's only
                max_dbs=len(_DBS),
                map_size=AUDIT_MAP_BYTES,
                sync=True,
                metasync=True,
                readonly=readonly,
                lock=not readonly,
            )
            self._dbs = {name: self._env.open_db(name, create=not readonly) for name in _DBS}
        except (lmdb.Error, DamagedFile) as error:
            raise AuditError(f"audit log {self.path} cannot be opened ({error})") from None
        self._head = self._read_head(b"head")
        self._local_head = self._read_head(b"local_head")
        self.memo = ReplicatedMemo()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if not readonly:
            self._flush_interval_s = flush_interval_ms / 1000
            self._flusher = threading.Thread(target=self._flush_forever, daemon=True)
            self._flusher.start()

    # ------------------------------------------------------------------ reading meta

    def _meta(self, key: bytes) -> Any:
        with self._env.begin() as txn:
            raw = txn.get(key, db=self._dbs[b"meta"])
        return None if raw is None else json.loads(bytes(raw))

    def _read_head(self, key: bytes) -> Head:
        value = self._meta(key)
        return Head(None) if value is None else Head(value[0], value[1])

    def _anchor(self, key: bytes) -> Anchor:
        value = self._meta(key)
        return Anchor(position=None) if value is None else Anchor(position=value[0], hash=value[1])

    # ------------------------------------------------------------------ log chain

    def on_apply(self, index: int, entry: Entry, applied: Applied) -> None:
        """The apply callback (raft thread): derive, chain from the replicated head,
        queue what this node does not hold yet."""
        memo_head = self.memo.get()
        prev = memo_head
        sealed = []
        # Entries of one LogBatch share the Raft index; their records number on. A
        # batch is applied whole (snapshots fall between Raft entries), so this counter
        # is the same on every node and after every restart.
        if index != self._batch_index:
            self._batch_index, self._batch_next_sub = index, 0
        bodies = derive(index, entry, applied, sub_start=self._batch_next_sub)
        self._batch_next_sub += len(bodies)
        for body in bodies:
            record, encoded = seal_encoded(prev.hash, body)
            where = position(body["index"], body["sub"])
            sealed.append((where, record, encoded, prev))
            prev = Head(where, record["hash"])
        self.memo.set(prev)
        with self._lock:
            for where, record, encoded, before in sealed:
                self._materialize(where, record, encoded, before)
            if len(self._pending) >= AUDIT_PENDING_RECORDS_MAX:
                self.flush()

    def _materialize(
        self, where: str, record: dict[str, Any], encoded: bytes, before: Head
    ) -> None:
        held = self._head
        if held.position is not None and where <= held.position:
            stored = self._get(b"records", where)
            if stored is not None and stored.get("hash") != record["hash"]:
                self.mismatches += 1
                log.critical(
                    "audit record %s on disk differs from the one derived from the log; "
                    "run `concord audit verify`",
                    where,
                )
            return
        if record["prev_hash"] != held.hash:
            if held.position is None and self._pending_anchor is None:
                # Nothing held yet: the chain here starts where the snapshot left it.
                self._pending_anchor = Anchor(position=before.position, hash=before.hash)
            else:
                resume = Resume(
                    after=held.position,
                    position=where,
                    hash=record["prev_hash"],
                    reason=f"records after {held.position} up to {before.position} were not "
                    "applied on this node (snapshot installed, or lost in a crash)",
                )
                self._pending_resumes.append((where, _resume_json(resume)))
                log.warning("audit: %s", resume.reason)
        self._pending.append((b"records", where, record, encoded))
        self._head = Head(where, record["hash"])

    # ------------------------------------------------------------------ local chain

    def note_local(self, event: str, detail: dict[str, Any], round_id: str = "") -> dict[str, Any]:
        """Record something only this node saw (leader change, operator action)."""
        with self._lock:
            head = self._local_head
            seq = 1 if head.position is None else int(head.position) + 1
            body = {
                "seq": seq,
                "at_ms": int(self._clock() * 1000),
                "event": event,
                "round_id": round_id,
                "detail": detail,
                "node_id": self.node_id,
                "local": True,
            }
            record, encoded = seal_encoded(head.hash, body)
            where = f"{seq:012d}"
            self._pending.append((b"local", where, record, encoded))
            self._local_head = Head(where, record["hash"])
        log.info("audit (local): %s %s %s", event, round_id, detail)
        return record

    # ------------------------------------------------------------------ writing

    def _flush_forever(self) -> None:
        while not self._stop.wait(self._flush_interval_s):
            try:
                self.flush()
            except Exception:
                log.exception("audit flush failed")

    def flush(self) -> None:
        with self._lock:
            if not self._pending and self._pending_anchor is None and not self._pending_resumes:
                return
            pending, self._pending = self._pending, []
            resumes, self._pending_resumes = self._pending_resumes, []
            anchor, self._pending_anchor = self._pending_anchor, None
            try:
                with self._env.begin(write=True) as txn:
                    meta = self._dbs[b"meta"]
                    if anchor is not None:
                        txn.put(b"anchor", _dumps([anchor.position, anchor.hash]), db=meta)  # type: ignore[arg-type]
                    for where, resume in resumes:
                        txn.put(where.encode(), _dumps(resume), db=self._dbs[b"resumes"])
                    for db, where, _, encoded in pending:
                        txn.put(where.encode(), encoded, db=self._dbs[db])
                    txn.put(b"head", _dumps([self._head.position, self._head.hash]), db=meta)  # type: ignore[arg-type]
                    txn.put(
                        b"local_head",
                        _dumps([self._local_head.position, self._local_head.hash]),  # type: ignore[arg-type]
                        db=meta,
                    )
                    self._prune(txn, b"records", b"anchor", self.records_max)
                    self._prune(txn, b"local", b"local_anchor", self.local_records_max)
            except lmdb.Error:
                self.failures += 1
                log.critical("audit log %s: write failed", self.path, exc_info=True)

    def _prune(self, txn: Any, name: bytes, anchor_key: bytes, keep: int) -> None:
        db = self._dbs[name]
        count = txn.stat(db)["entries"]
        if count <= keep + AUDIT_PRUNE_BATCH:
            return
        drop = count - keep
        last: tuple[bytes, bytes] | None = None
        with txn.cursor(db=db) as cursor:
            found = cursor.first()
            while found and drop > 0:
                last = (bytes(cursor.key()), bytes(cursor.value()))
                found = cursor.delete()
                drop -= 1
        if last is None:
            return
        last_hash = json.loads(last[1])["hash"]
        txn.put(anchor_key, _dumps([last[0].decode(), last_hash]), db=self._dbs[b"meta"])  # type: ignore[arg-type]
        if name == b"records":
            with txn.cursor(db=self._dbs[b"resumes"]) as cursor:
                found = cursor.first()
                while found and bytes(cursor.key()) <= last[0]:
                    found = cursor.delete()

    # ------------------------------------------------------------------ reading

    def _get(self, name: bytes, where: str) -> dict[str, Any] | None:
        for db, pending_where, record, _ in self._pending:
            if db == name and pending_where == where:
                return record
        with self._env.begin() as txn:
            raw = txn.get(where.encode(), db=self._dbs[name])
        return None if raw is None else json.loads(bytes(raw))

    def _scan(self, name: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.readonly:
            self.flush()
        with self._env.begin() as txn, txn.cursor(db=self._dbs[name]) as cursor:
            for key, value in cursor:
                yield bytes(key).decode(), json.loads(bytes(value))

    def records(
        self, *, round_id: str = "", since_ms: int = 0, local: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Log-chain records in chain order, then (``local``) this node's local ones."""
        names = (b"records", b"local") if local else (b"records",)
        for name in names:
            for _, record in self._scan(name):
                if round_id and record.get("round_id") != round_id:
                    continue
                if record.get("at_ms", 0) < since_ms:
                    continue
                yield record

    def head(self) -> Head:
        return self._head

    def verify(self) -> tuple[Verdict, Verdict]:
        """(log chain, local chain)."""
        if not self.readonly:
            self.flush()
        resumes = {}
        with self._env.begin() as txn, txn.cursor(db=self._dbs[b"resumes"]) as cursor:
            for key, value in cursor:
                data = json.loads(bytes(value))
                resumes[bytes(key).decode()] = Resume(**data)
        chain = verify(
            self._scan(b"records"),
            anchor=self._anchor(b"anchor"),
            head=_head_pair(self._read_head(b"head")),
            resumes=resumes,
            position_of=lambda r: position(int(r.get("index", -1)), int(r.get("sub", -1))),
        )
        local = verify(
            self._scan(b"local"),
            anchor=self._anchor(b"local_anchor"),
            head=_head_pair(self._read_head(b"local_head")),
            position_of=lambda r: f"{int(r.get('seq', -1)):012d}",
        )
        return chain, local

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if not self.readonly:
            self.flush()
        self._env.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _head_pair(head: Head) -> tuple[str, str] | None:
    return None if head.position is None else (head.position, head.hash)


def _resume_json(resume: Resume) -> dict[str, Any]:
    return {
        "after": resume.after,
        "position": resume.position,
        "hash": resume.hash,
        "reason": resume.reason,
    }
