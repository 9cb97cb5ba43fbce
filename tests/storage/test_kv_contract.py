"""One contract for every ``KvStore`` implementation (participant_sdk/storage/): named
tables in read and write transactions, a write committed atomically or not at all.
Each implementation subclasses ``KvContract`` with ``make``; what only one of them
does follows: the memory store's synced/unsynced boundary, LMDB's reopen, lock and
damage refusals, the write-ahead log's replay."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from participant_sdk.storage import (
    KvStore,
    LmdbKv,
    LoggedLmdbKv,
    MemoryKv,
    Names,
    StorageError,
)

TABLES = ("data", "meta")
MAP_SIZE_BYTES = 1 << 22


def names(path: Path | None = None) -> Names:
    return Names(what=f"test store {path}" if path else "test store")


def fill(kv: KvStore) -> None:
    with kv.write() as tx:
        for key in (b"b/2", b"a/1", b"b/1", b"c"):
            tx.put("data", key, key.upper())
        tx.put("meta", b"a/1", b"other table")


class KvContract:
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        self.path = tmp_path / "kv"
        self.opened: list[KvStore] = []
        yield
        for kv in self.opened:
            kv.close()

    def make(self) -> KvStore:
        raise NotImplementedError

    def test_get_put_delete_and_prefix_scan_in_key_order(self) -> None:
        kv = self.make()
        fill(kv)
        with kv.read() as tx:
            assert tx.get("data", b"a/1") == b"A/1" and tx.get("data", b"zz") is None
            assert [k for k, _ in tx.scan("data")] == [b"a/1", b"b/1", b"b/2", b"c"]
            assert list(tx.scan("data", b"b/")) == [(b"b/1", b"B/1"), (b"b/2", b"B/2")]
            assert list(tx.scan("meta")) == [(b"a/1", b"other table")]
        with kv.write() as tx:
            tx.delete("data", b"b/1")
            tx.delete("data", b"never there")
            assert [k for k, _ in tx.scan("data", b"b/")] == [b"b/2"]  # its own writes
        with kv.read() as tx:
            assert tx.get("data", b"b/1") is None

    def test_a_write_that_fails_leaves_nothing_behind(self) -> None:
        kv = self.make()
        fill(kv)
        with pytest.raises(RuntimeError, match="half way"), kv.write() as tx:
            tx.put("data", b"a/1", b"changed")
            tx.delete("data", b"c")
            tx.put("data", b"new", b"x")
            raise RuntimeError("half way")
        with kv.read() as tx:
            assert tx.get("data", b"a/1") == b"A/1" and tx.get("data", b"c") == b"C"
            assert tx.get("data", b"new") is None

    def test_a_read_transaction_refuses_writes(self) -> None:
        kv = self.make()
        with pytest.raises(StorageError, match="write in a read transaction"), kv.read() as tx:
            tx.put("data", b"k", b"v")

    def test_a_closed_store_refuses_use(self) -> None:
        kv = self.make()
        kv.close()
        kv.close()  # idempotent
        with pytest.raises(StorageError, match="is closed"), kv.read():
            pass


class TestMemoryKv(KvContract):
    def make(self) -> KvStore:
        return MemoryKv(TABLES, names())

    def test_commits_stay_unsynced_until_sync_and_a_power_loss_drops_them(self) -> None:
        kv = MemoryKv(TABLES, names(), sync_on_commit=False)
        with kv.write() as tx:
            tx.put("data", b"synced", b"1")
        kv.sync()
        with kv.write() as tx:
            tx.put("data", b"unsynced", b"2")
            tx.delete("data", b"synced")
        assert kv.unsynced
        with kv.read() as tx:  # committed: every reader sees it
            assert list(tx.scan("data")) == [(b"unsynced", b"2")]
        kv.lose_unsynced()
        assert not kv.unsynced
        with kv.read() as tx:
            assert list(tx.scan("data")) == [(b"synced", b"1")]

    def test_by_default_every_commit_is_synced(self) -> None:
        kv = MemoryKv(TABLES, names())
        fill(kv)
        assert not kv.unsynced
        kv.lose_unsynced()
        with kv.read() as tx:
            assert tx.get("data", b"c") == b"C"

    def test_a_reader_keeps_the_state_it_began_with(self) -> None:
        kv = MemoryKv(TABLES, names())
        fill(kv)
        with kv.read() as before:
            with kv.write() as tx:
                tx.put("data", b"c", b"changed")
            assert before.get("data", b"c") == b"C"


class LmdbContract(KvContract):
    def test_what_was_committed_is_there_after_a_reopen(self) -> None:
        kv = self.make()
        fill(kv)
        kv.close()
        again = self.make()
        with again.read() as tx:
            assert [k for k, _ in tx.scan("data")] == [b"a/1", b"b/1", b"b/2", b"c"]

    def test_one_process_writes_a_directory(self) -> None:
        self.make()
        with pytest.raises(StorageError, match=r"kv is in use by another process"):
            self.make()

    def test_an_empty_data_file_is_refused_naming_it(self) -> None:
        self.path.mkdir()
        (self.path / "data.mdb").write_bytes(b"")
        with pytest.raises(StorageError, match=r"kv/data\.mdb is empty") as refused:
            self.make()
        assert "\n" not in str(refused.value)
        assert (self.path / "data.mdb").read_bytes() == b""  # left as found

    def test_a_read_only_opener_reads_and_refuses_writes(self) -> None:
        kv = self.make()
        fill(kv)
        kv.close()
        reader = self.make(readonly=True)
        with reader.read() as tx:
            assert tx.get("data", b"c") == b"C"
        with pytest.raises(StorageError, match="is open read-only"), reader.write():
            pass

    def make(self, readonly: bool = False) -> KvStore:  # type: ignore[override]
        raise NotImplementedError


class TestLmdbKv(LmdbContract):
    def make(self, readonly: bool = False) -> KvStore:  # type: ignore[override]
        kv = LmdbKv(
            self.path, TABLES, names(self.path), map_size_bytes=MAP_SIZE_BYTES, readonly=readonly
        )
        self.opened.append(kv)
        return kv

    def test_a_full_map_is_named_with_its_limit(self) -> None:
        kv = self.make()
        full = f"is full \\(map_size_bytes={MAP_SIZE_BYTES}\\)"
        with pytest.raises(StorageError, match=full), kv.write() as tx:
            for i in range(MAP_SIZE_BYTES // 1000):
                tx.put("data", i.to_bytes(8, "big"), bytes(2000))


class TestLoggedLmdbKv(LmdbContract):
    log_size_bytes = 1 << 16

    def make(self, readonly: bool = False) -> KvStore:  # type: ignore[override]
        kv = LoggedLmdbKv(
            self.path,
            TABLES,
            names(self.path),
            map_size_bytes=MAP_SIZE_BYTES,
            log_size_bytes=self.log_size_bytes,
            readonly=readonly,
        )
        self.opened.append(kv)
        return kv

    def test_a_commit_is_one_log_record_until_the_log_is_full(self) -> None:
        kv = self.make()
        assert isinstance(kv, LoggedLmdbKv) and kv.log is not None
        fill(kv)
        assert kv.log.used_bytes > 0  # in the log, not yet in LMDB
        epoch = kv.log.epoch
        with kv.write() as tx:  # bigger than what is left: the log moves into LMDB
            tx.put("data", b"big", bytes(self.log_size_bytes))
        assert kv.log.used_bytes == 0 and kv.log.epoch == epoch + 1
        with kv.read() as tx:
            assert tx.get("data", b"c") == b"C" and tx.get("data", b"big") is not None

    def test_a_read_only_opener_reads_what_the_log_holds(self) -> None:
        writer = self.make()
        fill(writer)
        assert writer.check() == []
        writer.close()  # what the log holds stays there: only the next writer moves it
        reader = self.make(readonly=True)
        assert isinstance(reader, LoggedLmdbKv) and reader.log is None
        with reader.read() as tx:
            assert tx.get("data", b"b/2") == b"B/2"

    def test_a_scan_merges_lmdb_the_log_and_its_own_writes_in_key_order(self) -> None:
        kv = self.make()
        assert isinstance(kv, LoggedLmdbKv) and kv.log is not None
        model: dict[bytes, bytes] = {}
        rng = random.Random(7)
        keys = [bytes([a, b]) for a in b"abc" for b in b"xyz"]
        for round_ in range(12):
            with kv.write() as tx:
                for _ in range(4):
                    key = rng.choice(keys)
                    if rng.random() < 0.3:
                        tx.delete("data", key)
                        model.pop(key, None)
                    else:
                        tx.put("data", key, b"%d" % round_)
                        model[key] = b"%d" % round_
                tx.put("meta", b"b", b"other table")
                for prefix in (b"", b"a", b"b", b"bz", b"c~"):
                    expected = sorted((k, v) for k, v in model.items() if k.startswith(prefix))
                    assert list(tx.scan("data", prefix)) == expected, (round_, prefix)
            if round_ % 4 == 3:  # the log into LMDB: later rounds have all three layers
                with kv.write() as tx:
                    tx.put("data", b"big", bytes(self.log_size_bytes))
                    model[b"big"] = bytes(self.log_size_bytes)
                assert kv.log.used_bytes == 0
        with kv.read() as tx:
            assert list(tx.scan("data")) == sorted(model.items())

    def test_a_reader_begun_before_the_log_moves_still_reads_what_it_held(self) -> None:
        kv = self.make()
        fill(kv)
        with kv.read() as before:
            with kv.write() as tx:  # bigger than what is left: the log moves into LMDB
                tx.put("data", b"big", bytes(self.log_size_bytes))
            assert before.get("data", b"c") == b"C"
            assert [k for k, _ in before.scan("data")] == [b"a/1", b"b/1", b"b/2", b"c"]
