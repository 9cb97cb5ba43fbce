"""Serializable branches: what a branch read and wrote, who holds which key, and the
check at Prepare. Pure: no I/O, no clock (times are given).

Theory of operation
-------------------
A branch reads committed state through itself (``Branch.get`` / ``items``) and stages
its writes in memory. Every committed write gives the key a new *version*: the
participant's commit sequence number and the id of the transaction that wrote it (a
deleted key keeps its version as a tombstone). A branch records the version of every
key it read, and for every prefix it scanned the commit sequence at the scan.

At Prepare, under the participant's lock and inside the write that makes the vote
durable, ``check`` answers NO when

- a key read has another version now (someone committed a write since: a lost update);
- a key under a scanned prefix has a version newer than the scan (a phantom: an insert,
  a delete or an update in the range);
- a key read or written is held by another *prepared* branch in a conflicting mode
  (reads share; adds share with adds; everything else excludes), or a scanned prefix
  covers a key another prepared branch writes, or the other way round;
- a key read or written is leased by another active branch (``Branch.lock``);
- an ``add`` could break its bound: the committed value plus every prepared delta that
  works against the bound (all of them might commit) plus this delta.

A YES makes the branch's footprint (reads, writes, scans) *held* until its decision
applies: durably (the store's ``held`` tables) and here (``LockTable``). Validation at
Prepare plus locks held from the vote to a decision ordered by the Raft log gives
serializability across participants: each transaction's lock point lies between its
last vote and its decision, so two transactions that conflict anywhere are ordered the
same way everywhere (see docs/protocol.md, "Isolation").

Adds are commutative: the delta, not a value, is held, and applied to whatever value is
committed when the decision arrives. In prepare order each add's bound was checked
against the worst case of the adds before it, so any subset of them committing leaves
every bound true in that order.

Leases make long agent steps win: ``Branch.lock`` takes exclusive keys at read time,
no-wait (a conflict raises at once, so waits can never deadlock), until the branch
votes, aborts, its lease expires or the process restarts (they live in memory only).
Correctness never rests on a lease: the check above still runs at Prepare.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

__all__ = [
    "NEVER_WRITTEN",
    "Add",
    "BranchWork",
    "Committed",
    "Footprint",
    "LockConflict",
    "LockTable",
    "Mode",
    "Version",
    "Write",
    "check",
    "parse_int",
]


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """The participant's commit sequence number of the last write of a key (0: never
    written here), and the transaction that wrote it."""

    seq: int
    txn_id: str = ""

    def encode(self) -> bytes:
        return f"{self.seq} {self.txn_id}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> Version:
        seq, _, txn_id = raw.decode().partition(" ")
        return cls(int(seq), txn_id)


NEVER_WRITTEN = Version(0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Add:
    """A commutative update: add ``delta`` to the integer at the key when the
    transaction commits, provided the result stays within ``min``..``max``."""

    delta: int
    min: int | None = None
    max: int | None = None

    def then(self, later: Add) -> Add:
        """Two adds to one key in one branch: the deltas sum, both bounds hold."""
        low = [b for b in (self.min, later.min) if b is not None]
        high = [b for b in (self.max, later.max) if b is not None]
        return Add(
            delta=self.delta + later.delta,
            min=max(low) if low else None,
            max=min(high) if high else None,
        )

    def applied_to(self, value: bytes | None) -> bytes:
        return str(parse_int(value) + self.delta).encode()


# A staged write: a new value, None to delete, or an Add.
Write = bytes | None | Add


def parse_int(value: bytes | None) -> int:
    """The integer a counter key holds: ASCII decimal, absent is 0. ValueError if not."""
    if value is None:
        return 0
    return int(value.decode("ascii"))


@dataclass
class BranchWork:
    """One active branch: its staged writes, the version of each key it read (the
    first read's), and the commit sequence of each prefix it scanned (the first scan's).
    ``begin_seq``: the commit sequence when it began (tombstones newer than that are
    kept while it is active); ``begun_ms``: when it began (abandoned work ends)."""

    writes: dict[str, Write] = field(default_factory=dict)
    reads: dict[str, Version] = field(default_factory=dict)
    scans: dict[str, int] = field(default_factory=dict)
    begin_seq: int = 0
    begun_ms: int = 0

    def stage(self, key: str, write: Write) -> None:
        """Stage a write. An add to a value staged here already becomes that value
        plus the delta; ``ValueError`` if that value is no integer or breaks a bound."""
        before = self.writes.get(key)
        if isinstance(write, Add) and key in self.writes:
            if isinstance(before, Add):
                write = before.then(write)
            else:
                total = parse_int(before) + write.delta
                if (write.min is not None and total < write.min) or (
                    write.max is not None and total > write.max
                ):
                    raise ValueError(f"{key!r} would be {total}, outside {write.min}..{write.max}")
                write = str(total).encode()
        self.writes[key] = write

    def footprint(self) -> Footprint:
        return Footprint(
            reads=frozenset(self.reads), writes=dict(self.writes), scans=frozenset(self.scans)
        )


class Mode(Enum):
    READ = "read"
    WRITE = "write"
    ADD = "add"


def _compatible(a: Mode, b: Mode) -> bool:
    return (a is b is Mode.READ) or (a is b is Mode.ADD)


@dataclass(frozen=True, kw_only=True, slots=True)
class Footprint:
    """What a prepared branch holds until its decision: every key it read (written
    too, or not), its writes, and the prefixes it scanned."""

    reads: frozenset[str] = frozenset()
    writes: dict[str, Write] = field(default_factory=dict)
    scans: frozenset[str] = frozenset()

    def modes(self) -> Iterator[tuple[str, Mode]]:
        """One mode per key. An add to a key the branch also read is a plain write: the
        read must not be changed under it, not even by another add."""
        for key in self.reads:
            if key not in self.writes:
                yield key, Mode.READ
        for key, write in self.writes.items():
            blind_add = isinstance(write, Add) and key not in self.reads
            yield key, Mode.ADD if blind_add else Mode.WRITE


class Committed(Protocol):
    """Committed state with versions, as seen inside the vote's write transaction."""

    def get(self, key: str) -> bytes | None: ...

    def version(self, key: str) -> Version: ...

    def newest_under(self, prefix: str, after_seq: int) -> tuple[str, Version] | None:
        """A key under ``prefix`` (tombstones included) written after ``after_seq``."""
        ...


