"""Guards around pysyncobj 0.3.17 internals that Raft safety depends on.

The follower truncation bug
---------------------------
pysyncobj's AppendEntries handler (``SyncObj.__onMessageReceived``) deletes every entry
after ``prevLogIdx`` whenever the follower holds more than the message carries:

    if len(prevEntries) > 1: ... self.__deleteEntriesFrom(prevLogIdx + 1)

Raft (§5.3) only allows deleting from the first entry whose term conflicts with the
leader's. A resent, shorter, same-term batch (a retransmission after a reconnect, or a
heartbeat sent from a stale ``nextIndex``) therefore drops entries this follower already
acknowledged: the leader may count them towards a majority that no longer exists.

``TruncationSafeSyncObj`` rewrites such messages before the stock handler sees them:

- the entries this follower already holds with the same term are dropped from the
  message, and ``prevLogIdx``/``prevLogTerm`` move to just before the first entry that is
  new or conflicts. The stock handler then truncates exactly from the conflict (or not
  at all, when the remaining entries extend the log) and appends;
- when every entry is already held (nothing conflicts, nothing is new), the handler is
  run as a heartbeat on a *view* of the log that ends at the last index the message
  vouches for (or the commit index, if larger: committed entries are in every later
  leader's log). So it truncates nothing, answers ``next_node_idx`` for that index and
  never advances the commit index over entries the leader has not confirmed.

The patch relies on the message format and name-mangled internals of pysyncobj 0.3.17;
importing this module refuses any other version.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import struct
from typing import Any

import pysyncobj
from pysyncobj import SyncObj
from pysyncobj.journal import Journal
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from coordinator.replication.journal import gc_paused, take_preloaded_snapshot

PYSYNCOBJ_VERSION = "0.3.17"

# pysyncobj's own constant, not importlib.metadata (50 ms of every node's start).
_installed = pysyncobj.syncobj.VERSION
if _installed != PYSYNCOBJ_VERSION:
    raise ImportError(
        f"concord needs pysyncobj=={PYSYNCOBJ_VERSION} (its Raft safety patches rely on that "
        f"version's internals) but {_installed} is installed; run scripts/bootstrap or "
        f"`pip install pysyncobj=={PYSYNCOBJ_VERSION}`"
    )


class _LogView:
    """The journal as seen up to position ``end`` (exclusive): enough of the Journal
    interface for the append-entries handler when it is given no entries."""

    def __init__(self, journal: Any, end: int) -> None:
        self._journal = journal
        self._end = end

    def __len__(self) -> int:
        return self._end

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            start, stop, step = item.indices(self._end)
            return self._journal[start:stop:step]
        if item < 0:
            item += self._end
        if not 0 <= item < self._end:
            raise IndexError(item)
        return self._journal[item]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)


class TruncationSafeSyncObj(SyncObj):  # type: ignore[misc]
    """``SyncObj`` whose follower truncates its log only on a term conflict."""

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if (
            isinstance(message, dict)
            and message.get("type") == "append_entries"
            and "prevLogIdx" in message
            and message.get("transmission") is None
            and message.get("term", -1) >= self.raftCurrentTerm
        ):
            view_end = self._no_conflict_view_end(message)
            if view_end is not None:
                message = {
                    "type": "append_entries",
                    "term": message["term"],
                    "commit_index": message["commit_index"],
                    "prevLogIdx": self._SyncObj__raftLog[view_end - 1][1],
                    "prevLogTerm": self._SyncObj__raftLog[view_end - 1][2],
                    "entries": [],
                }
                journal = self._SyncObj__raftLog
                self._SyncObj__raftLog = _LogView(journal, view_end)
                try:
                    super()._SyncObj__onMessageReceived(node, message)
                finally:
                    self._SyncObj__raftLog = journal
                return
            message = self._skip_held_entries(message)
        super()._SyncObj__onMessageReceived(node, message)

    def _position(self, index: int) -> int | None:
        log = self._SyncObj__raftLog
        position = index - log[0][1]
        if 0 <= position < len(log):
            return position
        return None

    def _first_new(self, message: dict[str, Any]) -> int | None:
        """Position in ``message['entries']`` of the first entry this log lacks or holds
        with another term; None when it holds them all. Assumes prev matched."""
        log = self._SyncObj__raftLog
        for i, entry in enumerate(message.get("entries", ())):
            position = self._position(entry[1])
            if position is None or log[position][2] != entry[2]:
                return i
        return None

    def _prev_matches(self, message: dict[str, Any]) -> bool:
        position = self._position(message["prevLogIdx"])
        return (
            position is not None and self._SyncObj__raftLog[position][2] == message["prevLogTerm"]
        )

    def _no_conflict_view_end(self, message: dict[str, Any]) -> int | None:
        """When the message brings nothing new and conflicts with nothing, the log
        length (positions) the stock handler may see; else None."""
        if not self._prev_matches(message) or self._first_new(message) is not None:
            return None
        entries = message.get("entries", ())
        vouched = entries[-1][1] if entries else message["prevLogIdx"]
        last_index = max(vouched, min(self.raftCommitIndex, self._SyncObj__raftLog[-1][1]))
        position = self._position(last_index)
        assert position is not None, "a held entry or the commit index is outside the log"
        return position + 1

    def _skip_held_entries(self, message: dict[str, Any]) -> dict[str, Any]:
        if not self._prev_matches(message):
            return message  # the stock handler refuses it without touching the log
        first_new = self._first_new(message)
        if not first_new:  # None is handled by the caller; 0 means nothing to skip
            return message
        entries = message["entries"]
        held = entries[first_new - 1]
        return dict(message, prevLogIdx=held[1], prevLogTerm=held[2], entries=entries[first_new:])


_stock_create_journal = pysyncobj.syncobj.createJournal


def _create_journal(journal_file: Any = None) -> Any:
    """pysyncobj's journal seam: a ``Journal`` object passed as ``journalFile`` is used
    as the journal itself (our durable LMDB journal); anything else goes to the stock
    factory, so plain pysyncobj users in the same process are unaffected."""
    if isinstance(journal_file, Journal):
        return journal_file
    return _stock_create_journal(journal_file)


pysyncobj.syncobj.createJournal = _create_journal


class _FastGzip:
    """pysyncobj writes its snapshot (``fullDumpFile``) through ``gzip.GzipFile`` at the
    default level 9, on the raft thread (``useFork=False``), where every millisecond of
    CPU delays heartbeats and proposals; level 1 costs a small fraction of that CPU for
    a somewhat larger file. Readers (gzip.open) take any level."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_gzip, name)

    @staticmethod
    def GzipFile(*args: Any, **kwargs: Any) -> Any:
        if "w" in str(kwargs.get("mode", args[1] if len(args) > 1 else "")):
            kwargs.setdefault("compresslevel", SNAPSHOT_GZIP_LEVEL)
        return _gzip.GzipFile(*args, **kwargs)


