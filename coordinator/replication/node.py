"""One coordinator replica: pysyncobj orders entries, ``CoordinatorState`` applies them.

Theory of operation
-------------------
``ReplicatedCoordinator`` owns a pysyncobj node (``_RaftNode``) and a raft thread that
ticks it. The replicated state machine is ``_StateMachine``: its one ``@replicated``
method takes a versioned ``LogBatch`` (coordinator/replication/codec.py) and applies each
entry to a ``CoordinatorState`` in log order, on every node, under the state lock.

- Durability (docs/protocol.md, safety rule 7): the Raft log, term and vote live in ``LmdbJournal``
  (journal.py says exactly what is synced when); ``BarrierTransport`` makes every queued
  journal write durable before any message leaves the node. A write the journal cannot
  store (its map full at ``journal_map_bytes_max``, an I/O error) stops the node: the
  raft thread ends before another tick, so nothing it could not store is acknowledged
  or counted, one CRITICAL line says why, waiting proposals are answered UNKNOWN, and
  from then on the node leads nothing and refuses proposals (NOT_LEADER). Snapshots go to
  ``fullDumpFile`` in the data dir, written on the raft thread (``useFork=False``), and
  the journal fsyncs a snapshot before it forgets the entries the snapshot covers.
- Safety: ``TruncationSafeSyncObj`` (raft_patch.py) stops the follower from truncating
  entries it already acknowledged.
- Security: every Raft connection is authenticated and encrypted with the cluster secret
  (pysyncobj's ``password``: PBKDF2 -> Fernet). Without it, pysyncobj unpickles whatever
  reaches its port, so a node refuses to start without a secret.
- Outcomes (rule 8): ``propose`` answers NOT_LEADER or OVERLOADED only when it refused
  before anything was sent; pysyncobj's LEADER_CHANGED, a lost leadership and timeouts
  are UNKNOWN: the caller resolves them by reading state, never by a blind retry.
- Backpressure (rule 10): at most ``proposals_inflight_max`` proposals wait for an
  outcome; beyond that ``propose`` answers OVERLOADED at once instead of letting the
  leader's queue grow until heartbeats starve and followers start elections.
- Membership (membership.py): ``config.nodes`` only bootstraps a new data dir; after
  that the member set is what the log says (recorded in the journal with every change),
  and ``change_members`` adds or removes one member at a time through the log.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import fcntl
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from pysyncobj import FAIL_REASON, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.syncobj import SyncObjException
from pysyncobj.transport import TCPTransport

from coordinator.core.entries import Entry
from coordinator.core.errors import InvariantError
from coordinator.core.leader import ProposeResult, ProposeStatus
from coordinator.core.limits import Limits
from coordinator.core.state import Applied, CoordinatorState
from coordinator.replication.codec import CodecError, decode_batch, encode_batch
from coordinator.replication.journal import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_FORMAT_ATTRIBUTE,
    SNAPSHOT_FORMATS_READ,
    JournalError,
    JournalWriteError,
    LmdbJournal,
)
from coordinator.replication.membership import (
    MembershipRefused,
    MembershipSyncObj,
    check_add,
    check_quorum_after,
    check_remove,
    from_node,
    to_node,
)

__all__ = [
    "ChangeResult",
    "ChangeStatus",
    "MemberStatus",
    "NodeAddress",
    "ProposeResult",
    "ProposeStatus",
    "RaftTiming",
    "ReplicatedCoordinator",
    "ReplicationConfig",
    "ReplicationError",
    "ReplicationStatus",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

JOURNAL_DIR = "raft-journal"
SNAPSHOT_FILE = "raft-snapshot.gz"
LOCK_FILE = "LOCK"


class ReplicationError(Exception):
    """A configuration or data-dir problem the operator must fix; the message is one
    sentence that says what to do."""


class ChangeStatus(Enum):
    APPLIED = "APPLIED"  # committed and applied on the leader
    REFUSED = "REFUSED"  # checked and refused before anything was proposed
    NOT_LEADER = "NOT_LEADER"  # not applied: ask the leader
    UNKNOWN = "UNKNOWN"  # maybe applied: look at the members (rule 8)


@dataclass(frozen=True, kw_only=True)
class ChangeResult:
    status: ChangeStatus
    message: str = ""
    index: int = 0  # the leader's applied index once the change applied
    members: tuple[NodeAddress, ...] = ()


@dataclass(frozen=True, kw_only=True)
class NodeAddress:
    node_id: str
    raft: str  # "127.0.0.1:7001"
    grpc: str


# Raft timing defaults, chosen from measurements on a busy 2-core machine
# (docs/operations.md, "Elections and heartbeats"; scripts/measure_elections.py). The
# election timeout is how long a follower waits out a leader that fell silent with its
# connection open: long, because a leader starved of the CPU for ~0.6 s was measured
# on a loaded machine. A leader whose process died is replaced after a short timeout
# instead (elections.py: its followers see its connections close).
ELECTION_TIMEOUT_MIN_MS = 1000
ELECTION_TIMEOUT_MAX_MS = 2000
HEARTBEAT_MS = 100


@dataclass(frozen=True, kw_only=True)
class RaftTiming:
    """What an operator may tune (`concord serve --election-timeout-min-ms` ...)."""

    election_timeout_min_ms: int = ELECTION_TIMEOUT_MIN_MS
    election_timeout_max_ms: int = ELECTION_TIMEOUT_MAX_MS
    heartbeat_ms: int = HEARTBEAT_MS


@dataclass(frozen=True, kw_only=True)
class ReplicationConfig:
    node_id: str
    nodes: tuple[NodeAddress, ...]  # every member, self included
    data_dir: Path
    secret: str
    limits: Limits = field(default_factory=Limits)
    election_timeout_ms: tuple[int, int] = (ELECTION_TIMEOUT_MIN_MS, ELECTION_TIMEOUT_MAX_MS)
    # Leader heartbeat/AppendEntries period; pysyncobj requires < election minimum / 3.
    heartbeat_ms: int = HEARTBEAT_MS
    # Longest the raft thread sleeps when idle (proposals and messages wake it at once).
    tick_ms: int = 10
    proposals_inflight_max: int = 2000
    # A proposal with no outcome after this long is answered UNKNOWN.
    proposal_timeout_ms: int = 5000
    # A leader that heard from no majority for this long steps down (pysyncobj's
    # leaderFallbackTimeout, default 30 s): shortens the two-leader window (rule 9).
    leader_fallback_ms: int = 1500
    # A connection silent this long is dropped; never below the election maximum
    # (pysyncobj requires it: a connection must outlive a leader's silence).
    connection_timeout_ms: int = 1000
    connection_retry_ms: int = 200
    # Compact the log into a snapshot once it holds this many entries. A compaction
    # pickles the whole state on the raft thread, so fewer entries would stall it more
    # often; more make a restarted node replay a longer log before it can help form a
    # majority, which lengthens the next failover (docs/performance.md).
    log_compaction_entries_min: int = 5_000
    log_compaction_interval_s: int = 300
    # Larger entries take pysyncobj's chunked path (not covered by the truncation guard).
    append_entries_batch_bytes: int = 1 << 20
    # The journal's LMDB map: its size at start, and how far it may grow (doubling)
    # when full. Beyond that bound the node stops rather than lose a write.
    journal_map_bytes: int = 1 << 30
    journal_map_bytes_max: int = 16 << 30

    def member(self, node_id: str) -> NodeAddress:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ReplicationError(
            f"node id {node_id!r} is not among the cluster members "
            f"{[n.node_id for n in self.nodes]}; fix --node-id or the member list"
        )


def raft_bind_address(raft: str) -> str | None:
    """Where this node listens for Raft: the address it is known by when that is an IP
    (pysyncobj would otherwise listen on every interface of the host, whatever the
    address names); None (every interface, pysyncobj's way) for a host name, which
    may not resolve to a local interface at start (a container's service name)."""
    host = raft.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return raft


@dataclass
class _Transfer:
    """A leadership transfer under way (raft thread only)."""

    target: str | None  # the target's Raft address; None: the most caught-up follower
    deadline: float  # time.monotonic(): give up (and let proposals through) after it
    callback: Callable[[bool], None]
    sent: bool = False  # TimeoutNow went out


@dataclass(frozen=True, kw_only=True)
class MemberStatus:
    node_id: str
    raft: str
    reachable: bool
    grpc: str = ""


@dataclass(frozen=True, kw_only=True)
class ReplicationStatus:
    node_id: str
    leader_id: str | None
    term: int
    commit_index: int
    applied_index: int
    members: tuple[MemberStatus, ...]


# ---------------------------------------------------------------------- internals


class BarrierTransport(TCPTransport):  # type: ignore[misc]
    """Persist before you speak, with group commit: messages produced during a tick are
    held, and ``release`` (called by the raft thread before it polls and after each
    tick) makes the journal durable once, then sends them. One fsync covers every
    entry appended and acknowledged in that tick.

    A leader's AppendEntries go out *before* that fsync, so its disk and its
    followers' work in parallel. That is safe (Raft allows it): the leader counts its
    own copy toward a commit only when it processes a follower's acknowledgement, and
    that happens in a later tick, after this fsync has returned. Everything else (a
    follower's acknowledgement, a vote) waits for the fsync: it promises durability."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[tuple[Any, Any]] = []

    def send(self, node: Any, message: Any) -> bool:
        self._held.append((node, message))
        return True

    def release(self) -> None:
        held, self._held = self._held, []
        promises = []
        for node, message in held:
            if isinstance(message, dict) and message.get("type") in LEADER_REQUESTS:
                super().send(node, message)
            else:
                promises.append((node, message))
        self._syncObj.conf.journalFile.flush()
        for node, message in promises:
            super().send(node, message)


# Messages that only a leader sends and that promise nothing about its own disk.
LEADER_REQUESTS = frozenset({"append_entries"})


class UndecodableEntry(Exception):
    """A committed log entry this node cannot decode: it stops rather than diverge."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(
            f"log entry {index} cannot be decoded ({why}): written by a newer Concord, or "
            "damaged; upgrade this node (it resumes from its log and applies the entry)"
        )
        self.index = index


class _StateMachine(SyncObjConsumer):  # type: ignore[misc]
    """Holds the replicated ``CoordinatorState``. pysyncobj snapshots the attributes set
    after ``SyncObjConsumer.__init__`` (``state`` and its format mark)."""

    def __init__(
        self, limits: Limits, on_apply: Callable[[int, Entry, Applied], None] | None
    ) -> None:
        self.lock = threading.RLock()
        self.on_apply = on_apply
        self.failure: BaseException | None = None
        super().__init__()
        self.state = CoordinatorState(limits)
        self.snapshot_format = SNAPSHOT_FORMAT  # checked at start (journal.py)

    def _deserialize(self, data: dict[str, Any]) -> None:
        with self.lock:
            super()._deserialize(data)
            found = data.get(SNAPSHOT_FORMAT_ATTRIBUTE, 1)
            if found in SNAPSHOT_FORMATS_READ:
                # Read in a format journal.py accepts; written from now on in this one.
                self.snapshot_format = SNAPSHOT_FORMAT
            else:
                # Kept, so the snapshot this node writes next still says what it holds
                # and a restart refuses it (journal.py) instead of reading it as ours.
                logger.critical(
                    "a snapshot of format %r was installed, but this concord reads formats "
                    "%s only: upgrade this node",
                    found,
                    SNAPSHOT_FORMATS_READ,
                )

    @replicated  # type: ignore[misc]
    def apply_batch(self, data: bytes) -> tuple[int, tuple[Applied, ...]]:
        index = self._syncObj.raftLastApplied + 1
        try:
            batch = decode_batch(data)
        except CodecError as error:
            # Only a leader's encode_batch writes entries, so an entry this node cannot
            # decode was written by another version (a newer leader during a rolling
            # upgrade) or damaged. Skipping it would let this replica diverge from those
            # that apply it: stop, as for a broken invariant, and apply it after an
            # upgrade (the log still holds it).
            self.failure = UndecodableEntry(index, str(error))
            raise self.failure from None
        results = []
        with self.lock:
            for entry in batch:
                try:
                    applied = self.state.apply(entry)
                except InvariantError as error:
                    self.failure = error
                    raise
                results.append(applied)
        if self.on_apply is not None:
            for entry, applied in zip(batch, results, strict=True):
                try:
                    self.on_apply(index, entry, applied)
                except Exception:
                    logger.exception("on_apply callback failed at index %d", index)
        return index, tuple(results)


class _RaftNode(MembershipSyncObj):
    pass


class _GrpcDirectory(collections.abc.Mapping[str, str]):
    """node id -> gRPC address of the current members, read live (for forwarding)."""

    def __init__(self, members: Callable[[], tuple[NodeAddress, ...]]) -> None:
        self._members = members

    def __getitem__(self, node_id: str) -> str:
        for member in self._members():
            if member.node_id == node_id:
                return member.grpc
        raise KeyError(node_id)

    def __iter__(self) -> Any:
        return iter([m.node_id for m in self._members()])

    def __len__(self) -> int:
        return len(self._members())


@dataclass
class _Pending:
    callback: Callable[[ProposeResult], None]
    deadline: float
    done: bool = False


@dataclass
class _Proposals:
    """Proposals waiting for an outcome; each is answered exactly once."""

    limit: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: dict[int, _Pending] = field(default_factory=dict)
    by_deadline: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    next_token: int = 0

    def add(
        self, callbacks: Sequence[Callable[[ProposeResult], None]], deadline: float
    ) -> list[int] | None:
        """A token for each callback, or None (none added) when they do not all fit."""
        with self.lock:
            if len(self.waiting) + len(callbacks) > self.limit:
                return None
            tokens = []
            for callback in callbacks:
                self.next_token += 1
                token = self.next_token
                self.waiting[token] = _Pending(callback, deadline)
                self.by_deadline.append((deadline, token))
                tokens.append(token)
            return tokens

    def take(self, token: int) -> _Pending | None:
        with self.lock:
            return self.waiting.pop(token, None)

    def take_expired(self, now: float) -> list[_Pending]:
        expired = []
        with self.lock:
            while self.by_deadline and self.by_deadline[0][0] <= now:
                _, token = self.by_deadline.popleft()
                pending = self.waiting.pop(token, None)
                if pending is not None:
                    expired.append(pending)
        return expired

    def take_all(self) -> list[_Pending]:
        with self.lock:
            taken = list(self.waiting.values())
            self.waiting.clear()
            self.by_deadline.clear()
            return taken


def _answer(pending: _Pending, result: ProposeResult) -> None:
    try:
        pending.callback(result)
    except Exception:
        logger.exception("propose callback failed")


# ---------------------------------------------------------------------- public


class ReplicatedCoordinator:
    def __init__(
        self,
        config: ReplicationConfig,
        on_apply: Callable[[int, Entry, Applied], None] | None = None,
    ) -> None:
        if not config.secret:
            raise ReplicationError(
                "no cluster secret: set a cluster secret (--secret or CONCORD_SECRET), the "
                "same on every node, so Raft traffic is authenticated and encrypted"
            )
        self._config = config
        me = config.member(config.node_id)
        ids = [n.node_id for n in config.nodes]
        raft_addresses = [n.raft for n in config.nodes]
        if len(set(ids)) != len(ids) or len(set(raft_addresses)) != len(raft_addresses):
            raise ReplicationError(
                f"cluster members {ids} repeat a node id or raft address; list each once"
            )
        self._closed = False
        self._close_lock = threading.Lock()
        self.failure: str | None = None  # why this node stopped (a journal write failed)
        self._proposals = _Proposals(config.proposals_inflight_max)
        self.proposals_overloaded = 0  # refused by backpressure (a metric)
        # Calls into pysyncobj that must run on the raft thread (it is not thread-safe).
        self._raft_calls: collections.deque[Callable[[], None]] = collections.deque()
        self._transfer: _Transfer | None = None  # raft thread only
        # Proposals waiting for the raft thread: everything queued by then travels as one
        # LogBatch, one Raft entry (group commit: one journal sync, one round for many).
        # Queued in groups: the entries of one ``propose_together`` stay in one batch.
        self._queued: list[list[tuple[Entry, int]]] = []
        self._queued_lock = threading.Lock()

        data_dir = Path(config.data_dir)
        self._lock_fd = self._lock_data_dir(data_dir)
        try:
            self._journal = LmdbJournal(
                data_dir / JOURNAL_DIR,
                identity={"node_id": config.node_id, "members": sorted(ids)},
                dump_path=data_dir / SNAPSHOT_FILE,
                map_bytes=config.journal_map_bytes,
                map_bytes_max=config.journal_map_bytes_max,
            )
        except JournalError as error:
            os.close(self._lock_fd)
            raise ReplicationError(str(error)) from None
        try:
            members = self._starting_members(me)
        except ReplicationError:
            self._release_files()
            raise
        self._members = members
        self._journal.record_members([_as_record(m) for m in members])
        try:
            self._journal.flush()
        except JournalError as error:
            self._release_files()
            raise ReplicationError(f"{error}; free space or give it a larger map") from None

        self._machine = _StateMachine(config.limits, on_apply)
        low_ms, high_ms = config.election_timeout_ms
        conf = SyncObjConf(
            password=config.secret,
            autoTick=False,
            journalFile=self._journal,
            fullDumpFile=str(data_dir / SNAPSHOT_FILE),
            useFork=False,
            appendEntriesUseBatch=False,
            appendEntriesPeriod=config.heartbeat_ms / 1000,
            raftMinTimeout=low_ms / 1000,
            raftMaxTimeout=high_ms / 1000,
            leaderFallbackTimeout=config.leader_fallback_ms / 1000,
            connectionTimeout=max(config.connection_timeout_ms, high_ms) / 1000,
            connectionRetryTime=config.connection_retry_ms / 1000,
            commandsQueueSize=config.proposals_inflight_max * 2,
            logCompactionMinEntries=config.log_compaction_entries_min,
            logCompactionMinTime=config.log_compaction_interval_s,
            appendEntriesBatchSizeBytes=config.append_entries_batch_bytes,
            maxBindRetries=1,
            dynamicMembershipChange=True,
            bindAddress=raft_bind_address(me.raft),
        )
        try:
            conf.validate()
        except AssertionError:
            self._release_files()
            raise ReplicationError(
                f"replication timing is inconsistent (election {config.election_timeout_ms} "
                f"ms, heartbeat {config.heartbeat_ms} ms): the election minimum must exceed 3 "
                f"heartbeats and be below the maximum, and the leader fallback must exceed "
                f"a heartbeat"
            ) from None
        others = [to_node(n) for n in members if n.node_id != config.node_id]
        try:
            self._raft = _RaftNode(
                to_node(me),
                others,
                conf,
                consumers=[self._machine],
                transportClass=BarrierTransport,
                on_members_changed=self._on_members_changed,
            )
        except SyncObjException:
            self._release_files()
            raise ReplicationError(
                f"cannot listen on raft address {me.raft}: it is in use or not local; free "
                f"the port or fix the member list"
            ) from None
        self._raft.addOnTickCallback(self._run_raft_calls)
        self._raft.addOnTickCallback(self._propose_queued)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"raft-{config.node_id}", daemon=True
        )
        self._thread.start()

    def _starting_members(self, me: NodeAddress) -> tuple[NodeAddress, ...]:
        """The member set as the log left it (the flags only bootstrap a new data dir)."""
        recorded = self._journal.members()
        if recorded is None:
            return self._config.nodes
        members = tuple(NodeAddress(**m) for m in recorded)
        mine = [m for m in members if m.node_id == me.node_id]
        if mine != [me]:
            raise ReplicationError(
                f"data dir {self._config.data_dir} belongs to node {me.node_id} at "
                f"{mine[0].raft if mine else '?'} (raft), {mine[0].grpc if mine else '?'} "
                f"(grpc), not at {me.raft}, {me.grpc}: a member's addresses change only by "
                f"removing it and adding it again"
            )
        if {(m.node_id, m.raft) for m in members} != {
            (n.node_id, n.raft) for n in self._config.nodes
        }:
            logger.warning(
                "node %s: members from the log are %s; the member flags (%s) are ignored",
                me.node_id,
                [m.node_id for m in members],
                [n.node_id for n in self._config.nodes],
            )
        return members

    def _on_members_changed(self, nodes: list[Any]) -> None:
        """Raft thread: pysyncobj's configuration changed (appended, truncated or loaded
        from a snapshot). Persisted with the next flush, before any message leaves."""
        members = tuple(sorted((_address_of(from_node(n)) for n in nodes), key=_by_id))
        self._members = members
        self._journal.record_members([_as_record(m) for m in members])

    @staticmethod
    def _lock_data_dir(data_dir: Path) -> int:
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise ReplicationError(
                f"cannot use data dir {data_dir} ({error.strerror}); create it or fix its "
                f"permissions"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ReplicationError(
                f"data dir {data_dir} is in use by another running node; stop it or give "
                f"this node its own data dir"
            ) from None
        return fd

    def _release_files(self) -> None:
        self._journal._destroy()
        os.close(self._lock_fd)

    # ------------------------------------------------------------------ raft thread

    def _run(self) -> None:
        tick_s = self._config.tick_ms / 1000
        raft = self._raft
        transport = raft._SyncObj__transport
        raft.addOnTickCallback(transport.release)
        try:
            while not self._stopping.is_set():
                try:
                    raft.doTick(tick_s)
                except JournalWriteError as error:
                    self._stop_on_journal_failure(error)
                    return
                except Exception:
                    failure = self._machine.failure
                    if isinstance(failure, UndecodableEntry):
                        logger.critical("node %s stops: %s", self._config.node_id, failure)
                        self.failure = str(failure)
                        return
                    if failure is not None:
                        logger.critical(
                            "node %s stops: the state machine broke an invariant",
                            self._config.node_id,
                            exc_info=True,
                        )
                        return
                    logger.exception("raft tick failed on node %s", self._config.node_id)
                try:
                    transport.release()
                except JournalWriteError as error:
                    self._stop_on_journal_failure(error)
                    return
                for pending in self._proposals.take_expired(time.monotonic()):
                    _answer(pending, ProposeResult(ProposeStatus.UNKNOWN))
        finally:
            raft._doDestroy()  # unbinds, closes connections, flushes and closes the journal
            notifier = getattr(raft, "_SyncObj__pipeNotifier", None)
            if notifier is not None:
                os.close(notifier._PipeNotifier__pipeR)
                os.close(notifier._PipeNotifier__pipeW)

    def _stop_on_journal_failure(self, error: JournalWriteError) -> None:
        """Raft thread, before any further tick: nothing the failed write spoke for
        (an acknowledgement, a vote, the leader's own copy of an entry) may count."""
        self._stopping.set()
        if self.failure is None:
            self.failure = str(error)
            logger.critical(
                "node %s stops: %s; it acknowledges nothing more and leads nothing. Nothing "
                "it could not store was acknowledged: restart it with a larger "
                "journal_map_bytes_max or more disk space, and it resumes from its log",
                self._config.node_id,
                error,
            )
        for pending in self._proposals.take_all():
            _answer(pending, ProposeResult(ProposeStatus.UNKNOWN))

    def _on_outcome(self, tokens: tuple[int, ...], result: Any, error: int) -> None:
        """The outcome of one LogBatch, answered to each proposal it carried."""
        applied: tuple[Applied, ...] = ()
        if error == FAIL_REASON.SUCCESS:
            index, applied = result
            if len(applied) != len(tokens):  # undecodable batch: one rejection for all
                applied = (applied[0],) * len(tokens)
        for position, token in enumerate(tokens):
            pending = self._proposals.take(token)
            if pending is None:
                continue  # already answered (timeout or close)
            if error == FAIL_REASON.SUCCESS:
                outcome = ProposeResult(
                    ProposeStatus.APPLIED, applied=applied[position], index=index
                )
            elif error in (FAIL_REASON.QUEUE_FULL,):
                self.proposals_overloaded += 1
                outcome = ProposeResult(ProposeStatus.OVERLOADED, leader_id=self.leader_id())
            elif error in (
                FAIL_REASON.MISSING_LEADER,
                FAIL_REASON.NOT_LEADER,
                FAIL_REASON.DISCARDED,
            ):
                # Refused before it entered a log, or its log slot went to another entry.
                outcome = ProposeResult(ProposeStatus.NOT_LEADER, leader_id=self.leader_id())
            else:  # LEADER_CHANGED, UNKNOWN_OUTCOME, REQUEST_DENIED: maybe applied
                outcome = ProposeResult(ProposeStatus.UNKNOWN, leader_id=self.leader_id())
            _answer(pending, outcome)

    def _propose_queued(self) -> None:
        """Raft thread, once per tick: hand everything proposed since the last tick to
        pysyncobj as LogBatches of at most ``entry_batch_max`` entries (held back while
        a leadership transfer is under way). A group proposed together is never split
        across batches unless it alone exceeds the limit."""
        if self._transferring():
            return
        with self._queued_lock:
            queued, self._queued = self._queued, []
        size = self._config.limits.entry_batch_max
        chunk: list[tuple[Entry, int]] = []
        for group in queued:
            if chunk and len(chunk) + len(group) > size:
                self._apply_chunk(chunk)
                chunk = []
            chunk.extend(group)
            while len(chunk) > size:  # one group larger than a batch
                self._apply_chunk(chunk[:size])
                chunk = chunk[size:]
        if chunk:
            self._apply_chunk(chunk)

    def _apply_chunk(self, chunk: list[tuple[Entry, int]]) -> None:
        tokens = tuple(token for _, token in chunk)
        self._machine.apply_batch(
            encode_batch([entry for entry, _ in chunk]),
            callback=lambda result, error: self._on_outcome(tokens, result, error),
        )

    # ------------------------------------------------------------------ proposals

    def propose(self, entry: Entry, callback: Callable[[ProposeResult], None]) -> None:
        """Replicate ``entry``; ``callback`` gets exactly one outcome, on the raft thread
        or (for refusals) on the caller's thread. Never blocks."""
        self.propose_together(((entry, callback),))

    def propose_together(
        self, proposals: Sequence[tuple[Entry, Callable[[ProposeResult], None]]]
    ) -> None:
        """Replicate several entries in one LogBatch (one Raft entry, one round): the
        entries of one leader proposal, e.g. a commit with its begin and votes. Queued
        one by one, the raft thread could take the first before the rest arrive and
        spend a second round on them. Each callback gets exactly one outcome, as for
        ``propose``; backpressure refuses the whole group or none of it."""
        if self._closed or not self.is_leader():
            self._refuse(proposals, ProposeStatus.NOT_LEADER)
            return
        deadline = time.monotonic() + self._config.proposal_timeout_ms / 1000
        tokens = self._proposals.add([callback for _, callback in proposals], deadline)
        if tokens is None:
            self.proposals_overloaded += len(proposals)
            self._refuse(proposals, ProposeStatus.OVERLOADED)
            return
        group = [(entry, token) for (entry, _), token in zip(proposals, tokens, strict=True)]
        with self._queued_lock:
            self._queued.append(group)
            first = len(self._queued) == 1
        if first:
            # Wake the raft thread (it may be waiting for network events) to send it.
            notifier = getattr(self._raft, "_SyncObj__pipeNotifier", None)
            if notifier is not None:
                notifier.notify()

    def _refuse(
        self,
        proposals: Sequence[tuple[Entry, Callable[[ProposeResult], None]]],
        status: ProposeStatus,
    ) -> None:
        refused = ProposeResult(status, leader_id=self.leader_id())
        for _, callback in proposals:
            callback(refused)

    async def propose_async(self, entry: Entry, timeout_s: float = 5.0) -> ProposeResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ProposeResult] = loop.create_future()

        def settle(result: ProposeResult) -> None:
            if not future.done():
                future.set_result(result)

        def deliver(result: ProposeResult) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(settle, result)

        self.propose(entry, deliver)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            return ProposeResult(ProposeStatus.UNKNOWN, leader_id=self.leader_id())

    def transfer_leadership(self, node_id: str | None, callback: Callable[[bool], None]) -> None:
        """Hand leadership to ``node_id`` (None: the most caught-up follower) with Raft
        TimeoutNow. ``callback(sent)`` says only whether the request went out: watch
        ``leader_id()`` for the outcome.

        As the Raft thesis (§3.10) says, the leader stops appending new entries during
        a transfer: proposals wait for at most the minimum election timeout. Otherwise,
        under load, the target is never caught up at the moment pysyncobj checks (it
        refuses), or the leader appends after sending TimeoutNow, the target's log is
        then behind, its election fails and the old leader is elected again."""
        target = None if node_id is None else self._member(node_id).raft
        window_s = self._config.election_timeout_ms[0] / 1000

        def call() -> None:
            if self._transfer is not None and not self._transfer.sent:
                self._transfer.callback(False)
            self._transfer = _Transfer(target, time.monotonic() + window_s, callback)

        self._raft_calls.append(call)

    def _transferring(self) -> bool:
        """Raft thread: True while a transfer holds proposals back; sends TimeoutNow as
        soon as pysyncobj finds the target caught up (it refuses until then)."""
        transfer = self._transfer
        if transfer is None:
            return False
        if time.monotonic() > transfer.deadline or not self._raft._isLeader():
            self._transfer = None
            if not transfer.sent:
                transfer.callback(False)
            return False
        if not transfer.sent:

            def answered(_: Any, error: Any) -> None:  # pysyncobj calls it at once
                transfer.sent = error == FAIL_REASON.SUCCESS

            self._raft.transferLeadership(transfer.target, callback=answered)
            if transfer.sent:
                transfer.callback(True)
        return True

    def _run_raft_calls(self) -> None:
        while self._raft_calls:
            try:
                self._raft_calls.popleft()()
            except Exception:
                logger.exception("raft call failed")

    # ------------------------------------------------------------------ reads

    def read(self, fn: Callable[[CoordinatorState], T]) -> T:
        """``fn`` sees the applied state of this node, with no entry half-applied."""
        with self._machine.lock:
            return fn(self._machine.state)

    def is_leader(self) -> bool:
        return self.failure is None and bool(self._raft._isLeader())

    def leader_ready(self) -> bool:
        """Leader, and its applied state is current: the no-op entry it appended when it
        was elected has applied, so everything committed in earlier terms has too. A
        leader answers reads only then; before, it may not yet know a round its
        predecessor committed (pysyncobj calls it leader as soon as it is elected)."""
        noop = getattr(self._raft, "_SyncObj__noopIDx", None)
        return self.is_leader() and noop is not None and self._raft.raftLastApplied >= noop

    def leader_id(self) -> str | None:
        if self.failure is not None:
            return None  # stopped: it knows of no leader any more
        leader = self._raft._getLeader()
        if leader is None:
            return None
        for member in self._members:
            if member.raft == leader.address:
                return member.node_id
        return None

    # ------------------------------------------------------------------ membership

    def members(self) -> tuple[NodeAddress, ...]:
        """The current members (as of this node's log end), sorted by node id."""
        return self._members

    @property
    def grpc_directory(self) -> collections.abc.Mapping[str, str]:
        return _GrpcDirectory(self.members)

    def _member(self, node_id: str) -> NodeAddress:
        for member in self._members:
            if member.node_id == node_id:
                return member
        raise ReplicationError(
            f"unknown node id {node_id!r}; members are {[m.node_id for m in self._members]}"
        )

    def change_members(
        self,
        *,
        add: NodeAddress | None = None,
        remove: str | None = None,
        callback: Callable[[ChangeResult], None],
    ) -> None:
        """Leader: add or remove one member through the log (pysyncobj MEMBERSHIP
        entry), after the checks of membership.py. ``callback`` gets one outcome, on the
        raft thread; a change that neither applies nor fails gets none (the caller
        bounds its wait and treats that as UNKNOWN)."""
        assert (add is None) != (remove is None), "one change at a time"

        def done(_: Any, error: int) -> None:
            if error == FAIL_REASON.SUCCESS:
                outcome = ChangeResult(
                    status=ChangeStatus.APPLIED,
                    index=int(self._raft.raftLastApplied),
                    members=self._members,
                )
            elif error == FAIL_REASON.REQUEST_DENIED:
                outcome = ChangeResult(
                    status=ChangeStatus.REFUSED,
                    message="another membership change is in progress; retry once it applied",
                )
            elif error in (
                FAIL_REASON.QUEUE_FULL,
                FAIL_REASON.MISSING_LEADER,
                FAIL_REASON.NOT_LEADER,
                FAIL_REASON.DISCARDED,
            ):
                outcome = ChangeResult(
                    status=ChangeStatus.NOT_LEADER, message="leadership moved; not applied"
                )
            else:
                outcome = ChangeResult(status=ChangeStatus.UNKNOWN, message=f"pysyncobj {error}")
            callback(outcome)

        def call() -> None:
            raft = self._raft
            if not raft._isLeader():
                callback(ChangeResult(status=ChangeStatus.NOT_LEADER, message="not the leader"))
                return
            members = self._members
            others = {node.address: node for node in raft.otherNodes}
            connected = {a for a, node in others.items() if raft.isNodeConnected(node)}
            try:
                if not raft.leader_ready_for_change():
                    raise MembershipRefused(
                        "the leader was elected a moment ago and has not applied its first "
                        "entry yet; retry in a moment"
                    )
                if raft.membership_change_pending():
                    raise MembershipRefused(
                        "another membership change is in progress (not applied yet); retry "
                        "once `concord status` shows it"
                    )
                if add is not None:
                    check_add(members, add)
                    # The new node was probed by the caller; it counts as reachable.
                    check_quorum_after(
                        len(members) + 1, 1 + len(connected) + 1, f"adding {add.node_id}"
                    )
                    raft.addNodeToCluster(to_node(add), callback=done)
                else:
                    target = check_remove(members, remove or "", self._config.node_id)
                    reachable = 1 + len(connected - {target.raft})
                    check_quorum_after(len(members) - 1, reachable, f"removing {target.node_id}")
                    raft.removeNodeFromCluster(others[target.raft], callback=done)
            except MembershipRefused as error:
                callback(ChangeResult(status=ChangeStatus.REFUSED, message=str(error)))

        self._raft_calls.append(call)
        notifier = getattr(self._raft, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            notifier.notify()

    async def change_members_async(
        self, *, add: NodeAddress | None = None, remove: str | None = None, timeout_s: float
    ) -> ChangeResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ChangeResult] = loop.create_future()

        def deliver(result: ChangeResult) -> None:
            def settle() -> None:
                if not future.done():
                    future.set_result(result)

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        self.change_members(add=add, remove=remove, callback=deliver)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            return ChangeResult(
                status=ChangeStatus.UNKNOWN,
                message=f"no outcome within {timeout_s:.0f}s: it may still apply",
            )

    def term(self) -> int:
        return int(self._raft.raftCurrentTerm)

    @property
    def snapshot_carrier(self) -> Any:
        """The replicated state machine object. pysyncobj snapshots its attributes, so a
        value derived from applied entries and set on it from the raft thread (the audit
        chain's head) travels in snapshots with the state."""
        return self._machine

    def status(self) -> ReplicationStatus:
        raft = self._raft
        others = {node.address: node for node in raft.otherNodes}
        members = tuple(
            MemberStatus(
                node_id=n.node_id,
                raft=n.raft,
                grpc=n.grpc,
                reachable=n.node_id == self._config.node_id
                or (n.raft in others and raft.isNodeConnected(others[n.raft])),
            )
            for n in self._members
        )
        return ReplicationStatus(
            node_id=self._config.node_id,
            leader_id=self.leader_id(),
            term=self.term(),
            commit_index=int(raft.raftCommitIndex),
            applied_index=int(raft.raftLastApplied),
            members=members,
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the raft thread, sync and close the journal, release the port and the
        data dir. Proposals still waiting are answered UNKNOWN. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        self._thread.join()
        for pending in self._proposals.take_all():
            _answer(pending, ProposeResult(ProposeStatus.UNKNOWN))
        os.close(self._lock_fd)

    def __enter__(self) -> ReplicatedCoordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _address_of(member: Any) -> NodeAddress:
    return NodeAddress(node_id=member.node_id, raft=member.raft, grpc=member.grpc)


def _as_record(member: NodeAddress) -> dict[str, str]:
    return {"node_id": member.node_id, "raft": member.raft, "grpc": member.grpc}


def _by_id(member: NodeAddress) -> str:
    return member.node_id
