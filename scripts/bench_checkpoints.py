#!/usr/bin/env python3
"""Checkpoint save and restore per second, Concord vs LangGraph's SqliteSaver.

Both store the same agent-like states (a message list growing by one message per
step, a plan, variables, and a scratch text making up the size), synced at each
store's default durability, so a save that returned survives power loss on both:

- Concord's LmdbCheckpointStore: each save one checksummed record appended to its
  write-ahead log and flushed with one ``fdatasync`` (the log moves into LMDB, in one
  synced commit, when it is full);
- SqliteSaver on ``sqlite3.connect(path)``: its ``setup()`` turns on WAL, and
  SQLite's default synchronous=FULL fsyncs the WAL at every commit.

Save: one checkpoint per agent step. Restore: read a random one of the last 64
checkpoints back as a state (Concord ``load``: checksums verified on every read from
disk, base + delta; SqliteSaver ``get_tuple`` by checkpoint id). Concord's load is
measured twice: as configured (repeated loads are served from its bounded cache of
verified records) and with the cache off (every load reads and verifies the disk
records: what a first restore after a restart costs). Concord's durable, atomic
``restore`` (it appends the restored state as the new head: one synced write) is
printed too, and the synced-commit floor of each engine (one 1 KiB row per commit,
no checkpoint code around it), which bounds the save rates.

The machine is shared, and other processes' disk writes can change the fsync rate
several-fold within seconds. So the two sides of each comparison run interleaved,
in slices of ``--slice`` seconds, and each rate is count / time summed over its
slices: both see the same background load. Each measurement runs ``--rounds`` times;
the figures are medians, and each ratio is the median of the same-round ratios.

Needs the ``bench`` extra: pip install -e '.[bench]'.
Usage: scripts/bench_checkpoints.py [--seconds S] [--rounds N] [--slice S] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from participant_sdk.checkpoints import CheckpointLimits, CheckpointPolicy, LmdbCheckpointStore

SIZES = {"1 KiB": 1 << 10, "64 KiB": 64 << 10}
KEPT = 64  # checkpoints a restore picks from (both stores)
POLICY = CheckpointPolicy(full_every_n=16, keep_last_n=KEPT)


def agent_state(step: int, size: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"message {i}"} for i in range(step % 20)]
    return {
        "messages": messages,
        "plan": ["search", "book", "pay"],
        "variables": {"step": step, "budget": 1200},
        "scratch": "s" * max(0, size - 400),
    }


def interleaved(
    sides: dict[str, Callable[[int], object]], seconds: float, slice_s: float
) -> dict[str, float]:
    """Calls per second of each side, run in turns of ``slice_s`` for ``seconds`` each.
    A side's argument counts its calls (0, 1, 2, ...) across its slices."""
    counts = dict.fromkeys(sides, 0)
    spent = dict.fromkeys(sides, 0.0)
    order = list(sides)
    turn = 0
    while min(spent.values()) < seconds:
        for name in order if turn % 2 == 0 else order[::-1]:  # neither always goes first
            fn = sides[name]
            start = time.perf_counter()
            deadline = start + min(slice_s, max(seconds - spent[name], 0.0))
            count = counts[name]
            while True:
                fn(count)
                count += 1
                now = time.perf_counter()
                if now >= deadline:
                    break
            counts[name] = count
            spent[name] += now - start
        turn += 1
    return {name: counts[name] / spent[name] for name in sides}


class Concord:
    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self.store = LmdbCheckpointStore(path, POLICY)
        self.rng = random.Random(1)
        self.kept: list[str] = []

    def save(self, i: int) -> None:
        self.store.save(agent_state(i, self.size))

    def load(self, i: int) -> None:
        if not self.kept:
            self.kept = [info.checkpoint_id for info in self.store.list()]
        self.store.load(self.rng.choice(self.kept))

    def latest(self, i: int) -> None:
        self.store.latest()

    def close(self) -> None:
        self.store.close()


class Saver:
    def __init__(self, path: Path, size: int) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver

        self.size = size
        self.conn = sqlite3.connect(str(path), check_same_thread=False)
        self.saver = SqliteSaver(self.conn)
        self.saver.setup()
        self.base = {"configurable": {"thread_id": "agent", "checkpoint_ns": ""}}
        self.config: dict[str, Any] = self.base
        self.ids: list[str] = []
        self.rng = random.Random(1)

    def save(self, i: int) -> None:
        from langgraph.checkpoint.base import empty_checkpoint

        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = agent_state(i, self.size)
        metadata = {"source": "loop", "step": i}
        self.config = self.saver.put(self.config, checkpoint, metadata, {})  # type: ignore[arg-type]
        self.ids.append(checkpoint["id"])
        del self.ids[:-KEPT]

    def load(self, i: int) -> None:
        cid = self.rng.choice(self.ids)
        config = {"configurable": {**self.base["configurable"], "checkpoint_id": cid}}
        assert self.saver.get_tuple(config) is not None  # type: ignore[arg-type]

    def latest(self, i: int) -> None:
        self.saver.get_tuple(self.base)  # type: ignore[arg-type]

    def close(self) -> None:
        self.conn.close()


