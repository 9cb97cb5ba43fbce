"""The participant's audit log (agent events, retention anchor, tampering), the SDK
metrics fed by it, and `concord audit` offline against data dirs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import lmdb
import pytest

from coordinator.audit.log import AUDIT_DIR, AuditLog
from participant_sdk.metrics import ParticipantMetrics
from participant_sdk.storage.records import seal, unseal
from participant_sdk.store import (
    LmdbStore,
    StoreError,
    StoreLimitError,
    StoreLimits,
)
from tests.audit.test_coordinator_audit import applied_log, feed, story
from tests.integration.conftest import concord


def one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def participant_dir(tmp_path: Path, events: int = 6, **limits: int) -> Path:
    path = tmp_path / "p1"
    store = LmdbStore(path, "p1", StoreLimits(**limits))
    try:
        for i in range(events):
            store.audit_event("effect_executed", f"charge {i}", round_id=f"t{i}")
    finally:
        store.close()
    return path


def test_agent_events_are_chained_and_checked(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "p1", "p1")
    try:
        store.audit_event("compensation_run", "refund 12 EUR", round_id="t1")
        store.audit_event("breaker_tripped", "payments api")
        with pytest.raises(ValueError, match="not one of"):
            store.audit_event("made_up", "")
        with pytest.raises(StoreLimitError, match="audit_detail_bytes_max"):
            store.audit_event("note", "x" * 5000)
        assert [e.event for e in store.audit()] == ["compensation_run", "breaker_tripped"]
        store.verify_audit()
    finally:
        store.close()


def test_retention_leaves_an_anchor_that_verifies(tmp_path: Path) -> None:
    path = participant_dir(tmp_path, events=7, audit_events_max=3)
    store = LmdbStore(path, "p1")
    try:
        kept = store.audit()
        assert [e.seq for e in kept] == [5, 6, 7]
        assert store.audit_verdict().ok
    finally:
        store.close()
    result = concord("audit", "verify", f"--data-dir={path}")
    assert result.returncode == 0 and "ok: 3 records" in result.stdout, result


class _Audit:
    """The audit table as someone editing the file sees it: values sealed with their
    CRC (which a tamperer recomputes; the hash chain is what must catch them)."""

    def __init__(self, txn: lmdb.Transaction, db: object) -> None:
        self.txn, self.db = txn, db

    def get(self, key: bytes) -> bytes:
        return unseal("audit", key, bytes(self.txn.get(key, db=self.db)), "")

    def put(self, key: bytes, value: bytes) -> None:
        self.txn.put(key, seal("audit", key, value), db=self.db)

    def delete(self, key: bytes) -> None:
        self.txn.delete(key, db=self.db)


def _tamper_participant(path: Path, change: object) -> None:
    env = lmdb.open(str(path), max_dbs=16)
    db = env.open_db(b"audit")
    with env.begin(write=True) as txn:
        change(_Audit(txn, db))  # type: ignore[operator]
    env.close()


def _key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


@pytest.mark.parametrize("how", ["alter", "remove", "reorder"])
def test_participant_tampering_is_named(tmp_path: Path, how: str) -> None:
    path = participant_dir(tmp_path)

    def change(audit: _Audit) -> None:
        if how == "alter":
            record = json.loads(audit.get(_key(3)))
            record["detail"] = "charge 300"
            audit.put(_key(3), json.dumps(record).encode())
        elif how == "remove":
            audit.delete(_key(3))
        else:
            three, four = audit.get(_key(3)), audit.get(_key(4))
            audit.put(_key(3), four)
            audit.put(_key(4), three)

    _tamper_participant(path, change)
    result = concord("audit", "verify", f"--data-dir={path}")
    assert result.returncode == 1, result
    expected = "4" if how == "remove" else "3"
    assert f"first bad record {expected}:" in result.stdout, result.stdout
    store = LmdbStore(path, "p1")
    try:
        with pytest.raises(StoreError, match=f"event {expected}:"):
            store.verify_audit()
    finally:
        store.close()


def test_offline_export_of_a_participant(tmp_path: Path) -> None:
    path = participant_dir(tmp_path)
    result = concord("audit", "export", f"--data-dir={path}", "--txn=t2")
    assert result.returncode == 0, result
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["event"] == "effect_executed" and record["detail"] == "charge 2"


def test_a_running_participant_dir_is_refused(tmp_path: Path) -> None:
    path = participant_dir(tmp_path)
    store = LmdbStore(path, "p1")
    try:
        line = one_line(concord("audit", "verify", f"--data-dir={path}"))
        assert "in use" in line and "--coordinators" in line
    finally:
        store.close()


def test_coordinator_data_dir_offline(tmp_path: Path) -> None:
    data_dir = tmp_path / "c1"
    audit = AuditLog(data_dir / AUDIT_DIR, node_id="c1")
    audit.memo.attach(SimpleNamespace())
    feed(audit, applied_log(story()))
    audit.note_local("leader_changed", {"leader": "c1", "term": 1})
    audit.close()
    ok = concord("audit", "verify", f"--data-dir={data_dir}")
    assert ok.returncode == 0 and "log chain: ok" in ok.stdout and "local: ok" in ok.stdout
    exported = concord("audit", "export", f"--data-dir={data_dir}", "--since=1970-01-01T00:00:01")
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert records and all(r["at_ms"] >= 1000 for r in records)
    assert records[-1]["local"] is True

    env = lmdb.open(str(data_dir / AUDIT_DIR), max_dbs=4)
    db = env.open_db(b"records")
    with env.begin(write=True) as txn:
        key, raw = list(txn.cursor(db=db))[6]
        record = json.loads(bytes(raw))
        record["at_ms"] += 1
        txn.put(bytes(key), json.dumps(record).encode(), db=db)
    env.close()
    bad = concord("audit", "verify", f"--data-dir={data_dir}")
    assert bad.returncode == 1 and f"first bad record {bytes(key).decode()}" in bad.stdout


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["audit", "verify", "--data-dir=/nonexistent/x"], "neither a coordinator"),
        (["audit", "export", "--data-dir=/tmp", "--since=yesterday"], "--since"),
        (["audit", "export", "--format=csv"], "invalid choice"),
        (["txn", "abort"], "required"),
    ],
)
def test_mistakes_are_one_line(args: list[str], phrase: str) -> None:
    assert phrase in one_line(concord(*args))


def test_sdk_metrics_count_durable_audit_events(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "p1", "p1")
    metrics = ParticipantMetrics("p1")
    metrics.attach(store)
    try:
        store.audit_event("compensation_run", "refund")
        store.audit_event("breaker_tripped", "api down")
        sample = metrics.registry.get_sample_value
        labels = {"participant": "p1", "event": "compensation_run"}
        assert sample("concord_participant_agent_events_total", labels) == 1
        assert sample("concord_participant_breaker_open", {"participant": "p1"}) == 1
    finally:
        store.close()
