#!/usr/bin/env python3
"""Time a snapshot as the raft thread writes it and as a restarted node reads it.

    .venv/bin/python scripts/bench_snapshot.py [--rounds 10000 50000] [--repeat 5]

For each count, a ``CoordinatorState`` holding that many retained rounds (finished
two-participant transactions, each with two votes and two acknowledgements) is written
through pysyncobj's own serializer, with the patches of
coordinator/replication/raft_patch.py, into a temporary file (pickle, gzip, fsync,
rename: what blocks the raft thread at a log compaction) and read back through the
journal's start check (coordinator/replication/journal.py). Prints the best of
``--repeat`` runs of each, in ms, and the file's size. Figures depend on what else runs
on the machine: report the load next to them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.serializer import Serializer

import coordinator.replication.raft_patch  # noqa: F401  (the serializer's patches)
from coordinator.core.entries import Ack, BeginTxn, RecordAcks, RecordVotes, RequestCommit, Vote
from coordinator.core.limits import Limits
from coordinator.core.state import CoordinatorState
from coordinator.replication import journal


def retained(count: int) -> CoordinatorState:
    state = CoordinatorState(
        Limits(rounds_inflight_max=count + 1, rounds_inflight_per_caller_max=count + 1)
    )
    for i in range(count):
        txn = f"txn-{i:08d}-{'a' * 16}"
        parts = ("inventory", "payments")
        for entry in (
            BeginTxn(
                txn_id=txn, session_id="s-1", participants=parts, timeout_ms=5000, now_ms=1000
            ),
            RequestCommit(txn_id=txn, now_ms=1001),
            RecordVotes(
                votes=tuple(Vote(round_id=txn, participant_id=p, yes=True) for p in parts),
                now_ms=1001,
            ),
            RecordAcks(acks=tuple(Ack(round_id=txn, participant_id=p) for p in parts), now_ms=1002),
        ):
            applied = state.apply(entry)
            if applied.error is not None:
                raise SystemExit(f"building the state failed: {applied.error}")
    return state


def measure(count: int, repeat: int, directory: Path) -> dict[str, Any]:
    state = retained(count)
    machine = {"state": state, "snapshot_format": journal.SNAPSHOT_FORMAT}
    data = ([{}, machine], (b"", 2, 1), (b"", 1, 1), {})
    path = directory / "snapshot.gz"
    write = read = float("inf")
    for _ in range(repeat):
        serializer = Serializer(str(path), 1 << 20, False, None, None, None)
        started = time.perf_counter()
        serializer.serialize(data, 2)
        write = min(write, time.perf_counter() - started)
        status, _ = serializer.checkSerializing()
        if status != SERIALIZER_STATE.SUCCESS:
            raise SystemExit(f"the serializer failed (state {status})")
        check = journal.LmdbJournal.__new__(journal.LmdbJournal)
        check._dump_path = path
        check._path = directory
        check._log = []
        started = time.perf_counter()
        check._check_snapshot()
        read = min(read, time.perf_counter() - started)
        getattr(journal, "_preloaded", {}).clear()  # (format 1 had none)
    return {
        "rounds": count,
        "write_ms": round(write * 1000, 1),
        "read_ms": round(read * 1000, 1),
        "bytes": path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}, snapshot format {journal.SNAPSHOT_FORMAT}")
    with tempfile.TemporaryDirectory(prefix="concord-snapshot-") as temp:
        for count in args.rounds:
            print(measure(count, args.repeat, Path(temp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
