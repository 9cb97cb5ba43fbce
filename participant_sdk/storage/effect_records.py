"""The effect log's table layout: one record per effect, over the key-value interface
(participant_sdk/storage/kv.py).

Tables: ``effects``: sequence number (u64 big-endian) -> the effect's JSON, sealed
with a CRC-32 of key and record (checked on every load: a damaged record is named and
refused, never run or compensated as data); ``meta``: ``format`` (stored bare). A log
of the previous format (records bare, no mark) is sealed on open; a read-only opener
reads it as it is.

``EffectBacking`` is where the log keeps its records: ``write`` is one atomic write of
the key-value store, durable when it returns (``LmdbEffectBacking``: one synced LMDB
commit, ``sync=True, metasync=True``; ``MemoryEffectBacking``: in this process).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from participant_sdk.storage.kv import KvStore, Names, Tx
from participant_sdk.storage.lmdbkv import LmdbKv
from participant_sdk.storage.memory import MemoryKv

__all__ = [
    "FINAL",
    "Effect",
    "EffectBacking",
    "EffectClass",
    "EffectError",
    "EffectLimitError",
    "EffectStatus",
    "LmdbEffectBacking",
    "MemoryEffectBacking",
    "effects_dir",
    "escalations",
]

EFFECT_LOG_FORMAT = b"2"  # 2: records sealed (a log without the mark is sealed on open)
TABLES = ("effects", "meta")


class EffectError(Exception):
    """The effect log cannot do what was asked; the message says why."""


class EffectLimitError(EffectError, ValueError):
    """A named limit of the effect log was exceeded."""


class EffectClass(Enum):
    COMPENSABLE = "compensable"
    BUFFERABLE = "bufferable"
    IRREVERSIBLE = "irreversible"


class EffectStatus(Enum):
    BUFFERED = "BUFFERED"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    INTENT = "INTENT"
    DONE = "DONE"
    NOT_APPLIED = "NOT_APPLIED"
    DISCARDED = "DISCARDED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    ESCALATED = "ESCALATED"
    RESOLVED = "RESOLVED"  # an operator closed an escalation


FINAL = frozenset(
    {
        EffectStatus.NOT_APPLIED,
        EffectStatus.DISCARDED,
        EffectStatus.COMPENSATED,
        EffectStatus.RESOLVED,
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Effect:
    """One durable effect record."""

    seq: int
    key: str  # idempotency key
    name: str  # registered tool name
    effect_class: EffectClass
    txn_id: str
    generation: int  # the checkpoint generation current when it was called
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    status: EffectStatus
    result: Any = None
    outcome_known: bool = True
    committed: bool = False  # its txn committed
    doomed: bool = False  # compensation requested (abort or restore): durable intent
    approved: bool = False
    attempts: int = 0  # compensation or execution attempts that failed
    error: str = ""
    updated_ms: int = 0


def _seal(key: bytes, record: bytes) -> bytes:
    return zlib.crc32(record, zlib.crc32(key)).to_bytes(4, "big") + record


def _to_json(effect: Effect) -> bytes:
    data = {name: getattr(effect, name) for name in Effect.__slots__}
    data["effect_class"] = effect.effect_class.value
    data["status"] = effect.status.value
    data["args"] = list(effect.args)
    data["kwargs"] = dict(effect.kwargs)
    return json.dumps(data, sort_keys=True).encode()


def _from_json(raw: bytes) -> Effect:
    data = json.loads(raw)
    data["effect_class"] = EffectClass(data["effect_class"])
    data["status"] = EffectStatus(data["status"])
    data["args"] = tuple(data["args"])
    return Effect(**data)


# ---------------------------------------------------------------------- backings


class EffectBacking:
    """Effect records in the tables of ``kv``; ``write`` is atomic and durable when it
    returns. ``sealed=False`` reads records of the previous format (bare)."""

    def __init__(self, kv: KvStore, *, sealed: bool = True) -> None:
        self.kv = kv
        self.sealed = sealed

    def load(self) -> list[Effect]:
        """Every effect, each checked against its seal (a CRC-32 of key and record):
        a damaged record is named and refused, never run or compensated as data."""
        with self.kv.read() as tx:
            return [_from_json(self._unseal(key, value)) for key, value in tx.scan("effects")]

    def _unseal(self, key: bytes, sealed: bytes) -> bytes:
        if not self.sealed:  # an older log, read-only: records are bare
            return sealed
        record = sealed[4:]
        if len(sealed) < 4 or _seal(key, record)[:4] != sealed[:4]:
            raise EffectError(
                f"{self.kv.names.what}: effect {int.from_bytes(key, 'big')} is damaged "
                "(checksum mismatch); restore the data dir from a backup"
            )
        return record

    def write(self, effects: Sequence[Effect], forget: Sequence[int] = ()) -> None:
        with self.kv.write() as tx:
            for effect in effects:
                key = effect.seq.to_bytes(8, "big")
                tx.put("effects", key, _seal(key, _to_json(effect)))
            for seq in forget:
                tx.delete("effects", seq.to_bytes(8, "big"))

    def close(self) -> None:
        """Release the backing. Idempotent."""
        self.kv.close()


class MemoryEffectBacking(EffectBacking):
    """In-process only (tests): the same records, in a ``MemoryKv``."""

    def __init__(self) -> None:
        super().__init__(MemoryKv(TABLES, Names(what="memory effect log", error=EffectError)))


def effects_dir(data_dir: str | os.PathLike[str]) -> Path:
    """A participant's effect log: its own LMDB env beside the participant store's."""
    return Path(data_dir) / "rollback" / "effects"


def _seal_previous_format(tx: Tx) -> None:
    """A log written before records were sealed: seal them now, once."""
    if tx.get("meta", b"format") == EFFECT_LOG_FORMAT:
        return
    for key, value in list(tx.scan("effects")):
        tx.put("effects", key, _seal(key, value))
    tx.put("meta", b"format", EFFECT_LOG_FORMAT)


class LmdbEffectBacking(EffectBacking):
    """One LMDB env (``LmdbKv``); one writer process (a lock file), or
    ``readonly=True`` beside it for inspection."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size_bytes: int = 256 << 20,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        if readonly and not (self.path / "data.mdb").exists():
            raise EffectError(f"no effect log at {self.path}")
        names = Names(
            what=f"effect log {self.path}",
            error=EffectError,
            full_error=EffectLimitError,
            full_hint="raise map_size_bytes or lower finished_effects_kept_max",
        )
        kv = LmdbKv(
            self.path,
            TABLES,
            names,
            map_size_bytes=map_size_bytes,
            readonly=readonly,
            on_open=_seal_previous_format,
        )
        sealed = True
        if readonly:
            with kv.read() as tx:
                sealed = tx.get("meta", b"format") == EFFECT_LOG_FORMAT
        super().__init__(kv, sealed=sealed)


def escalations(data_dir: str | os.PathLike[str]) -> list[Effect]:
    """Escalated effects of a participant data dir, read offline (read-only, beside
    a running participant)."""
    path = effects_dir(data_dir)
    if not (path / "data.mdb").exists():
        return []
    backing = LmdbEffectBacking(path, readonly=True)
    try:
        return [e for e in backing.load() if e.status is EffectStatus.ESCALATED]
    finally:
        backing.close()
