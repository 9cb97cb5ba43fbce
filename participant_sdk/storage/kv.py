"""One key-value transaction interface for everything the SDK keeps.

A ``KvStore`` holds named tables of bytes -> bytes. Everything happens inside a
transaction: ``read()`` sees one consistent committed state; ``write()`` sees its own
writes and is committed atomically when its block exits without an error (discarded
entirely otherwise). Three implementations: ``MemoryKv`` (deterministic, in this
process, with an explicit boundary between committed and synced), ``LmdbKv`` (a commit
returns after fsync) and ``LoggedLmdbKv`` (LMDB behind a write-ahead log: one flush
per commit).

One lock discipline: a store has one ``lock`` (re-entrant). A write transaction holds
it from begin to commit, so there is one writer at a time; a layer that keeps its own
in-memory index of the store extends the same lock around a read-modify-write of that
index and the transaction that makes it durable. Readers take no lock.

The tables and their byte layouts (and any checksum sealing of values) belong to the
layer above: records (participant_sdk/store.py), checkpoints and effects.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["KvStore", "Names", "StorageError", "Tx"]


class StorageError(Exception):
    """The store cannot be used as asked; the message names it and says why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Names:
    """How a store's layer names it in errors: ``what`` (e.g. "data dir /x"), the
    exception types it raises, and what the user can do about the usual problems."""

    what: str
    error: Callable[[str], Exception] = StorageError
    full_error: Callable[[str], Exception] | None = None  # map full; default ``error``
    fix: str = ""  # appended to refusals at open
    busy_hint: str = ""  # appended to "in use by another process"
    full_hint: str = "raise map_size_bytes"

    def refuse(self, problem: str) -> Exception:
        """A one-line refusal at open: ``what``, the problem, then ``fix``."""
        return self.error(f"{self.what}{problem}" + (f": {self.fix}" if self.fix else ""))


class Tx(ABC):
    """One open transaction over the named tables."""

    @abstractmethod
    def get(self, table: str, key: bytes) -> bytes | None: ...

    @abstractmethod
    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def delete(self, table: str, key: bytes) -> None: ...

    @abstractmethod
    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix``, in key order. The caller may not
        write to ``table`` while iterating."""


class KvStore(ABC):
    """Named tables in read and write transactions; see the module docstring."""

    def __init__(self, tables: tuple[str, ...], names: Names) -> None:
        self.tables = tables
        self.names = names
        self.lock = threading.RLock()
        self._closed = False
        # Raised after every write transaction (committed or not), under ``lock``: a
        # cache of what the store holds is valid while this is what it was when the
        # cache's reads began.
        self.commits = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        """A consistent view of what is committed."""
        self._check_open()
        with self._transaction(write=False) as tx:
            yield tx

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        """One atomic write: committed when the block exits cleanly (durably, unless
        the implementation says otherwise), discarded on an error."""
        with self.lock:
            self._check_open()
            self._check_writable()
            try:
                with self._transaction(write=True) as tx:
                    yield tx
            finally:
                self.commits += 1

    def check(self) -> list[str]:
        """Problems found re-reading what the store keeps beside its tables (a log)."""
        return []

    def close(self) -> None:
        """Release the store. Idempotent."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise self.names.error(f"{self.names.what} is closed")

    def _check_writable(self) -> None:  # noqa: B027 (read-only stores override it)
        """Raise unless this store may be written."""

    @abstractmethod
    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Tx]: ...

    def _release(self) -> None:  # noqa: B027 (optional for stores holding nothing)
        """Free what the store holds (called once, under ``lock``)."""