SNAPSHOT_GZIP_LEVEL = 1
_gzip = pysyncobj.serializer.gzip
pysyncobj.serializer.gzip = _FastGzip()  # type: ignore[assignment]

# pysyncobj pickles its snapshot in protocol 2, where every ``bytes`` value becomes a
# call to ``_codecs.encode`` (a vote's result, a payload): larger and slower both ways.
# Protocol 5 (snapshot format 2, journal.py) writes them as they are; any protocol
# reads back, so a format-1 snapshot (protocol 2) still loads. Both ways run with the
# cyclic collector paused (journal.gc_paused).
SNAPSHOT_PICKLE_PROTOCOL = 5
_raft_pickle = pysyncobj.serializer.pickle


class _SnapshotPickle:
    def __getattr__(self, name: str) -> Any:
        return getattr(_raft_pickle, name)

    @staticmethod
    def dump(obj: Any, file: Any, protocol: int | None = None) -> None:
        with gc_paused():
            pickle.dump(obj, file, SNAPSHOT_PICKLE_PROTOCOL)

    @staticmethod
    def load(file: Any) -> Any:
        with gc_paused():
            return _raft_pickle.load(file)


pysyncobj.serializer.pickle = _SnapshotPickle()  # type: ignore[assignment]

_stock_deserialize = pysyncobj.serializer.Serializer.deserialize


