"""The write-ahead log in front of the LMDB checkpoint store (participant_sdk/wal.py),
and the store's use of it: what was acknowledged survives a reopen, what a crash tore
or an older epoch left is never read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from participant_sdk.checkpoints import (
    CheckpointError,
    CheckpointLimits,
    CheckpointPolicy,
    LmdbCheckpointStore,
)
from participant_sdk.wal import LogError, WriteAheadLog

SIZE = 4096


def reopened(path: Path, epoch: int, size: int = SIZE) -> list[bytes]:
    log = WriteAheadLog(path, size, epoch)
    try:
        return log.replay()
    finally:
        log.close()


def test_appended_records_replay_in_order(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path / "wal", SIZE, epoch=3)
    bodies = [b"a", b"", b"c" * 100]
    assert all(log.append(body) for body in bodies)
    log.close()
    assert (tmp_path / "wal").stat().st_size == SIZE  # preallocated, never grows
    assert reopened(tmp_path / "wal", 3) == bodies


def test_appends_after_replay_go_after_the_replayed_records(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path / "wal", SIZE, epoch=1)
    log.append(b"first")
    log.close()
    log = WriteAheadLog(tmp_path / "wal", SIZE, epoch=1)
    assert log.replay() == [b"first"]
    log.append(b"second")
    log.close()
    assert reopened(tmp_path / "wal", 1) == [b"first", b"second"]


def test_a_torn_last_record_is_not_read(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path / "wal", SIZE, epoch=1)
    log.append(b"kept")
    offset = log.used_bytes
    log.append(b"torn" * 10)
    log.close()
    with open(tmp_path / "wal", "r+b") as file:  # the crash wrote half the body
        file.seek(offset + 30)
        file.write(b"\0" * 10)
    assert reopened(tmp_path / "wal", 1) == [b"kept"]


def test_records_of_an_older_epoch_are_not_read(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path / "wal", SIZE, epoch=1)
    for body in (b"old-1", b"old-2", b"old-3"):
        log.append(body)
    log.reset(2)  # the owner moved them out and recorded epoch 2
    log.append(b"new")  # overwrites old-1 only: old-2, old-3 stay in the file
    log.close()
    assert reopened(tmp_path / "wal", 2) == [b"new"]
    assert reopened(tmp_path / "wal", 3) == []


def test_a_record_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path / "wal", 100, epoch=1)
    assert log.append(b"x" * 50)
    assert not log.append(b"x" * 50)
    assert log.used_bytes == 70
    log.reset(2)
    assert log.append(b"x" * 50)
    log.close()


def test_reset_replaces_a_file_of_another_size(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path / "wal", SIZE, epoch=1)
    log.append(b"a")
    log.close()
    log = WriteAheadLog(tmp_path / "wal", 2 * SIZE, epoch=1)
    assert log.replay() == [b"a"]  # read at the old size first
    log.reset(2)
    assert (tmp_path / "wal").stat().st_size == 2 * SIZE
    assert log.append(b"b")
    log.close()
    assert reopened(tmp_path / "wal", 2, 2 * SIZE) == [b"b"]


def test_readonly_log_reads_but_never_writes(tmp_path: Path) -> None:
    assert WriteAheadLog(tmp_path / "none", SIZE, epoch=0, readonly=True).replay() == []
    WriteAheadLog(tmp_path / "wal", SIZE, epoch=1).append(b"a")
    reader = WriteAheadLog(tmp_path / "wal", SIZE, epoch=1, readonly=True)
    assert reader.replay() == [b"a"]
    with pytest.raises(LogError, match="read-only"):
        reader.append(b"b")
    reader.close()


# ------------------------------------------------------------------ the store


def state(i: int) -> dict[str, Any]:
    return {"step": i, "notes": [f"note {j}" for j in range(i % 5)], "text": "t" * 200}


def open_store(path: Path, wal_size_bytes: int = 2048) -> LmdbCheckpointStore:
    return LmdbCheckpointStore(
        path,
        CheckpointPolicy(full_every_n=4, keep_last_n=8),
        CheckpointLimits(wal_size_bytes=wal_size_bytes),
    )


def test_saves_survive_reopen_across_many_log_moves(tmp_path: Path) -> None:
    store = open_store(tmp_path / "cps")
    epochs = set()
    for i in range(1, 60):
        store.save(state(i), label="x" if i == 5 else "")
        epochs.add(store.kv.log.epoch)  # type: ignore[attr-defined]
    store.close()
    assert len(epochs) > 5  # the log filled and moved into LMDB again and again
    again = open_store(tmp_path / "cps")
    try:
        assert again.generation == 59
        assert again.verify() == []
        assert [c.checkpoint_id for c in again.list()] == ["cp-5"] + [
            f"cp-{i}" for i in range(52, 60)
        ]
        for info in again.list():
            assert again.load(info.checkpoint_id).state == state(info.generation)
    finally:
        again.close()


def test_a_save_only_in_the_log_is_read_by_a_reader_and_after_reopen(tmp_path: Path) -> None:
    # A reader beside a running writer is another process: see test_rollback_cli.
    store = open_store(tmp_path / "cps", wal_size_bytes=1 << 20)
    store.save(state(1))
    store.close()  # the save stays in the log
    reader = LmdbCheckpointStore(tmp_path / "cps", readonly=True)
    try:
        assert reader.load("cp-1").state == state(1)
    finally:
        reader.close()
    again = open_store(tmp_path / "cps")
    try:
        assert again.load("cp-1").state == state(1)
    finally:
        again.close()


def test_a_torn_last_save_is_gone_and_the_rest_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path / "cps", wal_size_bytes=1 << 20)
    store.save(state(1))
    torn_at = store.kv.log.used_bytes  # type: ignore[attr-defined]
    store.save(state(2))
    store.close()
    with open(tmp_path / "cps" / "wal", "r+b") as file:
        file.seek(torn_at + 40)
        file.write(b"\xff" * 8)
    again = open_store(tmp_path / "cps")
    try:
        assert again.generation == 1
        assert again.load("cp-1").state == state(1)
        assert again.save(state(3)).generation == 2
    finally:
        again.close()


def test_a_failed_log_write_stops_writes_until_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path / "cps", wal_size_bytes=1 << 20)
    store.save(state(1))

    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(CheckpointError, match=r"writing its log failed.*reopen"):
        store.save(state(2))
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="reopen"):
        store.save(state(3))
    assert store.load("cp-1").state == state(1)  # reads go on
    store.close()
    again = open_store(tmp_path / "cps")
    try:
        assert again.load("cp-1").state == state(1)
        # The failed save was never acknowledged; it may or may not be there.
        assert again.generation in (1, 2)
    finally:
        again.close()


def test_a_save_bigger_than_the_log_goes_to_lmdb(tmp_path: Path) -> None:
    store = open_store(tmp_path / "cps", wal_size_bytes=512)
    store.save({"big": "b" * 4000})
    assert store.kv.log.used_bytes == 0  # type: ignore[attr-defined]
    store.close()
    again = open_store(tmp_path / "cps", wal_size_bytes=512)
    try:
        assert again.load("cp-1").state == {"big": "b" * 4000}
    finally:
        again.close()


def test_a_damaged_record_with_records_after_it_is_refused_not_dropped(tmp_path: Path) -> None:
    """A flipped bit in the middle is no torn append: reading past it would silently
    lose the acknowledged records after it."""
    log = WriteAheadLog(tmp_path / "wal", SIZE, epoch=2)
    log.append(b"first")
    damaged_at = log.used_bytes
    log.append(b"second")
    log.append(b"third")
    assert log.check() == []
    with open(tmp_path / "wal", "r+b") as file:
        file.seek(damaged_at + 20 + 2)  # a byte of "second"'s body (20-byte header)
        file.write(b"X")
    assert log.check() == [
        f"log {tmp_path / 'wal'}: the record at offset {damaged_at} is damaged (checksum)"
    ]
    log.close()
    with pytest.raises(
        LogError, match=f"record at offset {damaged_at} is damaged and acknowledged"
    ):
        reopened(tmp_path / "wal", 2)


def test_a_damaged_log_stops_the_checkpoint_store_from_opening(tmp_path: Path) -> None:
    path = tmp_path / "cp"
    store = LmdbCheckpointStore(path)
    for i in range(3):
        store.save({"n": i}, label=f"l{i}")
    assert store.verify() == []
    store.close()
    wal = next(p for p in path.iterdir() if p.name.endswith("wal"))
    raw = bytearray(wal.read_bytes())
    raw[20 + 3] ^= 0xFF  # the first record's body (20-byte header)
    wal.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is damaged and acknowledged records follow it"):
        LmdbCheckpointStore(path)


def test_verify_reports_a_damaged_log_record(tmp_path: Path) -> None:
    path = tmp_path / "cp"
    store = LmdbCheckpointStore(path)
    try:
        store.save({"n": 1}, label="one")
        wal = next(p for p in path.iterdir() if p.name.endswith("wal"))
        with open(wal, "r+b") as file:
            file.seek(20 + 3)
            byte = file.read(1)
            file.seek(20 + 3)
            file.write(bytes([byte[0] ^ 0xFF]))
        assert any("is damaged (checksum)" in problem for problem in store.verify())
    finally:
        store.close()
