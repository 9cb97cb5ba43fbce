"""Hash chains: how a record's hash is made, and how a chain is checked.

A record is a JSON object. Its ``hash`` is SHA-256 over the previous record's hash and
the canonical JSON (sorted keys, no spaces) of every other field except ``prev_hash``
and ``hash``. So altering a record breaks its own hash, removing one breaks the next
record's ``prev_hash``, and reordering two breaks both. The first record follows an
*anchor*: the genesis hash, or, once older records were pruned (retention) or never
held here (a snapshot installed from the leader), the hash of the last record before
the ones kept, with that record's position. ``verify`` names the first bad record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64
_UNHASHED = ("prev_hash", "hash")


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in _UNHASHED}
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def seal(prev_hash: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with ``prev_hash`` and ``hash`` added."""
    return {**body, "prev_hash": prev_hash, "hash": record_hash(prev_hash, body)}


def seal_encoded(prev_hash: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """``seal`` and the record's JSON, from one encoding of ``body``: the canonical
    body the hash covers, with ``hash`` and ``prev_hash`` appended (readers parse the
    JSON; its key order is not part of the chain). Every node seals every record of
    every applied entry, so this runs several times per transaction on each node."""
    if not body or any(key in body for key in _UNHASHED):
        record = seal(prev_hash, body)
        return record, canonical(record)
    body_json = canonical(body)
    digest = hashlib.sha256(prev_hash.encode() + body_json).hexdigest()
    record = {**body, "prev_hash": prev_hash, "hash": digest}
    tail = f',"hash":"{digest}","prev_hash":{json.dumps(prev_hash)}}}'
    return record, body_json[:-1] + tail.encode()


@dataclass(frozen=True, kw_only=True, slots=True)
class Anchor:
    """Where a kept chain starts: the hash of the record just before it, and that
    record's position (``None``: nothing before it, the genesis hash)."""

    position: str | None
    hash: str = GENESIS_HASH


@dataclass(frozen=True, kw_only=True, slots=True)
class Resume:
    """A documented hole in a kept chain: records after ``after`` up to ``position``
    were never held here (a snapshot installed from the leader, or a crash lost them
    before they were synced); the chain resumes with ``hash``, the replicated chain's
    hash at ``position``."""

    after: str | None
    position: str
    hash: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    ok: bool
    records: int
    first_bad: str | None = None  # position of the first bad record
    problem: str = ""
    head: str | None = None  # position of the last good record
    head_hash: str = GENESIS_HASH
    gaps: tuple[Resume, ...] = ()

    def describe(self) -> str:
        gaps = "".join(
            f"; gap after {g.after or 'the start'} up to {g.position} ({g.reason})"
            for g in self.gaps
        )
        if self.ok:
            return (
                f"ok: {self.records} records, head {self.head or '-'} {self.head_hash[:16]}{gaps}"
            )
        return f"BAD: first bad record {self.first_bad}: {self.problem}{gaps}"


def verify(
    records: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    anchor: Anchor,
    head: tuple[str, str] | None,
    resumes: Mapping[str, Resume] | None = None,
    position_of: Callable[[Mapping[str, Any]], str] | None = None,
    hash_of: Callable[[str, Mapping[str, Any]], str] = record_hash,
) -> Verdict:
    """Check ``records`` (stored position, record) in stored order.

    ``head`` is the (position, hash) the store says it ended with: a removed last
    record is caught there. ``position_of`` reads the position a record claims for
    itself: a record moved to another slot is caught by it."""
    resumes = resumes or {}
    prev_hash, prev_position = anchor.hash, anchor.position
    count = 0
    gaps: list[Resume] = []

    def bad(position: str, problem: str) -> Verdict:
        return Verdict(
            ok=False,
            records=count,
            first_bad=position,
            problem=problem,
            head=prev_position,
            head_hash=prev_hash,
            gaps=tuple(gaps),
        )

    for position, record in records:
        resume = resumes.get(position)
        if resume is not None:
            if resume.after != prev_position:
                return bad(position, f"a gap is recorded after {resume.after}, not {prev_position}")
            gaps.append(resume)
            prev_hash = resume.hash
        if position_of is not None and position_of(record) != position:
            return bad(
                position,
                f"stored at {position} but says it is {position_of(record)} (moved or reordered)",
            )
        if record.get("prev_hash") != prev_hash:
            return bad(
                position,
                f"prev_hash does not match the record before it ({prev_position or 'the anchor'}):"
                " a record before it was removed, altered or reordered",
            )
        if hash_of(prev_hash, record) != record.get("hash"):
            return bad(position, "its content does not match its hash: the record was altered")
        prev_hash, prev_position = str(record["hash"]), position
        count += 1
    if head is not None and (head[0] != prev_position or head[1] != prev_hash):
        return bad(
            head[0],
            f"the chain should end at {head[0]} but ends at {prev_position or 'the anchor'}: "
            "records at the end were removed",
        )
    return Verdict(
        ok=True, records=count, head=prev_position, head_hash=prev_hash, gaps=tuple(gaps)
    )
