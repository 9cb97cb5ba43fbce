"""Shared helpers for replication tests: free ports, bounded polling, clusters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from coordinator.core.entries import BeginTxn
from coordinator.replication.node import (
    NodeAddress,
    ProposeResult,
    ReplicatedCoordinator,
    ReplicationConfig,
)
from coordinator.runtime.local_cluster import free_ports

T = TypeVar("T")


def free_port() -> int:
    """A free port never handed out before in this process (the process's one
    allocator: the OS may give back a port it just released)."""
    return free_ports(1)[0]


def wait_until(predicate: Callable[[], T], what: str, timeout_s: float = 5.0) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


def addresses(count: int) -> tuple[NodeAddress, ...]:
    return tuple(
        NodeAddress(node_id=f"n{i}", raft=f"127.0.0.1:{free_port()}", grpc="127.0.0.1:0")
        for i in range(count)
    )


def config(
    nodes: tuple[NodeAddress, ...], node_id: str, root: Path, **knobs: Any
) -> ReplicationConfig:
    knobs.setdefault("secret", "test-secret")
    return ReplicationConfig(node_id=node_id, nodes=nodes, data_dir=root / node_id, **knobs)


@contextmanager
def cluster(
    root: Path, nodes: tuple[NodeAddress, ...] | None = None, **knobs: Any
) -> Iterator[dict[str, ReplicatedCoordinator]]:
    nodes = nodes or addresses(3)
    started: dict[str, ReplicatedCoordinator] = {}
    try:
        for node in nodes:
            started[node.node_id] = ReplicatedCoordinator(
                config(nodes, node.node_id, root, **knobs)
            )
        yield started
    finally:
        for coordinator in started.values():
            coordinator.close()


def leader_of(
    nodes: dict[str, ReplicatedCoordinator], timeout_s: float = 5.0
) -> ReplicatedCoordinator:
    def find() -> ReplicatedCoordinator | None:
        leaders = [c for c in nodes.values() if c.is_leader()]
        return leaders[0] if len(leaders) == 1 else None

    return wait_until(find, "exactly one leader", timeout_s)


def begin(txn_id: str, now_ms: int = 1) -> BeginTxn:
    return BeginTxn(
        txn_id=txn_id, session_id="", participants=("p1",), timeout_ms=60_000, now_ms=now_ms
    )


def propose_wait(node: ReplicatedCoordinator, entry: Any, timeout_s: float = 5.0) -> ProposeResult:
    done = threading.Event()
    results: list[ProposeResult] = []

    def callback(result: ProposeResult) -> None:
        results.append(result)
        done.set()

    node.propose(entry, callback)
    if not done.wait(timeout_s):
        raise AssertionError(f"no outcome for {entry!r} within {timeout_s} s")
    return results[0]


def round_ids(node: ReplicatedCoordinator) -> set[str]:
    return node.read(lambda state: set(state.rounds))
