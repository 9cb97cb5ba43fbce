"""Stable leadership over pysyncobj 0.3.17: pre-vote, long timeouts with a fast path when
the leader is known to be gone, and a start that keeps answering.

Measured on a 2-core machine (docs/operations.md, "Elections and heartbeats"), stock
pysyncobj changed leaders without any fault for two reasons:

- **A node that stood for election without a chance.** A follower whose timeout fires
  (it was paused, restarted, or its raft thread starved of the CPU for a moment)
  raises its term and asks for votes. The healthy leader sees the higher term and steps
  down, even though every other member still follows it: the cluster loses its leader
  for an election, and terms climb (a 1 s SIGSTOP of a follower cost 2 terms).
- **A restart that stops listening.** A restarted node knows its commit index from the
  journal and applied its whole log in the first tick, on the raft thread, before it
  read a single message: ~1.2 s for 3,000 entries. Its peers' vote requests waited that
  long, timeouts fired meanwhile, and a whole restarted cluster took 2 terms and over a
  second after its Raft ports opened to elect a leader, growing with the log.

``StableLeaderSyncObj`` fixes both, in pysyncobj's own terms:

- **Pre-vote** (Raft thesis §9.6). When its election timeout fires, a node first asks
  the others whether they *would* vote for it at the next term (``pre_vote``), without
  raising its own term. A member grants that only when it would grant the vote (the
  asking log is at least as up to date, the term would be higher than its own) *and*
  it has heard from no leader for half the minimum election timeout (``raftMinTimeout
  / 2``; a leader grants nothing). Only a node granted by a majority (itself included)
  goes on to pysyncobj's real election. So a node that merely fell behind learns the
  leader from its next heartbeat instead of deposing it, while after a real leader
  loss the followers, which stopped hearing at the same moment, grant each other the
  pre-vote and the election proceeds as before (one round trip later). A leadership
  transfer (TimeoutNow, ``transferLeadership``) skips the pre-vote: the leader asked
  for it. A node that receives AppendEntries of a term *lower* than its own also skips
  it: only a real vote request at its higher term tells that stale leader to step down
  (pysyncobj's replies carry no term), which is what stock pysyncobj would do.
- **Read before judging.** A node whose timeout passed, or that was asked for a
  pre-vote, first reads what waits on its sockets: one starved of the CPU (a busy
  machine, a pause) wakes with its timeout passed and its leader's heartbeats unread,
  and must judge on them, not on the time alone.
- **Long timeouts, short when the leader is known to be gone.** The configured
  election timeout is what a follower waits when its leader falls silent but its
  connection stays open (a frozen process, a lost host, a partition): long, so that a
  leader starved of the CPU for a moment keeps its term. A node that knows of no live
  leader uses ``NO_LEADER_TIMEOUT_S`` instead: one that has heard no leader since it
  started, and one whose connection to its leader closed, which is what followers see
  at once when the leader's process dies (the kernel closes its sockets). So a killed
  leader is replaced in a fraction of a second and a restarted cluster elects as soon
  as its nodes connect, while the pre-vote keeps a node that lost only its own
  connection, or restarted into a running cluster, from deposing a live leader.
- **Bounded catch-up.** At most ``APPLY_TICK_S`` of applying per tick (in chunks of
  ``APPLY_CHUNK_ENTRIES``); the rest continues in the next ticks, so the raft thread
  reads votes and heartbeats between chunks. A node may then vote, and lead, before it
  applied its log: Raft's votes depend on the log, not on what was applied, and a
  leader answers reads only once its own election entry applied (``leader_ready``).

Members that do not speak ``pre_vote`` (older Concord) ignore it; a cluster of mixed
versions elects among the nodes that do, or among the old ones as before.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from pysyncobj.monotonic import monotonic
from pysyncobj.syncobj import _RAFT_STATE

from coordinator.replication.raft_patch import TruncationSafeSyncObj

PRE_VOTE = "pre_vote"
PRE_VOTE_RESPONSE = "pre_vote_response"
APPLY_TICK_S = 0.02  # the longest the raft thread applies before it reads messages again
APPLY_CHUNK_ENTRIES = 10
# The election timeout of a node that knows of no live leader (it has heard none since
# it started, or its connection to the leader closed). Spread wide enough that two
# followers who lost the same leader rarely stand at the same moment.
NO_LEADER_TIMEOUT_S = (0.03, 0.15)
# Every time here is pysyncobj's clock (CLOCK_MONOTONIC_RAW, not time.monotonic's): the
# election deadline we move is compared with it.

logger = logging.getLogger(__name__)


class StableLeaderSyncObj(TruncationSafeSyncObj):
    """``SyncObj`` with pre-vote and a catch-up that leaves room for messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before pysyncobj's constructor, which draws the first election timeout.
        # Last AppendEntries from a current leader; -inf: no live leader known (none
        # heard since start, or the connection to it closed).
        self._leader_heard_at = float("-inf")
        self._stale_leader_heard_at = float("-inf")  # ... from a leader of a lower term
        self._pre_vote_term: int | None = None  # the term asked for in this round
        self._pre_votes: set[Any] = set()
        self._pre_vote_won = False
        self._pre_vote_asks: list[tuple[Any, dict[str, Any]]] = []  # to answer
        self.pre_vote_rounds = 0  # rounds this node asked for (metrics, tests)
        self.pre_vote_refusals = 0  # answers refusing one
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ pre-vote

    def _onTick(self, timeToWait: float = 0.0) -> None:
        if self._SyncObj__transport.ready and (self._pre_vote_asks or self._election_due()):
            # A node starved of the CPU (a busy machine, a pause) wakes up with its
            # timeout passed and its leader's heartbeats unread: read them before it
            # judges the leader gone, or answers whether it still hears one.
            self._poller.poll(0)
        asks, self._pre_vote_asks = self._pre_vote_asks, []
        for node, message in asks:
            self._SyncObj__transport.send(
                node,
                {
                    "type": PRE_VOTE_RESPONSE,
                    "term": message["term"],
                    "granted": self._grants_pre_vote(message),
                },
            )
        self._pre_vote_if_due()
        super()._onTick(timeToWait)

    def _election_due(self) -> bool:
        return bool(
            self._SyncObj__raftState != _RAFT_STATE.LEADER
            and self._SyncObj__raftElectionDeadline < monotonic()
        )

    def _pre_vote_if_due(self) -> None:
        """Before pysyncobj's tick, which starts a real election once the deadline has
        passed: hold that deadline back and ask for pre-votes instead, unless they
        were won, a transfer was asked for, or a stale leader must be told."""
        if self._SyncObj__raftState == _RAFT_STATE.LEADER or self._SyncObj__selfNode is None:
            return
        now = monotonic()
        if self._SyncObj__raftElectionDeadline >= now:
            return
        if self._pre_vote_won or self._SyncObj__transferInProgress:
            self._pre_vote_won = False
            return  # pysyncobj's tick starts the real election now
        if now - self._stale_leader_heard_at < self._SyncObj__conf.raftMaxTimeout:
            logger.info(
                "%s: a leader of a term below %d is still sending: standing for election "
                "without a pre-vote so that it steps down",
                self._SyncObj__selfNode.id,
                self.raftCurrentTerm,
            )
            return  # pysyncobj's tick starts the real election now
        if not self._SyncObj__connectedToAnyone():
            return
        self._ask_for_pre_votes()

    def _ask_for_pre_votes(self) -> None:
        """Open a pre-vote round for the next term, and hold the real election back
        for another timeout (the round may win it sooner)."""
        now = monotonic()
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        self._pre_vote_term = self.raftCurrentTerm + 1
        self._pre_votes = {self._SyncObj__selfNode}
        self.pre_vote_rounds += 1
        for node in self._SyncObj__otherNodes:
            self._SyncObj__transport.send(
                node,
                {
                    "type": PRE_VOTE,
                    "term": self._pre_vote_term,
                    "last_log_index": self._SyncObj__getCurrentLogIndex(),
                    "last_log_term": self._SyncObj__getCurrentLogTerm(),
                },
            )
        self._count_pre_votes()

    def _count_pre_votes(self) -> None:
        if len(self._pre_votes) > (len(self._SyncObj__otherNodes) + 1) / 2:
            quiet_ms = 1000 * (monotonic() - self._leader_heard_at)
            logger.info(
                "%s: pre-vote for term %s granted by a majority (%s); standing for election",
                self._SyncObj__selfNode.id,
                self._pre_vote_term,
                "no live leader known"
                if quiet_ms == float("inf")
                else f"no leader heard for {quiet_ms:.0f} ms",
            )
            self._pre_vote_term = None
            self._pre_vote_won = True
            self._SyncObj__raftElectionDeadline = 0  # the real election, next tick

    def _grants_pre_vote(self, message: dict[str, Any]) -> bool:
        if self._SyncObj__raftState == _RAFT_STATE.LEADER:
            return False
        if message["term"] <= self.raftCurrentTerm:
            return False
        quiet_s = monotonic() - self._leader_heard_at
        if quiet_s < self._SyncObj__conf.raftMinTimeout / 2:
            return False  # our leader is alive: the asker is behind, not the leader gone
        own_term = self._SyncObj__getCurrentLogTerm()
        if message["last_log_term"] != own_term:
            return bool(message["last_log_term"] > own_term)
        return bool(message["last_log_index"] >= self._SyncObj__getCurrentLogIndex())

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == PRE_VOTE:
            if self._SyncObj__selfNode is not None:
                self._pre_vote_asks.append((node, message))  # answered next tick
            return
        if kind == PRE_VOTE_RESPONSE:
            # Only for the round still open: a vote granted or a term learned since
            # (pysyncobj's handlers) makes the round's term stale, and its grants void.
            current = self._pre_vote_term == self.raftCurrentTerm + 1
            if not message.get("granted"):
                self.pre_vote_refusals += 1
            elif current and message["term"] == self._pre_vote_term:
                self._pre_votes.add(node)
                self._count_pre_votes()
            return
        if kind == "append_entries":
            if message.get("term", -1) >= self.raftCurrentTerm:
                self._leader_heard_at = monotonic()
                self._pre_vote_term = None  # a leader is there: this round is over
                self._pre_vote_won = False
            else:
                self._stale_leader_heard_at = monotonic()
        super()._SyncObj__onMessageReceived(node, message)

    # ------------------------------------------------------------------ no leader

    def _SyncObj__generateRaftTimeout(self) -> float:
        if self._leader_heard_at == float("-inf"):
            return random.uniform(*NO_LEADER_TIMEOUT_S)
        return float(super()._SyncObj__generateRaftTimeout())

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:
        """The connection to our leader closed: its process is gone (the kernel closes
        a dead process's sockets at once) or the link broke. Elect after the short
        timeout instead of waiting out the long one; the pre-vote still asks the
        others, and a member that hears the leader refuses."""
        super()._SyncObj__onNodeDisconnected(node)
        if node == self._SyncObj__raftLeader and self._SyncObj__raftState != _RAFT_STATE.LEADER:
            self._leader_heard_at = float("-inf")
            self._SyncObj__raftElectionDeadline = monotonic() + self._SyncObj__generateRaftTimeout()
            logger.info(
                "%s: connection to the leader %s closed; electing unless it is heard again",
                self._SyncObj__selfNode.id,
                node.id,
            )

    # ------------------------------------------------------------------ catch-up

    def _SyncObj__applyLogEntries(self) -> bool:
        commit = self._SyncObj__raftCommitIndex
        if commit - self._SyncObj__raftLastApplied <= APPLY_CHUNK_ENTRIES:
            return bool(super()._SyncObj__applyLogEntries())
        # pysyncobj applies up to its commit index: show it one chunk at a time.
        deadline = monotonic() + APPLY_TICK_S
        more = False
        try:
            while self._SyncObj__raftLastApplied < commit and monotonic() < deadline:
                applied = self._SyncObj__raftLastApplied
                self._SyncObj__raftCommitIndex = min(commit, applied + APPLY_CHUNK_ENTRIES)
                more = bool(super()._SyncObj__applyLogEntries()) or more
                if self._SyncObj__raftLastApplied == applied:
                    break  # nothing applied (pysyncobj logged why): don't spin
        finally:
            self._SyncObj__raftCommitIndex = commit
        return more
