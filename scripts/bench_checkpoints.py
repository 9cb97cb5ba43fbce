#!/usr/bin/env python3
"""Checkpoint save and restore per second, Concord vs LangGraph's SqliteSaver.

Both store the same agent-like states (a message list growing by one message per
step, a plan, variables, and a scratch text making up the size), synced at each
store's default durability, so a save that returned survives power loss on both:

- Concord's LmdbCheckpointStore: one LMDB write transaction per save, ``sync=True,
  metasync=True`` (data pages fdatasync'ed, then the meta page written O_DSYNC);
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

Each measurement runs ``--rounds`` times (the machine is shared); the figures are
medians, and each ratio is the median of the ratios measured in the same round. The
store that runs first alternates between rounds, and each store is deleted as soon as
it is measured: SqliteSaver writes ~400 MB in a 64 KiB save run, and its write-back
would otherwise slow whatever runs next.

Needs the ``bench`` extra: pip install -e '.[bench]'.
Usage: scripts/bench_checkpoints.py [--seconds S] [--rounds N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
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


def agent_state(step: int, size: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"message {i}"} for i in range(step % 20)]
    return {
        "messages": messages,
        "plan": ["search", "book", "pay"],
        "variables": {"step": step, "budget": 1200},
        "scratch": "s" * max(0, size - 400),
    }


def rate(fn: Callable[[int], object], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn(count)
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def bench_concord(path: Path, size: int, seconds: float) -> dict[str, float]:
    policy = CheckpointPolicy(full_every_n=16, keep_last_n=KEPT)
    store = LmdbCheckpointStore(path, policy)
    try:
        save = rate(lambda i: store.save(agent_state(i, size)), seconds)
        kept = [info.checkpoint_id for info in store.list()]
        rng = random.Random(1)
        restore = rate(lambda i: store.load(rng.choice(kept)), seconds)
        latest = rate(lambda i: store.latest(), seconds / 2)
        target = store.save(agent_state(0, size), label="target").checkpoint_id  # kept
        durable_restore = rate(lambda i: store.restore(target), seconds / 2)
        kept = [info.checkpoint_id for info in store.list()][-KEPT:]
    finally:
        store.close()
    # Cache off (no record fits in 1 byte): every load reads and verifies the disk.
    cold = LmdbCheckpointStore(path, policy, CheckpointLimits(cache_bytes_max=1))
    try:
        rng = random.Random(1)
        restore_uncached = rate(lambda i: cold.load(rng.choice(kept)), seconds / 2)
    finally:
        cold.close()
    return {
        "save": save,
        "restore": restore,
        "restore_uncached": restore_uncached,
        "latest": latest,
        "durable_restore": durable_restore,
    }


def bench_sqlite_saver(path: Path, size: int, seconds: float) -> dict[str, float]:
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    base = {"configurable": {"thread_id": "agent", "checkpoint_ns": ""}}
    ids: list[str] = []
    config: dict[str, Any] = base

    def put(i: int) -> None:
        nonlocal config
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = agent_state(i, size)
        config = saver.put(config, checkpoint, {"source": "loop", "step": i}, {})  # type: ignore[arg-type]
        ids.append(checkpoint["id"])

    try:
        save = rate(put, seconds)
        kept = ids[-KEPT:]
        rng = random.Random(1)

        def get(i: int) -> None:
            cid = rng.choice(kept)
            got = saver.get_tuple({"configurable": {**base["configurable"], "checkpoint_id": cid}})
            assert got is not None

        restore = rate(get, seconds)
        latest = rate(lambda i: saver.get_tuple(base), seconds / 2)  # type: ignore[arg-type]
        return {"save": save, "restore": restore, "latest": latest}
    finally:
        conn.close()


def commit_floor(tmp: Path, seconds: float) -> dict[str, float]:
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
        return {"lmdb": rate(lmdb_commit, seconds), "sqlite": rate(sqlite_commit, seconds)}
    finally:
        env.close()
        conn.close()


def median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def ratio(
    ours: list[dict[str, float]], theirs: list[dict[str, float]], key: str, their_key: str = ""
) -> float:
    """Median of same-round ratios: the two stores ran seconds apart, on the same load."""
    pairs = zip(ours, theirs, strict=True)
    return statistics.median(o[key] / t[their_key or key] for o, t in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="medians of this many rounds")
    parser.add_argument("--dir", default=None, help="where to put the stores (default: tmp)")
    args = parser.parse_args()
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401
    except ImportError:
        print("needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    results: dict[str, tuple[list[dict[str, float]], list[dict[str, float]]]] = {
        label: ([], []) for label in SIZES
    }
    floors = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:

        def measured(bench: Callable[[Path], dict[str, float]]) -> dict[str, float]:
            where = Path(tmp) / "run"
            where.mkdir()
            try:
                return bench(where)
            finally:
                shutil.rmtree(where)

        for n in range(args.rounds):
            for label, size in SIZES.items():
                ours, theirs = results[label]
                runs = [
                    (ours, lambda d, s=size: bench_concord(d / "concord", s, args.seconds)),
                    (theirs, lambda d, s=size: bench_sqlite_saver(d / "lg.db", s, args.seconds)),
                ]
                for into, bench in runs if n % 2 == 0 else runs[::-1]:
                    into.append(measured(bench))
            floors.append(measured(lambda d: commit_floor(d, args.seconds / 2)))
    print(f"medians of {args.rounds} rounds, {args.seconds:g} s per measurement")
    print(
        f"{'state':<7} {'store':<22} {'save/s':>8} {'restore/s':>10} {'uncached/s':>11} "
        f"{'latest/s':>9} {'save x':>7} {'restore x':>10} {'uncached x':>11}"
    )
    for label, (ours, theirs) in results.items():
        print(
            f"{label:<7} {'Concord LMDB':<22} {median(ours, 'save'):>8.0f} "
            f"{median(ours, 'restore'):>10.0f} {median(ours, 'restore_uncached'):>11.0f} "
            f"{median(ours, 'latest'):>9.0f} {ratio(ours, theirs, 'save'):>6.2f}x "
            f"{ratio(ours, theirs, 'restore'):>9.2f}x "
            f"{ratio(ours, theirs, 'restore_uncached', 'restore'):>10.2f}x"
        )
        print(
            f"{label:<7} {'LangGraph SqliteSaver':<22} {median(theirs, 'save'):>8.0f} "
            f"{median(theirs, 'restore'):>10.0f} {'':>11} {median(theirs, 'latest'):>9.0f}"
        )
        print(
            f"{label:<7} Concord durable restore (synced, atomic): "
            f"{median(ours, 'durable_restore'):.0f}/s"
        )
    print(
        f"synced 1 KiB commits alone: LMDB {median(floors, 'lmdb'):.0f}/s, "
        f"SQLite WAL {median(floors, 'sqlite'):.0f}/s, "
        f"LMDB/SQLite {ratio(floors, floors, 'lmdb', 'sqlite'):.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
