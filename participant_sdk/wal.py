"""A write-ahead log with one flush per append: checksummed records in a preallocated
file that is reused from its start, like SQLite's WAL.

Why: a synced LMDB commit is two ordered flushes (the data pages, then the meta page
that points at them). A store that appends each write here first (one ``fdatasync``)
and moves the log into LMDB only when it is full pays one flush per write, plus one
LMDB commit per log-full of writes.

Format. The file is ``size_bytes`` long, written with zeros when created and synced,
so an append overwrites blocks the file already owns and ``fdatasync`` has no
metadata (size, extents) to flush. Records follow each other from offset 0:

    magic "CWAL" | epoch u64 | body length u32 | crc32 u32 | body

The crc32 covers the epoch, the length and the body. The *epoch* is the log's
generation, kept by the owner in its own durable state: once the owner has moved the
records into its main store it raises the epoch (in the same durable write) and the
log starts again at offset 0. Reading stops at the first record that is not of the
current epoch or fails its checksum, so what a crash tore (the one append that was
not acknowledged) and whatever an older epoch left behind are never read.

A torn append is always the last record of its epoch. A bad record followed by a valid
one of the same epoch is therefore not a crash but damage (a flipped bit on disk), and
reading past it would silently drop acknowledged writes: ``replay`` refuses the log
instead, naming the offset, and ``check`` finds the same in a log being written.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

__all__ = ["LogError", "WriteAheadLog"]

_MAGIC = b"CWAL"
_HEADER = struct.Struct(">4sQII")  # magic, epoch, body length, crc32
_ZEROS_CHUNK_BYTES = 1 << 20


class LogError(Exception):
    """The log cannot be used; the message says why."""


class WriteAheadLog:
    """One writer (or a reader of a log another process writes); not thread-safe:
    the owner serialises calls."""

    def __init__(self, path: Path, size_bytes: int, epoch: int, *, readonly: bool = False) -> None:
        if size_bytes <= _HEADER.size:
            raise ValueError(f"log size_bytes must be > {_HEADER.size}, got {size_bytes}")
        self.path = path
        self.size_bytes = size_bytes
        self.epoch = epoch
        self.readonly = readonly
        self._offset = 0
        self._fd = -1
        if readonly:
            if path.exists():
                self._fd = os.open(path, os.O_RDONLY)
        else:
            if not path.exists():
                self._create()
            self._fd = os.open(path, os.O_RDWR)

    @property
    def used_bytes(self) -> int:
        return self._offset

    def replay(self) -> list[bytes]:
        """The bodies of the current epoch's records, in order; appends go after them."""
        if self._fd < 0:
            return []
        # Record by record, not the whole (mostly zero-filled) file: an open reads
        # what the log holds.
        size = os.fstat(self._fd).st_size
        bodies, offset = [], 0
        while offset + _HEADER.size <= size:
            header = _read_exactly(self._fd, _HEADER.size, offset)
            magic, epoch, length, crc = _HEADER.unpack(header)
            start, end = offset + _HEADER.size, offset + _HEADER.size + length
            if magic != _MAGIC or epoch != self.epoch or end > size:
                break
            body = _read_exactly(self._fd, length, start)
            if crc != _crc(epoch, length, body):
                break  # torn by a crash (never acknowledged), unless records follow
            bodies.append(body)
            offset = end
        later = self._valid_record_after(offset, size)
        if later is not None:
            raise LogError(
                f"log {self.path}: the record at offset {offset} is damaged and acknowledged "
                f"records follow it (at offset {later}): restore the data dir from a backup"
            )
        self._offset = offset
        return bodies

    def check(self) -> list[str]:
        """Re-read every record appended so far (not a cache): the problems found."""
        if self._fd < 0:
            return []
        offset = 0
        while offset < self._offset:
            header = _read_exactly(self._fd, _HEADER.size, offset)
            magic, epoch, length, crc = _HEADER.unpack(header)
            end = offset + _HEADER.size + length
            body = _read_exactly(self._fd, length, offset + _HEADER.size)
            if magic != _MAGIC or epoch != self.epoch or end > self._offset:
                return [f"log {self.path}: the record at offset {offset} is damaged (header)"]
            if crc != _crc(epoch, length, body):
                return [f"log {self.path}: the record at offset {offset} is damaged (checksum)"]
            offset = end
        return []

    def _valid_record_after(self, offset: int, size: int) -> int | None:
        """The offset of a whole record of this epoch somewhere after ``offset``."""
        needle = _MAGIC + struct.pack(">Q", self.epoch)
        position = offset + 1
        while position + _HEADER.size <= size:
            chunk = _read_exactly(self._fd, min(_ZEROS_CHUNK_BYTES, size - position), position)
            found = chunk.find(needle)
            if found < 0:
                position += max(1, len(chunk) - len(needle))
                continue
            at = position + found
            header = _read_exactly(self._fd, _HEADER.size, at)
            if len(header) == _HEADER.size:
                _, _, length, crc = _HEADER.unpack(header)
                body = _read_exactly(self._fd, length, at + _HEADER.size)
                if len(body) == length and crc == _crc(self.epoch, length, body):
                    return at
            position = at + 1
        return None

    def append(self, body: bytes) -> bool:
        """Write one record and flush it (durable when this returns True). False when
        it does not fit in what is left: the owner moves the log out, then ``reset``.
        An OSError leaves the log in an unknown state: stop using it."""
        if self.readonly:
            raise LogError(f"log {self.path} is open read-only")
        end = self._offset + _HEADER.size + len(body)
        if end > self.size_bytes:
            return False
        header = _HEADER.pack(_MAGIC, self.epoch, len(body), _crc(self.epoch, len(body), body))
        written = os.pwritev(self._fd, [header, body], self._offset)
        if written != end - self._offset:
            raise OSError(f"short write to {self.path}: {written} of {end - self._offset} bytes")
        os.fdatasync(self._fd)
        self._offset = end
        return True

    def reset(self, epoch: int) -> None:
        """Start again at offset 0 under ``epoch``: call once the owner has durably
        recorded ``epoch`` with everything the log held. A file of another size (the
        limit changed) is replaced now, while it holds nothing anyone needs."""
        self.epoch = epoch
        self._offset = 0
        if not self.readonly and os.fstat(self._fd).st_size != self.size_bytes:
            os.close(self._fd)
            self._fd = -1
            self._create()
            self._fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _create(self) -> None:
        """Write the zero-filled file beside it, sync, rename in, sync the directory."""
        tmp = self.path.with_name(self.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            left = self.size_bytes
            zeros = bytes(min(left, _ZEROS_CHUNK_BYTES))
            while left:
                left -= os.write(fd, zeros[: min(left, len(zeros))])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _crc(epoch: int, length: int, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(struct.pack(">QI", epoch, length)))


def _read_exactly(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break  # past the end: the caller's checks reject the short read
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
