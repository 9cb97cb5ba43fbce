"""A transaction branch as the agent sees it: reads recorded with their versions,
writes staged in memory until Prepare, and the keys it leases.

``Workspace`` holds every open branch's work (``BranchWork``) and the lock table of
one participant; it runs under the participant's lock, which it shares, and reads
the participant's committed state through the store. ``Branch`` is the agent's handle
on one of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from participant_sdk.core import ParticipantCore
from participant_sdk.errors import BranchClosed
from participant_sdk.isolation import Add, BranchWork, LockTable, Version, Write
from participant_sdk.store import ParticipantStore, StoreLimitError, StoreLimits

__all__ = ["Branch", "StateView", "Validate", "Workspace"]


class StateView:
    """Read-only view of the agent's committed state."""

    def __init__(
        self,
        get: Callable[[str], bytes | None],
        items: Callable[[str], list[tuple[str, bytes]]],
    ) -> None:
        self._get = get
        self._items = items

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        value = self._get(key)
        return default if value is None else value

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        return self._items(prefix)

    def __contains__(self, key: str) -> bool:
        return self._get(key) is not None


# The agent's vote on a transaction branch: (yes, reason). Called under the
# participant's lock, after the isolation check passed: it may read ``state`` (the
# committed state) but must not call the Participant.
Validate = Callable[[str, Mapping[str, Write], StateView], tuple[bool, str]]


class Workspace:
    """The open branches of one participant (memory only) and what they lock."""

    def __init__(
        self,
        lock: threading.Lock,
        limits: StoreLimits,
        lock_lease_ms: int,
        running_core: Callable[[], ParticipantCore],
        store: Callable[[], ParticipantStore],
        now_ms: Callable[[], int],
    ) -> None:
        self.lock = lock
        self.limits = limits
        self.lock_lease_ms = lock_lease_ms
        self.staged: dict[str, BranchWork] = {}
        self.locks = LockTable()
        self._running_core = running_core
        self._store = store
        self._now_ms = now_ms

    def open_work(self, txn_id: str) -> BranchWork:
        """Caller holds ``lock``: the work of a branch still open here."""
        core = self._running_core()
        work = self.staged.get(txn_id)
        if txn_id not in core.active or work is None:
            raise BranchClosed(
                f"txn {txn_id!r} is not open here (voted, aborted or lost in a restart)"
            )
        return work

    def stage(self, txn_id: str, key: str, value: Write) -> None:
        with self.lock:
            work = self.open_work(txn_id)
            self.limits.check_key(key)
            self.limits.check_value(key, value)
            if key not in work.writes and len(work.writes) >= self.limits.writes_per_branch_max:
                raise StoreLimitError(
                    f"txn {txn_id!r}: more than writes_per_branch_max="
                    f"{self.limits.writes_per_branch_max} writes"
                )
            work.stage(key, value)

    def _count_read(self, txn_id: str, work: BranchWork) -> None:
        if len(work.reads) + len(work.scans) >= self.limits.reads_per_branch_max:
            raise StoreLimitError(
                f"txn {txn_id!r}: more than reads_per_branch_max="
                f"{self.limits.reads_per_branch_max} keys read and prefixes scanned"
            )

    def read(self, txn_id: str, key: str) -> bytes | None:
        with self.lock:
            work = self.open_work(txn_id)
            self.limits.check_key(key)
            staged = work.writes.get(key, b"")
            if key in work.writes and not isinstance(staged, Add):
                return staged  # its own write: nothing to check
            value, version = self._store().get_versioned(key)
            if key not in work.reads:  # the first read's version is the one checked
                self._count_read(txn_id, work)
                work.reads[key] = version
            if isinstance(staged, Add):
                return staged.applied_to(value)
            return value

    def scan(self, txn_id: str, prefix: str) -> list[tuple[str, bytes]]:
        with self.lock:
            work = self.open_work(txn_id)
            committed, seq = self._store().scan_versioned(prefix)
            if prefix not in work.scans:
                self._count_read(txn_id, work)
                work.scans[prefix] = seq
            seen = dict(committed)
            for key, write in work.writes.items():
                if not key.startswith(prefix):
                    continue
                if write is None:
                    seen.pop(key, None)
                elif isinstance(write, Add):
                    seen[key] = write.applied_to(seen.get(key))
                else:
                    seen[key] = write
            return sorted(seen.items())

    def lease(self, txn_id: str, keys: Sequence[str]) -> None:
        with self.lock:
            self.open_work(txn_id)
            for key in keys:
                self.limits.check_key(key)
            now_ms = self._now_ms()
            self.locks.lease(txn_id, keys, now_ms, now_ms + self.lock_lease_ms)

    def writes(self, txn_id: str) -> dict[str, Write]:
        with self.lock:
            work = self.staged.get(txn_id)
            return {} if work is None else dict(work.writes)

    def reads(self, txn_id: str) -> dict[str, Version]:
        with self.lock:
            work = self.staged.get(txn_id)
            return {} if work is None else dict(work.reads)

    def scans(self, txn_id: str) -> dict[str, int]:
        with self.lock:
            work = self.staged.get(txn_id)
            return {} if work is None else dict(work.scans)


