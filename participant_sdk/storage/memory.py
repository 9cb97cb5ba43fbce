"""``MemoryKv``: the key-value interface in this process, deterministic and thread-free.

Tables are copied on write: a write transaction copies a table the first time it
changes it and commits by swapping in a new set of tables, so a reader holds a
consistent set without a lock and a discarded write leaves nothing behind.

Durability boundary. What is *committed* is what transactions see; what is *synced*
is what would survive a power loss. With ``sync_on_commit`` (the default, as LMDB's
``sync=True``) every commit is synced before ``write()`` returns. Without it commits
stay unsynced until ``sync()``, and ``lose_unsynced()`` goes back to the last synced
state: a model of a disk that lost its cache, for a simulator.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from participant_sdk.storage.kv import KvStore, Names, Tx

__all__ = ["MemoryKv"]

_Tables = dict[str, dict[bytes, bytes]]


class _MemoryTx(Tx):
    def __init__(self, tables: Mapping[str, dict[bytes, bytes]], names: Names, write: bool) -> None:
        self._tables = tables
        self._names = names
        self._write = write
        self.copies: _Tables = {}

    def _read(self, table: str) -> dict[bytes, bytes]:
        return self.copies.get(table, self._tables[table])

    def _mutable(self, table: str) -> dict[bytes, bytes]:
        if not self._write:
            raise self._names.error(f"{self._names.what}: write in a read transaction")
        if table not in self.copies:
            self.copies[table] = dict(self._tables[table])
        return self.copies[table]

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._read(table).get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._mutable(table)[key] = bytes(value)

    def delete(self, table: str, key: bytes) -> None:
        self._mutable(table).pop(key, None)

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        data = self._read(table)
        keys = sorted(data) if not prefix else sorted(k for k in data if k.startswith(prefix))
        for key in keys:
            yield key, data[key]


class _Transaction:
    """One transaction of a ``MemoryKv`` as a context manager: a write commits when
    its block exits cleanly and leaves nothing behind otherwise. (A class rather than
    a generator: every read and write of a store goes through one.)"""

    __slots__ = ("_kv", "_tx", "_write")

    def __init__(self, kv: MemoryKv, write: bool) -> None:
        self._kv = kv
        self._write = write
        self._tx = _MemoryTx(kv._committed, kv.names, write)

    def __enter__(self) -> Tx:
        return self._tx

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        copies = self._tx.copies
        if exc_type is None and self._write and copies:
            kv = self._kv
            kv._committed = {**kv._committed, **copies}
            if kv.sync_on_commit:
                kv._synced = kv._committed


class MemoryKv(KvStore):
    """Named tables in memory; see the module docstring for the durability boundary."""

    def __init__(
        self,
        tables: tuple[str, ...],
        names: Names | None = None,
        *,
        sync_on_commit: bool = True,
    ) -> None:
        super().__init__(tables, names or Names(what="memory store"))
        self.sync_on_commit = sync_on_commit
        # Replaced, never changed in place: a reader keeps the set it started with.
        self._committed: Mapping[str, dict[bytes, bytes]] = {name: {} for name in tables}
        self._synced: Mapping[str, dict[bytes, bytes]] = self._committed

    def _transaction(self, write: bool) -> _Transaction:
        return _Transaction(self, write)

    @property
    def unsynced(self) -> bool:
        """Whether a commit has not been synced yet."""
        return self._synced is not self._committed

    def sync(self) -> None:
        """Make everything committed durable (what a flush does)."""
        with self.lock:
            self._synced = self._committed

    def lose_unsynced(self) -> None:
        """A power loss: everything committed since the last sync is gone."""
        with self.lock:
            self._committed = self._synced
            self.commits += 1
