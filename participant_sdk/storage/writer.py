"""``StoreWriter``: one atomic write of the participant store (the records layout of
participant_sdk/storage/records.py), in which any number of ``Step``s are applied.

``ParticipantCore`` returns a ``Step``: records to persist and actions on the agent's
state. All of it must be durable, in one atomic write, before the reply is sent. A
writer applies Steps in order inside one write transaction (group commit), reads back
through the same transaction (so a vote later in a batch sees the effect of a decision
earlier in it), and the store makes it durable when the transaction commits. If any
part fails, nothing of it is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from participant_sdk.core import (
    ApplyBranch,
    DiscardBranch,
    DropCheckpoint,
    ForgetRecord,
    ForgetStep,
    HoldBranch,
    LocalState,
    RestoreCheckpoint,
    RoundRecord,
    RunCompensation,
    RunStep,
    Step,
    StepRecord,
    TakeCheckpoint,
    TermRecord,
)
from participant_sdk.isolation import BranchWork, Version
from participant_sdk.storage.kv import Tx
from participant_sdk.storage.records import (
    ADD,
    AGENT_RESTORE,
    AUDIT_AGENT_EVENTS,
    DELETE,
    GENESIS_HASH,
    PUT,
    READ,
    SEP,
    AuditEvent,
    StoreError,
    StoreLimitError,
    StoreLimits,
    decode_add,
    decode_audit,
    decode_record,
    encode_held,
    encode_record,
    encode_step,
    read_commit_seq,
    read_term,
    seal_audit_event,
    split_head,
    state_items,
    version_of,
)

__all__ = ["StoreWriter"]


class StoreWriter:
    """One atomic write: apply Steps, read through it; durable when the ``write()``
    context exits without an error, discarded entirely otherwise."""

    def __init__(self, tables: Tx, limits: StoreLimits, clock_ms: Callable[[], int]):
        self._tables = tables
        self._limits = limits
        self._clock_ms = clock_ms
        self.events: list[AuditEvent] = []  # audit events of this write (for listeners)

    def get(self, key: str) -> bytes | None:
        return self._tables.get("state", key.encode())

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        return state_items(self._tables, prefix)

    def version(self, key: str) -> Version:
        return version_of(self._tables, key.encode())

    def newest_under(self, prefix: str, after_seq: int) -> tuple[str, Version] | None:
        for raw, value in self._tables.scan("versions", prefix.encode()):
            version = Version.decode(value)
            if version.seq > after_seq:
                return raw.decode(), version
        return None

    def commit_seq(self) -> int:
        return read_commit_seq(self._tables)

    def prune_tombstones(self, below_seq: int, count_max: int) -> int:
        """Forget versions of deleted keys written before ``below_seq`` (no active
        branch began before them, so none can have read them), at most ``count_max``."""
        t = self._tables
        due: list[tuple[bytes, bytes, int]] = []
        for raw, key in t.scan("tombstones"):
            seq = int.from_bytes(raw[:8], "big")
            if seq >= below_seq or len(due) >= count_max:
                break
            due.append((raw, key, seq))
        for raw, key, seq in due:
            t.delete("tombstones", raw)
            # Only if it is still that tombstone: the key may have been written since.
            if t.get("state", key) is None and version_of(t, key).seq == seq:
                t.delete("versions", key)
        return len(due)

    def has_checkpoint(self, checkpoint_id: str) -> bool:
        return self._tables.get("checkpoint_info", checkpoint_id.encode()) is not None

    def checkpoint_count(self) -> int:
        return sum(1 for _ in self._tables.scan("checkpoint_info"))

    def apply(self, step: Step, staged: Mapping[str, BranchWork]) -> None:
        """All of ``step.persist`` and ``step.actions``, in order; ``staged``: the
        active branches' work, by txn id (what a HoldBranch makes durable)."""
        for item in step.persist:
            self._persist(item)
        for action in step.actions:
            self._act(action, staged)

    # -------------------------------------------------------------- persist

    def _persist(self, item: object) -> None:
        t = self._tables
        if isinstance(item, TermRecord):
            if item.term < read_term(t):
                raise StoreError(f"term would go back from {read_term(t)} to {item.term}")
            t.put("meta", b"term", str(item.term).encode())
            self._audit("term", "", str(item.term))
        elif isinstance(item, RoundRecord):
            key = self._limits.check_id("round id", item.round_id)
            before_raw = t.get("records", key)
            before = decode_record(before_raw) if before_raw is not None else None
            t.put("records", key, encode_record(item))
            if before is not None and before.state is LocalState.PREPARED:
                event = "decision_applied"
            else:
                event = "vote"
            detail = f"{item.kind.value} {item.state.value} yes={item.voted_yes} {item.reason}"
            self._audit(event, item.round_id, detail.strip())
        elif isinstance(item, ForgetRecord):
            t.delete("records", item.round_id.encode())
        elif isinstance(item, StepRecord):
            key = self._limits.check_key(item.key)
            t.put("steps", key, encode_step(item))
            self._audit(
                "saga_step",
                item.saga_id,
                f"step {item.step} {item.action} {item.state.value} {item.reason}".strip(),
            )
        elif isinstance(item, ForgetStep):
            t.delete("steps", item.key.encode())
        else:
            raise TypeError(f"not a record: {item!r}")

    # -------------------------------------------------------------- actions

    def _act(self, action: object, staged: Mapping[str, BranchWork]) -> None:
        t = self._tables
        if isinstance(action, HoldBranch):
            work = staged.get(action.txn_id, BranchWork())
            self._limits.check_writes(action.txn_id, work.writes)
            prefix = self._limits.check_id("txn id", action.txn_id) + SEP
            for key, value in work.writes.items():
                t.put("held", prefix + key.encode(), encode_held(value, read=key in work.reads))
            for key in work.reads:
                if key not in work.writes:
                    t.put("held", prefix + key.encode(), READ)
            for scanned in work.scans:
                t.put("held_scans", prefix + scanned.encode(), b"")
        elif isinstance(action, ApplyBranch):
            held = self._take_held(action.txn_id)
            if any(tagged[:1] != READ for _, tagged in held):
                version = Version(read_commit_seq(t) + 1, action.txn_id)
                t.put("meta", b"commit_seq", str(version.seq).encode())
                for raw_key, tagged in held:
                    tag = tagged[:1]
                    if tag == PUT:
                        self._write_state(raw_key, tagged[1:], version)
                    elif tag == DELETE:
                        self._write_state(raw_key, None, version)
                    elif tag == ADD:
                        add = decode_add(tagged[1:])
                        self._write_state(raw_key, add.applied_to(t.get("state", raw_key)), version)
        elif isinstance(action, DiscardBranch):
            self._take_held(action.txn_id)
        elif isinstance(action, TakeCheckpoint):
            cp = self._limits.check_id("checkpoint id", action.checkpoint_id)
            self._drop_checkpoint(cp)
            state = list(t.scan("state"))
            for raw_key, value in state:
                t.put("checkpoints", cp + SEP + raw_key, value)
            info = {"label": action.label, "keys": len(state), "taken_ms": self._clock_ms()}
            t.put("checkpoint_info", cp, json.dumps(info, sort_keys=True).encode())
            self._audit("checkpoint_taken", action.checkpoint_id, f"{len(state)} keys")
        elif isinstance(action, DropCheckpoint):
            self._drop_checkpoint(action.checkpoint_id.encode())
            self._audit("checkpoint_dropped", action.checkpoint_id, "")
        elif isinstance(action, RestoreCheckpoint):
            cp = action.checkpoint_id.encode()
            if t.get("checkpoint_info", cp) is None:
                raise StoreError(f"restore of checkpoint {action.checkpoint_id!r}: not here")
            copied = {k[len(cp) + 1 :]: v for k, v in t.scan("checkpoints", cp + SEP)}
            now = dict(t.scan("state"))
            # Every key the restore changes gets a new version, as a committed write:
            # a branch that read it before must not validate (none survive a restore
            # anyway: the core discards active work when a rollback executes).
            version = Version(read_commit_seq(t) + 1, f"rollback:{action.checkpoint_id}")
            t.put("meta", b"commit_seq", str(version.seq).encode())
            for raw_key in sorted(now.keys() | copied.keys()):
                if now.get(raw_key) != copied.get(raw_key):
                    self._write_state(raw_key, copied.get(raw_key), version)
            # The agent's own restore (AgentRollback) runs after this write: the marker
            # makes a restart finish it if the process dies first.
            t.put("meta", AGENT_RESTORE + cp, b"1")
            self._audit("checkpoint_restored", action.checkpoint_id, f"{len(copied)} keys")
        elif isinstance(action, RunStep | RunCompensation):
            pass  # run by the participant once this write is durable
        else:
            raise TypeError(f"not an action: {action!r}")

    def _take_held(self, txn_id: str) -> list[tuple[bytes, bytes]]:
        prefix = txn_id.encode() + SEP
        held = [(k[len(prefix) :], v) for k, v in self._tables.scan("held", prefix)]
        for key, _ in held:
            self._tables.delete("held", prefix + key)
        for key in [k for k, _ in self._tables.scan("held_scans", prefix)]:
            self._tables.delete("held_scans", key)
        return held

    def _write_state(self, key: bytes, value: bytes | None, version: Version) -> None:
        t = self._tables
        if value is None:
            t.delete("state", key)
            t.put("tombstones", version.seq.to_bytes(8, "big") + key, key)
        else:
            t.put("state", key, value)
        t.put("versions", key, version.encode())

    def _drop_checkpoint(self, cp: bytes) -> None:
        for key in [k for k, _ in self._tables.scan("checkpoints", cp + SEP)]:
            self._tables.delete("checkpoints", key)
        self._tables.delete("checkpoint_info", cp)

    # -------------------------------------------------------------- audit

    def _audit(self, event: str, round_id: str, detail: str) -> AuditEvent:
        t = self._tables
        head = t.get("meta", b"audit_head")
        seq, prev_hash = (0, GENESIS_HASH) if head is None else split_head(head)
        seq += 1
        at_ms = self._clock_ms()
        digest, stored = seal_audit_event(prev_hash, seq, at_ms, event, round_id, detail)
        t.put("audit", seq.to_bytes(8, "big"), stored)
        t.put("meta", b"audit_head", f"{seq} {digest}".encode())
        oldest = seq - self._limits.audit_events_max
        if oldest > 0:
            pruned = t.get("audit", oldest.to_bytes(8, "big"))
            if pruned is not None:
                anchor = f"{oldest} {decode_audit(pruned).hash}"
                t.put("meta", b"audit_anchor", anchor.encode())
                t.delete("audit", oldest.to_bytes(8, "big"))
        written = AuditEvent(
            seq=seq,
            at_ms=at_ms,
            event=event,
            round_id=round_id,
            detail=detail,
            prev_hash=prev_hash,
            hash=digest,
        )
        self.events.append(written)
        return written

    def audit_event(self, kind: str, detail: str, round_id: str = "") -> AuditEvent:
        """Record an agent-level event (an effect executed, a compensation run, a
        trigger fired, a breaker tripped) in this write."""
        if kind not in AUDIT_AGENT_EVENTS:
            known = sorted(AUDIT_AGENT_EVENTS)
            raise ValueError(f"audit event kind {kind!r} is not one of {known}")
        size = len(detail.encode())
        if size > self._limits.audit_detail_bytes_max:
            raise StoreLimitError(
                f"audit detail is {size} bytes > audit_detail_bytes_max="
                f"{self._limits.audit_detail_bytes_max}"
            )
        if round_id:
            self._limits.check_id("round id", round_id)
        return self._audit(kind, round_id, detail)

    def agent_restore_done(self, checkpoint_id: str, detail: str) -> None:
        """The agent's own restore of ``checkpoint_id`` finished: clear its marker."""
        self._tables.delete("meta", AGENT_RESTORE + checkpoint_id.encode())
        self._audit("agent_restored", checkpoint_id, detail)
