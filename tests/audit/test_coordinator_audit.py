"""The coordinator's audit log: derived from applied entries, identical on every node,
surviving restarts and snapshot installs, and any tampering is named by verify."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lmdb
import pytest

from coordinator.audit.chain import GENESIS_HASH
from coordinator.audit.derive import derive, position
from coordinator.audit.log import MEMO_ATTRIBUTE, AuditLog
from coordinator.core.entries import (
    Abort,
    Ack,
    BeginTxn,
    Entry,
    RecordAcks,
    RecordVotes,
    RequestCommit,
    Vote,
)
from coordinator.core.state import Applied, CoordinatorState


def story(n: int = 3) -> list[Entry]:
    """n transactions: committed, aborted by a NO vote, aborted by an operator."""
    entries: list[Entry] = []
    t = 1_000
    for i in range(n):
        txn = f"t{i}"
        entries.append(
            BeginTxn(txn_id=txn, session_id="s", participants=("a", "b"), timeout_ms=5000, now_ms=t)
        )
        if i % 3 == 2:
            entries.append(Abort(round_id=txn, reason="operator: stuck", now_ms=t + 1))
        else:
            entries.append(RequestCommit(txn_id=txn, now_ms=t + 1))
            votes = (
                Vote(round_id=txn, participant_id="a", yes=True),
                Vote(round_id=txn, participant_id="b", yes=i % 3 == 0, reason="no seats"),
            )
            entries.append(RecordVotes(votes=votes, now_ms=t + 2))
        acks = (Ack(round_id=txn, participant_id="a"), Ack(round_id=txn, participant_id="b"))
        entries.append(RecordAcks(acks=acks, now_ms=t + 3))
        t += 10
    return entries


def applied_log(entries: list[Entry]) -> list[tuple[int, Entry, Applied]]:
    state = CoordinatorState()
    return [(i + 2, e, state.apply(e)) for i, e in enumerate(entries)]  # index 1 is a no-op


def open_log(path: Path, machine: Any = None, **kwargs: Any) -> AuditLog:
    audit = AuditLog(path, node_id="c1", **kwargs)
    audit.memo.attach(machine if machine is not None else SimpleNamespace())
    return audit


def feed(audit: AuditLog, applied: list[tuple[int, Entry, Applied]]) -> None:
    for index, entry, result in applied:
        audit.on_apply(index, entry, result)


def test_records_say_what_happened_with_entry_times() -> None:
    (index, entry, result), *_ = applied_log(story(1))
    [begun] = derive(index, entry, result)
    assert begun["event"] == "txn_begun" and begun["at_ms"] == 1000 and begun["index"] == 2
    events = [r["event"] for i, e, a in applied_log(story(3)) for r in derive(i, e, a)]
    assert events.count("decision") == 3
    assert "abort_requested" in events and events.count("vote") == 4 and events.count("ack") == 6


def test_two_nodes_derive_the_identical_chain(tmp_path: Path) -> None:
    applied = applied_log(story())
    chains = []
    for node in ("c1", "c2"):
        with open_log(tmp_path / node) as audit:
            feed(audit, applied)
            chains.append(list(audit.records(local=False)))
            assert all(v.ok for v in audit.verify())
    assert chains[0] == chains[1] and len(chains[0]) > 10


def test_restart_replay_does_not_duplicate_and_checks(tmp_path: Path) -> None:
    applied = applied_log(story())
    with open_log(tmp_path / "a") as audit:
        feed(audit, applied[:5])
    with open_log(tmp_path / "a") as audit:  # pysyncobj re-applies from the start
        feed(audit, applied)
        chain, _ = audit.verify()
        assert chain.ok and audit.mismatches == 0
        restarted = list(audit.records(local=False))
    with open_log(tmp_path / "b") as audit:
        feed(audit, applied)
        assert list(audit.records(local=False)) == restarted


def test_entries_sharing_one_raft_index_get_their_own_positions(tmp_path: Path) -> None:
    """Group commit puts many entries in one LogBatch, one Raft index: every record
    still gets its own position, and a restart's replay matches it exactly."""
    state = CoordinatorState()
    entries = story(3)
    batched = [(2 + i // 4, e, state.apply(e)) for i, e in enumerate(entries)]  # 4 per index
    with open_log(tmp_path / "a") as audit:
        feed(audit, batched)
        records = list(audit.records(local=False))
        assert len({(r["index"], r["sub"]) for r in records}) == len(records)
        assert audit.mismatches == 0 and all(v.ok for v in audit.verify())
    with open_log(tmp_path / "a") as audit:  # replay after a restart
        feed(audit, batched)
        assert audit.mismatches == 0 and list(audit.records(local=False)) == records


def test_snapshot_install_continues_the_same_chain(tmp_path: Path) -> None:
    """A node that installs a snapshot never applies the entries it covers: it holds
    fewer records, but every record it holds is identical to the other nodes'."""
    applied = applied_log(story())
    leader_machine = SimpleNamespace()
    with open_log(tmp_path / "leader", leader_machine) as leader:
        feed(leader, applied[:6])
        snapshot = {MEMO_ATTRIBUTE: getattr(leader_machine, MEMO_ATTRIBUTE)}
        feed(leader, applied[6:])
        full = list(leader.records(local=False))
    with open_log(tmp_path / "new", SimpleNamespace(**snapshot)) as new:
        feed(new, applied[6:])
        chain, _ = new.verify()
        assert chain.ok, chain.describe()
        held = list(new.records(local=False))
    assert held == full[-len(held) :]
    with open_log(tmp_path / "lagging") as lagging:  # held the start, missed the middle
        feed(lagging, applied[:2])
        setattr(lagging.memo._machine, MEMO_ATTRIBUTE, snapshot[MEMO_ATTRIBUTE])
        feed(lagging, applied[6:])
        chain, _ = lagging.verify()
        assert chain.ok and len(chain.gaps) == 1, chain.describe()


def test_retention_keeps_a_verifiable_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("coordinator.audit.log.AUDIT_PRUNE_BATCH", 2)
    with open_log(tmp_path / "a", records_max=5) as audit:
        feed(audit, applied_log(story(4)))
        audit.flush()
        kept = list(audit.records(local=False))
        chain, _ = audit.verify()
    assert len(kept) <= 5 + 2 and chain.ok
    assert kept[0]["prev_hash"] != GENESIS_HASH


# ---------------------------------------------------------------------- tampering


def _tamper(path: Path, change: Any) -> None:
    env = lmdb.open(str(path), max_dbs=4)
    db = env.open_db(b"records")
    with env.begin(write=True) as txn:
        change(txn, db)
    env.close()


def _built(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "audit"
    with open_log(path) as audit:
        feed(audit, applied_log(story()))
        positions = [position(r["index"], r["sub"]) for r in audit.records(local=False)]
        audit.note_local("leader_changed", {"leader": "c1", "term": 2})
    return path, positions


def _verdict(path: Path) -> Any:
    with AuditLog(path, readonly=True) as audit:
        return audit.verify()[0]


def test_an_altered_record_is_named(tmp_path: Path) -> None:
    path, positions = _built(tmp_path)
    victim = positions[4].encode()

    def alter(txn: Any, db: Any) -> None:
        record = json.loads(txn.get(victim, db=db))
        record["detail"]["yes"] = not record["detail"].get("yes", False)
        txn.put(victim, json.dumps(record).encode(), db=db)

    _tamper(path, alter)
    verdict = _verdict(path)
    assert not verdict.ok and verdict.first_bad == positions[4] and "altered" in verdict.problem


def test_a_removed_record_is_named(tmp_path: Path) -> None:
    path, positions = _built(tmp_path)
    _tamper(path, lambda txn, db: txn.delete(positions[3].encode(), db=db))
    verdict = _verdict(path)
    assert not verdict.ok and verdict.first_bad == positions[4], verdict.describe()


def test_a_removed_last_record_is_caught(tmp_path: Path) -> None:
    path, positions = _built(tmp_path)
    _tamper(path, lambda txn, db: txn.delete(positions[-1].encode(), db=db))
    verdict = _verdict(path)
    assert not verdict.ok and verdict.first_bad == positions[-1], verdict.describe()


def test_reordered_records_are_named(tmp_path: Path) -> None:
    path, positions = _built(tmp_path)
    a, b = positions[2].encode(), positions[5].encode()

    def swap(txn: Any, db: Any) -> None:
        first, second = txn.get(a, db=db), txn.get(b, db=db)
        txn.put(a, second, db=db)
        txn.put(b, first, db=db)

    _tamper(path, swap)
    verdict = _verdict(path)
    assert not verdict.ok and verdict.first_bad == positions[2], verdict.describe()


def test_reordered_records_with_fixed_positions_are_named(tmp_path: Path) -> None:
    """A forger who also rewrites the positions inside the records still breaks the
    prev_hash links."""
    path, positions = _built(tmp_path)
    a, b = positions[2].encode(), positions[3].encode()

    def swap(txn: Any, db: Any) -> None:
        first, second = json.loads(txn.get(a, db=db)), json.loads(txn.get(b, db=db))
        for record, other in ((first, second), (second, first)):
            record["index"], record["sub"] = other["index"], other["sub"]
        txn.put(a, json.dumps(second).encode(), db=db)
        txn.put(b, json.dumps(first).encode(), db=db)

    _tamper(path, swap)
    verdict = _verdict(path)
    assert not verdict.ok and verdict.first_bad == positions[2], verdict.describe()


def test_every_entry_kind_has_an_event_of_its_own() -> None:
    """No entry is audited as ``unknown_entry``: a new kind must say what it records."""
    import typing

    from coordinator.core import entries as kinds
    from coordinator.core.state import Applied

    for kind in typing.get_args(kinds.Entry):
        fields = {
            f.name: _example(f.type)
            for f in dataclasses.fields(kind)  # type: ignore[arg-type]
        }
        records = derive(1, kind(**fields), Applied())
        assert all(r["event"] != "unknown_entry" for r in records), kind.__name__


def _example(annotation: object) -> object:
    text = str(annotation)
    if text.startswith("tuple"):
        return ()
    if "int" in text:
        return 0
    if "bool" in text:
        return False
    if "Kind" in text:
        from coordinator.core.types import Kind

        return Kind.TXN
    return ""
