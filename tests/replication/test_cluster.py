"""Real pysyncobj clusters: three ReplicatedCoordinator objects on 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from concord.v1 import log_pb2
from coordinator.replication.codec import SCHEMA_VERSION
from coordinator.replication.node import ProposeResult, ProposeStatus, ReplicatedCoordinator
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


def test_three_nodes_apply_the_same_entries_in_the_same_order(tmp_path: Path) -> None:
    applied: dict[str, list[tuple[int, str]]] = {}

    nodes = addresses(3)
    started = {}
    try:
        for node in nodes:
            log = applied.setdefault(node.node_id, [])
            started[node.node_id] = ReplicatedCoordinator(
                config(nodes, node.node_id, tmp_path),
                on_apply=lambda index, entry, _applied, log=log: log.append((index, entry.txn_id)),
            )
        leader = leader_of(started)
        results = [propose_wait(leader, begin(f"t{i}", now_ms=i)) for i in range(30)]
        assert {r.status for r in results} == {ProposeStatus.APPLIED}
        assert [r.index for r in results] == sorted({r.index for r in results})
        wait_until(lambda: all(len(log) == 30 for log in applied.values()), "all nodes applied 30")
        assert applied["n0"] == applied["n1"] == applied["n2"]
        states = [c.read(lambda s: (sorted(s.rounds), s.clock_ms)) for c in started.values()]
        assert states[0] == states[1] == states[2]
        follower = next(c for c in started.values() if not c.is_leader())
        refused = propose_wait(follower, begin("on-follower"))
        assert refused == ProposeResult(ProposeStatus.NOT_LEADER, leader_id=leader.status().node_id)
        status = leader.status()
        assert status.leader_id == status.node_id and all(m.reachable for m in status.members)
    finally:
        for coordinator in started.values():
            coordinator.close()


def test_backpressure_answers_overloaded_instead_of_queueing(tmp_path: Path) -> None:
    with cluster(tmp_path, proposals_inflight_max=5) as nodes:
        leader = leader_of(nodes)
        outcomes: list[ProposeResult] = []
        for i in range(200):
            leader.propose(begin(f"t{i}"), outcomes.append)
        wait_until(lambda: len(outcomes) == 200, "an outcome for every proposal")
        statuses = [o.status for o in outcomes]
        assert set(statuses) == {ProposeStatus.APPLIED, ProposeStatus.OVERLOADED}
        assert len(round_ids(leader)) == statuses.count(ProposeStatus.APPLIED)


def test_entries_proposed_together_share_one_raft_entry(tmp_path: Path) -> None:
    """A leader's proposal (a commit with its begin and votes) is one Raft round: its
    entries never split across LogBatches, even while the raft thread takes the queue
    as they arrive. Under backpressure a group is refused whole."""
    with cluster(tmp_path, proposals_inflight_max=30) as nodes:
        leader = leader_of(nodes)
        groups: list[list[ProposeResult]] = [[] for _ in range(60)]
        for g, outcomes in enumerate(groups):
            leader.propose_together([(begin(f"g{g}-{i}"), outcomes.append) for i in range(3)])
        wait_until(lambda: all(len(o) == 3 for o in groups), "three outcomes for every group")
        statuses = [{o.status for o in outcomes} for outcomes in groups]
        assert {ProposeStatus.APPLIED} in statuses
        assert set(map(frozenset, statuses)) <= {
            frozenset({ProposeStatus.APPLIED}),
            frozenset({ProposeStatus.OVERLOADED}),
        }, f"a group was split by backpressure: {statuses}"
        for outcomes in groups:
            if outcomes[0].status is ProposeStatus.APPLIED:
                assert len({o.index for o in outcomes}) == 1, f"split across entries: {outcomes}"


def test_propose_async(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        result = asyncio.run(leader.propose_async(begin("async")))
        assert result.status is ProposeStatus.APPLIED and result.applied is not None
        assert result.applied.error is None


def test_leader_loss_elects_a_new_leader_and_unknown_is_resolved_by_reading(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path) as nodes:
        old = leader_of(nodes)
        propose_wait(old, begin("before"))
        outcomes: list[ProposeResult] = []
        old.propose(begin("in-doubt"), outcomes.append)
        started = time.monotonic()
        old.close()  # answers whatever is still waiting UNKNOWN
        survivors = {k: c for k, c in nodes.items() if c is not old}
        new = leader_of(survivors, timeout_s=3.0)
        elected_s = time.monotonic() - started
        assert elected_s < 1.0, f"new leader took {elected_s:.2f} s"
        assert len(outcomes) == 1 and outcomes[0].status in (
            ProposeStatus.APPLIED,
            ProposeStatus.UNKNOWN,
        )
        # Resolve the outcome by reading, after the new leader applied its own term.
        assert propose_wait(new, begin("after")).status is ProposeStatus.APPLIED
        wait_until(lambda: all("after" in round_ids(c) for c in survivors.values()), "catch-up")
        known = [("in-doubt" in round_ids(c)) for c in survivors.values()]
        assert known[0] == known[1]
        if outcomes[0].status is ProposeStatus.APPLIED:
            assert known[0]


def test_a_leader_is_ready_for_reads_once_its_election_entry_applied(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        wait_until(leader.leader_ready, "the leader's no-op entry to apply")
        assert not any(n.leader_ready() for n in nodes.values() if n is not leader)


def _listening_hosts(port: int) -> set[str]:
    """The IPv4 addresses a TCP socket of this machine listens on at ``port``."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            hosts.add(".".join(str(b) for b in reversed(bytes.fromhex(host_hex))))
    return hosts


def test_a_node_listens_for_raft_only_on_the_address_it_is_known_by(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        leader_of(nodes)
        for node_id, node in nodes.items():
            own = next(m for m in node.status().members if m.node_id == node_id)
            assert _listening_hosts(int(own.raft.rsplit(":", 1)[1])) == {"127.0.0.1"}, own


def test_an_entry_a_node_cannot_decode_stops_it_instead_of_being_skipped(tmp_path: Path) -> None:
    """An entry of a newer schema (a newer leader during a rolling upgrade): a replica
    that skipped it would diverge from those that apply it. Every node here reads only
    version 1: each that learns the entry is committed stops there, saying why (a
    majority at least: they committed it); none applies anything past it."""
    newer = log_pb2.LogBatch(entries=[log_pb2.LogEntry(schema_version=SCHEMA_VERSION + 1)])
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert propose_wait(leader, begin("t-before")).status is ProposeStatus.APPLIED
        before = leader.status().commit_index
        leader._machine.apply_batch(newer.SerializeToString(), callback=lambda *_: None)

        def stopped() -> list[ReplicatedCoordinator]:
            return [n for n in nodes.values() if n.failure is not None]

        wait_until(lambda: len(stopped()) >= 2 or None, "a majority of the nodes to stop")
        for node in nodes.values():
            assert node.status().applied_index <= before + 1
            if node.failure is not None:  # it applied everything before the entry
                assert "t-before" in round_ids(node)
                assert "cannot be decoded" in node.failure and "upgrade" in node.failure
