"""Durability contracts: what each store promises about the disk, asserted on the real
objects rather than inferred from behaviour after a process death (the page cache
survives that, so an unsynced write looks durable to every other test).

- Every LMDB environment that holds durable state runs with ``sync`` and ``metasync``
  on (and not ``map_async``): a write transaction's commit returns after the data pages
  and then the meta page are fsynced. Read-only openers write nothing, so their flags do
  not matter; they are asserted to be read-only instead.
- The participant's write-ahead log (participant_sdk/wal.py, behind ``LoggedLmdbKv``):
  a write is acknowledged (the write transaction returns) only after its record was
  written and ``fdatasync``-ed; a new log file is fsynced before it is renamed in and
  its directory after; the log is trimmed (its epoch raised, appends start again at 0)
  only once LMDB's synced commit holds everything it held and the new epoch.
- The Raft snapshot: pysyncobj's serializer writes it (or receives it from the leader)
  into a temporary file that is fsynced before it is renamed over the old snapshot, and
  the directory is fsynced before the serializer reports success; the journal fsyncs
  the snapshot and its directory again before it forgets entries the snapshot covers.

fsync calls are counted by wrapping ``os.fsync``/``os.fdatasync``/``os.pwritev``/
``os.replace``/``os.rename`` (LMDB's own fsyncs happen in C and are covered by its flags).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.serializer import Serializer

from coordinator.audit.log import AuditLog
from coordinator.replication import raft_patch  # noqa: F401 (installs the durable rename)
from coordinator.replication.journal import LmdbJournal
from participant_sdk.checkpoints import LmdbCheckpointStore, checkpoints_dir
from participant_sdk.storage.effect_records import LmdbEffectBacking, effects_dir
from participant_sdk.storage.kv import Names
from participant_sdk.storage.logged import LoggedLmdbKv
from participant_sdk.storage.offline import read_audit_offline
from participant_sdk.store import LmdbStore
from participant_sdk.wal import WriteAheadLog

Event = tuple[str, ...]


class DiskCalls:
    """The sync, write and rename calls made while installed, in order, each with the
    path it concerns; ``mark`` adds the point where the caller acknowledged."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def mark(self, what: str) -> None:
        self.events.append(("ack", what))

    def clear(self) -> None:
        self.events.clear()

    def of(self, *kinds: str) -> list[Event]:
        return [event for event in self.events if event[0] in kinds]


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def disk_calls(monkeypatch: pytest.MonkeyPatch) -> DiskCalls:
    calls = DiskCalls()

    def by_fd(kind: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fd: int, *args: Any) -> Any:
            result = real(fd, *args)
            calls.events.append((kind, _fd_path(fd)))
            return result

        return wrapper

    def by_paths(kind: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(source: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            result = real(source, target, *args, **kwargs)
            calls.events.append((kind, os.fspath(source), os.fspath(target)))
            return result

        return wrapper

    for name in ("fsync", "fdatasync", "pwritev"):
        monkeypatch.setattr(os, name, by_fd(name, getattr(os, name)))
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, by_paths("rename", getattr(os, name)))
    return calls


# -- LMDB environments ---------------------------------------------------------------


def _participant_store(root: Path) -> tuple[lmdb.Environment, Callable[[], None]]:
    store = LmdbStore(root / "p1", "p1")
    return store.kv.env, store.close  # type: ignore[attr-defined]


def _checkpoint_store(root: Path) -> tuple[lmdb.Environment, Callable[[], None]]:
    store = LmdbCheckpointStore(checkpoints_dir(root / "p1"))
    return store.kv.env, store.close  # type: ignore[attr-defined]


def _effect_log(root: Path) -> tuple[lmdb.Environment, Callable[[], None]]:
    backing = LmdbEffectBacking(effects_dir(root / "p1"))
    return backing.kv.env, backing.close  # type: ignore[attr-defined]


def _raft_journal(root: Path) -> tuple[lmdb.Environment, Callable[[], None]]:
    journal = _journal(root)
    return journal._env, journal._destroy


def _audit_log(root: Path) -> tuple[lmdb.Environment, Callable[[], None]]:
    log = AuditLog(root / "audit", node_id="n0")
    return log._env, log.close


DURABLE_ENVS = {
    "participant store": _participant_store,
    "checkpoint store": _checkpoint_store,
    "effect log": _effect_log,
    "raft journal": _raft_journal,
    "coordinator audit log": _audit_log,
}


@pytest.mark.parametrize("opener", DURABLE_ENVS.values(), ids=DURABLE_ENVS.keys())
def test_every_durable_lmdb_env_syncs_data_and_meta_pages(
    tmp_path: Path, opener: Callable[[Path], tuple[lmdb.Environment, Callable[[], None]]]
) -> None:
    env, close = opener(tmp_path)
    try:
        flags = env.flags()
    finally:
        close()
    assert not flags["readonly"]
    assert flags["sync"], "commits would return before the data pages are on disk"
    assert flags["metasync"], "a power cut could undo the last acknowledged commit"
    assert not flags["map_async"], "flushes of a writable map would not wait"


def test_read_only_openers_write_nothing(tmp_path: Path) -> None:
    """Read-only openers (inspection beside a writer, offline tools) may open with any
    sync flags: LMDB refuses every write through them."""
    data_dir = tmp_path / "p1"
    for opener in (_participant_store, _checkpoint_store, _effect_log):
        opener(tmp_path)[1]()
    AuditLog(tmp_path / "audit", node_id="n0").close()

    checkpoints = LmdbCheckpointStore(checkpoints_dir(data_dir), readonly=True)
    effects = LmdbEffectBacking(effects_dir(data_dir), readonly=True)
    audit = AuditLog(tmp_path / "audit", readonly=True)
    try:
        for env in (checkpoints.kv.env, effects.kv.env, audit._env):  # type: ignore[attr-defined]
            assert env.flags()["readonly"]
    finally:
        checkpoints.close()
        effects.close()
        audit.close()
    read_audit_offline(data_dir)  # opens LmdbKv(readonly=True, lmdb_lock=False)


# -- the participant's write-ahead log ------------------------------------------------


def _logged_kv(path: Path, log_size_bytes: int = 1 << 16) -> LoggedLmdbKv:
    return LoggedLmdbKv(
        path,
        ("meta", "rows"),
        Names(what=f"store {path}", error=RuntimeError),
        map_size_bytes=1 << 22,
        log_size_bytes=log_size_bytes,
    )


def test_a_new_log_file_is_synced_before_and_after_it_is_renamed_in(
    tmp_path: Path, disk_calls: DiskCalls
) -> None:
    path = tmp_path / "wal"
    log = WriteAheadLog(path, 4096, epoch=0)
    disk_calls.mark("open")
    log.close()
    assert disk_calls.of("fsync", "rename", "ack") == [
        ("fsync", str(tmp_path / "wal.new")),
        ("rename", str(tmp_path / "wal.new"), str(path)),
        ("fsync", str(tmp_path)),
        ("ack", "open"),
    ]


def test_a_logged_write_is_flushed_to_the_log_before_it_returns(
    tmp_path: Path, disk_calls: DiskCalls
) -> None:
    kv = _logged_kv(tmp_path / "store")
    wal = str(tmp_path / "store" / "wal")
    try:
        for n in range(3):
            disk_calls.clear()
            with kv.write() as tx:
                tx.put("rows", b"k%d" % n, b"v")
            disk_calls.mark(f"write {n}")
            assert disk_calls.events == [
                ("pwritev", wal),
                ("fdatasync", wal),
                ("ack", f"write {n}"),
            ]
    finally:
        kv.close()


def test_the_log_is_trimmed_only_once_lmdb_holds_what_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = _logged_kv(tmp_path / "store", log_size_bytes=256)
    assert kv.log is not None
    assert kv.env.flags()["sync"] and kv.env.flags()["metasync"]
    acknowledged: list[bytes] = []
    at_trim: list[tuple[int, int | None, set[bytes], list[bytes]]] = []
    reset = kv.log.reset

    def checked_reset(epoch: int) -> None:
        with kv.env.begin() as txn:
            raw = txn.get(b"wal_epoch", db=kv.dbs["meta"])
            committed = {bytes(key) for key, _ in txn.cursor(db=kv.dbs["rows"])}
        committed_epoch = None if raw is None else int(bytes(raw))
        at_trim.append((epoch, committed_epoch, committed, list(acknowledged)))
        reset(epoch)

    monkeypatch.setattr(kv.log, "reset", checked_reset)
    try:
        for n in range(20):  # ~40 bytes a record: the log fills several times
            with kv.write() as tx:
                tx.put("rows", b"key-%02d" % n, b"value")
            acknowledged.append(b"key-%02d" % n)
    finally:
        kv.close()
    assert len(at_trim) >= 2, "the log never filled: the test proves nothing"
    for epoch, committed_epoch, committed, acknowledged_before in at_trim:
        assert committed_epoch == epoch, "trimmed before LMDB committed the new epoch"
        # Everything acknowledged so far, and the write that found the log full.
        assert set(acknowledged_before) < committed, "trimmed before LMDB held the log's writes"
        assert len(committed) == len(acknowledged_before) + 1


# -- the Raft snapshot ------------------------------------------------------------------


def _journal(root: Path) -> LmdbJournal:
    return LmdbJournal(
        root / "journal",
        identity={"node_id": "n0", "members": ["n0"]},
        dump_path=root / "snapshot",
        map_bytes=1 << 22,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[LmdbJournal]:
    journal = _journal(tmp_path)
    for index in range(1, 11):
        journal.add(b"command", index, 1)
    journal.flush()
    try:
        yield journal
    finally:
        journal._destroy()


@pytest.mark.parametrize("forget", ["compaction", "installed snapshot"])
def test_the_journal_syncs_the_snapshot_before_it_forgets_entries(
    tmp_path: Path, journal: LmdbJournal, disk_calls: DiskCalls, forget: str
) -> None:
    (tmp_path / "snapshot").write_bytes(b"a snapshot pysyncobj wrote")
    disk_calls.clear()
    if forget == "compaction":
        journal.deleteEntriesTo(5)
    else:
        journal.clear()
    disk_calls.mark("entries queued for removal")
    journal.flush()
    assert disk_calls.of("fsync", "ack") == [
        ("fsync", str(tmp_path / "snapshot")),
        ("fsync", str(tmp_path)),
        ("ack", "entries queued for removal"),
    ]


def _serializer(dump: Path) -> Serializer:
    """pysyncobj's serializer as the node configures it: a file, no fork, no custom
    serializer (coordinator/replication/node.py)."""
    return Serializer(str(dump), 1 << 16, False, None, None, None)


def test_a_written_snapshot_is_synced_before_the_serializer_reports_success(
    tmp_path: Path, disk_calls: DiskCalls
) -> None:
    dump = tmp_path / "snapshot"
    serializer = _serializer(dump)
    serializer.serialize(("state", ("c", 10, 1), ("c", 9, 1), {}), 10)
    status, _ = serializer.checkSerializing()
    disk_calls.mark("serialized" if status == SERIALIZER_STATE.SUCCESS else f"status {status}")
    assert dump.exists()
    assert disk_calls.of("fsync", "rename", "ack") == [
        ("fsync", str(tmp_path / "snapshot.tmp")),
        ("rename", str(tmp_path / "snapshot.tmp"), str(dump)),
        ("fsync", str(tmp_path)),
        ("ack", "serialized"),
    ]


def test_a_received_snapshot_is_synced_before_it_is_taken(
    tmp_path: Path, disk_calls: DiskCalls
) -> None:
    dump = tmp_path / "snapshot"
    serializer = _serializer(dump)
    assert serializer.setTransmissionData((b"first part, ", True, False)) is False
    done = serializer.setTransmissionData((b"last part", False, True))
    disk_calls.mark(f"received {done}")
    assert dump.read_bytes() == b"first part, last part"
    assert disk_calls.of("fsync", "rename", "ack") == [
        ("fsync", str(tmp_path / "snapshot.1.tmp")),
        ("rename", str(tmp_path / "snapshot.1.tmp"), str(dump)),
        ("fsync", str(tmp_path)),
        ("ack", "received True"),
    ]
