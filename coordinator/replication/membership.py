"""Cluster membership: who votes, where to reach them, and how that changes safely.

Theory of operation
-------------------
The member list is pysyncobj's own cluster configuration (its ``selfNode`` and
``otherNodes``), one ``TCPNode`` per member whose id is the Raft address and which also
carries our ``node_id`` and ``grpc`` address (pysyncobj's ``Node`` keeps keyword
attributes and pickles them). A change is one pysyncobj MEMBERSHIP log entry
(``addNodeToCluster`` / ``removeNodeFromCluster``) holding such a node, so the node id
and gRPC address travel atomically with the change, in the log and in every snapshot
(pysyncobj stores its member set in the snapshot).

Like Raft's single-server changes, pysyncobj makes a configuration take effect when its
entry is *appended* (leader: ``__changeCluster``; follower: on AppendEntries), and
reverts it when a conflicting leader truncates the entry. ``MembershipSyncObj`` keeps
that and fixes what pysyncobj 0.3.17 gets wrong for us:

- **One change at a time.** ``__changeCluster`` is meant to refuse a change while the
  previous one is uncommitted, but ``__changeClusterIDx`` is never assigned (syncobj.py,
  ``__init__`` sets it to None and nothing else does): any number of changes could be
  in flight. We refuse a change while any MEMBERSHIP entry lies after the last applied
  index.
- **Restart.** pysyncobj starts from the constructor's member list and re-applies
  MEMBERSHIP entries only when they are *applied* again (``__doApplyCommand``), so after
  a restart it votes with a stale configuration until the commit index is re-learned,
  and never sees a change that was appended but not committed. We persist the member
  set in the journal (``LmdbJournal.record_members``) in the same synced write as the
  log change that caused it, start from it, and skip the apply-time re-application
  (the configuration is already current at append time).
- **Snapshots.** Loading a snapshot sets the configuration from the snapshot
  (``__updateClusterConfiguration``), forgetting changes in the log after it; we replay
  the MEMBERSHIP entries that follow the snapshot. pysyncobj writes the member set *of
  the log's end* into a snapshot of the *applied* index; we postpone compaction while a
  MEMBERSHIP entry is unapplied, so a snapshot never carries a change that a new leader
  could still truncate.
- **Other paths.** pysyncobj's admin utility messages ``add``/``remove`` over the Raft
  port are refused: changes go through our checks only.

The checks here are pure functions of the member list; the node runs them on the raft
thread right before it proposes.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _COMMAND_TYPE

from coordinator.replication.elections import StableLeaderSyncObj

logger = logging.getLogger(__name__)

# Members a change may leave at most (rule 10), and at least after a removal: two
# members tolerate no failure, so removing the third is refused.
MEMBERS_MAX = 7
MEMBERS_MIN_AFTER_REMOVE = 3
NODE_ID_BYTES_MAX = 64
_MEMBERSHIP = bytes([_COMMAND_TYPE.MEMBERSHIP])


class MembershipRefused(Exception):
    """A change that must not be proposed; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class Member:
    node_id: str
    raft: str
    grpc: str


def to_node(member: Any) -> TCPNode:
    return TCPNode(member.raft, node_id=member.node_id, grpc=member.grpc)


def from_node(node: Any) -> Member:
    """A pysyncobj node as a member. Nodes written before membership changes existed
    carry no node id: the Raft address stands in for it."""
    return Member(
        node_id=str(getattr(node, "node_id", node.address)),
        raft=str(node.address),
        grpc=str(getattr(node, "grpc", "")),
    )


def majority(count: int) -> int:
    return count // 2 + 1


def check_add(members: Sequence[Any], new: Any) -> None:
    """``new`` may join ``members``: fresh id and addresses, and the limit holds."""
    if not new.node_id or len(new.node_id.encode()) > NODE_ID_BYTES_MAX or "=" in new.node_id:
        raise MembershipRefused(
            f"node id {new.node_id!r} is not usable: give 1-{NODE_ID_BYTES_MAX} bytes, no '='"
        )
    for member in members:
        if member.node_id == new.node_id:
            raise MembershipRefused(f"{new.node_id} is already a member ({member.raft})")
        used = {member.raft, member.grpc}
        for flag, address in (("--raft", new.raft), ("--grpc", new.grpc)):
            if address in used:
                raise MembershipRefused(
                    f"{flag} {address} is in use by member {member.node_id}; pick another address"
                )
    if new.raft == new.grpc:
        raise MembershipRefused("--raft and --grpc must differ")
    if len(members) + 1 > MEMBERS_MAX:
        raise MembershipRefused(
            f"the cluster has {len(members)} members; at most {MEMBERS_MAX} (MEMBERS_MAX)"
        )


