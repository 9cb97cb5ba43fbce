"""Backups of a running cluster, and new data dirs seeded from one.

Theory of operation
-------------------
A backup is what a Raft snapshot holds, taken on demand from the leader and written as a
file of its own: the replicated state (``CoordinatorState`` and the audit chain's head,
the attributes pysyncobj snapshots of the state machine) as of one applied index, the
two log entries that index ends with (pysyncobj matches a snapshot to the log by them),
and the members.

- Consistent: ``capture`` runs on the raft thread between ticks (queued like every other
  call into pysyncobj), where no entry is half-applied and the audit head (set by the
  apply callback, after the state lock is released) belongs to the same index as the
  state. It pickles the state there, as pysyncobj's own compaction does; the gRPC
  handler waits for the bytes off the event loop.
- The file: ``MAGIC``, a 4-byte length, a JSON header (``format``, the applied index and
  term, the members, the audit head, who took it and when), the pickled snapshot, and a
  SHA-256 of everything before it. ``read_backup`` refuses, with one sentence, a file
  that is not a backup, one of another format version, and one whose checksum does not
  match (truncated, a flipped bit).
- Restore (``seed_data_dir``): a NEW node's data dir gets the journal and the snapshot
  file a node would hold right after compacting at that index: the journal (with the
  identity of the new node in the new cluster) holds the two entries the snapshot ends
  with, the term of the last one, that index as the commit index and the new members;
  ``raft-snapshot.gz`` holds the state with the new members as its cluster. At start,
  pysyncobj loads the snapshot, finds the log agreeing with it and applies nothing
  before it; the leader elected next continues the log after it. Every node of the new
  cluster is seeded from the same file, so their logs agree. The audit log of a seeded
  node is empty: its chain starts at the backed-up head (an anchor), and the records of
  new entries continue from it.

A backup holds a pickle: restore only backups you took (the checksum catches damage, not
a forger).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysyncobj import pickle as raft_pickle

from coordinator.audit.log import MEMO_ATTRIBUTE
from coordinator.replication.journal import JournalError, LmdbJournal
from coordinator.replication.membership import to_node
from coordinator.replication.node import (
    JOURNAL_DIR,
    SNAPSHOT_FILE,
    NodeAddress,
    ReplicatedCoordinator,
)

# 2: the state's rounds in snapshot format 2 (Round.__reduce__), which a concord that
# reads only format 1 could not unpickle: it refuses a format-2 backup with its one line
# instead. A format-1 backup (rounds in pickle's own form) is still read.
BACKUP_FORMAT = 2
BACKUP_FORMATS_READ = (1, 2)
MAGIC = b"CONCORD-BACKUP\n"
_LENGTH = struct.Struct(">I")
_DIGEST_BYTES = 32
HEADER_BYTES_MAX = 1 << 20
CAPTURE_WAIT_S = 30.0
SEED_MAP_BYTES = 1 << 30  # the seeded journal's LMDB map (the node regrows it as configured)


class BackupError(Exception):
    """A backup cannot be taken, read or restored; the message is one sentence that says
    what is wrong and what to do."""


@dataclass(frozen=True, kw_only=True)
class Backup:
    format: int
    applied_index: int
    applied_term: int
    members: tuple[NodeAddress, ...]
    audit_head: tuple[str | None, str] | None  # (position, hash); None: no record yet
    taken_by: str
    taken_at_ms: int
    snapshot: bytes  # pickled (consumer data, last entry, entry before it)

    def header(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "applied_index": self.applied_index,
            "applied_term": self.applied_term,
            "members": [
                {"node_id": m.node_id, "raft": m.raft, "grpc": m.grpc} for m in self.members
            ],
            "audit_head": None if self.audit_head is None else list(self.audit_head),
            "taken_by": self.taken_by,
            "taken_at_ms": self.taken_at_ms,
        }


# ---------------------------------------------------------------------- taking one


def capture(replicated: ReplicatedCoordinator, timeout_s: float = CAPTURE_WAIT_S) -> Backup:
    """A backup of ``replicated``'s applied state, taken on its raft thread. Blocks (call
    it off the event loop). Raises ``BackupError`` if the node is not a leader whose
    applied state is current, or nothing was applied yet."""
    done = threading.Event()
    outcome: list[Backup | BackupError] = []

    def take() -> None:
        try:
            outcome.append(_take(replicated))
        except BackupError as error:
            outcome.append(error)
        except Exception as error:  # never leave the caller waiting
            outcome.append(BackupError(f"the backup failed ({type(error).__name__}: {error})"))
        finally:
            done.set()

    # The node runs queued calls on its raft thread once per tick (node.py,
    # ``_run_raft_calls``), the only thread that may touch pysyncobj.
    replicated._raft_calls.append(take)
    notifier = getattr(replicated._raft, "_SyncObj__pipeNotifier", None)
    if notifier is not None:
        notifier.notify()
    if not done.wait(timeout_s):
        raise BackupError(f"the raft thread took no backup within {timeout_s:.0f}s; retry")
    result = outcome[0]
    if isinstance(result, BackupError):
        raise result
    return result


def _take(replicated: ReplicatedCoordinator) -> Backup:
    if not replicated.leader_ready():
        leader = replicated.leader_id()
        raise BackupError(
            f"this node is not a leader with current state (leader: {leader or 'unknown'}); "
            "ask the leader"
        )
    raft: Any = replicated._raft
    applied = int(raft.raftLastApplied)
    entries = raft._SyncObj__getEntries(applied - 1, 2)
    if len(entries) < 2:
        raise BackupError("the cluster has applied nothing to back up yet; retry in a moment")
    before_last, last = (tuple(entries[0]), tuple(entries[1]))
    self_data = {k: v for k, v in raft.__dict__.items() if k not in raft._SyncObj__properies}
    machine = replicated.snapshot_carrier
    data = [self_data, machine._serialize()]
    head = getattr(machine, MEMO_ATTRIBUTE, None)
    snapshot = raft_pickle.dumps((data, last, before_last))
    return Backup(
        format=BACKUP_FORMAT,
        applied_index=int(last[1]),
        applied_term=int(last[2]),
        members=replicated.members(),
        audit_head=None if head is None else (head[0], head[1]),
        taken_by=replicated.status().node_id,
        taken_at_ms=int(time.time() * 1000),
        snapshot=snapshot,
    )


def encode(backup: Backup) -> bytes:
    header = json.dumps(backup.header(), sort_keys=True).encode()
    body = MAGIC + _LENGTH.pack(len(header)) + header + backup.snapshot
    return body + hashlib.sha256(body).digest()


# ---------------------------------------------------------------------- reading one


def decode(data: bytes, where: str = "the backup") -> Backup:
    """The backup in ``data``, or ``BackupError`` naming what is wrong with it."""
    if not data.startswith(MAGIC):
        raise BackupError(f"{where} is not a concord backup file (no {MAGIC.strip().decode()})")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    start = len(MAGIC) + _LENGTH.size
    if len(body) < start or hashlib.sha256(body).digest() != digest:
        raise BackupError(
            f"{where} is damaged (its SHA-256 checksum does not match: truncated or "
            "altered); take a new backup or use another copy"
        )
    (length,) = _LENGTH.unpack(body[len(MAGIC) : start])
    try:
        if length > HEADER_BYTES_MAX or start + length > len(body):
            raise ValueError("header length")
        header = json.loads(body[start : start + length])
        version = header["format"]
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"{where} has an unreadable header; take a new backup") from None
    if version not in BACKUP_FORMATS_READ:
        readable = ", ".join(map(str, BACKUP_FORMATS_READ))
        raise BackupError(
            f"{where} is backup format {version!r}; this concord reads formats "
            f"{readable} only: restore it with the concord version that took it"
        )
    try:
        head = header["audit_head"]
        return Backup(
            format=version,
            applied_index=int(header["applied_index"]),
            applied_term=int(header["applied_term"]),
            members=tuple(NodeAddress(**m) for m in header["members"]),
            audit_head=None if head is None else (head[0], str(head[1])),
            taken_by=str(header["taken_by"]),
            taken_at_ms=int(header["taken_at_ms"]),
            snapshot=bytes(body[start + length :]),
        )
    except (ValueError, KeyError, TypeError, IndexError):
        raise BackupError(f"{where} has an unreadable header; take a new backup") from None


def read_backup(path: Path) -> Backup:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BackupError(f"cannot read {path} ({error.strerror})") from None
    return decode(data, str(path))


def _snapshot_parts(backup: Backup) -> tuple[Any, tuple[bytes, int, int], tuple[bytes, int, int]]:
    try:
        data, last, before_last = raft_pickle.loads(backup.snapshot)
        last = (bytes(last[0]), int(last[1]), int(last[2]))
        before_last = (bytes(before_last[0]), int(before_last[1]), int(before_last[2]))
    except Exception as error:
        raise BackupError(
            f"the backup's state cannot be read ({type(error).__name__}); it was written by "
            "another concord version, or take a new backup"
        ) from None
    if last[1] != backup.applied_index or before_last[1] != last[1] - 1:
        raise BackupError("the backup's state does not match its header; take a new backup")
    return data, last, before_last


# ---------------------------------------------------------------------- restoring


def seed_data_dir(
    backup: Backup, data_dir: Path, node_id: str, members: Sequence[NodeAddress]
) -> None:
    """Make ``data_dir`` (absent or empty) the data dir of ``node_id``, a member of a new
    cluster of ``members`` that starts from ``backup``. Written beside it and renamed
    into place, so a failed restore leaves no half-seeded data dir."""
    data_dir = Path(data_dir)
    ids = [m.node_id for m in members]
    if node_id not in ids:
        raise BackupError(f"node id {node_id!r} is not among the members {ids}")
    if len(set(ids)) != len(ids) or len({m.raft for m in members}) != len(members):
        raise BackupError(f"members {ids} repeat a node id or raft address; list each once")
    if data_dir.exists():
        if not data_dir.is_dir():
            raise BackupError(f"{data_dir} exists and is not a directory")
        if any(data_dir.iterdir()):
            raise BackupError(
                f"data dir {data_dir} is not empty: restore seeds a new node only; give an "
                "empty or new directory"
            )
    data, last, before_last = _snapshot_parts(backup)
    staging = data_dir.with_name(f".{data_dir.name}.restoring")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(mode=0o700, parents=True)
    try:
        _write_journal(staging, node_id, members, last, before_last)
        cluster = {to_node(m) for m in members}
        dump = gzip.compress(raft_pickle.dumps((data, last, before_last, cluster)))
        snapshot = staging / SNAPSHOT_FILE
        with snapshot.open("wb") as file:
            file.write(dump)
            file.flush()
            os.fsync(file.fileno())
        # Opened again as the node will: the identity and the snapshot check out.
        _open_journal(staging, node_id, members)._destroy()
        if data_dir.exists():
            data_dir.rmdir()
        staging.rename(data_dir)
        fd = os.open(data_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _open_journal(data_dir: Path, node_id: str, members: Sequence[NodeAddress]) -> LmdbJournal:
    try:
        return LmdbJournal(
            data_dir / JOURNAL_DIR,
            identity={"node_id": node_id, "members": sorted(m.node_id for m in members)},
            dump_path=data_dir / SNAPSHOT_FILE,
            map_bytes=SEED_MAP_BYTES,
        )
    except JournalError as error:
        raise BackupError(str(error)) from None


def _write_journal(
    data_dir: Path,
    node_id: str,
    members: Sequence[NodeAddress],
    last: tuple[bytes, int, int],
    before_last: tuple[bytes, int, int],
) -> None:
    journal = _open_journal(data_dir, node_id, members)
    try:
        journal.add(*before_last)
        journal.add(*last)
        journal.setRaftCommitIndex(last[1])
        journal.record_members(
            [{"node_id": m.node_id, "raft": m.raft, "grpc": m.grpc} for m in members]
        )
        journal.setCurrentTerm(last[2], None)  # flushes everything queued before it
    finally:
        journal._destroy()
