"""One contract for the effect log over every backing (memory, LMDB)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.core.types import Decision
from participant_sdk.effects import (
    Effect,
    EffectBacking,
    EffectError,
    EffectLimitError,
    EffectLog,
    EffectStatus,
    LmdbEffectBacking,
    MemoryEffectBacking,
    NotApplied,
    effects_dir,
    escalations,
)


class World:
    """The outside world: a bank that dedupes by idempotency key."""

    def __init__(self) -> None:
        self.charges: dict[str, int] = {}
        self.refunds: dict[str, int] = {}
        self.sent: list[str] = []
        self.refund_failures_left = 0
        self.calls: list[str] = []


class EffectContract:
    def backing(self) -> EffectBacking:
        raise NotImplementedError

    def make(self, world: World, **options: Any) -> EffectLog:
        log = EffectLog(self.backing(), sleep=self.slept.append, **options)
        self.declare(log, world)
        return log

    @pytest.fixture(autouse=True)
    def _sleeps(self) -> None:
        self.slept: list[float] = []

    def declare(self, log: EffectLog, world: World) -> None:
        def refund(effect: Effect) -> None:
            world.calls.append(f"refund {effect.key}")
            if world.refund_failures_left:
                world.refund_failures_left -= 1
                raise ConnectionError("bank down")
            if effect.key in world.charges:
                world.refunds.setdefault(effect.key, world.charges[effect.key])

        def charged(effect: Effect) -> bool:
            return effect.key in world.charges

        @log.compensable(compensate=refund, probe=charged, name="charge")
        def charge(amount: int, *, idempotency_key: str) -> dict[str, int]:
            world.calls.append(f"charge {idempotency_key}")
            if amount < 0:
                raise NotApplied("negative amount refused")
            world.charges.setdefault(idempotency_key, amount)
            return {"charged": amount}

        @log.bufferable(name="email")
        def email(to: str) -> str:
            world.sent.append(to)
            return "sent"

        @log.irreversible(name="wire")
        def wire(amount: int) -> str:
            world.sent.append(f"wire {amount}")
            return "wired"

        self.charge, self.email, self.wire = charge, email, wire

    def test_abort_compensates_in_reverse_order_once(self) -> None:
        world = World()
        log = self.make(world)
        with log.transaction("t1"):
            assert self.charge(10, idempotency_key="a") == {"charged": 10}
            self.charge(20, idempotency_key="b")
        log.on_decision("t1", Decision.ABORT)
        log.on_decision("t1", Decision.ABORT)  # idempotent
        assert world.refunds == {"a": 10, "b": 20}
        assert [c for c in world.calls if c.startswith("refund")] == ["refund b", "refund a"]
        assert {e.status for e in log.effects("t1")} == {EffectStatus.COMPENSATED}

    def test_commit_keeps_compensable_and_runs_buffered(self) -> None:
        world = World()
        log = self.make(world)
        with log.transaction("t1"):
            self.charge(10, idempotency_key="a")
            assert self.email("bob", idempotency_key="m") is None
            assert world.sent == []
        log.on_decision("t1", Decision.COMMIT)
        assert world.sent == ["bob"] and world.refunds == {}
        assert log.get("m").status is EffectStatus.DONE and log.get("m").result == "sent"

    def test_abort_discards_buffered(self) -> None:
        world = World()
        log = self.make(world)
        with log.transaction("t1"):
            self.email("bob", idempotency_key="m")
        log.on_decision("t1", Decision.ABORT)
        assert world.sent == [] and log.get("m").status is EffectStatus.DISCARDED

    def test_irreversible_needs_commit_and_approval(self) -> None:
        world = World()
        log = self.make(world)
        with log.transaction("t1"):
            self.wire(100, idempotency_key="w")
        log.approve("w")
        assert world.sent == []  # approved, not committed
        log.on_decision("t1", Decision.COMMIT)
        assert world.sent == ["wire 100"]
        with log.transaction("t2"):
            self.wire(5, idempotency_key="w2")
        log.on_decision("t2", Decision.COMMIT)
        assert log.get("w2").status is EffectStatus.AWAITING_APPROVAL
        assert log.approve("w2") == "wired" and world.sent[-1] == "wire 5"

    def test_not_applied_is_never_compensated(self) -> None:
        world = World()
        log = self.make(world)
        with log.transaction("t1"), pytest.raises(NotApplied):
            self.charge(-1, idempotency_key="n")
        log.on_decision("t1", Decision.ABORT)
        assert log.get("n").status is EffectStatus.NOT_APPLIED
        assert "refund n" not in world.calls

    def test_same_key_is_deduplicated(self) -> None:
        world = World()
        self.make(world)
        self.charge(10, idempotency_key="a")
        assert self.charge(10, idempotency_key="a") == {"charged": 10}
        assert world.calls == ["charge a"]
        with pytest.raises(EffectError, match="belongs to"):
            self.email("x", idempotency_key="a")

    def test_failing_compensation_retries_with_backoff_then_escalates(self) -> None:
        world = World()
        log = self.make(world, compensation_attempts_max=3, backoff_initial_ms=10)
        with log.transaction("t1"):
            self.charge(10, idempotency_key="a")
            self.charge(20, idempotency_key="b")
        world.refund_failures_left = 3  # b fails 3 times: escalated; a still runs
        log.on_decision("t1", Decision.ABORT)
        assert self.slept == [0.01, 0.02]
        assert [e.key for e in log.escalations()] == ["b"]
        assert "compensation_attempts_max=3" in log.get("b").error
        assert log.status()["escalations"][0]["key"] == "b"
        assert world.refunds == {"a": 10}
        log.resolve("b")
        assert log.escalations() == []

    def test_restore_compensates_effects_from_that_generation(self) -> None:
        world = World()
        log = self.make(world)
        log.generation = 1
        self.charge(1, idempotency_key="before")
        log.generation = 2
        self.charge(2, idempotency_key="after")
        self.wire(3, idempotency_key="held")
        log.on_restore(2)
        assert world.refunds == {"after": 2}
        assert log.get("before").status is EffectStatus.DONE
        assert log.get("held").status is EffectStatus.DISCARDED

    def test_limits(self) -> None:
        world = World()
        self.make(world, open_effects_max=1, args_bytes_max=100)
        with pytest.raises(EffectLimitError, match="args_bytes_max"):
            self.email("x" * 200)
        self.email("a")
        with pytest.raises(EffectLimitError, match="open_effects_max"):
            self.email("b")

    def test_finished_effects_are_forgotten_beyond_the_limit(self) -> None:
        world = World()
        log = self.make(world, finished_effects_kept_max=2)
        for i in range(5):
            with log.transaction(f"t{i}"):
                self.charge(i, idempotency_key=f"k{i}")
            log.on_decision(f"t{i}", Decision.ABORT)
        assert [e.key for e in log.effects()] == ["k3", "k4"]


class TestMemoryEffects(EffectContract):
    def backing(self) -> EffectBacking:
        return MemoryEffectBacking()


class TestLmdbEffects(EffectContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> Any:
        self.data_dir = tmp_path / "p"
        self.backings: list[EffectBacking] = []
        yield
        for b in self.backings:
            b.close()

    def backing(self) -> EffectBacking:
        backing = LmdbEffectBacking(effects_dir(self.data_dir))
        self.backings.append(backing)
        return backing

    def test_unknown_outcome_after_reopen_is_resolved_by_probe(self) -> None:
        world = World()
        log = self.make(world)
        with log.transaction("t1"):
            self.charge(10, idempotency_key="done")
        # A charge whose INTENT is durable but whose process died before DONE:
        intent = log.get("done")
        log.backing.write(
            [
                Effect(
                    **{
                        **{n: getattr(intent, n) for n in Effect.__slots__},
                        "seq": 2,
                        "key": "lost",
                        "status": EffectStatus.INTENT,
                        "result": None,
                    }
                )
            ]
        )
        log.close()
        self.backings.clear()
        again = self.make(world)
        again.on_decision("t1", Decision.ABORT)
        assert again.get("lost").status is EffectStatus.NOT_APPLIED  # probe: never charged
        assert again.get("done").status is EffectStatus.COMPENSATED
        assert "refund lost" not in world.calls

    def test_escalations_read_offline(self) -> None:
        world = World()
        log = self.make(world, compensation_attempts_max=1)
        with log.transaction("t1"):
            self.charge(10, idempotency_key="a")
        world.refund_failures_left = 1
        log.on_decision("t1", Decision.ABORT)
        log.close()
        self.backings.clear()
        assert [e.key for e in escalations(self.data_dir)] == ["a"]

    def test_a_log_written_before_seals_is_sealed_on_open(self) -> None:
        """The previous format (bare records, no format mark) opens as it was, and is
        sealed on the way; a read-only opener reads it without changing it."""
        import lmdb

        world = World()
        log = self.make(world)
        with log.transaction("t1"):
            self.charge(10, idempotency_key="a")
        for backing in self.backings:
            backing.close()
        path = effects_dir(self.data_dir)
        env = lmdb.open(str(path), max_dbs=2)
        with env.begin(write=True) as txn:  # as the previous format left it
            db = env.open_db(b"effects", txn=txn)
            txn.drop(env.open_db(b"meta", txn=txn), delete=True)
            for key, value in list(txn.cursor(db=db)):
                txn.put(bytes(key), bytes(value)[4:], db=db)
        env.close()
        readonly = LmdbEffectBacking(path, readonly=True)
        try:
            assert [e.key for e in readonly.load()] == ["a"]
        finally:
            readonly.close()
        again = self.make(World())
        assert again.get("a").status is EffectStatus.DONE
