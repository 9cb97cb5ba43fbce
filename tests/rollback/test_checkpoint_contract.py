"""One contract for every ``CheckpointStore`` backend (eventsourcing style).

``CheckpointContract`` holds the tests; each backend subclasses it with ``make``.
LMDB-only behaviour (reopen, read-only, locking) follows at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb
import pytest

from participant_sdk.checkpoints import (
    CheckpointCorrupt,
    Checkpointer,
    CheckpointError,
    CheckpointLimitError,
    CheckpointLimits,
    CheckpointNotFound,
    CheckpointPolicy,
    CheckpointStore,
    LmdbCheckpointStore,
    MemoryCheckpointStore,
    When,
    should_checkpoint,
)
from participant_sdk.replay import Replay


def flip_record_byte(store: CheckpointStore, generation: int) -> None:
    """Damage a record from outside the checkpoint store: flip its last byte in the
    key-value store under it, without telling the store (nor its cache)."""
    key = generation.to_bytes(8, "big")
    with store.kv.write() as tx:
        raw = tx.get("records", key)
        assert raw is not None, f"no record of generation {generation}"
        tx.put("records", key, raw[:-1] + bytes([raw[-1] ^ 0xFF]))


def agent_state(step: int, blob: int = 200) -> dict[str, Any]:
    return {
        "plan": [f"step-{i}" for i in range(step % 5)],
        "memory": {"step": step},
        "notes": "n" * blob,
        "context": "c" * blob,
        "raw": bytes([step % 256]) * 16,
    }


class CheckpointContract:
    def make(self, policy: CheckpointPolicy | None = None, **limits: Any) -> CheckpointStore:
        raise NotImplementedError

    def corrupt(self, store: CheckpointStore, generation: int) -> None:
        """Damage a record and let the store find it (``verify`` drops it from the
        cache): from now on every read of it sees the damage."""
        flip_record_byte(store, generation)
        assert any(f"generation {generation}" in p for p in store.verify())

    def damage_behind_the_cache(self, store: CheckpointStore, generation: int) -> None:
        """Flip a record byte on the backend without telling the store."""
        flip_record_byte(store, generation)

    def test_save_and_load_round_trip(self) -> None:
        store = self.make()
        info = store.save(agent_state(1), label="start", metadata={"who": "planner"})
        loaded = store.load(info.checkpoint_id)
        assert loaded.state == agent_state(1)
        assert loaded.info.label == "start" and loaded.info.metadata == {"who": "planner"}
        assert loaded.info.generation == 1 and loaded.info.kind == "full"

    def test_deltas_between_fulls_and_every_checkpoint_restores_exactly(self) -> None:
        store = self.make(CheckpointPolicy(full_every_n=4, keep_last_n=100))
        infos = [store.save(agent_state(i, blob=2000)) for i in range(10)]
        assert [i.kind for i in infos] == ["full", "delta", "delta", "delta"] * 2 + [
            "full",
            "delta",
        ]
        assert infos[1].stored_bytes < infos[0].stored_bytes / 2
        for i, info in enumerate(infos):
            assert store.load(info.checkpoint_id).state == agent_state(i, blob=2000)

    def test_removed_keys_stay_removed(self) -> None:
        store = self.make()
        store.save({"a": 1, "b": 2})
        info = store.save({"a": 1})
        assert store.load(info.checkpoint_id).state == {"a": 1}

    def test_a_value_changing_kind_but_not_bytes_is_in_the_delta(self) -> None:
        store = self.make()
        store.save({"a": b"5", "pad": "p" * 400})
        info = store.save({"a": 5, "pad": "p" * 400})
        assert info.kind == "delta"
        assert store.load(info.checkpoint_id).state == {"a": 5, "pad": "p" * 400}
        info = store.save({"a": "5" * 300, "pad": "p" * 400})  # long text, stored raw
        assert store.save({"a": b"5" * 300, "pad": "p" * 400}).kind == "delta"
        assert store.load(f"cp-{info.generation + 1}").state["a"] == b"5" * 300

    def test_long_and_short_text_round_trip_exactly(self) -> None:
        store = self.make()
        state = {
            "long": "héllo wörld ✓ 😀 " * 40 + "\ud800",  # raw UTF-8, lone surrogate too
            "short": "é\ud800",
            "nested": {"text": "x" * 1000},
        }
        info = store.save(state)
        assert store.load(info.checkpoint_id).state == state
        assert type(store.load(info.checkpoint_id).state["long"]) is str

    def test_loads_return_copies(self) -> None:
        store = self.make()
        info = store.save(agent_state(3))
        first = store.load(info.checkpoint_id).state
        first["plan"].append("mutated")  # type: ignore[attr-defined]
        first["memory"]["step"] = -1
        assert store.load(info.checkpoint_id).state == agent_state(3)
        assert store.latest().state == agent_state(3)  # type: ignore[union-attr]

    def test_cache_serves_verified_records_and_verify_reads_the_disk(self) -> None:
        store = self.make()
        store.save(agent_state(1))
        store.load("cp-1")  # read from disk, verified, cached
        self.damage_behind_the_cache(store, 1)
        assert store.load("cp-1").state == agent_state(1)  # the verified copy
        assert any("generation 1" in p for p in store.verify())
        with pytest.raises(CheckpointCorrupt, match="checksum"):  # now known bad
            store.load("cp-1")

    def test_cache_is_bounded_by_cache_bytes_max(self) -> None:
        store = self.make(CheckpointPolicy(full_every_n=1, keep_last_n=100), cache_bytes_max=4000)
        infos = [store.save(agent_state(i, blob=400)) for i in range(20)]
        for i, info in enumerate(infos):
            assert store.load(info.checkpoint_id).state == agent_state(i, blob=400)
            assert 0 < store.stats()["cache_bytes"] <= 4000

    def test_a_cache_nothing_fits_in_reads_the_disk_every_time(self) -> None:
        store = self.make(cache_bytes_max=1)
        store.save({"a": 1})
        assert store.load("cp-1").state == {"a": 1}
        assert store.stats()["cache_bytes"] == 0
        self.damage_behind_the_cache(store, 1)
        with pytest.raises(CheckpointCorrupt, match="checksum"):
            store.load("cp-1")

    def test_a_large_delta_is_written_full(self) -> None:
        store = self.make(CheckpointPolicy(delta_fraction_max=0.5))
        store.save({"a": "x" * 1000, "b": "y" * 1000})
        assert store.save({"a": "z" * 1000, "b": "w" * 1000}).kind == "full"

    def test_retention_keeps_last_n_and_labelled(self) -> None:
        store = self.make(CheckpointPolicy(full_every_n=3, keep_last_n=3))
        for i in range(20):
            store.save(agent_state(i), label="milestone" if i == 4 else "")
        ids = [i.checkpoint_id for i in store.list()]
        assert ids == ["cp-5", "cp-18", "cp-19", "cp-20"]
        assert store.load("cp-5").state == agent_state(4)
        assert store.stats()["records"] <= 4 * 3  # bounded: chains of visible ones only
        with pytest.raises(CheckpointNotFound):
            store.load("cp-6")

    def test_storage_stays_bounded_over_many_saves(self) -> None:
        store = self.make(CheckpointPolicy(full_every_n=8, keep_last_n=4))
        for i in range(300):
            store.save(agent_state(i))
        assert store.stats()["visible"] == 4
        assert store.stats()["records"] <= 4 + 8

    def test_end_txn_drops_its_unlabelled_checkpoints(self) -> None:
        store = self.make()
        store.save({"a": 0})
        store.save({"a": 1}, txn_id="t1")
        store.save({"a": 2}, txn_id="t1", label="keep")
        store.save({"a": 3}, txn_id="t2")
        assert store.end_txn("t1") == 1
        assert [i.checkpoint_id for i in store.list()] == ["cp-1", "cp-3", "cp-4"]
        assert store.load("cp-3").state == {"a": 2}

    def test_drop_and_unknown_ids(self) -> None:
        store = self.make()
        store.save({"a": 1}, checkpoint_id="mine")
        with pytest.raises(CheckpointError, match="already exists"):
            store.save({"a": 2}, checkpoint_id="mine")
        store.drop("mine")
        with pytest.raises(CheckpointNotFound, match="mine"):
            store.load("mine")

    def test_restore_appends_the_target_state_as_head(self) -> None:
        store = self.make()
        store.save({"a": 1})
        store.save({"a": 2, "b": 3})
        restored = store.restore("cp-1")
        assert restored.state == {"a": 1}
        assert restored.info.restored_from == "cp-1"
        assert restored.info.metadata["restored_generation"] == 1
        latest = store.latest()
        assert latest is not None and latest.state == {"a": 1}
        assert store.save({"a": 5}).generation == 4

    def test_replay_is_saved_with_the_checkpoint(self) -> None:
        store = self.make()
        replay = Replay(42)
        replay.record("llm", "q1", lambda: "answer")
        info = store.save({"a": 1}, replay=replay)
        loaded = store.load(info.checkpoint_id)
        assert loaded.state == {"a": 1}
        assert loaded.replay is not None and loaded.replay.seed == 42
        assert loaded.replay.record("llm", "q1", lambda: "other") == "answer"

    def test_corrupt_record_is_reported_and_never_restored(self) -> None:
        store = self.make(CheckpointPolicy(full_every_n=4))
        for i in range(3):
            store.save(agent_state(i))
        self.corrupt(store, 2)  # a delta: only cp-2 reads it
        assert store.load("cp-1").state == agent_state(0)
        assert store.load("cp-3").state == agent_state(2)
        with pytest.raises(CheckpointCorrupt, match="checksum"):
            store.load("cp-2")
        with pytest.raises(CheckpointCorrupt):
            store.restore("cp-2")
        assert any("generation 2" in p for p in store.verify())
        self.corrupt(store, 1)  # the full base of every delta here
        for checkpoint_id in ("cp-1", "cp-3"):
            with pytest.raises(CheckpointCorrupt, match="checksum"):
                store.load(checkpoint_id)
        with pytest.raises(CheckpointCorrupt):
            store.latest()

    @pytest.mark.parametrize(
        ("limits", "call", "match"),
        [
            ({"state_bytes_max": 100}, lambda s: s.save({"a": "x" * 200}), "state_bytes_max"),
            ({"key_bytes_max": 4}, lambda s: s.save({"toolong": 1}), "key_bytes_max"),
            ({"label_bytes_max": 3}, lambda s: s.save({}, label="long"), "label_bytes_max"),
            (
                {"metadata_bytes_max": 10},
                lambda s: s.save({}, metadata={"k": "v" * 20}),
                "metadata_bytes_max",
            ),
            ({"id_bytes_max": 3}, lambda s: s.save({}, checkpoint_id="abcd"), "id_bytes_max"),
        ],
    )
    def test_limits_raise_named_errors(self, limits: dict[str, int], call: Any, match: str) -> None:
        store = self.make(**limits)
        with pytest.raises(CheckpointLimitError, match=match):
            call(store)
        assert store.list() == []

    def test_checkpoints_max_counts_labelled_ones(self) -> None:
        store = self.make(CheckpointPolicy(keep_last_n=1), checkpoints_max=3)
        for i in range(3):
            store.save({"a": i}, label=f"l{i}")
        with pytest.raises(CheckpointLimitError, match="checkpoints_max"):
            store.save({"a": 9}, label="l9")
        assert len(store.list()) == 3
        store.drop("cp-1")
        store.save({"a": 10})
        assert len(store.list()) == 3

    def test_reserved_keys_and_bad_values_are_refused(self) -> None:
        store = self.make()
        with pytest.raises(ValueError, match="reserved"):
            store.save({"__concord_x": 1})
        with pytest.raises(TypeError, match="JSON"):
            store.save({"a": object()})


class TestMemoryCheckpointStore(CheckpointContract):
    def make(self, policy: CheckpointPolicy | None = None, **limits: Any) -> CheckpointStore:
        return MemoryCheckpointStore(policy, CheckpointLimits(**limits))


class TestLmdbCheckpointStore(CheckpointContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> Any:
        self.path = tmp_path / "cps"
        self.opened: list[CheckpointStore] = []
        yield
        for store in self.opened:
            store.close()

    def make(self, policy: CheckpointPolicy | None = None, **limits: Any) -> CheckpointStore:
        store = LmdbCheckpointStore(self.path, policy, CheckpointLimits(**limits))
        self.opened.append(store)
        return store

    def test_a_store_of_another_format_is_refused(self) -> None:
        store = self.make()
        store.save({"a": 1})
        store.close()
        env = lmdb.open(str(self.path), max_dbs=8)
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format_version", b"1", db=meta)
        env.close()
        with pytest.raises(CheckpointError, match="format"):
            LmdbCheckpointStore(self.path)

    def test_reopen_restores_index_head_and_deltas(self) -> None:
        store = self.make(CheckpointPolicy(full_every_n=4))
        for i in range(6):
            store.save(agent_state(i))
        store.close()
        again = self.make(CheckpointPolicy(full_every_n=4))
        assert again.generation == 6
        assert again.load("cp-3").state == agent_state(2)
        info = again.save(agent_state(7))
        assert info.kind == "delta" and info.generation == 7
        assert again.load(info.checkpoint_id).state == agent_state(7)

    def test_one_writer_then_readonly(self) -> None:
        # Read-only beside a running writer is a separate process: see test_rollback_cli.
        store = self.make()
        store.save({"a": 1})
        with pytest.raises(CheckpointError, match="in use"):
            LmdbCheckpointStore(self.path)
        store.close()
        reader = LmdbCheckpointStore(self.path, readonly=True)
        try:
            assert reader.load("cp-1").state == {"a": 1}
            with pytest.raises(CheckpointError, match="read-only"):
                reader.save({"a": 2})
        finally:
            reader.close()


@pytest.mark.parametrize(
    ("when", "event", "mutations", "expected"),
    [
        ({When.STEP}, When.STEP, 0, True),
        ({When.STEP}, When.TOOL_CALL, 0, False),
        ({When.TOOL_CALL}, When.TOOL_CALL, 0, True),
        ({When.MUTATIONS}, When.MUTATIONS, 9, False),
        ({When.MUTATIONS}, When.MUTATIONS, 10, True),
        ({When.STEP}, When.MUTATIONS, 50, False),
        (set(), When.MANUAL, 0, True),
    ],
)
def test_when_table(when: set[When], event: When, mutations: int, expected: bool) -> None:
    assert should_checkpoint(frozenset(when), event, mutations, 10) is expected


def test_checkpointer_every_n_mutations() -> None:
    store = MemoryCheckpointStore()
    cp = Checkpointer(store, frozenset({When.MUTATIONS}), every_n_mutations=3)
    saved = [cp.mutated({"n": n}) for n in range(7)]
    assert [s is not None for s in saved] == [False, False, True, False, False, True, False]
    assert cp.step({"n": 0}) is None
    assert cp.checkpoint({"n": 1}, label="manual").label == "manual"
