"""Applied entries/s and latency of a 3-node ReplicatedCoordinator cluster, one process
per node on 127.0.0.1.

Usage: .venv/bin/python scripts/bench_raft.py [--seconds 3] [--inflight 1 200]

The node that wins the election runs each load level for ``--seconds``: ``inflight``
proposals are kept outstanding (a new one is proposed from each callback). Latency is
proposal to APPLIED on the leader. Numbers are for comparison within one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _load(node: Any, inflight: int, seconds: float, prefix: str) -> dict[str, float]:
    from coordinator.core.entries import BeginTxn
    from coordinator.replication.node import ProposeStatus

    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"applied": 0, "other": 0, "sent": 0}
    stop_at = time.perf_counter() + seconds
    finished = threading.Event()
    outstanding = [0]

    def send() -> None:
        with lock:
            counts["sent"] += 1
            number = counts["sent"]
            outstanding[0] += 1
        started = time.perf_counter()
        entry = BeginTxn(
            txn_id=f"{prefix}-{number}",
            session_id="",
            participants=("p",),
            timeout_ms=600_000,
            now_ms=number,
        )
        node.propose(entry, lambda result: done(result, started))

    def done(result: Any, started: float) -> None:
        now = time.perf_counter()
        with lock:
            outstanding[0] -= 1
            if result.status is ProposeStatus.APPLIED:
                counts["applied"] += 1
                latencies.append(now - started)
            else:
                counts["other"] += 1
                counts[result.status.name] = counts.get(result.status.name, 0) + 1
                counts.setdefault("first_fail_s", now - (stop_at - seconds))
            last = outstanding[0] == 0
        # A refusal is answered on this thread: proposing again from here would recurse.
        if now < stop_at and result.status is ProposeStatus.APPLIED:
            send()
        elif last:
            finished.set()

    begun = time.perf_counter()
    for _ in range(inflight):
        send()
    finished.wait(seconds + 10)  # all outstanding answered (proposal timeout is 5 s)
    elapsed = time.perf_counter() - begun
    latencies.sort()
    return {
        "inflight": inflight,
        "applied_per_s": counts["applied"] / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "not_applied": counts["other"],
        "detail": {k: v for k, v in counts.items() if k not in ("applied", "other", "sent")},
    }


def _node_main(
    node_id: str, nodes: Any, root: str, levels: list[int], seconds: float, out: Any, stop: Any
) -> None:
    # The benchmark never finishes a round: allow many open ones.
    from coordinator.core.limits import Limits
    from coordinator.replication.node import ReplicatedCoordinator, ReplicationConfig

    limits = Limits(rounds_inflight_max=10_000_000)
    config = ReplicationConfig(
        node_id=node_id, nodes=nodes, data_dir=Path(root) / node_id, secret="bench", limits=limits
    )
    node = ReplicatedCoordinator(config)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not stop.is_set():
            if node.is_leader():
                time.sleep(0.3)  # let followers connect and the no-op apply
                for level in levels:
                    out.put(_load(node, level, seconds, f"{node_id}-{level}"))
                stop.set()
                break
            time.sleep(0.01)
        stop.wait(60)
    finally:
        node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 200, 1000])
    args = parser.parse_args()

    from coordinator.replication.node import NodeAddress

    nodes = tuple(
        NodeAddress(node_id=f"n{i}", raft=f"127.0.0.1:{_free_port()}", grpc="127.0.0.1:0")
        for i in range(3)
    )
    context = mp.get_context("spawn")
    out, stop = context.Queue(), context.Event()
    with tempfile.TemporaryDirectory() as root:
        processes = [
            context.Process(
                target=_node_main,
                args=(n.node_id, nodes, root, args.inflight, args.seconds, out, stop),
            )
            for n in nodes
        ]
        for process in processes:
            process.start()
        print(f"{'inflight':>8} {'applied/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'refused':>8}")
        for _ in args.inflight:
            row = out.get(timeout=60 + args.seconds * 2)
            print(
                f"{row['inflight']:>8} {row['applied_per_s']:>10.0f} {row['p50_ms']:>8.2f} "
                f"{row['p99_ms']:>8.2f} {row['not_applied']:>8} {row['detail']}"
            )
        stop.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()


if __name__ == "__main__":
    main()