def _deserialize(self: Any) -> Any:
    """pysyncobj reads its snapshot at start right after the journal's start checks
    read and checked the same file whole (journal.py, ``_check_snapshot``): take that
    dump instead of unpickling the file a second time (about as long again as the
    first, per node, on the way to the first election)."""
    name = self._Serializer__fileName
    if name is not None and (dump := take_preloaded_snapshot(name)) is not None:
        return dump
    return _stock_deserialize(self)


pysyncobj.serializer.Serializer.deserialize = _deserialize


def _durable_replace(source: str, target: str) -> bool:
    """pysyncobj renames a snapshot it wrote (or received from the leader) over the old
    one without syncing it (``os.rename``): after a power cut the name could point at
    data that never reached the disk, the old snapshot gone, while the log is already
    compacted up to it. The new file is fsynced before the rename and the directory
    after, so the snapshot is durable before the serializer reports it written."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    dir_fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


pysyncobj.serializer.atomicReplace = _durable_replace


# ---------------------------------------------------------------------- Raft frames
#
# pysyncobj's TcpConnection reads a 4-byte length, then buffers that many bytes before
# it authenticates (decrypts) the frame: anyone who can reach the Raft port can make a
# node buffer, and then decrypt, an arbitrarily large frame (a 64 MB stream cost a
# leader its leadership and 19 s of CPU). It also drops a frame that fails
# authentication without a word. The guards below refuse a frame whose announced
# length is out of bounds as soon as its header arrives, and log (once per peer
# address) a connection dropped for a frame that failed authentication.

RAFT_FRAME_BYTES_MAX = 8 << 20  # an AppendEntries batch is <= 1 MiB before encryption
_FRAME_HEADER = struct.Struct("i")
_FAILURES_LOGGED_MAX = 1000
_failures_logged: set[tuple[str, str]] = set()
# Connections dropped, by reason ("frame_too_large", "not_authenticated"): every one is
# counted, the first per (peer host, reason) is logged.
connections_dropped: collections.Counter[str] = collections.Counter()
_raft_log = logging.getLogger("coordinator.replication")


def _peer(connection: Any) -> str:
    """The peer's address, asked once per connection while its socket is open."""
    peer: str | None = getattr(connection, "_concord_peer", None)
    if peer is None:
        try:
            host, port = connection._TcpConnection__socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except (OSError, AttributeError):
            peer = "an unknown peer"
        connection._concord_peer = peer
    return peer


def _note_failure(connection: Any, reason: str, what: str) -> None:
    connections_dropped[reason] += 1
    peer = _peer(connection)
    key = (peer.rsplit(":", 1)[0], reason)
    if key not in _failures_logged and len(_failures_logged) < _FAILURES_LOGGED_MAX:
        _failures_logged.add(key)
        _raft_log.warning("Raft connection from %s dropped: %s", peer, what)


_stock_read = TcpConnection._TcpConnection__processRead
_stock_parse = TcpConnection._TcpConnection__processParseMessage


def _bounded_read(self: Any) -> bool:
    _peer(self)
    more: bool = _stock_read(self)
    buffer = self._TcpConnection__readBuffer
    if len(buffer) >= _FRAME_HEADER.size:
        (length,) = _FRAME_HEADER.unpack_from(buffer)
        if length < 0 or length > RAFT_FRAME_BYTES_MAX:
            what = f"a frame of {length} bytes (RAFT_FRAME_BYTES_MAX is {RAFT_FRAME_BYTES_MAX})"
            _note_failure(self, "frame_too_large", what)
            self.disconnect()
            return False
    return more


def _logged_parse(self: Any) -> Any:
    peer_known = self.state != CONNECTION_STATE.DISCONNECTED
    message = _stock_parse(self)
    if message is None and peer_known and self.state == CONNECTION_STATE.DISCONNECTED:
        what = "a frame failed authentication (another cluster secret?)"
        _note_failure(self, "not_authenticated", what)
    return message


TcpConnection._TcpConnection__processRead = _bounded_read
TcpConnection._TcpConnection__processParseMessage = _logged_parse
