"""What a checkpoint store keeps in memory: the index of its records (``IndexEntry``,
``Head``) and the records already read and checksum-verified (``RecordCache``).

Records are immutable and a generation is never reused, so a record once read and
verified stays right until it is deleted: repeated loads skip the read, the checksum
and the decoding, and get their own copy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from participant_sdk.storage.checkpoint_format import Encoded

__all__ = ["CachedRecord", "Head", "IndexEntry", "RecordCache"]


@dataclass(slots=True)
class IndexEntry:
    """What the store keeps in memory about one record (rebuilt from ``info`` on
    open)."""

    seq: int
    kind: bytes
    checkpoint_id: str
    label: str
    txn_id: str
    visible: bool
    base_seq: int  # the last full record at or before it; 0: none (damaged store)


@dataclass(slots=True)
class Head:
    """The latest record: the next delta is taken against its chain's base."""

    seq: int
    chain_len: int  # deltas since the last full record
    base: Encoded = field(default_factory=Encoded)  # the last full record's state


# A verified record held in memory: kind (F/D), its JSON values marshalled (in this
# process only: marshal.loads makes a fresh copy ~2.5x faster than json.loads
# decodes one), its raw values (str and bytes: immutable, shared) and removed keys.
CachedRecord = tuple[bytes, bytes, dict[str, Any], list[str]]


class RecordCache:
    """Records already read and checksum-verified, by generation; least recently
    used out first, at most ``bytes_max`` of stored size (an entry takes about its
    stored size). A record never changes once written and its generation is never
    reused, so an entry is right until the record is deleted (``discard``). Nothing
    mutable is shared with readers: each load unmarshals its own copy."""

    def __init__(self, bytes_max: int) -> None:
        self._bytes_max = bytes_max
        self._entries: OrderedDict[int, tuple[CachedRecord, int]] = OrderedDict()
        self.bytes = 0

    def get(self, seq: int) -> CachedRecord | None:
        entry = self._entries.get(seq)
        if entry is None:
            return None
        self._entries.move_to_end(seq)
        return entry[0]

    def fits(self, stored_bytes: int) -> bool:
        return stored_bytes <= self._bytes_max

    def put(self, seq: int, record: CachedRecord, stored_bytes: int) -> None:
        if not self.fits(stored_bytes):
            return
        self.discard(seq)
        self._entries[seq] = (record, stored_bytes)
        self.bytes += stored_bytes
        while self.bytes > self._bytes_max:
            _, (_, size) = self._entries.popitem(last=False)
            self.bytes -= size

    def discard(self, seq: int) -> None:
        entry = self._entries.pop(seq, None)
        if entry is not None:
            self.bytes -= entry[1]
