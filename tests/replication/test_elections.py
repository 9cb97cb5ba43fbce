"""Stable leadership (coordinator/replication/elections.py): pre-vote keeps a follower
that timed out from deposing a healthy leader, and a restarted node keeps reading
messages while it applies its log, so a restarted cluster elects without waiting."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from coordinator.core.entries import Entry
from coordinator.core.state import Applied
from coordinator.replication.node import ReplicatedCoordinator
from tests.replication.helpers import (
    addresses,
    begin,
    cluster,
    config,
    leader_of,
    propose_wait,
    round_ids,
    wait_until,
)

# Long enough that a follower of a healthy leader surely heard it within half the
# minimum, even with three nodes in one process on a busy machine.
# Long enough that three nodes sharing this process (and a busy machine) never miss
# heartbeats for half the minimum timeout, the window in which a member still refuses.
STEADY: dict[str, Any] = {
    "election_timeout_ms": (4000, 8000),
    "heartbeat_ms": 50,
    "leader_fallback_ms": 8000,
}


def test_a_follower_that_times_out_under_a_healthy_leader_does_not_depose_it(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path, **STEADY) as nodes:
        leader = leader_of(nodes)
        propose_wait(leader, begin("t0"))
        leader_id = leader.status().node_id
        wait_until(
            lambda: all(c.leader_id() == leader_id for c in nodes.values()), "every node follows"
        )
        term = leader.term()
        follower = next(c for c in nodes.values() if c is not leader)
        wait_until(
            lambda: all(m.reachable for m in follower.status().members),
            "the follower to be connected to both others (else its asks are not delivered)",
        )
        raft = follower._raft
        refusals = raft.pre_vote_refusals
        # What its timeout firing does (a timeout that fires while heartbeats wait
        # unread is first answered by reading them, so this asks directly).
        follower._raft_calls.append(raft._ask_for_pre_votes)
        wait_until(
            lambda: raft.pre_vote_refusals >= refusals + 2,
            "the leader and the other follower to refuse the pre-vote",
            timeout_s=30,
        )
        assert [c.term() for c in nodes.values()] == [term] * 3
        assert leader.is_leader()
        assert propose_wait(leader, begin("t1")).applied is not None


def test_a_follower_cut_off_from_its_leader_elects_a_new_one(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        old = leader_of(nodes)
        term = old.term()
        old.close()
        survivors = {k: c for k, c in nodes.items() if c is not old}
        new = leader_of(survivors)
        assert new.term() > term


def test_a_restarted_cluster_elects_while_it_still_applies_its_log(tmp_path: Path) -> None:
    nodes = addresses(3)
    wanted = {f"t{i}" for i in range(300)}
    with cluster(tmp_path, nodes) as started:
        leader = leader_of(started)
        for txn_id in sorted(wanted):
            propose_wait(leader, begin(txn_id))
        wait_until(
            lambda: all(round_ids(c) == wanted for c in started.values()),
            "replication",
            timeout_s=30,
        )

    leader_seen = threading.Event()
    applied_after_election = []

    def heavy_apply(index: int, entry: Entry, applied: Applied) -> None:
        # Each entry of the old log costs 4 ms to apply (about 1.2 s per node, where the
        # election takes a few hundred ms): a heavier state machine, simulated.
        time.sleep(0.004)
        if leader_seen.is_set():
            applied_after_election.append(index)

    restarted: dict[str, ReplicatedCoordinator] = {}
    try:
        for node in nodes:
            restarted[node.node_id] = ReplicatedCoordinator(
                config(nodes, node.node_id, tmp_path), on_apply=heavy_apply
            )
        leader_of(restarted, timeout_s=10)
        leader_seen.set()
        wait_until(
            lambda: all(round_ids(c) == wanted for c in restarted.values()),
            "every node to apply its log",
            timeout_s=30,
        )
        # The election did not wait for the log to be applied: entries of it were still
        # being applied once a leader was there.
        assert applied_after_election
    finally:
        for coordinator in restarted.values():
            coordinator.close()


# Longer than any wait below: an election within them took the short path.
LONG: dict[str, Any] = {
    "election_timeout_ms": (6000, 9000),
    "heartbeat_ms": 100,
    "leader_fallback_ms": 9000,
}


def test_followers_whose_leader_closed_its_connections_elect_without_the_long_timeout(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path, **LONG) as nodes:
        old = leader_of(nodes, timeout_s=5)  # a new cluster knows no leader: short too
        term = old.term()
        old.close()  # its sockets close, as when its process dies
        survivors = {k: c for k, c in nodes.items() if c is not old}
        new = leader_of(survivors, timeout_s=4)
        assert new.term() > term


def test_a_follower_restarted_into_a_running_cluster_follows_its_leader(
    tmp_path: Path,
) -> None:
    nodes = addresses(3)
    started = {
        n.node_id: ReplicatedCoordinator(config(nodes, n.node_id, tmp_path, **LONG)) for n in nodes
    }
    try:
        leader = leader_of(started, timeout_s=5)
        leader_id = leader.status().node_id
        # Running: every node follows it (a node that has heard no leader yet would
        # rightly grant the restarted one its pre-vote).
        wait_until(
            lambda: all(c.leader_id() == leader_id for c in started.values()),
            "every node follows the leader",
        )
        term = leader.term()
        follower_id = next(k for k, c in started.items() if c is not leader)
        started[follower_id].close()
        restarted = ReplicatedCoordinator(config(nodes, follower_id, tmp_path, **LONG))
        started[follower_id] = restarted
        # It knows no leader when it starts, so it asks for pre-votes at once: refused.
        wait_until(lambda: restarted.leader_id() == leader_id, "it follows the leader", 10)
        assert [c.term() for c in started.values()] == [term] * 3
    finally:
        for coordinator in started.values():
            coordinator.close()
