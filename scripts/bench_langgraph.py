#!/usr/bin/env python3
"""LangGraph checkpoint savers: ConcordSaver vs SqliteSaver (and LMDBSaver from
``langgraph-checkpoint-lmdb`` when it is installed), on the same graph states, synced.

Each saver gets the same calls, as a graph makes them:

- ``put``: one checkpoint per step of one thread, parent chained, with the channels a
  chat agent has: ``messages`` (LangChain messages, one more each step, up to 20),
  ``step``, and ``plan`` and ``scratch`` (a text making up the size), which do not
  change after the first step. ``new_versions`` names the changed channels only, as
  LangGraph does: ConcordSaver stores a value once per version, so it writes only
  ``messages`` and ``step``; SqliteSaver and LMDBSaver store the whole checkpoint,
  channel values included, at every put.
- ``get_tuple``: the thread's latest checkpoint (what a graph reads when it resumes),
  and a random one of the last 64 by id (time travel), each with its pending writes
  and every channel value deserialised. Before the reads every side puts on to the
  same state (the latest checkpoint holds 19 messages and a pending write), however
  many puts its rate allowed. Nothing is written while the reads run, so
  ConcordSaver serves a checkpoint it has read before from its cache of whole tuples
  (one unpickling, valid while the store's commit counter is unchanged; SqliteSaver
  reads SQLite's page cache and decodes every time). The row ``ConcordSaver*`` is
  the same saver's first read after a write: the commit counter moves before each
  read (as any write moves it, without the write's flush), so the read decodes, each
  value from ConcordSaver's cache of decoded values.
- a whole small graph: a 3-node StateGraph (plan, act, answer, each adding a message)
  invoked again and again on one thread: every checkpoint and pending write the
  graph itself makes, and the reads it makes between turns.

Durability is each saver's synced default, so a call that returned survives power
loss on all. What each syncs (counted with ``strace -f -e trace=fdatasync,fsync``):

- ConcordSaver: each ``put`` and ``put_writes`` appends one checksummed record to
  its write-ahead log and flushes it: one ``fdatasync``. When the log (8 MiB) is
  full it moves into LMDB in one synced commit (``sync=True, metasync=True``: an
  ``fdatasync`` of the data, then the meta page written through an ``O_DSYNC``
  descriptor), once per 8 MiB of records.
- SqliteSaver on ``sqlite3.connect(path)``: WAL mode (``setup`` sets it) and SQLite's
  default ``synchronous=FULL``: one ``fdatasync`` of the WAL per commit, and each
  call is one commit; every 1000 WAL pages a checkpoint syncs the WAL and the
  database file.
- LMDBSaver on ``lmdb.open(path)`` (``sync=True``, ``metasync=True``): at every commit
  an ``fdatasync`` of the data pages, then the meta page through ``O_DSYNC``: two
  ordered flushes.

The machine is shared: the sides of each comparison run interleaved in slices, and
each figure is the median over rounds (the method of scripts/bench_checkpoints.py,
whose ``interleaved`` this uses).

Needs the ``bench`` and ``langgraph`` extras: pip install -e '.[bench,langgraph]'
(and ``pip install langgraph-checkpoint-lmdb`` for the third column).
``--cpu-only`` is a diagnosis, not a comparison of durable savers: nothing is flushed
(ConcordSaver's ``fdatasync`` does nothing, SQLite runs ``synchronous=OFF``, LMDB
``sync=False``), so what is left is each saver's CPU per call.

Usage: scripts/bench_langgraph.py [--seconds S] [--rounds N] [--slice S] [--dir DIR]
       [--cpu-only]
"""

from __future__ import annotations

import argparse
import operator
import os
import random
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_checkpoints import interleaved  # type: ignore[import-not-found]

SIZES = {"1 KiB": 1 << 10, "64 KiB": 64 << 10}
KEPT = 64
COLD = "ConcordSaver*"  # the first read after a write (see _after_a_write)


# --cpu-only (a diagnosis, never durable): no saver flushes anything.
UNSYNCED = False