def bench_size(tmp: Path, size: int, seconds: float, slice_s: float) -> dict[str, float]:
    ours, theirs = Concord(tmp / "concord", size), Saver(tmp / "lg.db", size)
    try:
        save = interleaved({"ours": ours.save, "theirs": theirs.save}, seconds, slice_s)
        load = interleaved({"ours": ours.load, "theirs": theirs.load}, seconds, slice_s)
        latest = interleaved({"ours": ours.latest, "theirs": theirs.latest}, seconds / 2, slice_s)
        ours.close()
        # The same checkpoints with the cache off (no record fits in 1 byte): every
        # load reads and verifies its records (base + delta) from disk.
        cold = LmdbCheckpointStore(tmp / "concord", POLICY, CheckpointLimits(cache_bytes_max=1))
        rng = random.Random(1)
        try:
            uncached = interleaved(
                {"ours": lambda i: cold.load(rng.choice(ours.kept)), "theirs": theirs.load},
                seconds / 2,
                slice_s,
            )
        finally:
            cold.close()
    finally:
        ours.close()
        theirs.close()
    store = LmdbCheckpointStore(tmp / "concord", POLICY)
    try:
        target = store.save(agent_state(0, size), label="target").checkpoint_id  # kept
        durable_restore = interleaved(
            {"ours": lambda i: store.restore(target)}, seconds / 2, slice_s
        )
    finally:
        store.close()
    return {
        "save": save["ours"],
        "their_save": save["theirs"],
        "load": load["ours"],
        "their_load": load["theirs"],
        "uncached": uncached["ours"],
        "their_load_beside_uncached": uncached["theirs"],
        "latest": latest["ours"],
        "their_latest": latest["theirs"],
        "durable_restore": durable_restore["ours"],
    }


def commit_floor(tmp: Path, seconds: float, slice_s: float) -> dict[str, float]:
    """Synced commits per second of each engine alone: one 1 KiB row per commit."""
    value = b"x" * 1024
    env = lmdb.open(str(tmp / "floor-lmdb"), map_size=1 << 30, sync=True, metasync=True)

    def lmdb_commit(i: int) -> None:
        with env.begin(write=True) as txn:
            txn.put(i.to_bytes(8, "big"), value)

    conn = sqlite3.connect(str(tmp / "floor.sqlite"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")  # as SqliteSaver; synchronous stays FULL
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")

    def sqlite_commit(i: int) -> None:
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, value))

    try:
        return interleaved({"lmdb": lmdb_commit, "sqlite": sqlite_commit}, seconds, slice_s)
    finally:
        env.close()
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per side and measurement")
    parser.add_argument("--rounds", type=int, default=3, help="medians of this many rounds")
    parser.add_argument("--slice", type=float, default=0.5, help="seconds per turn")
    parser.add_argument("--dir", default=None, help="where to put the stores (default: tmp)")
    args = parser.parse_args()
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401
    except ImportError:
        print("needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {label: [] for label in SIZES}
    floors = []
    for _ in range(args.rounds):
        # A fresh directory per measurement, deleted right after: SqliteSaver writes
        # ~400 MB in a 64 KiB save run, and its write-back would slow the next one.
        for label, size in SIZES.items():
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                results[label].append(bench_size(Path(tmp), size, args.seconds, args.slice))
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            floors.append(commit_floor(Path(tmp), args.seconds / 2, args.slice))

    def med(rounds: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def ratio(rounds: list[dict[str, float]], ours: str, theirs: str) -> float:
        return statistics.median(r[ours] / r[theirs] for r in rounds)

    print(
        f"medians of {args.rounds} rounds; {args.seconds:g} s per side and measurement, "
        f"interleaved in {args.slice:g} s slices"
    )
    print(
        f"{'state':<7} {'store':<22} {'save/s':>8} {'restore/s':>10} {'uncached/s':>11} "
        f"{'latest/s':>9} {'save x':>7} {'restore x':>10} {'uncached x':>11}"
    )
    for label, rounds in results.items():
        print(
            f"{label:<7} {'Concord LMDB':<22} {med(rounds, 'save'):>8.0f} "
            f"{med(rounds, 'load'):>10.0f} {med(rounds, 'uncached'):>11.0f} "
            f"{med(rounds, 'latest'):>9.0f} {ratio(rounds, 'save', 'their_save'):>6.2f}x "
            f"{ratio(rounds, 'load', 'their_load'):>9.2f}x "
            f"{ratio(rounds, 'uncached', 'their_load_beside_uncached'):>10.2f}x"
        )
        print(
            f"{label:<7} {'LangGraph SqliteSaver':<22} {med(rounds, 'their_save'):>8.0f} "
            f"{med(rounds, 'their_load'):>10.0f} "
            f"{med(rounds, 'their_load_beside_uncached'):>11.0f} "
            f"{med(rounds, 'their_latest'):>9.0f}"
        )
        print(
            f"{label:<7} Concord durable restore (synced, atomic): "
            f"{med(rounds, 'durable_restore'):.0f}/s"
        )
    print(
        f"synced 1 KiB commits alone: LMDB {med(floors, 'lmdb'):.0f}/s, "
        f"SQLite WAL {med(floors, 'sqlite'):.0f}/s, "
        f"LMDB/SQLite {ratio(floors, 'lmdb', 'sqlite'):.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
