"""Stable leadership with real processes: a 3-node cluster of `concord serve` left idle
keeps its leader and its term (docs/operations.md, "Elections and heartbeats")."""

from __future__ import annotations

import time

import grpc
import pytest

from coordinator.runtime.local_cluster import LocalCluster
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

IDLE_S = 60.0  # the interval this test is about
LOOK_EVERY_S = 1.0


def _terms(cluster: LocalCluster) -> dict[str, tuple[int, str]]:
    """(term, leader) as each node answers; a node that did not answer in time (a busy
    machine) is left out: a missed read is no term change, the next one counts."""
    terms = {}
    for node_id in cluster.nodes:
        try:
            view = cluster.status(node_id)
        except grpc.RpcError:
            continue
        terms[node_id] = (view.term, view.leader_id)
    return terms


def _every_node(cluster: LocalCluster) -> dict[str, tuple[int, str]] | None:
    views = _terms(cluster)
    return views if len(views) == len(cluster.nodes) else None


def test_an_idle_cluster_keeps_its_leader_and_term_for_a_minute(cluster: LocalCluster) -> None:
    def settled() -> tuple[int, str] | None:
        views = _every_node(cluster)
        agreed = set(views.values()) if views else set()
        return agreed.pop() if len(agreed) == 1 and "" not in next(iter(agreed)) else None

    term, leader = wait_for("every node to name the same leader and term", settled)
    started = time.monotonic()
    while (watched_s := time.monotonic() - started) < IDLE_S:
        now = _terms(cluster)
        assert set(now.values()) == {(term, leader)}, (
            f"after {watched_s:.1f} s of an idle minute the nodes say (term, leader) {now}; "
            f"at the start every node said ({term}, {leader})"
        )
        time.sleep(LOOK_EVERY_S)  # watching an interval, not waiting for an event
    last = wait_for("every node to answer at the end", lambda: _every_node(cluster))
    assert last == dict.fromkeys(cluster.nodes, (term, leader)), f"at the end: {last}"