class LockConflict(Exception):
    """``Branch.lock`` found a key held by another branch (no-wait: nothing waits).
    Retry the transaction later, or under a new id."""

    def __init__(self, key: str, holder: str, how: str) -> None:
        super().__init__(f"{key!r} is {how} by txn {holder!r}")
        self.key = key
        self.holder = holder


@dataclass
class LockTable:
    """Keys held by prepared branches until their decision, and leases of active
    branches until they expire. Memory only; rebuilt from the store at start."""

    prepared: dict[str, Footprint] = field(default_factory=dict)
    _by_key: dict[str, dict[str, Mode]] = field(default_factory=dict)
    _scans: dict[str, set[str]] = field(default_factory=dict)  # prefix -> txn ids
    _leases: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> txn, until
    _leased_by: dict[str, set[str]] = field(default_factory=dict)  # txn -> keys

    # ---------------------------------------------------------- prepared branches

    def hold(self, txn_id: str, footprint: Footprint) -> None:
        self.drop_leases(txn_id)
        self.prepared[txn_id] = footprint
        for key, mode in footprint.modes():
            self._by_key.setdefault(key, {})[txn_id] = mode
        for prefix in footprint.scans:
            self._scans.setdefault(prefix, set()).add(txn_id)

    def release(self, txn_id: str) -> None:
        """The branch's decision applied (or it was discarded): everything it held."""
        self.drop_leases(txn_id)
        footprint = self.prepared.pop(txn_id, None)
        if footprint is None:
            return
        for key, _ in footprint.modes():
            holders = self._by_key.get(key)
            if holders is not None:
                holders.pop(txn_id, None)
                if not holders:
                    del self._by_key[key]
        for prefix in footprint.scans:
            txns = self._scans.get(prefix)
            if txns is not None:
                txns.discard(txn_id)
                if not txns:
                    del self._scans[prefix]

    def holders(self, key: str) -> dict[str, Mode]:
        return self._by_key.get(key, {})

    def prepared_adds(self, key: str, but: str = "") -> list[Add]:
        adds = []
        for txn_id, mode in self.holders(key).items():
            write = self.prepared[txn_id].writes.get(key)
            if mode is Mode.ADD and txn_id != but and isinstance(write, Add):
                adds.append(write)
        return adds

    # ---------------------------------------------------------- leases

    def lease(self, txn_id: str, keys: Iterable[str], now_ms: int, until_ms: int) -> None:
        """Lease ``keys`` exclusively to an active branch, all or none. Raises
        ``LockConflict`` at once if another branch holds one."""
        keys = list(keys)
        for key in keys:
            holder = self.lease_holder(key, now_ms)
            if holder and holder != txn_id:
                raise LockConflict(key, holder, "locked")
            for other in self.holders(key):
                if other != txn_id:
                    raise LockConflict(key, other, "held (in doubt)")
            for prefix, txns in self._scans.items():
                if key.startswith(prefix) and txns - {txn_id}:
                    raise LockConflict(key, min(txns - {txn_id}), f"under scanned {prefix!r}")
        for key in keys:
            self._leases[key] = (txn_id, until_ms)
            self._leased_by.setdefault(txn_id, set()).add(key)

    def lease_holder(self, key: str, now_ms: int) -> str:
        held = self._leases.get(key)
        if held is None:
            return ""
        if held[1] <= now_ms:  # expired: the key is free again
            self._leases.pop(key)
            keys = self._leased_by.get(held[0])
            if keys is not None:
                keys.discard(key)
            return ""
        return held[0]

    def drop_leases(self, txn_id: str) -> None:
        for key in self._leased_by.pop(txn_id, ()):
            if self._leases.get(key, ("", 0))[0] == txn_id:
                del self._leases[key]

    def leased(self, txn_id: str) -> set[str]:
        return set(self._leased_by.get(txn_id, ()))

    # ---------------------------------------------------------- the check

    def conflict(self, txn_id: str, footprint: Footprint, now_ms: int) -> str:
        """Why ``footprint`` cannot be held next to what others hold, or ""."""
        for key, mode in sorted(footprint.modes()):
            for other, held in sorted(self.holders(key).items()):
                if other != txn_id and not _compatible(mode, held):
                    return f"conflict: {key!r} is locked by in-doubt txn {other!r}"
            holder = self.lease_holder(key, now_ms)
            if holder and holder != txn_id:
                return f"conflict: {key!r} is locked by active txn {holder!r} (lease)"
            if mode is not Mode.READ:
                for prefix, txns in sorted(self._scans.items()):
                    others = sorted(txns - {txn_id})
                    if key.startswith(prefix) and others:
                        return (
                            f"conflict: {key!r} is under {prefix!r}, scanned by in-doubt txn "
                            f"{others[0]!r}"
                        )
        for prefix in sorted(footprint.scans):
            for other, held_footprint in sorted(self.prepared.items()):
                if other == txn_id:
                    continue
                for key in sorted(held_footprint.writes):
                    if key.startswith(prefix):
                        return (
                            f"conflict: scanned {prefix!r} holds {key!r}, written by in-doubt "
                            f"txn {other!r}"
                        )
            for key, (holder, until_ms) in sorted(self._leases.items()):
                if key.startswith(prefix) and holder != txn_id and until_ms > now_ms:
                    return f"conflict: scanned {prefix!r} holds {key!r}, locked by txn {holder!r}"
        return ""


