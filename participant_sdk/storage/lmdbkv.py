"""``LmdbKv``: the key-value interface over one LMDB environment, and the one routine
that opens and locks a data directory.

Opening a writer: the directory is created (this user's only), an exclusive ``flock``
on its ``concord.lock`` is taken (one process per directory; a second one is refused
at once), the data file is checked by ``coordinator.lmdbfile`` before LMDB maps it (an
empty or truncated file is refused, naming the file, instead of being initialised
afresh or ending the process with SIGBUS), and the environment is opened with
``sync=True, metasync=True``: a write transaction's commit returns only after fsync.
A read-only opener takes no lock: it reads beside a writer, or offline.

Every refusal is one line that names the directory (``Names``) and never changes
what it found there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import lmdb

from coordinator.lmdbfile import DamagedFile, check_data_file
from participant_sdk.storage.kv import KvStore, Names, Tx

__all__ = ["LmdbKv", "lock_data_dir", "scan_prefix"]

LOCK_FILE_NAME = "concord.lock"


def lock_data_dir(path: Path, names: Names) -> IO[bytes]:
    """Hold ``path``'s exclusive lock (one process per directory) until the returned
    file is closed; refuse at once when another process holds it."""
    lock_file = open(path / LOCK_FILE_NAME, "a+b")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        hint = f": {names.busy_hint}" if names.busy_hint else ""
        raise names.error(f"{names.what} is in use by another process{hint}") from None
    return lock_file


def scan_prefix(txn: Any, db: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The items of ``db`` whose keys start with ``prefix``, in key order: a cursor
    from the prefix on (never the whole table)."""
    with txn.cursor(db=db) as cursor:
        found = cursor.set_range(prefix) if prefix else cursor.first()
        while found:
            key = bytes(cursor.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(cursor.value())
            found = cursor.next()


class _LmdbTx(Tx):
    """A transaction over raw LMDB tables. A table missing from a read-only env reads
    as empty."""

    def __init__(
        self, txn: lmdb.Transaction, dbs: Mapping[str, Any], names: Names, write: bool
    ) -> None:
        self._txn = txn
        self._dbs = dbs
        self._names = names
        self._write = write

    def _writable(self, table: str) -> Any:
        if not self._write:
            raise self._names.error(f"{self._names.what}: write in a read transaction")
        return self._dbs[table]

    def get(self, table: str, key: bytes) -> bytes | None:
        db = self._dbs.get(table)
        if db is None:
            return None
        value = self._txn.get(key, db=db)
        return None if value is None else bytes(value)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, bytes(value), db=self._writable(table))

    def delete(self, table: str, key: bytes) -> None:
        self._txn.delete(key, db=self._writable(table))

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        db = self._dbs.get(table)
        if db is not None:
            yield from scan_prefix(self._txn, db, prefix)


class LmdbKv(KvStore):
    """One LMDB environment with the named ``tables``; see the module docstring.

    ``check_found`` sees the tables the environment already holds before any is
    created (to refuse an environment of something else); ``on_open`` runs in one write
    transaction right after opening (format checks and upgrades), before anything
    else reads or writes. Neither runs for a read-only opener. ``lmdb_lock=False``
    (read-only only) opens without LMDB's reader lock file: offline, nobody writes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        tables: tuple[str, ...],
        names: Names,
        *,
        map_size_bytes: int,
        readonly: bool = False,
        lmdb_lock: bool = True,
        check_found: Callable[[frozenset[str]], None] | None = None,
        on_open: Callable[[Tx], None] | None = None,
    ) -> None:
        super().__init__(tables, names)
        self.path = Path(path)
        self.readonly = readonly
        self.map_size_bytes = map_size_bytes
        self._lock_file: IO[bytes] | None = None
        self._env: lmdb.Environment | None = None
        self._dbs: dict[str, Any] = {}
        if not readonly:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_file = lock_data_dir(self.path, names)
        try:
            self._open(lmdb_lock, check_found, on_open)
        except BaseException:
            self.close()
            raise

    def _open(
        self,
        lmdb_lock: bool,
        check_found: Callable[[frozenset[str]], None] | None,
        on_open: Callable[[Tx], None] | None,
    ) -> None:
        try:
            check_data_file(self.path / "data.mdb")
        except DamagedFile as error:
            raise self.names.refuse(f": {error}") from None
        try:
            self._env = lmdb.open(
                str(self.path),
                mode=0o600,  # data and lock files: this user's only
                map_size=self.map_size_bytes,
                max_dbs=len(self.tables) + 1,
                sync=True,
                metasync=True,
                subdir=True,
                readonly=self.readonly,
                lock=lmdb_lock,
            )
        except lmdb.Error as error:
            raise self.names.refuse(f" is not a readable LMDB env ({error})") from None
        try:
            with self._env.begin() as txn:
                found = frozenset(bytes(k).decode(errors="replace") for k, _ in txn.cursor())
            if check_found is not None:
                check_found(found)
            for name in self.tables:
                if self.readonly and name not in found:
                    continue  # reads as empty
                self._dbs[name] = self._env.open_db(name.encode(), create=not self.readonly)
            if on_open is not None and not self.readonly:
                with self._env.begin(write=True) as txn:
                    on_open(_LmdbTx(txn, self._dbs, self.names, write=True))
        except lmdb.Error as error:
            raise self.names.refuse(f" cannot be opened ({error})") from None

    @property
    def env(self) -> lmdb.Environment:
        assert self._env is not None, "used after a failed open"
        return self._env

    @property
    def dbs(self) -> Mapping[str, Any]:
        return self._dbs

    def full_error(self) -> Exception:
        make = self.names.full_error or self.names.error
        return make(
            f"{self.names.what} is full (map_size_bytes={self.map_size_bytes}): "
            f"{self.names.full_hint}"
        )

    def _check_writable(self) -> None:
        if self.readonly:
            raise self.names.error(f"{self.names.what} is open read-only")

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        try:
            with self.env.begin(write=write) as txn:
                yield _LmdbTx(txn, self._dbs, self.names, write)
        except lmdb.MapFullError:
            raise self.full_error() from None
        except lmdb.Error as error:
            raise self.names.error(f"{self.names.what}: LMDB error: {error}") from error

    def _release(self) -> None:
        if self._env is not None:
            self._env.close()
        if self._lock_file is not None:
            self._lock_file.close()
