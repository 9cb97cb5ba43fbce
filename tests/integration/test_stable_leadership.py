"""Stable leadership with real processes: a 3-node cluster of `concord serve` left idle
keeps its leader and its term (docs/operations.md, "Elections and heartbeats")."""

from __future__ import annotations

import time

import grpc
import pytest

from coordinator.runtime.local_cluster import LocalCluster

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


def test_an_idle_cluster_keeps_its_leader_and_term_for_a_minute(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    first = _terms(cluster)
    term = first[leader][0]
    assert set(first.values()) == {(term, leader)}, f"not settled at the start: {first}"
    started = time.monotonic()
    while (watched_s := time.monotonic() - started) < IDLE_S:
        now = _terms(cluster)
        assert set(now.values()) == {(term, leader)}, (
            f"after {watched_s:.1f} s of an idle minute the nodes say (term, leader) {now}; "
            f"at the start every node said ({term}, {leader})"
        )
        time.sleep(LOOK_EVERY_S)  # watching an interval, not waiting for an event
    last = _terms(cluster)
    assert last == dict.fromkeys(cluster.nodes, (term, leader)), f"at the end: {last}"
