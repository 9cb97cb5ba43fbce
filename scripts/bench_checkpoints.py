#!/usr/bin/env python3
"""Checkpoint save and restore per second, Concord vs LangGraph's SqliteSaver.

Both store the same agent-like states (a message list growing by one message per
step, a plan, variables, and a scratch text making up the size), synced at each
store's default durability: Concord's LmdbCheckpointStore (fsync per save) and
SqliteSaver on ``sqlite3.connect(path)`` (SQLite's default rollback journal,
synchronous=FULL). Save: one checkpoint per agent step. Restore: read a random kept
checkpoint back as a state (Concord ``load``: checksums verified, base + deltas;
SqliteSaver ``get_tuple`` by checkpoint id). Concord's durable, atomic ``restore``
(it appends the restored state as the new head: one synced write) is printed too.

Needs the ``bench`` extra: pip install -e '.[bench]'.
Usage: scripts/bench_checkpoints.py [--seconds S] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from participant_sdk.checkpoints import CheckpointPolicy, LmdbCheckpointStore

SIZES = {"1 KiB": 1 << 10, "64 KiB": 64 << 10}


def agent_state(step: int, size: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"message {i}"} for i in range(step % 20)]
    return {
        "messages": messages,
        "plan": ["search", "book", "pay"],
        "variables": {"step": step, "budget": 1200},
        "scratch": "s" * max(0, size - 400),
    }


def rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
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
    store = LmdbCheckpointStore(path, CheckpointPolicy(full_every_n=16, keep_last_n=64))
    try:
        ids: list[str] = []
        save = rate(lambda i: ids.append(store.save(agent_state(i, size)).checkpoint_id), seconds)
        kept = [info.checkpoint_id for info in store.list()]
        rng = random.Random(1)
        restore = rate(lambda i: store.load(rng.choice(kept)), seconds)
        latest = rate(lambda i: store.latest(), seconds / 2)
        target = store.save(agent_state(0, size), label="target").checkpoint_id  # kept
        durable_restore = rate(lambda i: store.restore(target), seconds / 2)
        return {
            "save": save,
            "restore": restore,
            "latest": latest,
            "durable_restore": durable_restore,
        }
    finally:
        store.close()


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
        kept = ids[-64:]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--dir", default=None, help="where to put the stores (default: tmp)")
    args = parser.parse_args()
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401
    except ImportError:
        print("needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(
            f"{'state':<7} {'store':<22} {'save/s':>9} {'restore/s':>10} {'latest/s':>9} "
            f"{'save x':>7} {'restore x':>9}"
        )
        for label, size in SIZES.items():
            ours = bench_concord(Path(tmp) / f"concord-{size}", size, args.seconds)
            theirs = bench_sqlite_saver(Path(tmp) / f"lg-{size}.sqlite", size, args.seconds)
            print(
                f"{label:<7} {'Concord LMDB':<22} {ours['save']:>9.0f} {ours['restore']:>10.0f} "
                f"{ours['latest']:>9.0f} {ours['save'] / theirs['save']:>6.2f}x "
                f"{ours['restore'] / theirs['restore']:>8.2f}x"
            )
            print(
                f"{label:<7} {'LangGraph SqliteSaver':<22} {theirs['save']:>9.0f} "
                f"{theirs['restore']:>10.0f} {theirs['latest']:>9.0f}"
            )
            print(
                f"{label:<7} Concord durable restore (synced, atomic): "
                f"{ours['durable_restore']:.0f}/s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
