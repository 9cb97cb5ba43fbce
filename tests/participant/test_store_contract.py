"""One contract for every ``ParticipantStore`` backend (eventsourcing style).

``StoreContract`` holds the tests; each backend subclasses it with ``make_store``.
LMDB-only behaviour (reopen, ownership, foreign dirs, locking) follows at the end.
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from coordinator.core.types import Kind
from participant_sdk.core import (
    ApplyBranch,
    DiscardBranch,
    DropCheckpoint,
    ForgetRecord,
    HoldBranch,
    LocalState,
    RestoreCheckpoint,
    RoundRecord,
    Step,
    TakeCheckpoint,
    TermRecord,
)
from participant_sdk.isolation import NEVER_WRITTEN, Add, BranchWork, Footprint, Version, Write
from participant_sdk.storage.records import encode_record
from participant_sdk.store import (
    LmdbStore,
    MemoryStore,
    ParticipantStore,
    StoreError,
    StoreLimitError,
    StoreLimits,
)


def prepared(txn_id: str, at: int = 1) -> RoundRecord:
    return RoundRecord(
        round_id=txn_id, kind=Kind.TXN, state=LocalState.PREPARED, voted_yes=True, updated_ms=at
    )


def decided(txn_id: str, state: LocalState, at: int = 2) -> RoundRecord:
    return RoundRecord(round_id=txn_id, kind=Kind.TXN, state=state, voted_yes=True, updated_ms=at)


def hold(
    store: ParticipantStore,
    txn_id: str,
    writes: dict[str, Write],
    reads: tuple[str, ...] = (),
    scans: tuple[str, ...] = (),
) -> None:
    work = BranchWork(
        writes=dict(writes),
        reads={key: NEVER_WRITTEN for key in reads},
        scans=dict.fromkeys(scans, 0),
    )
    store.apply(
        Step(persist=(prepared(txn_id),), actions=(HoldBranch(txn_id=txn_id),)), {txn_id: work}
    )


def commit(store: ParticipantStore, txn_id: str) -> None:
    step = Step(
        persist=(decided(txn_id, LocalState.COMMITTED),), actions=(ApplyBranch(txn_id=txn_id),)
    )
    store.apply(step, {})


class StoreContract:
    limits = StoreLimits(value_bytes_max=64, writes_per_branch_max=3)

    def make_store(self, tmp_path: Path) -> ParticipantStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        store = self.make_store(tmp_path)
        yield store
        store.close()

    def test_a_new_store_is_empty(self, store: ParticipantStore) -> None:
        assert store.load() == ([], 0)
        assert store.items() == []
        assert store.checkpoints() == []

    def test_records_and_term_round_trip(self, store: ParticipantStore) -> None:
        record = prepared("t1", at=7)
        store.apply(Step(persist=(TermRecord(term=3), record)), {})
        assert store.load() == ([record], 3)
        store.apply(Step(persist=(ForgetRecord(round_id="t1"),)), {})
        assert store.load() == ([], 3)

    def test_the_term_never_goes_back(self, store: ParticipantStore) -> None:
        store.apply(Step(persist=(TermRecord(term=5),)), {})
        with pytest.raises(StoreError, match="term would go back"):
            store.apply(Step(persist=(TermRecord(term=4),)), {})
        assert store.load()[1] == 5

    def test_hold_keeps_writes_out_of_state_until_apply(self, store: ParticipantStore) -> None:
        store.apply(Step(), {})  # nothing to do is fine
        hold(store, "t0", {"gone": b"x"})
        commit(store, "t0")
        hold(store, "t1", {"a": b"1", "gone": None})
        assert store.get("a") is None
        assert store.held("t1") == {"a": b"1", "gone": None}
        commit(store, "t1")
        assert store.items() == [("a", b"1")]
        assert store.held("t1") == {}

    def test_discard_drops_held_writes(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"a": b"1"})
        aborted = decided("t1", LocalState.ABORTED)
        store.apply(Step(persist=(aborted,), actions=(DiscardBranch(txn_id="t1"),)), {})
        assert store.held("t1") == {}
        assert store.items() == []
        assert store.load()[0] == [aborted]

    def test_held_branches_do_not_mix(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"a": b"1"})
        hold(store, "t10", {"a": b"10"})
        commit(store, "t1")
        assert store.get("a") == b"1"
        assert store.held("t10") == {"a": b"10"}

    def test_items_by_prefix(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"seat/1": b"a", "seat/2": b"b", "user": b"c"})
        commit(store, "t1")
        assert store.items("seat/") == [("seat/1", b"a"), ("seat/2", b"b")]

    def test_checkpoint_take_restore_drop(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"a": b"1", "b": b"1"})
        commit(store, "t1")
        store.apply(Step(actions=(TakeCheckpoint(checkpoint_id="cp", label="before"),)), {})
        hold(store, "t2", {"a": b"2", "b": None, "c": b"2"})
        commit(store, "t2")
        [info] = store.checkpoints()
        assert (info.checkpoint_id, info.label, info.keys) == ("cp", "before", 2)
        store.apply(Step(actions=(RestoreCheckpoint(checkpoint_id="cp"),)), {})
        assert store.items() == [("a", b"1"), ("b", b"1")]
        store.apply(Step(actions=(DropCheckpoint(checkpoint_id="cp"),)), {})
        assert store.checkpoints() == []
        assert store.checkpoint_items("cp") == []

    def test_a_step_is_all_or_nothing(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"a": b"1"})
        broken = Step(
            persist=(decided("t1", LocalState.COMMITTED), TermRecord(term=9)),
            actions=(ApplyBranch(txn_id="t1"), RestoreCheckpoint(checkpoint_id="missing")),
        )
        with pytest.raises(StoreError, match="missing"):
            store.apply(broken, {})
        assert store.load() == ([prepared("t1")], 0)
        assert store.held("t1") == {"a": b"1"}
        assert store.items() == []

    def test_many_steps_in_one_write(self, store: ParticipantStore) -> None:
        with store.write() as writer:
            writer.apply(
                Step(persist=(prepared("t1"),), actions=(HoldBranch(txn_id="t1"),)),
                {"t1": BranchWork(writes={"a": b"1"})},
            )
            writer.apply(
                Step(
                    persist=(decided("t1", LocalState.COMMITTED),),
                    actions=(ApplyBranch(txn_id="t1"),),
                ),
                {},
            )
            assert writer.get("a") == b"1"  # read through the open write
        assert store.get("a") == b"1"

    def test_value_and_branch_limits(self, store: ParticipantStore) -> None:
        with pytest.raises(StoreLimitError, match="value_bytes_max=64"):
            hold(store, "t1", {"a": b"x" * 65})
        with pytest.raises(StoreLimitError, match="writes_per_branch_max=3"):
            hold(store, "t2", {str(i): b"" for i in range(4)})
        assert store.load() == ([], 0)

    def test_every_committed_write_gets_a_new_version(self, store: ParticipantStore) -> None:
        assert store.get_versioned("a") == (None, NEVER_WRITTEN)
        hold(store, "t1", {"a": b"1", "b": b"1"})
        commit(store, "t1")
        assert store.get_versioned("a") == (b"1", Version(1, "t1"))
        hold(store, "t2", {"a": None})
        commit(store, "t2")
        # a deleted key keeps its version (a tombstone): a read of "absent" is checkable
        assert store.get_versioned("a") == (None, Version(2, "t2"))
        assert store.get_versioned("b") == (b"1", Version(1, "t1"))
        assert store.commit_seq() == 2
        with store.write() as writer:
            assert writer.newest_under("", 1) == ("a", Version(2, "t2"))
            assert writer.newest_under("b", 1) is None

    def test_a_branch_that_only_read_changes_nothing(self, store: ParticipantStore) -> None:
        hold(store, "t1", {}, reads=("a",), scans=("p/",))
        assert store.held_footprints() == {
            "t1": Footprint(reads=frozenset({"a"}), writes={}, scans=frozenset({"p/"}))
        }
        commit(store, "t1")
        assert store.commit_seq() == 0
        assert store.held_footprints() == {}

    def test_adds_apply_to_the_value_committed_at_the_decision(
        self, store: ParticipantStore
    ) -> None:
        hold(store, "t1", {"n": Add(delta=-3, min=0)}, reads=())
        hold(store, "t2", {"n": Add(delta=5)}, reads=("n",))
        assert store.held("t1") == {"n": Add(delta=-3, min=0)}
        footprints = store.held_footprints()
        assert footprints["t2"].reads == frozenset({"n"})
        commit(store, "t2")
        commit(store, "t1")
        assert store.get_versioned("n") == (b"2", Version(2, "t1"))

    def test_tombstones_are_pruned_below_a_horizon(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"a": b"1", "b": b"1"})
        commit(store, "t1")
        hold(store, "t2", {"a": None, "b": None})
        commit(store, "t2")
        hold(store, "t3", {"b": b"3"})
        commit(store, "t3")
        with store.write() as writer:
            assert writer.prune_tombstones(below_seq=2, count_max=10) == 0
            assert writer.prune_tombstones(below_seq=4, count_max=10) == 2
        assert store.get_versioned("a") == (None, NEVER_WRITTEN)
        assert store.get_versioned("b") == (b"3", Version(3, "t3"))  # rewritten: kept

    def test_a_restore_gives_changed_keys_new_versions(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"a": b"1", "b": b"1"})
        commit(store, "t1")
        store.apply(Step(actions=(TakeCheckpoint(checkpoint_id="cp", label=""),)), {})
        hold(store, "t2", {"a": b"2", "c": b"2"})
        commit(store, "t2")
        store.apply(Step(actions=(RestoreCheckpoint(checkpoint_id="cp"),)), {})
        assert store.get_versioned("a") == (b"1", Version(3, "rollback:cp"))
        assert store.get_versioned("b") == (b"1", Version(1, "t1"))
        assert store.get_versioned("c") == (None, Version(3, "rollback:cp"))

    def test_audit_is_a_hash_chain(self, store: ParticipantStore) -> None:
        hold(store, "t1", {"a": b"1"})
        commit(store, "t1")
        store.apply(Step(actions=(TakeCheckpoint(checkpoint_id="cp", label=""),)), {})
        events = [(e.event, e.round_id) for e in store.audit()]
        assert events == [("vote", "t1"), ("decision_applied", "t1"), ("checkpoint_taken", "cp")]
        store.verify_audit()


class TestMemoryStore(StoreContract):
    def make_store(self, tmp_path: Path) -> ParticipantStore:
        return MemoryStore("p1", self.limits)


class TestLmdbStore(StoreContract):
    def make_store(self, tmp_path: Path) -> ParticipantStore:
        return LmdbStore(tmp_path / "data", "p1", self.limits)

    def test_everything_survives_a_reopen(self, tmp_path: Path) -> None:
        store = LmdbStore(tmp_path / "data", "p1")
        hold(store, "t1", {"a": b"1"})
        store.apply(Step(persist=(TermRecord(term=4),)), {})
        store.close()
        again = LmdbStore(tmp_path / "data", "p1")
        try:
            assert again.load() == ([prepared("t1")], 4)
            assert again.held("t1") == {"a": b"1"}
            again.verify_audit()
        finally:
            again.close()

    def test_a_format_1_store_is_upgraded_and_its_keys_read_as_never_written(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "data"
        path.mkdir()
        env = lmdb.open(str(path), max_dbs=20)
        record = encode_record(prepared("t9"))
        tables = {  # as the format-1 SDK wrote them: bare values, no versions
            "meta": {b"participant_id": b"p1", b"format_version": b"1", b"term": b"3"},
            "state": {b"a": b"1"},
            "held": {b"t9\x00b": b"P2"},
            "records": {b"t9": record},
        }
        with env.begin(write=True) as txn:
            for name in ("records", "meta", "state", "held", "checkpoints", "audit", "steps"):
                db = env.open_db(name.encode(), txn=txn)
                for key, value in tables.get(name, {}).items():
                    txn.put(key, value, db=db)
        env.close()
        again = LmdbStore(path, "p1")
        try:
            assert again.get_versioned("a") == (b"1", NEVER_WRITTEN)
            assert again.held("t9") == {"b": b"2"}
            assert again.load() == ([prepared("t9")], 3)
            commit(again, "t9")
            assert again.get_versioned("b") == (b"2", Version(1, "t9"))
        finally:
            again.close()
        reopened = LmdbStore(path, "p1")  # format 2 now: nothing sealed twice
        try:
            assert reopened.items() == [("a", b"1"), ("b", b"2")]
        finally:
            reopened.close()

    def test_a_damaged_value_is_named_never_served(self, tmp_path: Path) -> None:
        store = LmdbStore(tmp_path / "data", "p1")
        hold(store, "t1", {"seat/1": b"alice"})
        commit(store, "t1")
        store.close()
        data = tmp_path / "data" / "data.mdb"
        # one flipped bit in every copy (old pages keep stale ones): "alice" -> "`lice"
        data.write_bytes(data.read_bytes().replace(b"alice", b"`lice"))
        again = LmdbStore(tmp_path / "data", "p1")
        try:
            with pytest.raises(StoreError, match=r"value of 'seat/1' in table 'state' is damaged"):
                again.get("seat/1")
        finally:
            again.close()

    @pytest.mark.parametrize("keep_bytes", [0, 4096, 3 * 4096])
    def test_an_empty_or_truncated_data_file_is_refused_before_it_is_mapped(
        self, tmp_path: Path, keep_bytes: int
    ) -> None:
        store = LmdbStore(tmp_path / "data", "p1")
        for i in range(40):
            hold(store, f"t{i}", {f"k{i}": b"x" * 2000})
            commit(store, f"t{i}")
        store.close()
        data = tmp_path / "data" / "data.mdb"
        with data.open("r+b") as f:
            f.truncate(keep_bytes)
        with pytest.raises(StoreError, match=r"data\.mdb (is empty|is truncated|has no valid)"):
            LmdbStore(tmp_path / "data", "p1")
        assert data.stat().st_size == keep_bytes  # left as it was

    def test_another_participants_dir_is_refused(self, tmp_path: Path) -> None:
        LmdbStore(tmp_path / "data", "p1").close()
        with pytest.raises(StoreError, match=r"belongs to participant 'p1', not 'p2'"):
            LmdbStore(tmp_path / "data", "p2")

    def test_a_foreign_dir_is_refused_and_left_alone(self, tmp_path: Path) -> None:
        foreign = tmp_path / "notes"
        foreign.mkdir()
        (foreign / "todo.txt").write_text("keep me")
        with pytest.raises(StoreError, match=r"notes is not empty and holds no data\.mdb"):
            LmdbStore(foreign, "p1")
        assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"]

    def test_a_corrupt_env_is_refused_and_left_alone(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "data.mdb").write_bytes(b"not lmdb at all" * 1000)
        with pytest.raises(
            StoreError, match=r"bad/data.mdb has no valid LMDB meta page.*move this one aside"
        ):
            LmdbStore(bad, "p1")
        assert (bad / "data.mdb").read_bytes() == b"not lmdb at all" * 1000

    def test_one_process_per_data_dir(self, tmp_path: Path) -> None:
        store = LmdbStore(tmp_path / "data", "p1")
        try:
            with pytest.raises(StoreError, match="in use by another process"):
                LmdbStore(tmp_path / "data", "p1")
        finally:
            store.close()

    def test_a_full_map_names_its_limit(self, tmp_path: Path) -> None:
        limits = StoreLimits(map_size_bytes=256 * 1024, value_bytes_max=1 << 20)
        store = LmdbStore(tmp_path / "data", "p1", limits)
        try:
            with pytest.raises(StoreError, match="map_size_bytes=262144"):
                hold(store, "t1", {"big": b"x" * 400_000})
            assert store.load() == ([], 0)
        finally:
            store.close()


def test_a_data_dir_is_private_to_its_user(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "data", "p1")
    try:
        hold(store, "t1", {"a": b"1"})
    finally:
        store.close()
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert (tmp_path / "data" / name).stat().st_mode & 0o077 == 0, name
