"""Durable Raft log for pysyncobj: an LMDB journal with group commit.

Why: pysyncobj's ``FileJournal`` writes entries into an mmap it never fsyncs and its
term/vote file is flushed, not fsynced (safety rule 7, docs/protocol.md). A power loss can then lose
entries this node already acknowledged, or let it vote twice in one term.

What is synced when
-------------------
pysyncobj sees an in-memory list of ``(command, index, term)`` tuples (it slices and
indexes the journal like a list). Every change to it is also queued as a pending write.
``flush()`` writes all pending changes in ONE LMDB write transaction opened with
``sync=True`` (data and meta pages fsynced before ``commit`` returns): a group commit.

- ``setCurrentTerm(term, votedFor)``: flushed at once, with every entry change queued
  before it. Nothing can act on a new term or vote before it is on disk.
- ``add`` / ``deleteEntriesFrom`` (appends, conflict truncation): queued, flushed at the
  next *barrier*: before any message leaves this node (``BarrierTransport.send``) and
  after every tick of the raft thread. So a follower's acknowledgement, a leader's
  AppendEntries and a vote request are sent only after the entries they speak for are
  durable, and a leader counts its own copy towards a majority only after the tick that
  appended it has flushed (its followers cannot acknowledge what it has not yet sent).
- ``deleteEntriesTo`` (log compaction) and ``clear`` (snapshot installed from the
  leader): the snapshot file (``fullDumpFile``) and its directory are fsynced first,
  then the removal is queued: the log never forgets entries a durable snapshot does
  not cover.
- ``setRaftCommitIndex``: queued, written with the next flush (the commit index is a
  hint; pysyncobj clamps it to the log on restart).
- ``_destroy`` (close): final flush, then the environment is closed.

A write the journal cannot store is never acknowledged
--------------------------------------------------------
A flush writes its queued changes in one transaction, and forgets them only once that
transaction committed: a failed flush loses nothing and leaves no gap. When the LMDB
map is full, it grows (``set_mapsize``, doubling) up to ``map_bytes_max`` and the
write is tried again. When it cannot grow further, or LMDB reports any other error
(I/O), the journal fails for good: ``flush`` raises ``JournalWriteError`` now and at
every later call, so whatever the failed write spoke for (a follower's
acknowledgement, a vote, a leader counting its own copy in the next tick) never
leaves the node; the node stops (coordinator/replication/node.py) with one CRITICAL
line. After a restart (with a larger map, or space freed) the journal holds exactly
the writes that committed, and nothing acknowledged is missing.

LMDB layout (one environment, directory ``<data_dir>/raft-journal``):
``entries``: 8-byte big-endian index -> 8-byte big-endian term + command bytes;
``meta``: ``term``, ``voted_for`` (absent = no vote), ``commit_index``, ``identity``
(JSON: format, node id, the member ids it was created with) that ties the directory to
one node of one cluster, ``members`` (JSON: the member set as of this log's end, written
with the log change that made it; coordinator/replication/membership.py) and
``members_seen`` (every node id the cluster has had, as far as this node saw).

Formats: the identity record names the journal's format (``JOURNAL_FORMAT``) and the
state machine marks its snapshots (``SNAPSHOT_FORMAT``); a journal or snapshot of
another format is refused at start with one line that names both formats, before
anything is read from it as if it were this one's.

Identity check: the node id must match, and every member id the caller names must be
one this cluster has had (founding or seen through the log), so a node restarted with
its old ``--peer`` flags after a membership change still starts, and a directory of
another cluster is refused.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import logging
import os
import pickle
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
from pysyncobj.journal import Journal

from coordinator.lmdbfile import DamagedFile, check_data_file

JOURNAL_FORMAT = 1
# The state machine's snapshot (node.py, ``_StateMachine.snapshot_format``): the pickled
# ``CoordinatorState`` and audit head. A snapshot without the mark predates it: format 1.
# Format 2: rounds pickle as flat tuples (``Round.__reduce__``, coordinator/core/state.py)
# in pickle protocol 5 (raft_patch.py); format 1 (pickle's own form, protocol 2) is
# still read, and the next snapshot is written in format 2.
SNAPSHOT_FORMAT = 2
SNAPSHOT_FORMATS_READ = (1, 2)
SNAPSHOT_FORMAT_ATTRIBUTE = "snapshot_format"
_U64 = struct.Struct(">Q")

logger = logging.getLogger(__name__)

_KEY_TERM = b"term"
_KEY_VOTED_FOR = b"voted_for"
_KEY_COMMIT_INDEX = b"commit_index"
_KEY_IDENTITY = b"identity"
_KEY_MEMBERS = b"members"
_KEY_MEMBERS_SEEN = b"members_seen"

RaftEntry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's shape


class JournalError(Exception):
    """The journal directory cannot be used as it is. The message names the path and
    says what to do; the node turns it into a ReplicationError."""


class JournalWriteError(JournalError):
    """A write the journal could not store (the map full at its bound, an I/O error).
    The journal has failed for good: every later flush raises this too."""


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _snapshot_format(state: Any) -> Any:
    """The format mark of a pysyncobj dump's state: ``[SyncObj's own, consumer, ...]``;
    the state machine is the one consumer."""
    consumers = state[1:] if isinstance(state, list) else []
    for consumer in consumers:
        if isinstance(consumer, dict):
            return consumer.get(SNAPSHOT_FORMAT_ATTRIBUTE, 1)
    return 1


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a snapshot is pickled or unpickled: the
    collector would otherwise walk every object of the growing state again and again
    (unpickling 50,000 retained rounds took about 3x as long with it on). Reference
    counting still frees what it can; the collector resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Snapshots already read whole by ``_check_snapshot`` at start, by path: pysyncobj's
# own load, moments later, takes the dump from here (raft_patch.py) instead of reading
# and unpickling the file a second time, as long as the file is unchanged.
_preloaded: dict[str, tuple[tuple[int, int, int], Any]] = {}


def _file_key(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def take_preloaded_snapshot(path: str) -> Any | None:
    """The dump ``_check_snapshot`` read from ``path``, once, if the file is still the
    one it read (None otherwise: read it again)."""
    held = _preloaded.pop(path, None)
    if held is None:
        return None
    key, dump = held
    try:
        same = _file_key(Path(path)) == key
    except OSError:
        return None
    return dump if same else None


class LmdbJournal(Journal):  # type: ignore[misc]
    """pysyncobj ``Journal`` backed by LMDB. Used only from the raft thread, except
    ``flush`` which may also be called by whoever closes the node after that thread
    stopped; a lock keeps flushes whole anyway."""

    def __init__(
        self,
        path: Path,
        *,
        identity: dict[str, Any],
        dump_path: Path,
        map_bytes: int,
        map_bytes_max: int | None = None,
    ) -> None:
        self._path = path
        self._dump_path = dump_path
        self._lock = threading.Lock()
        # The map grows (doubling) up to this when full; None: it never grows.
        self._map_bytes_max = max(map_bytes, map_bytes_max or map_bytes)
        self.failure: str | None = None  # why the journal failed for good, once it did
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            check_data_file(path / "data.mdb")
        except DamagedFile as error:
            raise JournalError(
                f"Raft journal {path}: {error}; restore the data dir from a backup, or move "
                "it away and rejoin this node through a membership change"
            ) from None
        try:
            self._env = lmdb.open(
                str(path),
                mode=0o600,  # data and lock files: this user's only
                max_dbs=2,
                map_size=map_bytes,
                sync=True,
                metasync=True,
            )
        except lmdb.Error as error:
            raise JournalError(
                f"Raft journal {path} cannot be opened ({error}): it is corrupt or not a "
                f"journal; restore it from a backup or move it away so this node resyncs "
                f"from its peers"
            ) from None
        self._entries_db = self._env.open_db(b"entries")
        self._meta_db = self._env.open_db(b"meta")
        self._pending: list[tuple[str, Any]] = []
        try:
            self._log: list[RaftEntry] = []
            self._load(identity)
        except BaseException:
            self._env.close()
            raise

    # ------------------------------------------------------------------ startup

    def _corrupt(self, what: str) -> JournalError:
        return JournalError(
            f"Raft journal {self._path} is corrupt ({what}); restore the data dir from a "
            f"backup or move it away so this node resyncs from its peers"
        )

    def _load(self, identity: dict[str, Any]) -> None:
        wanted = dict(identity, format=JOURNAL_FORMAT)
        with self._env.begin() as txn:
            stored = txn.get(_KEY_IDENTITY, db=self._meta_db)
            for key, value in txn.cursor(db=self._entries_db):
                if len(key) != 8 or len(value) < 8:
                    raise self._corrupt("malformed entry record")
                index = _U64.unpack(key)[0]
                if self._log and index != self._log[-1][1] + 1:
                    raise self._corrupt(f"gap in the log after index {self._log[-1][1]}")
                self._log.append((bytes(value[8:]), index, _U64.unpack(value[:8])[0]))
            self._term = self._get_u64(txn, _KEY_TERM, 0)
            voted = txn.get(_KEY_VOTED_FOR, db=self._meta_db)
            self._voted_for = None if voted is None else bytes(voted).decode()
            self._commit_index = self._get_u64(txn, _KEY_COMMIT_INDEX, 1)
            self._members = self._get_json(txn, _KEY_MEMBERS)
            self._members_seen = set(self._get_json(txn, _KEY_MEMBERS_SEEN) or ())
        if stored is None:
            if self._log or self._dump_path.exists():
                raise JournalError(
                    f"data dir {self._path.parent} holds Raft data without an identity "
                    f"record: it was not written by this version of concord; use an empty "
                    f"data dir for this node"
                )
            with self._env.begin(write=True) as txn:
                txn.put(
                    _KEY_IDENTITY, json.dumps(wanted, sort_keys=True).encode(), db=self._meta_db
                )
            return
        try:
            found = json.loads(bytes(stored))
        except ValueError:
            raise self._corrupt("unreadable identity record") from None
        if not isinstance(found, dict) or found.get("format") != JOURNAL_FORMAT:
            version = found.get("format") if isinstance(found, dict) else None
            raise JournalError(
                f"Raft journal {self._path} is journal format {version!r}; this concord reads "
                f"format {JOURNAL_FORMAT} only: run the concord version that wrote it"
            )
        known = set(found.get("members") or ()) | self._members_seen
        same_node = {k: v for k, v in found.items() if k != "members"} == {
            k: v for k, v in wanted.items() if k != "members"
        }
        if not (same_node and set(wanted["members"]) <= known):
            raise JournalError(
                f"data dir {self._path.parent} belongs to node {found.get('node_id')!r} of "
                f"cluster {found.get('members')}, not to node {wanted['node_id']!r} of "
                f"cluster {wanted['members']}; point this node at its own data dir"
            )
        self._check_snapshot()

    def _get_json(self, txn: lmdb.Transaction, key: bytes) -> Any:
        value = txn.get(key, db=self._meta_db)
        if value is None:
            return None
        try:
            return json.loads(bytes(value))
        except ValueError:
            raise self._corrupt(f"unreadable {key.decode()} record") from None

    def _get_u64(self, txn: lmdb.Transaction, key: bytes, default: int) -> int:
        value = txn.get(key, db=self._meta_db)
        if value is None:
            return default
        if len(value) != 8:
            raise self._corrupt(f"malformed {key.decode()} record")
        return int(_U64.unpack(value)[0])

    def _check_snapshot(self) -> None:
        """pysyncobj logs and ignores a snapshot it cannot read, then runs on an empty
        state: refuse instead. Also close its crash window between writing a snapshot
        and compacting the log: it would otherwise see a log that does not start at the
        snapshot, clear it, and lose the entries after the snapshot."""
        first = self._log[0][1] if self._log else None
        if not self._dump_path.exists():
            if first is not None and first > 1:
                raise JournalError(
                    f"data dir {self._path.parent} has a compacted Raft log but its snapshot "
                    f"{self._dump_path} is missing; restore it from a backup or move the "
                    f"data dir away so this node resyncs from its peers"
                )
            return
        try:
            # Decompressed whole, so gzip checks its CRC-32 and length at the end: a
            # flipped bit that still unpickles is refused, not started from.
            with gc_paused():
                dump = pickle.loads(gzip.decompress(self._dump_path.read_bytes()))
            state, last, before_last, _cluster = dump
            last_index, last_term = int(last[1]), int(last[2])
            before_index = int(before_last[1])
        except Exception as error:
            raise JournalError(
                f"snapshot {self._dump_path} is corrupt ({type(error).__name__}); restore it "
                f"from a backup or move the data dir away so this node resyncs from its peers"
            ) from None
        version = _snapshot_format(state)
        if version not in SNAPSHOT_FORMATS_READ:
            raise JournalError(
                f"snapshot {self._dump_path} is snapshot format {version!r}; this concord "
                f"reads formats {', '.join(map(str, SNAPSHOT_FORMATS_READ))} only: run the "
                f"concord version that wrote it"
            )
        _preloaded[str(self._dump_path)] = (_file_key(self._dump_path), dump)
        by_index = {entry[1]: entry for entry in self._log}
        if first is not None and first > last_index:
            raise self._corrupt(f"log starts at {first}, after the snapshot's {last_index}")
        held = by_index.get(last_index)
        if held is not None and held[2] == last_term and before_index in by_index:
            position = self._log.index(by_index[before_index])
            if position > 0:
                self.deleteEntriesTo(position)
                self.flush()

    # ------------------------------------------------------------------ barrier

    def flush(self) -> None:
        """Make every queued change durable (one synced LMDB transaction). Queued
        changes are forgotten only once that transaction committed; a write that
        cannot be stored raises ``JournalWriteError`` (module doc), now and later."""
        with self._lock:
            if self.failure is not None:
                raise JournalWriteError(self.failure)
            if not self._pending:
                return
            pending = list(self._pending)
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for op, arg in pending:
                            self._write(txn, op, arg)
                except lmdb.MapFullError:
                    if self._grow():
                        continue
                    self._fail(
                        f"Raft journal {self._path} is full at its bound of "
                        f"{self._map_bytes_max} bytes (MapFullError)"
                    )
                except lmdb.Error as error:
                    self._fail(
                        f"Raft journal {self._path} cannot store a write "
                        f"({type(error).__name__}: {error})"
                    )
                break
            # Only the raft thread queues, and it waits for this flush: nothing was
            # queued meanwhile, but keep whatever was, in order.
            self._pending = self._pending[len(pending) :]

    def _grow(self) -> bool:
        size = int(self._env.info()["map_size"])
        if size >= self._map_bytes_max:
            return False
        grown = min(size * 2, self._map_bytes_max)
        try:
            self._env.set_mapsize(grown)
        except lmdb.Error as error:
            self._fail(f"Raft journal {self._path}: cannot grow its map to {grown} bytes ({error})")
        logger.warning(
            "Raft journal %s: map full at %d bytes; grown to %d (bound %d)",
            self._path,
            size,
            grown,
            self._map_bytes_max,
        )
        return True

    def _fail(self, message: str) -> None:
        self.failure = message
        raise JournalWriteError(message)

    def _write(self, txn: lmdb.Transaction, op: str, arg: Any) -> None:
        db = self._entries_db
        if op == "put":
            command, index, term = arg
            txn.put(_U64.pack(index), _U64.pack(term) + command, db=db)
        elif op in ("delete_from", "delete_to"):
            cursor = txn.cursor(db=db)
            if op == "delete_from":
                found = cursor.set_range(_U64.pack(arg))
                while found:
                    found = cursor.delete()
            else:
                found = cursor.first()
                while found and _U64.unpack(cursor.key())[0] < arg:
                    found = cursor.delete()
        elif op == "clear":
            txn.drop(db, delete=False)
        elif op == "term":
            term, voted_for = arg
            txn.put(_KEY_TERM, _U64.pack(term), db=self._meta_db)
            if voted_for is None:
                txn.delete(_KEY_VOTED_FOR, db=self._meta_db)
            else:
                txn.put(_KEY_VOTED_FOR, voted_for.encode(), db=self._meta_db)
        elif op == "commit_index":
            txn.put(_KEY_COMMIT_INDEX, _U64.pack(arg), db=self._meta_db)
        elif op == "members":
            members, seen = arg
            txn.put(_KEY_MEMBERS, json.dumps(members, sort_keys=True).encode(), db=self._meta_db)
            txn.put(_KEY_MEMBERS_SEEN, json.dumps(seen).encode(), db=self._meta_db)
        else:
            raise AssertionError(f"unknown journal op {op!r}")

    def _sync_snapshot(self) -> None:
        if self._dump_path.exists():
            _fsync_path(self._dump_path)
            _fsync_path(self._dump_path.parent, directory=True)

    # ------------------------------------------------------------------ Journal

    def add(self, command: bytes, idx: int, term: int) -> None:
        entry = (bytes(command), idx, term)
        self._log.append(entry)
        self._pending.append(("put", entry))

    def clear(self) -> None:
        self._sync_snapshot()
        self._log = []
        self._pending.append(("clear", None))

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._log):
            return
        first_index = self._log[entryFrom][1]
        del self._log[entryFrom:]
        self._pending.append(("delete_from", first_index))

    def deleteEntriesTo(self, entryTo: int) -> None:
        if entryTo <= 0:
            return
        self._sync_snapshot()
        keep_from = self._log[entryTo][1] if entryTo < len(self._log) else self._log[-1][1] + 1
        self._log = self._log[entryTo:]
        self._pending.append(("delete_to", keep_from))

    def __getitem__(self, item: int | slice) -> Any:
        return self._log[item]

    def __len__(self) -> int:
        return len(self._log)

    def _destroy(self) -> None:
        _preloaded.pop(str(self._dump_path), None)
        try:
            if self.failure is None:
                self.flush()
        except JournalWriteError:
            pass  # the node says so (one CRITICAL line); nothing more can be stored
        finally:
            self._env.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if raftCommitIndex != self._commit_index:
            self._commit_index = raftCommitIndex
            self._pending.append(("commit_index", raftCommitIndex))

    def record_members(self, members: list[dict[str, str]]) -> None:
        """The member set as of the log's end: queued, so it becomes durable in the same
        synced write as the log change (append or truncation) that caused it."""
        members = sorted(members, key=lambda m: m["node_id"])
        if members == self._members:
            return
        self._members = members
        self._members_seen |= {m["node_id"] for m in members}
        self._pending.append(("members", (members, sorted(self._members_seen))))

    def members(self) -> list[dict[str, str]] | None:
        """The recorded member set (None: never recorded, a directory from before
        membership changes or a node that has not started yet)."""
        return None if self._members is None else list(self._members)

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        self._term, self._voted_for = term, votedForNodeId
        self._pending.append(("term", (term, votedForNodeId)))
        self.flush()

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for

    def onOneSecondTimer(self) -> None:
        self.flush()

    def entries(self) -> Sequence[RaftEntry]:
        """The in-memory log (tests and status)."""
        return tuple(self._log)
