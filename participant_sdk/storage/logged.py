"""``LoggedLmdbKv``: LMDB behind a write-ahead log (participant_sdk/wal.py).

A write transaction's changes are one record of the log: durable when ``write()``
returns, with one ``fdatasync``. When the log is full, what it holds goes into LMDB
in one synced commit (``sync=True, metasync=True``) that also raises the log's epoch,
and the log starts again. Until then reads find those writes in memory (the
*overlay*, at most the log's size of them). Opening replays the log and moves it into
LMDB before anything else, so a crash at any point (mid-append, mid-move) comes back
with every acknowledged write.

Writing LMDB directly would cost two ordered flushes per commit (data pages, then the
meta page); ``metasync=False`` would save one, but then "a system crash may undo the
last committed transaction" (LMDB, MDB_NOMETASYNC).

A read-only opener reads the log's records of LMDB's current epoch into its overlay:
a view of the store as it was then.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lmdb

from participant_sdk.storage.kv import Names, Tx
from participant_sdk.storage.lmdbkv import LmdbKv, scan_prefix
from participant_sdk.wal import LogError, WriteAheadLog

__all__ = ["LoggedLmdbKv"]

_Slot = tuple[str, bytes]  # (table, key)
# Log record: per write, put/delete, table index, key length, value length, key, value.
_OP = struct.Struct(">cBHI")
_PUT, _DELETE = b"P", b"D"
_LOG_NAME = "wal"
_EPOCH_KEY = b"wal_epoch"  # in table "meta"
_READ_LOG_ATTEMPTS_MAX = 5


class _Overlay:
    """What the log holds, for reads: the values by (table, key), and each table's keys
    in key order for scans. Appended to by the one writer (under the store's lock),
    read by any thread without a lock: a key is listed before its value is set, the
    lists only grow, and a move replaces the whole overlay instead of clearing it."""

    def __init__(self) -> None:
        self.values: dict[_Slot, bytes | None] = {}
        self._keys: dict[str, list[bytes]] = {}  # per table, in arrival order
        self._sorted: dict[str, tuple[int, list[bytes]]] = {}  # (count, keys in order)

    def __bool__(self) -> bool:
        return bool(self.values)

    def update(self, writes: Mapping[_Slot, bytes | None]) -> None:
        for slot in writes:
            if slot not in self.values:
                self._keys.setdefault(slot[0], []).append(slot[1])
        self.values.update(writes)

    def sorted_keys(self, table: str) -> list[bytes]:
        """The table's keys in key order (sorted again only after keys were added)."""
        keys = self._keys.get(table)
        if not keys:
            return []
        count = len(keys)
        cached = self._sorted.get(table)
        if cached is not None and cached[0] == count:
            return cached[1]
        ordered = sorted(keys[:count])
        self._sorted[table] = (count, ordered)
        return ordered


class _LoggedTx(Tx):
    """Reads see this transaction's writes, then what the log holds, then LMDB;
    writes stay here until commit."""

    def __init__(
        self,
        txn: lmdb.Transaction,
        dbs: Mapping[str, Any],
        overlay: _Overlay,
        names: Names,
        write: bool,
    ) -> None:
        self._txn = txn
        self._dbs = dbs
        self._overlay = overlay
        self._names = names
        self._write = write
        self.writes: dict[_Slot, bytes | None] = {}

    def _writable(self) -> dict[_Slot, bytes | None]:
        if not self._write:
            raise self._names.error(f"{self._names.what}: write in a read transaction")
        return self.writes

    def get(self, table: str, key: bytes) -> bytes | None:
        slot = (table, key)
        if slot in self.writes:
            return self.writes[slot]
        if slot in self._overlay.values:
            return self._overlay.values[slot]
        db = self._dbs.get(table)
        value = None if db is None else self._txn.get(key, db=db)
        return None if value is None else bytes(value)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._writable()[(table, key)] = bytes(value)

    def delete(self, table: str, key: bytes) -> None:
        self._writable()[(table, key)] = None

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Three ordered sources merged by key: LMDB from ``prefix`` on (a cursor: only
        the rows asked for are read), the log's keys, this transaction's writes; for a
        key in more than one, the later layer wins (a ``None`` deletes)."""
        mine = sorted(
            (key, value)
            for (name, key), value in self.writes.items()
            if name == table and key.startswith(prefix)
        )
        keys = self._overlay.sorted_keys(table)
        logged = []
        for key in keys[bisect.bisect_left(keys, prefix) :]:
            if not key.startswith(prefix):
                break
            if (table, key) in self._overlay.values:  # listed before it is set
                logged.append((key, self._overlay.values[(table, key)]))
        layers = [
            ((key, 0, value) for key, value in mine),
            ((key, 1, value) for key, value in logged),
            ((key, 2, value) for key, value in self._stored(table, prefix)),
        ]
        last = None
        for key, _, value in heapq.merge(*layers, key=lambda row: (row[0], row[1])):
            if key == last:
                continue  # an earlier layer had it
            last = key
            if value is not None:
                yield key, value

    def _stored(self, table: str, prefix: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        db = self._dbs.get(table)
        if db is not None:
            yield from scan_prefix(self._txn, db, prefix)


class LoggedLmdbKv(LmdbKv):
    """See the module docstring. ``on_open`` runs on LMDB itself, before the log is
    replayed; ``damaged`` is the error raised for a damaged log (default
    ``names.error``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        tables: tuple[str, ...],
        names: Names,
        *,
        map_size_bytes: int,
        log_size_bytes: int,
        readonly: bool = False,
        on_open: Callable[[Tx], None] | None = None,
        damaged: Callable[[str], Exception] | None = None,
    ) -> None:
        if "meta" not in tables:
            raise ValueError("a logged store keeps its log's epoch in a table named 'meta'")
        self._overlay = _Overlay()
        self._table_index = {table: at for at, table in enumerate(tables)}
        self._failed: str | None = None
        self._damaged = damaged or names.error
        self.log: WriteAheadLog | None = None
        self.log_size_bytes = log_size_bytes
        super().__init__(
            path, tables, names, map_size_bytes=map_size_bytes, readonly=readonly, on_open=on_open
        )
        try:
            if readonly:
                self._read_log()
            else:
                self._recover_log()
        except (OSError, LogError, lmdb.Error) as error:
            self.close()
            raise names.error(f"{names.what}: {error}") from None
        except BaseException:
            self.close()
            raise

    def _epoch(self) -> int:
        with self.env.begin() as txn:
            raw = txn.get(_EPOCH_KEY, db=self.dbs["meta"]) if "meta" in self.dbs else None
        return 0 if raw is None else int(bytes(raw))

    def _recover_log(self) -> None:
        """Replay what the log acknowledged and move it into LMDB."""
        self.log = WriteAheadLog(self.path / _LOG_NAME, self.log_size_bytes, self._epoch())
        try:
            bodies = self.log.replay()
        except LogError as error:
            raise self._damaged(f"{self.names.what}: {error}") from None
        for body in bodies:
            self._overlay.update(self._decode_writes(body))
        self._move_log({})

    def _read_log(self) -> None:
        """Read-only: the log's records of LMDB's current epoch. A writer moving the
        log meanwhile changes the epoch: read again (bounded)."""
        path = self.path / _LOG_NAME
        for _ in range(_READ_LOG_ATTEMPTS_MAX):
            epoch = self._epoch()
            log = WriteAheadLog(path, self.log_size_bytes, epoch, readonly=True)
            try:
                bodies = log.replay()
            except LogError as error:
                raise self._damaged(f"{self.names.what}: {error}") from None
            finally:
                log.close()
            if self._epoch() == epoch:
                for body in bodies:
                    self._overlay.update(self._decode_writes(body))
                return
        raise self.names.error(f"{self.names.what} changed under every read of its log: try again")

    def _check_writable(self) -> None:
        super()._check_writable()
        if self._failed is not None:
            raise self.names.error(self._failed)

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        # The overlay first: a move that commits between the two leaves this reader the
        # old overlay over the new LMDB (the same values), never LMDB's old state
        # without the log's writes.
        overlay = self._overlay
        with self.env.begin() as txn:
            tx = _LoggedTx(txn, self.dbs, overlay, self.names, write)
            yield tx
        if write and tx.writes:
            self._commit(tx.writes)

    def _commit(self, writes: dict[_Slot, bytes | None]) -> None:
        """Durable when this returns: in the log, or (log full) in LMDB."""
        assert self.log is not None
        try:
            if self.log.append(self._encode_writes(writes)):
                self._overlay.update(writes)
                return
        except OSError as error:
            # After a failed write or flush the file's state is unknown: writing on
            # could acknowledge what is lost. Reopening replays what is intact.
            self._failed = (
                f"{self.names.what}: writing its log failed ({error}); close and reopen the store"
            )
            raise self.names.error(self._failed) from None
        self._move_log(writes)

    def _move_log(self, writes: Mapping[_Slot, bytes | None]) -> None:
        """The overlay and ``writes`` into LMDB with the next epoch, in one synced
        commit; then the log starts again, empty."""
        assert self.log is not None
        if not self._overlay and not writes and self.log.used_bytes == 0:
            self.log.reset(self.log.epoch)  # nothing to move (a resized log is replaced)
            return
        epoch = self.log.epoch + 1
        try:
            with self.env.begin(write=True) as txn:
                for layer in (self._overlay.values, writes):
                    for (table, key), value in layer.items():
                        if value is None:
                            txn.delete(key, db=self.dbs[table])
                        else:
                            txn.put(key, value, db=self.dbs[table])
                txn.put(_EPOCH_KEY, str(epoch).encode(), db=self.dbs["meta"])
        except lmdb.MapFullError:
            raise self.full_error() from None
        self._overlay = _Overlay()  # readers keep the one they began with
        self.log.reset(epoch)

    def check(self) -> list[str]:
        """Re-read every record appended to the log so far (not a cache)."""
        return [] if self.log is None else self.log.check()

    def _release(self) -> None:
        """What the log holds stays there (the next open moves it)."""
        if self.log is not None:
            self.log.close()
        super()._release()

    def _encode_writes(self, writes: Mapping[_Slot, bytes | None]) -> bytes:
        parts: list[bytes] = []
        index = self._table_index
        for (table, key), value in writes.items():
            if value is None:
                parts += (_OP.pack(_DELETE, index[table], len(key), 0), key)
            else:
                parts += (_OP.pack(_PUT, index[table], len(key), len(value)), key, value)
        return b"".join(parts)

    def _decode_writes(self, body: bytes) -> dict[_Slot, bytes | None]:
        writes: dict[_Slot, bytes | None] = {}
        offset = 0
        while offset < len(body):
            op, table, key_len, value_len = _OP.unpack_from(body, offset)
            offset += _OP.size
            key = body[offset : offset + key_len]
            offset += key_len
            value = body[offset : offset + value_len]
            offset += value_len
            writes[(self.tables[table], key)] = None if op == _DELETE else value
        return writes