def check(
    txn_id: str, work: BranchWork, committed: Committed, locks: LockTable, now_ms: int
) -> str:
    """The Prepare check: "" to vote YES, else the reason for NO (it names the key and
    the other transaction)."""
    for key, seen in sorted(work.reads.items()):
        now = committed.version(key)
        if now != seen:
            return f"conflict: {key!r} changed since read (by txn {now.txn_id!r})"
    for prefix, seq in sorted(work.scans.items()):
        newer = committed.newest_under(prefix, seq)
        if newer is not None:
            key, version = newer
            return (
                f"conflict: {key!r} under scanned {prefix!r} changed since the scan "
                f"(by txn {version.txn_id!r})"
            )
    footprint = work.footprint()
    reason = locks.conflict(txn_id, footprint, now_ms)
    if reason:
        return reason
    for key, write in sorted(footprint.writes.items(), key=lambda kv: kv[0]):
        if isinstance(write, Add):
            reason = _bound_broken(key, write, committed, locks.prepared_adds(key, but=txn_id))
            if reason:
                return reason
    return ""


def _bound_broken(key: str, add: Add, committed: Committed, in_doubt: list[Add]) -> str:
    try:
        value = parse_int(committed.get(key))
    except ValueError:
        return f"{key!r} does not hold an integer: cannot add to it"
    falling = sum(a.delta for a in in_doubt if a.delta < 0)
    rising = sum(a.delta for a in in_doubt if a.delta > 0)
    if add.min is not None and value + falling + add.delta < add.min:
        return (
            f"bound: {key!r} would go below min={add.min} ({value} committed, "
            f"{falling} in doubt, {add.delta:+d} here)"
        )
    if add.max is not None and value + rising + add.delta > add.max:
        return (
            f"bound: {key!r} would go above max={add.max} ({value} committed, "
            f"+{rising} in doubt, {add.delta:+d} here)"
        )
    return ""