def _savers(tmp: Path) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    from participant_sdk.integrations.langgraph import ConcordSaver

    savers: dict[str, Any] = {
        "ConcordSaver": ConcordSaver(tmp / "concord"),
        "SqliteSaver": SqliteSaver(sqlite3.connect(str(tmp / "lg.db"), check_same_thread=False)),
    }
    savers["SqliteSaver"].setup()
    if UNSYNCED:
        savers["SqliteSaver"].conn.execute("PRAGMA synchronous=OFF")
    try:
        import lmdb
        from langgraph_checkpoint_lmdb import LMDBSaver
    except ImportError:
        return savers
    env = lmdb.open(
        str(tmp / "lmdbsaver"), map_size=4 << 30, max_dbs=4, sync=not UNSYNCED, metasync=True
    )
    savers["LMDBSaver"] = LMDBSaver(env)
    return savers


def _close(saver: Any) -> None:
    if hasattr(saver, "conn"):
        saver.conn.close()
    elif hasattr(saver, "env"):
        saver.env.close()
    else:
        saver.close()


class Steps:
    """One thread of checkpoints, put the way a graph puts them."""

    def __init__(self, saver: Any, size: int) -> None:
        from langchain_core.messages import AIMessage, HumanMessage

        self.saver, self.size = saver, size
        self.messages = [
            HumanMessage(f"message {i}") if i % 2 else AIMessage(f"answer {i}") for i in range(20)
        ]
        self.config: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        self.versions: dict[str, Any] = {}
        self.ids: list[str] = []
        self.rng = random.Random(1)
        self.next = 0  # the step the next put makes

    def put(self, i: int) -> None:
        from langgraph.checkpoint.base import empty_checkpoint

        values = {
            "messages": self.messages[: 1 + i % 20],
            "step": i,
            "plan": ["search", "book", "pay"],
            "scratch": "s" * max(0, self.size - 400),
        }
        changed = list(values) if not self.versions else ["messages", "step"]
        new_versions = {}
        for channel in changed:
            version = self.saver.get_next_version(self.versions.get(channel), None)
            self.versions[channel] = new_versions[channel] = version
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = values
        checkpoint["channel_versions"] = dict(self.versions)
        metadata = {"source": "loop", "step": i, "parents": {}}
        self.config = self.saver.put(self.config, checkpoint, metadata, new_versions)
        if i % 2 == 0:  # a task's writes, pending on the checkpoint
            self.saver.put_writes(self.config, [("messages", self.messages[0])], f"task-{i}")
        self.ids.append(checkpoint["id"])
        del self.ids[:-KEPT]
        self.next = i + 1

    def settle(self) -> None:
        """Put on to the same state on every side before the reads (each side made as
        many puts as its rate allowed): the latest checkpoint is a step i with i % 20 == 18,
        with 19 messages and a pending write, and the 64 before it cover every length."""
        while self.next < KEPT or self.next % 20 != 19:
            self.put(self.next)

    def latest(self, i: int) -> None:
        found = self.saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
        assert found is not None and found.checkpoint["channel_values"]["plan"]

    def by_id(self, i: int) -> None:
        config = {
            "configurable": {
                "thread_id": "t",
                "checkpoint_ns": "",
                "checkpoint_id": self.rng.choice(self.ids),
            }
        }
        assert self.saver.get_tuple(config) is not None


def _after_a_write(saver: Any, read: Callable[[int], None]) -> Callable[[int], None]:
    """``read`` as the first read after a write: the store's commit counter moves
    before each (what any write does, without the write's flush), so the read
    decodes instead of coming from the cache of whole tuples."""

    def first_read(i: int) -> None:
        with saver.kv.lock:
            saver.kv.commits += 1
        read(i)

    return first_read


class Chat(TypedDict):
    messages: Annotated[list[str], operator.add]


def _graph(saver: Any) -> Callable[[int], None]:
    from langgraph.graph import END, START, StateGraph

    builder = StateGraph(Chat)
    builder.add_node("plan", lambda s: {"messages": ["plan"]})
    builder.add_node("act", lambda s: {"messages": ["act"]})
    builder.add_node("answer", lambda s: {"messages": ["answer"]})
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", "answer")
    builder.add_edge("answer", END)
    graph = builder.compile(checkpointer=saver)

    def turn(i: int) -> None:
        # A conversation of 20 turns per thread, then a new thread.
        config = {"configurable": {"thread_id": f"chat-{i // 20}"}}
        graph.invoke({"messages": [f"user {i}"]}, config)

    return turn