def check_remove(members: Sequence[Any], node_id: str, leader_id: str | None) -> Any:
    """The member ``node_id`` may leave; returns it."""
    found = [m for m in members if m.node_id == node_id]
    if not found:
        raise MembershipRefused(
            f"unknown node id {node_id!r}; members are {sorted(m.node_id for m in members)}"
        )
    if node_id == leader_id:
        others = sorted(m.node_id for m in members if m.node_id != node_id)
        raise MembershipRefused(
            f"{node_id} is the leader and cannot remove itself; move leadership first "
            f"(concord cluster transfer-leader --to {others[0]}), then remove {node_id}"
        )
    if len(members) - 1 < MEMBERS_MIN_AFTER_REMOVE:
        raise MembershipRefused(
            f"removing {node_id} would leave {len(members) - 1} members; a cluster keeps at "
            f"least {MEMBERS_MIN_AFTER_REMOVE} (add a node first)"
        )
    return found[0]


def check_quorum_after(members_after: int, reachable_after: int, what: str) -> None:
    """A change commits only with a majority of the new configuration: refuse one that
    the reachable members could not commit (it would stall the cluster)."""
    if reachable_after < majority(members_after):
        raise MembershipRefused(
            f"{what} would leave {members_after} members of which only {reachable_after} are "
            f"reachable from the leader, fewer than a majority ({majority(members_after)}); "
            f"bring members back first"
        )


def replay(base: Iterable[Any], self_raft: str, commands: Iterable[bytes]) -> dict[str, Any]:
    """The member set after ``commands`` (log entries) applied to ``base`` with
    pysyncobj's rules (``__doChangeCluster``): adding a present node or removing an
    absent one is a no-op, and a node never removes itself. Keyed by Raft address."""
    members = {node.address: node for node in base}
    for command in commands:
        if command[:1] != _MEMBERSHIP:
            continue
        kind, address, node = pickle.loads(command[1:])
        if kind == "add":
            members.setdefault(address, node)
        elif kind == "rem" and address != self_raft:
            members.pop(address, None)
    return members


class MembershipSyncObj(StableLeaderSyncObj):
    """pysyncobj with persisted, one-at-a-time membership changes (see module doc).

    ``on_members_changed(nodes)`` is called on the raft thread with every member node
    (self included) whenever the configuration changes, and should persist it with the
    next journal flush."""

    def __init__(
        self,
        *args: Any,
        on_members_changed: Callable[[list[Any]], None] = lambda nodes: None,
        **kwargs: Any,
    ) -> None:
        # Set before SyncObj.__init__ so pysyncobj counts it among its own properties and
        # never puts it in a snapshot.
        self._on_members_changed = on_members_changed
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ queries

    def member_nodes(self) -> list[Any]:
        return [self.selfNode, *self.otherNodes]

    def membership_change_pending(self) -> bool:
        """A MEMBERSHIP entry is in the log after the last applied index (so maybe not
        committed): no further change and no compaction until it is applied."""
        log = self._SyncObj__raftLog
        applied = self.raftLastApplied
        for position in range(len(log) - 1, -1, -1):
            command, index, _ = log[position]
            if index <= applied:
                return False
            if command[:1] == _MEMBERSHIP:
                return True
        return False

    def leader_ready_for_change(self) -> bool:
        """pysyncobj's own condition: the leader's no-op of its term is applied."""
        noop = self._SyncObj__noopIDx
        return self._isLeader() and noop is not None and self.raftLastApplied >= noop

    # ------------------------------------------------------------------ patches

    def _notify(self) -> None:
        self._on_members_changed(self.member_nodes())

    def _SyncObj__changeCluster(self, request: Any) -> bool:
        if self.membership_change_pending():
            return False
        return bool(super()._SyncObj__changeCluster(request))

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool:
        changed = bool(super()._SyncObj__doChangeCluster(request, reverse))
        if changed:
            logger.warning(
                "membership %s %s%s: members now %s",
                request[0],
                from_node(request[2]).node_id if len(request) > 2 else request[1],
                " (reverted: the entry was truncated)" if reverse else "",
                sorted(from_node(n).node_id for n in self.member_nodes()),
            )
            self._notify()
        return changed

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        if command[:1] == _MEMBERSHIP:
            return None  # took effect when appended (and is persisted since)
        return super()._SyncObj__doApplyCommand(command)

    def _SyncObj__updateClusterConfiguration(self, newNodes: Any) -> None:
        # Loading a snapshot: keep node ids and gRPC addresses of members whose snapshot
        # node predates them, then replay the changes the log holds after the snapshot.
        known = {node.address: node for node in self.member_nodes()}
        base = [known.get(node.address, node) for node in newNodes]
        base.append(self.selfNode)
        applied = self.raftLastApplied
        tail = [entry[0] for entry in self._SyncObj__raftLog if entry[1] > applied]
        members = replay(base, self.selfNode.address, tail)
        members.pop(self.selfNode.address, None)
        super()._SyncObj__updateClusterConfiguration(list(members.values()))
        self._notify()

    def _SyncObj__tryLogCompaction(self) -> None:
        if self.membership_change_pending():
            return
        super()._SyncObj__tryLogCompaction()

    def _addNodeToCluster(self, args: Any, callback: Any) -> None:
        callback(None, FAIL_REASON.REQUEST_DENIED)

    def _removeNodeFromCluster(self, args: Any, callback: Any) -> None:
        callback(None, FAIL_REASON.REQUEST_DENIED)
