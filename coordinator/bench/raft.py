"""Applied entries/s of a 3-node ``ReplicatedCoordinator`` cluster, one process per node
on 127.0.0.1: the raw replication ceiling for `concord bench` (and scripts/bench_raft.py).

The node that wins the first election runs each load level for ``seconds``: ``inflight``
proposals are kept outstanding (a new one is proposed from each outcome, whatever it
was, while this node still leads). Latency is proposal to APPLIED on the leader.

Each level also reports how many proposals were not applied, by outcome, and how many
terms passed: a term change under load is an election, and every proposal waiting on
the old leader then comes back NOT_LEADER (pysyncobj DISCARDED/NOT_LEADER) or UNKNOWN.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ELECTION_WAIT_S = 15.0


@dataclass
class RaftLevel:
    inflight: int
    applied_per_s: float
    p50_ms: float
    p99_ms: float
    not_applied: dict[str, int] = field(default_factory=dict)
    terms: int = 0  # term changes during the level (elections)


def _load(node: Any, inflight: int, seconds: float, prefix: str) -> RaftLevel:
    from coordinator.core.entries import BeginTxn
    from coordinator.replication.node import ProposeStatus

    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"applied": 0, "sent": 0, "outstanding": 0}
    not_applied: dict[str, int] = {}
    finished = threading.Event()
    term_before = node.term()
    begun = time.perf_counter()
    stop_at = begun + seconds
    retry: list[int] = []

    def send() -> None:
        with lock:
            counts["sent"] += 1
            number = counts["sent"]
            counts["outstanding"] += 1
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
            counts["outstanding"] -= 1
            if result.status is ProposeStatus.APPLIED:
                counts["applied"] += 1
                latencies.append(now - started)
            else:
                not_applied[result.status.name] = not_applied.get(result.status.name, 0) + 1
            last = counts["outstanding"] == 0
            if now < stop_at and result.status is not ProposeStatus.APPLIED:
                retry.append(1)  # proposed again from the driving thread, not from here
                return
        if now < stop_at and result.status is ProposeStatus.APPLIED:
            send()
        elif last:
            finished.set()

    for _ in range(inflight):
        send()
    # A refusal is answered on the proposing thread: re-propose those from here.
    while time.perf_counter() < stop_at:
        with lock:
            again, retry[:] = len(retry), []
        for _ in range(again):
            if node.is_leader():
                send()
        time.sleep(0.005)
    with lock:
        if counts["outstanding"] == 0:
            finished.set()
    finished.wait(10)  # all outstanding answered (proposal timeout is 5 s)
    elapsed = time.perf_counter() - begun
    latencies.sort()
    return RaftLevel(
        inflight=inflight,
        applied_per_s=counts["applied"] / elapsed,
        p50_ms=1000 * statistics.median(latencies) if latencies else float("nan"),
        p99_ms=1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        not_applied=not_applied,
        terms=node.term() - term_before,
    )


def _node_main(
    node_id: str,
    nodes: Any,
    root: str,
    levels: list[int],
    seconds: float,
    election_ms: tuple[int, int] | None,
    out: Any,
    claimed: Any,
    stop: Any,
) -> None:
    from coordinator.core.limits import Limits
    from coordinator.replication.node import ReplicatedCoordinator, ReplicationConfig

    # The benchmark never finishes a round: allow many open ones.
    limits = Limits(rounds_inflight_max=10_000_000)
    extra = {} if election_ms is None else {"election_timeout_ms": election_ms}
    config = ReplicationConfig(
        node_id=node_id,
        nodes=nodes,
        data_dir=Path(root) / node_id,
        secret="bench",
        limits=limits,
        **extra,
    )
    node = ReplicatedCoordinator(config)
    try:
        deadline = time.monotonic() + ELECTION_WAIT_S
        while time.monotonic() < deadline and not stop.is_set():
            if node.is_leader():
                # Only the first leader drives: one that wins a later election stays idle.
                with claimed.get_lock():
                    mine = claimed.value == 0
                    claimed.value = 1
                if not mine:
                    break
                time.sleep(0.3)  # let followers connect and the no-op apply
                for level in levels:
                    out.put(_load(node, level, seconds, f"{node_id}-{level}"))
                stop.set()
                break
            time.sleep(0.01)
        stop.wait(120)
    finally:
        node.close()


def run(
    levels: list[int], seconds: float, election_ms: tuple[int, int] | None = None
) -> list[RaftLevel]:
    """Start 3 node processes, measure each level, stop them (by their handles)."""
    from coordinator.replication.node import NodeAddress
    from coordinator.runtime.local_cluster import free_ports

    ports = free_ports(3)
    nodes = tuple(
        NodeAddress(node_id=f"n{i}", raft=f"127.0.0.1:{ports[i]}", grpc="127.0.0.1:0")
        for i in range(3)
    )
    context = mp.get_context("spawn")
    out, stop, claimed = context.Queue(), context.Event(), context.Value("i", 0)
    results = []
    with tempfile.TemporaryDirectory(prefix="concord-bench-raft-") as root:
        processes = [
            context.Process(
                target=_node_main,
                args=(n.node_id, nodes, root, levels, seconds, election_ms, out, claimed, stop),
            )
            for n in nodes
        ]
        for process in processes:
            process.start()
        try:
            for _ in levels:
                results.append(out.get(timeout=ELECTION_WAIT_S + 20 + seconds * 2))
        finally:
            stop.set()
            for process in processes:
                process.join(30)
                if process.is_alive():
                    process.kill()
                    process.join()
    return results
