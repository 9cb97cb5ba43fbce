"""Reading a participant's data dir from outside the participant (``concord audit``):
the one read-only API the coordinator's tools use, so they never open the SDK's LMDB
files themselves.

The caller makes sure no participant has the data dir open (its ``concord.lock``):
the env is opened read-only, without LMDB's lock file, and left unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from participant_sdk.storage.kv import Names
from participant_sdk.storage.lmdbkv import LmdbKv
from participant_sdk.storage.records import (
    TABLES,
    SealedTx,
    StoreError,
    audit_hash,
    split_head,
)

if TYPE_CHECKING:
    from coordinator.audit.chain import Verdict

__all__ = ["AuditRows", "StoreError", "read_audit_offline", "verify_audit_chain"]

# The raw audit rows (key, value), the anchor and the head kept in ``meta``.
AuditRows = tuple[list[tuple[bytes, bytes]], bytes | None, bytes | None]

_OFFLINE_MAP_SIZE_BYTES = 10 << 20  # read-only: LMDB maps the file at its own size


def read_audit_offline(path: str | os.PathLike[str]) -> AuditRows:
    """The audit rows, anchor and head of a participant data dir no process has open,
    each value checked against its seal. ``StoreError`` names the problem in one line."""
    path = Path(path)
    kv = LmdbKv(
        path,
        TABLES,
        Names(what=str(path), error=StoreError),
        map_size_bytes=_OFFLINE_MAP_SIZE_BYTES,
        readonly=True,
        lmdb_lock=False,
    )
    try:
        if "audit" not in kv.dbs:
            raise StoreError(f"{path} is not a participant data dir (no audit table)")
        with kv.read() as raw:
            t = SealedTx(raw, f"data dir {path}")
            return (
                list(t.scan("audit")),
                t.get("meta", b"audit_anchor"),
                t.get("meta", b"audit_head"),
            )
    finally:
        kv.close()


def verify_audit_chain(
    raw: Sequence[tuple[bytes, bytes]], anchor: bytes | None, head: bytes | None
) -> Verdict:
    """Verify raw ``audit`` rows (key, value) against the anchor and head in ``meta``."""
    from coordinator.audit.chain import Anchor, verify

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for key, value in raw:
            try:
                record = json.loads(value)
            except ValueError:
                record = {"unreadable": value.decode(errors="replace")}
            yield str(int.from_bytes(key, "big")), record

    def hash_of(prev_hash: str, record: Mapping[str, Any]) -> str:
        body = {k: record.get(k) for k in ("seq", "at_ms", "event", "round_id", "detail")}
        return audit_hash(prev_hash, body)

    start = Anchor(position=None)
    if anchor is not None:
        seq, digest = split_head(anchor)
        start = Anchor(position=str(seq), hash=digest)
    end = None
    if head is not None:
        seq, digest = split_head(head)
        end = (str(seq), digest)
    return verify(
        rows(),
        anchor=start,
        head=end,
        position_of=lambda r: str(r.get("seq")),
        hash_of=hash_of,
    )
