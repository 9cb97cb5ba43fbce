"""Membership changes through the log (coordinator/replication/membership.py): one at a
time, persisted for restarts, carried by snapshots, with the checks that refuse a
change before anything is proposed."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _COMMAND_TYPE

from coordinator.replication.membership import (
    MembershipRefused,
    MembershipSyncObj,
    check_add,
    check_quorum_after,
    check_remove,
    from_node,
    replay,
)
from coordinator.replication.node import (
    ChangeResult,
    ChangeStatus,
    NodeAddress,
    ReplicatedCoordinator,
    ReplicationError,
)
from tests.replication.helpers import (
    begin,
    config,
    free_port,
    leader_of,
    propose_wait,
    round_ids,
    wait_until,
)


def node(node_id: str) -> NodeAddress:
    return NodeAddress(
        node_id=node_id, raft=f"127.0.0.1:{free_port()}", grpc=f"127.0.0.1:{free_port()}"
    )


def change(coordinator: ReplicatedCoordinator, **what: Any) -> ChangeResult:
    done = threading.Event()
    results: list[ChangeResult] = []

    def callback(result: ChangeResult) -> None:
        results.append(result)
        done.set()

    coordinator.change_members(callback=callback, **what)
    assert done.wait(10), f"no outcome for {what}"
    return results[0]


def ids(coordinator: ReplicatedCoordinator) -> list[str]:
    """The members as pysyncobj counts them (its configuration), checked against the
    view the node serves."""
    voting = sorted(from_node(n).node_id for n in coordinator._raft.member_nodes())
    served = [m.node_id for m in coordinator.members()]
    assert voting == served, (voting, served)
    return voting


# ---------------------------------------------------------------------- pure checks


def test_checks_refuse_what_must_not_be_proposed() -> None:
    members = [node("n1"), node("n2"), node("n3")]
    check_add(members, node("n4"))
    with pytest.raises(MembershipRefused, match="already a member"):
        check_add(members, node("n2"))
    with pytest.raises(MembershipRefused, match="in use by member n1"):
        check_add(members, NodeAddress(node_id="n4", raft=members[0].raft, grpc="127.0.0.1:1"))
    with pytest.raises(MembershipRefused, match="in use by member n3"):
        check_add(members, NodeAddress(node_id="n4", raft="127.0.0.1:1", grpc=members[2].grpc))
    with pytest.raises(MembershipRefused, match="not usable"):
        check_add(members, NodeAddress(node_id="", raft="127.0.0.1:1", grpc="127.0.0.1:2"))
    with pytest.raises(MembershipRefused, match="at most 7"):
        check_add([node(f"n{i}") for i in range(7)], node("n9"))
    assert check_remove([*members, node("n4")], "n2", "n1").node_id == "n2"
    with pytest.raises(MembershipRefused, match="unknown node id 'n9'"):
        check_remove(members, "n9", "n1")
    with pytest.raises(MembershipRefused, match=r"is the leader.*transfer-leader --to n2"):
        check_remove([*members, node("n4")], "n1", "n1")
    with pytest.raises(MembershipRefused, match="would leave 2 members"):
        check_remove(members, "n2", "n1")
    check_quorum_after(4, 3, "adding n4")
    with pytest.raises(MembershipRefused, match="only 2 are reachable"):
        check_quorum_after(4, 2, "adding n4")


def _membership(kind: str, member: NodeAddress) -> bytes:
    target = TCPNode(member.raft, node_id=member.node_id, grpc=member.grpc)
    return bytes([_COMMAND_TYPE.MEMBERSHIP]) + pickle.dumps([kind, member.raft, target])


def test_replay_follows_pysyncobj_rules() -> None:
    n1, n2, n3, n4 = node("n1"), node("n2"), node("n3"), node("n4")
    base = [TCPNode(m.raft, node_id=m.node_id, grpc=m.grpc) for m in (n1, n2, n3)]
    commands = [
        _membership("add", n4),
        bytes([_COMMAND_TYPE.NO_OP]),
        _membership("rem", n2),
        _membership("rem", n1),  # a node never removes itself
        _membership("add", n3),  # already present: a no-op
    ]
    members = replay(base, n1.raft, commands)
    assert sorted(n.node_id for n in members.values()) == ["n1", "n3", "n4"]
    assert members[n4.raft].grpc == n4.grpc


# ------------------------------------------------ pysyncobj's one-at-a-time bug


class _Leaderless:
    """A SyncObj that never ticks, with a MEMBERSHIP entry appended but not applied,
    as a leader holds it right after proposing a change."""

    def __init__(self, cls: type[SyncObj]) -> None:
        conf = SyncObjConf(autoTick=False, dynamicMembershipChange=True)
        self.raft = cls(f"127.0.0.1:{free_port()}", [f"127.0.0.1:{free_port()}"], conf)
        log = self.raft._SyncObj__raftLog
        log.add(_membership("add", node("n8")), 2, 1)
        self.raft._SyncObj__noopIDx = 1  # the leader's no-op (index 1) is applied

    def propose_second_change(self) -> bool:
        return bool(self.raft._SyncObj__changeCluster(["add", "x", TCPNode("127.0.0.1:1")]))

    def close(self) -> None:
        self.raft._doDestroy()


@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(
            SyncObj,
            marks=pytest.mark.xfail(
                strict=True, reason="pysyncobj 0.3.17 never sets __changeClusterIDx"
            ),
            id="stock-pysyncobj",
        ),
        pytest.param(MembershipSyncObj, id="node"),
    ],
)
def test_a_second_change_is_refused_while_one_is_unapplied(cls: type[SyncObj]) -> None:
    leader = _Leaderless(cls)
    try:
        assert not leader.propose_second_change()
    finally:
        leader.close()


# ---------------------------------------------------------------------- cluster


def test_add_commit_remove_restart(tmp_path: Path) -> None:
    founders = (node("n1"), node("n2"), node("n3"))
    nodes = {
        n.node_id: ReplicatedCoordinator(config(founders, n.node_id, tmp_path)) for n in founders
    }
    try:
        leader = leader_of(nodes)
        assert propose_wait(leader, begin("before")).status.value == "APPLIED"

        # n4 starts knowing the current members, then the leader adds it.
        n4 = node("n4")
        nodes["n4"] = ReplicatedCoordinator(config((*founders, n4), "n4", tmp_path))
        added = change(leader, add=n4)
        assert added.status is ChangeStatus.APPLIED, added
        assert [m.node_id for m in added.members] == ["n1", "n2", "n3", "n4"]
        wait_until(lambda: "before" in round_ids(nodes["n4"]), "n4 to catch up")
        assert propose_wait(leader, begin("with-n4")).status.value == "APPLIED"
        for coordinator in nodes.values():
            wait_until(lambda c=coordinator: ids(c) == ["n1", "n2", "n3", "n4"], "members")
        wait_until(lambda: "with-n4" in round_ids(nodes["n4"]), "n4 to apply")
        assert leader.grpc_directory["n4"] == n4.grpc

        # Refusals: the leader itself, an unknown id, an address in use.
        leader_id = leader.status().node_id
        assert change(leader, remove=leader_id).status is ChangeStatus.REFUSED
        unknown = change(leader, remove="n9")
        assert unknown.status is ChangeStatus.REFUSED and "unknown node id" in unknown.message
        clash = NodeAddress(node_id="n5", raft=n4.raft, grpc="127.0.0.1:1")
        assert "in use by member n4" in change(leader, add=clash).message
        follower = next(c for c in nodes.values() if not c.is_leader())
        assert change(follower, remove="n4").status is ChangeStatus.NOT_LEADER

        # Remove a founder that is not the leader, then commit with the rest.
        gone = next(n.node_id for n in founders if n.node_id != leader_id)
        removed = change(leader, remove=gone)
        assert removed.status is ChangeStatus.APPLIED, removed
        nodes.pop(gone).close()
        remaining = sorted(nodes)
        assert propose_wait(leader, begin("after-remove")).status.value == "APPLIED"
        for coordinator in nodes.values():
            wait_until(lambda c=coordinator: ids(c) == remaining, "members after the removal")

        # Restart a member with its original flags: it comes back with the log's members.
        restarted = next(i for i in remaining if i not in (leader_id, "n4"))
        nodes.pop(restarted).close()
        again = ReplicatedCoordinator(config(founders, restarted, tmp_path))
        nodes[restarted] = again
        assert ids(again) == remaining  # before its first tick: from the journal
        assert propose_wait(leader, begin("after-restart")).status.value == "APPLIED"
        wait_until(lambda: "after-restart" in round_ids(again), "the restarted node to apply")
        assert again.status().leader_id == leader_id
    finally:
        for coordinator in nodes.values():
            coordinator.close()


def test_a_new_node_catches_up_from_a_snapshot_and_keeps_members_after_restart(
    tmp_path: Path,
) -> None:
    founders = (node("n1"), node("n2"), node("n3"))
    knobs = {"log_compaction_entries_min": 30}
    nodes = {
        n.node_id: ReplicatedCoordinator(config(founders, n.node_id, tmp_path, **knobs))
        for n in founders
    }
    try:
        leader = leader_of(nodes)
        for i in range(40):
            assert propose_wait(leader, begin(f"t{i}")).status.value == "APPLIED"
        # Every founder compacts its log on its own; the one restarted below must hold a
        # snapshot from before n4 joins, so wait until each has compacted, before the
        # change (the journal starts past the snapshot once the log is cut).
        for founder_node in founders:
            journal = nodes[founder_node.node_id]._journal
            wait_until(
                lambda j=journal: j.entries()[0][1] > 2, f"{founder_node.node_id} to compact"
            )
        n4 = node("n4")
        nodes["n4"] = ReplicatedCoordinator(config((*founders, n4), "n4", tmp_path, **knobs))
        assert change(leader, add=n4).status is ChangeStatus.APPLIED
        # It gets a snapshot, not the log (whose start the leader has compacted away).
        wait_until(lambda: nodes["n4"]._journal.entries()[0][1] > 2, "n4 to install a snapshot")
        wait_until(lambda: "t0" in round_ids(nodes["n4"]), "n4 to load the snapshot")

        # A founder restarts with a snapshot from before the change and the change in its
        # log after it: loading the snapshot must not forget n4.
        founder = next(n.node_id for n in founders if not nodes[n.node_id].is_leader())
        nodes.pop(founder).close()
        nodes[founder] = ReplicatedCoordinator(config(founders, founder, tmp_path, **knobs))
        snapshot_index = nodes[founder]._journal.entries()[0][1]
        assert snapshot_index > 2, "the founder should hold a snapshot"
        wait_until(lambda: "t39" in round_ids(nodes[founder]), "the founder to load and apply")
        assert ids(nodes[founder]) == ["n1", "n2", "n3", "n4"]

        for i in range(40, 80):
            assert propose_wait(leader, begin(f"t{i}")).status.value == "APPLIED"
        wait_until(lambda: (tmp_path / "n4" / "raft-snapshot.gz").exists(), "n4's snapshot")

        # Every node restarts with its first flags; members come from snapshot + log.
        for node_id in list(nodes):
            nodes.pop(node_id).close()
        for n in (*founders, n4):
            flags = founders if n in founders else (*founders, n4)
            nodes[n.node_id] = ReplicatedCoordinator(config(flags, n.node_id, tmp_path, **knobs))
        leader = leader_of(nodes, timeout_s=10)
        for coordinator in nodes.values():
            wait_until(lambda c=coordinator: ids(c) == ["n1", "n2", "n3", "n4"], "members")
        assert propose_wait(leader, begin("after")).status.value == "APPLIED"
        for coordinator in nodes.values():
            wait_until(lambda c=coordinator: "after" in round_ids(c), "every node to apply")
    finally:
        for coordinator in nodes.values():
            coordinator.close()


def test_data_dir_check_allows_members_from_the_log_only(tmp_path: Path) -> None:
    founders = (node("n1"), node("n2"), node("n3"))
    with ReplicatedCoordinator(config(founders, "n1", tmp_path)):
        pass
    stranger = (founders[0], node("x2"), node("x3"))
    with pytest.raises(ReplicationError, match="belongs to node 'n1' of cluster"):
        ReplicatedCoordinator(config(stranger, "n1", tmp_path))
    moved = (NodeAddress(node_id="n1", raft=f"127.0.0.1:{free_port()}", grpc=founders[0].grpc),)
    with pytest.raises(ReplicationError, match="addresses change only by removing it"):
        ReplicatedCoordinator(config((*moved, *founders[1:]), "n1", tmp_path))