def bench_size(tmp: Path, size: int, seconds: float, slice_s: float) -> dict[str, float]:
    savers = _savers(tmp)
    try:
        steps = {name: Steps(saver, size) for name, saver in savers.items()}
        out: dict[str, float] = {}
        for what in ("put", "latest", "by_id"):
            if what == "latest":
                for s in steps.values():
                    s.settle()
            sides = {name: getattr(s, what) for name, s in steps.items()}
            if what != "put":
                sides[COLD] = _after_a_write(savers["ConcordSaver"], sides["ConcordSaver"])
            rates = interleaved(sides, seconds, slice_s)
            out.update({f"{name} {what}": rate for name, rate in rates.items()})
        return out
    finally:
        for saver in savers.values():
            _close(saver)


def bench_graph(tmp: Path, seconds: float, slice_s: float) -> dict[str, float]:
    savers = _savers(tmp)
    try:
        rates = interleaved({n: _graph(s) for n, s in savers.items()}, seconds, slice_s)
        return {f"{name} graph": rate for name, rate in rates.items()}
    finally:
        for saver in savers.values():
            _close(saver)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per side and measurement")
    parser.add_argument("--rounds", type=int, default=3, help="medians of this many rounds")
    parser.add_argument("--slice", type=float, default=0.25, help="seconds per turn")
    parser.add_argument("--dir", default=None, help="where to put the stores (default: tmp)")
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="a diagnosis, NOT durable: no saver flushes (ConcordSaver's fdatasync does "
        "nothing, SQLite synchronous=OFF, LMDB sync=False): what is left is CPU",
    )
    args = parser.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir}: no such directory (create it first)")
    if args.cpu_only:
        global UNSYNCED
        UNSYNCED = True
        os.fdatasync = lambda fd: None  # ConcordSaver's log; LMDB and SQLite flush in C
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401

        import participant_sdk.integrations.langgraph  # noqa: F401
    except ImportError:
        print("needs the bench and langgraph extras: pip install -e '.[bench,langgraph]'")
        return 2
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label in [*SIZES, "graph"]}
    for _ in range(args.rounds):
        for label, size in SIZES.items():
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                rounds[label].append(bench_size(Path(tmp), size, args.seconds, args.slice))
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            rounds["graph"].append(bench_graph(Path(tmp), args.seconds, args.slice))

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[label])

    def ratio(label: str, ours: str, theirs: str) -> str:
        """The median of the same-round ratios, and their range (a shared machine)."""
        each = sorted(r[ours] / r[theirs] for r in rounds[label])
        return f"{statistics.median(each):.2f}x ({each[0]:.2f}-{each[-1]:.2f})"

    names = [k.split(" ")[0] for k in rounds["graph"][0]]
    theirs = [name for name in names if name != "ConcordSaver"]
    print(
        f"medians of {args.rounds} rounds; {args.seconds:g} s per side and measurement, "
        f"interleaved in {args.slice:g} s slices; "
        + ("NOT DURABLE: no saver flushes (--cpu-only)" if UNSYNCED else "all synced")
    )
    print(
        f"{'state':<7} {'saver':<13} {'put/s':>8} {'latest/s':>9} {'by id/s':>8}  "
        "Concord's rate / this saver's: median (range over rounds)"
    )
    print(f"{COLD}: ConcordSaver's first read after a write (no cache of whole tuples)")
    for label in SIZES:
        for name in [*names, COLD]:
            if name == COLD:
                vs = "  ".join(
                    f"{what} {ratio(label, f'{COLD} {what}', f'{other} {what}')} vs {other}"
                    for what in ("latest", "by_id")
                    for other in theirs
                )
                print(
                    f"{label:<7} {name:<13} {'':>8} {med(label, f'{name} latest'):>9.0f} "
                    f"{med(label, f'{name} by_id'):>8.0f}  {vs}"
                )
                continue
            vs = ""
            if name != "ConcordSaver":
                vs = "  ".join(
                    f"{what} {ratio(label, f'ConcordSaver {what}', f'{name} {what}')}"
                    for what in ("put", "latest", "by_id")
                )
            print(
                f"{label:<7} {name:<13} {med(label, f'{name} put'):>8.0f} "
                f"{med(label, f'{name} latest'):>9.0f} {med(label, f'{name} by_id'):>8.0f}  {vs}"
            )
    for name in names:
        vs = ""
        if name != "ConcordSaver":
            vs = f"  Concord {ratio('graph', 'ConcordSaver graph', f'{name} graph')}"
        print(f"3-node graph, {name}: {med('graph', f'{name} graph'):.0f} turns/s{vs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