class Branch:
    """The agent's work in one transaction: serializable by default.

    Reads see this branch's own writes first, then committed state, and are recorded
    with the version they saw; writes are staged in memory. At Prepare the branch votes
    NO if anything it read changed since (or a scanned range gained, lost or changed a
    key), or if another branch in doubt holds a key it touches (docs/sdk.md,
    "Isolation")."""

    def __init__(self, workspace: Workspace, txn_id: str) -> None:
        self._workspace = workspace
        self.txn_id = txn_id

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        """The value as this branch sees it; the read is checked at Prepare."""
        value = self._workspace.read(self.txn_id, key)
        return default if value is None else value

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        """Every key under ``prefix`` as this branch sees it, in key order. The whole
        range is checked at Prepare: a key inserted, deleted or changed under it since
        (a phantom) makes the branch vote NO."""
        return self._workspace.scan(self.txn_id, prefix)

    def put(self, key: str, value: bytes) -> None:
        self._workspace.stage(self.txn_id, key, bytes(value))

    def delete(self, key: str) -> None:
        self._workspace.stage(self.txn_id, key, None)

    def add(self, key: str, delta: int, *, min: int | None = None, max: int | None = None) -> None:
        """Add ``delta`` to the integer at ``key`` (ASCII decimal; absent is 0) when the
        transaction commits. Nothing is read: concurrent adds to one key do not conflict.
        The bounds are checked at Prepare against the committed value and every add in
        doubt that works against them; the branch votes NO if one could be broken."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an int, got {type(delta).__name__}")
        self._workspace.stage(self.txn_id, key, Add(delta=delta, min=min, max=max))

    def lock(self, *keys: str) -> None:
        """Hold ``keys`` for this branch from now until it votes or aborts (bounded by
        the participant's ``lock_lease_ms``): another branch that touches one of them
        votes NO, so a long step between read and write does not lose at the end.
        No-wait: raises ``LockConflict`` at once if another branch holds one."""
        self._workspace.lease(self.txn_id, keys)

    def get_for_update(self, key: str, default: bytes | None = None) -> bytes | None:
        """``lock(key)``, then ``get(key)``."""
        self.lock(key)
        return self.get(key, default)

    @property
    def writes(self) -> dict[str, Write]:
        return self._workspace.writes(self.txn_id)

    @property
    def reads(self) -> dict[str, Version]:
        """The version of each key read (at its first read): what Prepare checks.
        For diagnostics and history checkers."""
        return self._workspace.reads(self.txn_id)

    @property
    def scans(self) -> dict[str, int]:
        """Each prefix scanned, with the commit sequence number it was read at."""
        return self._workspace.scans(self.txn_id)
