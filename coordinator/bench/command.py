"""`concord bench`: committed transactions/s and commit latency on this machine, next
to ceilings measured in the same run.

What runs (every process is started here and stopped by its own handle):
- a local 3-node cluster (``LocalCluster``: `concord serve` x3) in a temp dir;
- 4 participant processes (coordinator/bench/agent.py): the real
  ``Participant`` SDK on its own LMDB dir (sync on), voting YES, offering its work as
  transaction actions (it listens to nothing but its cluster);
- in this process, asyncio ``ConcordClient`` loops: ``client.transaction`` with one
  action call per participant (``txn.call(p, "stage", ...)``, concurrently) in its
  body, each relayed by the leader to its participant, then its commit and the wait
  for the decision. The first call registers the transaction (its BeginTxn) before
  it runs, so the begin no longer travels with the commit. Latency is the start of
  the transaction to the commit decision returned. A loop that gets an error or an
  abort starts over.

For each of 1, 2 and 4 participants per transaction: 1 client, then N concurrent
clients (the best of the levels tried is "saturated"). Committed txn/s is counted over
fixed windows after a warm-up and reported as the median of the windows; p50/p99 are
over every transaction that committed inside the windows.

Ceilings, measured in the same run before the cluster starts:
- gRPC: raw unary calls/s of this machine against a trivial servicer (agent.py
  echo, 64 calls in flight), divided by the calls a transaction needs:
  2 client calls (BeginTxn, Commit) + k action calls, each two unary calls (client
  -> leader, leader -> participant) + 2k participant exchanges on the Exchange
  stream (Prepare -> vote, Decide -> ack), each exchange counted as one unary call
  and batching ignored: 2 + 4k.
- Raft: applied entries/s of 3 ``ReplicatedCoordinator`` processes (raft.py) with
  200 proposals in flight, divided by 4 entries per transaction (BeginTxn,
  RequestCommit, RecordVotes, RecordAcks; votes and acks of concurrent transactions
  share entries under load, so this ceiling is conservative).

Failover (2 participants): with one client running, SIGKILL the leader; the time from
the kill to the first commit decision returned for a transaction begun after the kill.
The killed node is restarted before the next kill.

Contended (2 participants, last): every transaction adds 1 to one or two of 4 hot
counters at both participants, in two variants run one after the other on keys of
their own: read-modify-write through the branch (``branch.get`` then ``put``: a
concurrent increment makes the branch vote NO, the transaction aborts with a
``conflict:`` reason and the client retries the increment under a new id) and
``branch.add(key, 1)`` (nothing read, so nothing to conflict; the bound is checked at
Prepare). Reported per variant and client count: committed txn/s, attempts/s, the
abort rate with aborts by conflict and by anything else, p50/p99 of a committed
attempt and of an increment (its retries included), and a check of the counters once
every decision is applied: each must equal the increments that committed (a lost
update would show as fewer).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from coordinator import tracing
from coordinator.bench import raft as bench_raft
from coordinator.bench.agent import ECHO_METHOD
from coordinator.runtime.local_cluster import CLIENT, ClusterError, LocalCluster
from coordinator.security.identity import Role
from coordinator.security.transport import Transport

PARTICIPANT_COUNTS = (1, 2, 4, 8, 16)
COUNT_KEYS = {
    1: "one_participant",
    2: "two_participants",
    4: "four_participants",
    8: "eight_participants",
    16: "sixteen_participants",
}
RAFT_ENTRIES_PER_TXN = 4
RAFT_CEILING_INFLIGHT = 200
GRPC_CEILING_INFLIGHT = 64
READY_WAIT_S = 60.0
CLIENTS_MAX = 256  # the most concurrent clients a level may have
SATURATION_GAIN_MIN = 0.05  # a doubling of the clients that gains less: saturated
TXN_TIMEOUT_S = 10.0
ACTION_TIMEOUT_S = 5.0  # one action call, the leader's relay included
VALUE = "v" * 100  # a ~100-byte work item, the size the gRPC ceilings are measured with
CONTENDED_PARTICIPANTS = 2
ONE_SHOT_PARTICIPANTS = 2  # the one-shot case is measured at this count
SOAK_PARTICIPANTS = 2
SOAK_CLIENTS = 32  # unless --clients says otherwise (its first count)
HOT_KEYS = 4  # counters every contended transaction picks one or two of
CONTENDED_VARIANTS = ("rmw", "add")
INCREMENT_ATTEMPTS_MAX = 100  # an increment given up after this many aborts
COUNTERS_SETTLE_S = 15.0  # the longest wait for every decision to be applied


def grpc_calls_per_txn(participants: int) -> int:
    return 2 + 4 * participants


@dataclass(frozen=True, kw_only=True)
class Plan:
    participant_counts: tuple[int, ...] = PARTICIPANT_COUNTS
    saturate_clients: tuple[int, ...] = (16, 32, 64)
    # Past the last count, keep doubling the clients while the last level was the best
    # and gained SATURATION_GAIN_MIN over the one before, up to this many (0: only the
    # counts above; --clients names its counts exactly).
    saturate_clients_max: int = CLIENTS_MAX
    warmup_s: float = 1.0
    window_s: float = 3.0
    windows: int = 3
    ceiling_s: float = 3.0
    kills: int = 3
    contended_clients: tuple[int, ...] = (1, 16)  # () skips the contended case
    tls: bool = True  # mutual TLS on every link, as deployed (--insecure: plaintext)
    # --soak: only the soak run, reporting memory when this many transactions committed
    soak_committed: tuple[int, ...] = ()
    # --trace-file: every process appends its spans here (scripts/trace_steps.py reads it)
    trace_file: str = ""


QUICK = Plan(
    participant_counts=(1, 2, 4),
    saturate_clients=(32,),
    saturate_clients_max=0,
    warmup_s=0.5,
    window_s=1.5,
    windows=2,
    ceiling_s=1.5,
    kills=1,
    contended_clients=(16,),
)
FULL = Plan()


@dataclass
class LoadResult:
    clients: int
    txn_per_s: float
    window_txn_per_s: list[float]
    p50_ms: float
    p99_ms: float
    committed: int
    aborted: int
    errors: int
    # Median of each part of a committed transaction: the action calls (the begin
    # applied first), then the Commit call (the decision wait included).
    phases_p50_ms: dict[str, float] = field(default_factory=dict)
    # Each error by kind: its class and its message with ids and numbers blanked.
    error_kinds: dict[str, int] = field(default_factory=dict)
    # Raft terms the cluster went through during the level (0: one leader throughout).
    term_changes: int = 0
    # CPU (user + system) per committed transaction over the windows, by role: the
    # leader, the followers, the participants, the client (this process). Far steadier
    # under a noisy machine than txn/s, and it says where a transaction's cost is.
    cpu_ms_per_txn: dict[str, float] = field(default_factory=dict)
    # Raft entries (the leader's commit index) per committed transaction over the windows.
    raft_entries_per_txn: float = 0.0


@dataclass
class ContendedResult:
    variant: str
    clients: int
    txn_per_s: float  # committed, median of the windows
    window_txn_per_s: list[float]
    attempts_per_s: float  # committed + aborted
    abort_rate: float  # aborted / attempts
    aborts: dict[str, int]  # "conflict" (the isolation check said NO), "other"
    p50_ms: float  # a committed attempt: its start to its decision
    p99_ms: float
    increment_p50_ms: float  # an increment, from its first attempt to its commit
    increment_p99_ms: float
    committed: int
    errors: int  # calls that failed (the increment's outcome is then unknown)
    gave_up: int  # increments aborted INCREMENT_ATTEMPTS_MAX times in a row
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class Ceilings:
    grpc_unary_calls_per_s: float
    raft_applied_entries_per_s: float
    raft_elections: int
    raft_not_applied: dict[str, int] = field(default_factory=dict)

    def txn_per_s(self, participants: int) -> dict[str, float]:
        by_grpc = self.grpc_unary_calls_per_s / grpc_calls_per_txn(participants)
        by_raft = self.raft_applied_entries_per_s / RAFT_ENTRIES_PER_TXN
        return {"grpc": by_grpc, "raft": by_raft, "min": min(by_grpc, by_raft)}


class BenchError(Exception):
    pass


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command: state is field 3, utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid: int) -> tuple[float, float]:
    """Resident memory of a process in MiB: all of it (VmRSS), and its anonymous part
    (RssAnon: the heap, without the pages of LMDB files mapped in); (0, 0) once it is
    gone."""
    fields: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon"):
                fields[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields.get("VmRSS", 0.0), fields.get("RssAnon", 0.0)


T = TypeVar("T")


class Roles:
    """The run's processes by role: the leader (as the cluster names it when asked), the
    followers, the participants, the client (this process)."""

    def __init__(self, cluster: LocalCluster, participant_pids: Sequence[int]) -> None:
        self.cluster = cluster
        self.participant_pids = tuple(participant_pids)

    def _by_node(self, measure: Callable[[int], T]) -> tuple[str, T, list[T]]:
        """The leader's id, ``measure`` of its process and of each follower's. Blocking
        (it asks the cluster for its leader)."""
        leader = self.cluster.leader()
        values = {
            # pid 0 names no process: measured as one that is gone (0)
            node_id: measure(node.process.pid if node.process is not None else 0)
            for node_id, node in self.cluster.nodes.items()
        }
        followers = [value for node_id, value in values.items() if node_id != leader]
        return leader, values[leader], followers

    def rss_mib(self) -> dict[str, float]:
        """Resident memory by role (the largest follower and participant), all of it and
        the anonymous part (``<role>_anon``). Blocking."""
        _, leader, followers = self._by_node(process_rss_mib)
        by_role = {
            "leader": leader,
            "followers_max": max(followers),
            "participants_max": max(process_rss_mib(pid) for pid in self.participant_pids),
            "client": process_rss_mib(os.getpid()),
        }
        return {
            key: mib
            for role, (rss, anon) in by_role.items()
            for key, mib in ((role, rss), (f"{role}_anon", anon))
        }

    def sample(self) -> tuple[dict[str, float], int]:
        """CPU seconds used so far by role, and the leader's commit index. Blocking."""
        leader_id, leader, followers = self._by_node(process_cpu_s)
        own = os.times()
        cpu = {
            "leader": leader,
            "followers": sum(followers),
            "participants": sum(process_cpu_s(pid) for pid in self.participant_pids),
            "client": own.user + own.system,
        }
        return cpu, self.cluster.status(leader_id).commit_index


# ---------------------------------------------------------------------- processes


class Processes:
    """Helper processes of the run, each stopped by its own handle."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        ready = self.root / f"{name}.ready"
        ready.unlink(missing_ok=True)
        command = [sys.executable, "-m", "coordinator.bench.agent", *args]
        with (self.root / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [*command, f"--ready-file={ready}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        self._started.append(process)
        return process, ready

    def wait_ready(self, name: str, process: subprocess.Popen[bytes], ready: Path) -> int:
        deadline = time.monotonic() + READY_WAIT_S
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{name} did not start; see {self.root / name}.log")
            time.sleep(0.02)
        port: int = json.loads(ready.read_text())["port"]
        return port

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process in self._started:
            self.stop(process)


# ---------------------------------------------------------------------- ceilings


async def measure_grpc_ceiling(port: int, seconds: float) -> float:
    """Unary calls/s against the echo server, ``GRPC_CEILING_INFLIGHT`` in flight."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)
        payload = VALUE.encode()
        count = 0
        measuring = False
        stop_at = 0.0

        async def loop() -> None:
            nonlocal count
            while True:
                await call(payload, timeout=10)
                if measuring:
                    count += 1
                if stop_at and time.perf_counter() >= stop_at:
                    return

        tasks = [asyncio.create_task(loop()) for _ in range(GRPC_CEILING_INFLIGHT)]
        await asyncio.sleep(min(0.5, seconds / 3))  # warm-up: connection, first calls
        measuring, begun = True, time.perf_counter()
        stop_at = begun + seconds
        await asyncio.gather(*tasks)
        return count / (time.perf_counter() - begun)


def measure_ceilings(processes: Processes, seconds: float) -> Ceilings:
    echo, ready = processes.start("echo", "echo")
    try:
        port = processes.wait_ready("echo", echo, ready)
        grpc_rate = asyncio.run(measure_grpc_ceiling(port, seconds))
    finally:
        processes.stop(echo)
    (level,) = bench_raft.run([RAFT_CEILING_INFLIGHT], seconds)
    return Ceilings(
        grpc_unary_calls_per_s=grpc_rate,
        raft_applied_entries_per_s=level.applied_per_s,
        raft_elections=level.terms,
        raft_not_applied=level.not_applied,
    )


# ---------------------------------------------------------------------- load


class Load:
    """The initiator side: a ConcordClient whose transactions carry the participants'
    work as action calls (agent.py)."""

    def __init__(
        self,
        coordinators: Sequence[str],
        tls: Transport,
        term: Callable[[], int],
        roles: Roles | None = None,
    ) -> None:
        from participant_sdk import ConcordClient

        self.client = ConcordClient(coordinators, tls=tls, call_timeout_s=5.0)
        self.term = term  # the cluster's current Raft term (blocking)
        self.roles = roles
        # the action calls (the begin first), then the commit, in seconds
        self.phases: list[tuple[float, float]] = []
        # Contended case: increments per (participant, counter) that committed, and
        # those whose outcome is unknown (an error: maybe committed).
        self.increments: collections.Counter[tuple[str, str]] = collections.Counter()
        self.unsure: collections.Counter[tuple[str, str]] = collections.Counter()

    async def close(self) -> None:
        await self.client.close()

    async def transaction(self, participants: Sequence[str], one_shot: bool = False) -> bool:
        """One transaction; True when it committed. Raises on errors. ``one_shot``:
        the actions travel inside the commit (``client.run``), no call before it."""
        from participant_sdk import TransactionAborted

        txn_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        work = {"key": f"k-{txn_id}", "value": VALUE}
        if one_shot:
            try:
                await self.client.run(
                    {p: ("stage", work) for p in participants},
                    txn_id=txn_id,
                    timeout_s=TXN_TIMEOUT_S,
                )
            except TransactionAborted:
                return False
            self.phases.append((0.0, time.perf_counter() - t0))
            return True
        try:
            async with self.client.transaction(
                participants, txn_id=txn_id, timeout_s=TXN_TIMEOUT_S
            ) as txn:
                await asyncio.gather(
                    *(txn.call(p, "stage", work, timeout_s=ACTION_TIMEOUT_S) for p in participants)
                )
                t1 = time.perf_counter()
        except TransactionAborted:
            return False
        self.phases.append((t1 - t0, time.perf_counter() - t1))
        return True

    async def run(
        self, participants: Sequence[str], clients: int, plan: Plan, one_shot: bool = False
    ) -> LoadResult:
        from participant_sdk import ConcordError

        done: list[tuple[float, float]] = []  # (finished at, latency s)
        self.phases = []
        counts = {"aborted": 0, "errors": 0}
        error_kinds: collections.Counter[str] = collections.Counter()
        term_before = await asyncio.to_thread(self.term)
        begun = time.perf_counter()
        measure_from = begun + plan.warmup_s
        stop_at = measure_from + plan.window_s * plan.windows

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    committed = await self.transaction(participants, one_shot)
                except (ConcordError, grpc.aio.AioRpcError) as error:
                    counts["errors"] += 1
                    error_kinds[error_kind(error)] += 1
                    await asyncio.sleep(0.01)
                    continue
                finished = time.perf_counter()
                if committed:
                    done.append((finished, finished - started))
                else:
                    counts["aborted"] += 1

        async def sample() -> tuple[tuple[dict[str, float], int], tuple[dict[str, float], int]]:
            if self.roles is None:
                return ({}, 0), ({}, 0)
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            first = await asyncio.to_thread(self.roles.sample)
            await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
            return first, await asyncio.to_thread(self.roles.sample)

        sampled = asyncio.create_task(sample())
        await asyncio.gather(*(loop() for _ in range(clients)))
        (cpu_from, index_from), (cpu_to, index_to) = await sampled
        rates = []
        for window in range(plan.windows):
            low = measure_from + window * plan.window_s
            high = low + plan.window_s
            rates.append(sum(1 for at, _ in done if low <= at < high) / plan.window_s)
        latencies = sorted(lat for at, lat in done if measure_from <= at < stop_at)
        cpu_ms_per_txn = {
            role: round(1000 * (cpu_to[role] - cpu_from[role]) / max(1, len(latencies)), 3)
            for role in cpu_to
        }
        raft_entries_per_txn = round((index_to - index_from) / max(1, len(latencies)), 3)
        phases = [
            round(1000 * statistics.median(p[i] for p in self.phases), 2) if self.phases else 0.0
            for i in range(2)
        ]
        return LoadResult(
            phases_p50_ms=dict(zip(("work", "commit"), phases, strict=True)),
            clients=clients,
            txn_per_s=statistics.median(rates),
            window_txn_per_s=rates,
            p50_ms=1000 * _quantile(latencies, 0.5),
            p99_ms=1000 * _quantile(latencies, 0.99),
            committed=len(latencies),
            aborted=counts["aborted"],
            errors=counts["errors"],
            error_kinds=dict(error_kinds.most_common()),
            term_changes=max(0, await asyncio.to_thread(self.term) - term_before),
            cpu_ms_per_txn=cpu_ms_per_txn,
            raft_entries_per_txn=raft_entries_per_txn,
        )

    async def soak(
        self,
        participants: Sequence[str],
        clients: int,
        checkpoints: Sequence[int],
        say: Callable[[str], None],
    ) -> dict[str, Any]:
        """One-shot transactions at ``clients`` until each checkpoint count committed;
        at each, every role's resident memory and the txn/s since the last one."""
        from participant_sdk import ConcordError

        assert self.roles is not None
        roles = self.roles
        committed = 0
        error_kinds: collections.Counter[str] = collections.Counter()
        marks: list[dict[str, Any]] = []
        done = asyncio.Event()
        term_before = await asyncio.to_thread(self.term)
        started = time.perf_counter()

        async def loop() -> None:
            nonlocal committed
            while not done.is_set():
                try:
                    # not `committed += await ...`: that reads the count before the await
                    ok = await self.transaction(participants, one_shot=True)
                    committed += ok
                except (ConcordError, grpc.aio.AioRpcError) as error:
                    error_kinds[error_kind(error)] += 1
                    await asyncio.sleep(0.01)

        async def watch() -> None:
            since, since_committed = started, 0
            for target in sorted(checkpoints):
                while committed < target:
                    await asyncio.sleep(0.2)
                now, at = time.perf_counter(), committed
                self.phases.clear()  # the client's own bookkeeping, not what is measured
                rss = await asyncio.to_thread(roles.rss_mib)
                marks.append(
                    {
                        "committed": at,
                        "elapsed_s": round(now - started, 1),
                        "txn_per_s": round((at - since_committed) / (now - since), 1),
                        **{f"{role}_rss_mib": round(mib, 1) for role, mib in rss.items()},
                    }
                )
                say(f"  {at:,} committed: leader RSS {rss['leader']:.1f} MiB")
                since, since_committed = now, at
            done.set()

        await asyncio.gather(watch(), *(loop() for _ in range(clients)))
        first, last = marks[0]["leader_rss_mib"], marks[-1]["leader_rss_mib"]
        first_anon, last_anon = marks[0]["leader_anon_rss_mib"], marks[-1]["leader_anon_rss_mib"]
        return {
            "participants": len(participants),
            "clients": clients,
            "checkpoints": marks,
            "leader_rss_ratio": round(last / first, 3) if first else None,
            "leader_anon_rss_ratio": round(last_anon / first_anon, 3) if first_anon else None,
            "errors": sum(error_kinds.values()),
            "error_kinds": dict(error_kinds.most_common()),
            "term_changes": max(0, await asyncio.to_thread(self.term) - term_before),
        }

    async def increment_once(
        self, variant: str, participants: Sequence[str], keys: Sequence[str]
    ) -> str:
        """One attempt at adding 1 to ``keys`` at every participant: "committed", or
        the kind of abort ("conflict", "other"). Raises on errors."""
        from participant_sdk import TransactionAborted

        txn_id = uuid.uuid4().hex
        work = {"how": variant, "keys": list(keys)}
        try:
            async with self.client.transaction(
                participants, txn_id=txn_id, timeout_s=TXN_TIMEOUT_S
            ) as txn:
                await asyncio.gather(
                    *(txn.call(p, "update", work, timeout_s=ACTION_TIMEOUT_S) for p in participants)
                )
        except TransactionAborted as aborted:
            return "conflict" if "conflict: " in aborted.reason else "other"
        return "committed"

    async def run_contended(
        self, variant: str, participants: Sequence[str], clients: int, plan: Plan
    ) -> ContendedResult:
        """``clients`` loops, each incrementing one or two random hot counters at a
        time, retrying an aborted increment under a new transaction id (as the docs
        say to: the retry reads the new value)."""
        from participant_sdk import ConcordError

        hot = hot_keys(variant)
        attempts: list[tuple[float, str, float]] = []  # (finished at, outcome, seconds)
        increments: list[tuple[float, float]] = []  # (committed at, seconds since first try)
        counts = {"errors": 0, "gave_up": 0}
        begun = time.perf_counter()
        measure_from = begun + plan.warmup_s
        stop_at = measure_from + plan.window_s * plan.windows

        async def loop(index: int) -> None:
            rng = random.Random(f"{variant}-{clients}-{index}")
            while time.perf_counter() < stop_at:
                keys = sorted(rng.sample(hot, rng.choice((1, 2))))
                first = time.perf_counter()
                for _ in range(INCREMENT_ATTEMPTS_MAX):
                    started = time.perf_counter()
                    try:
                        outcome = await self.increment_once(variant, participants, keys)
                    except (ConcordError, grpc.aio.AioRpcError):
                        counts["errors"] += 1
                        self.unsure.update((p, k) for p in participants for k in keys)
                        await asyncio.sleep(0.01)
                        break
                    finished = time.perf_counter()
                    attempts.append((finished, outcome, finished - started))
                    if outcome == "committed":
                        self.increments.update((p, k) for p in participants for k in keys)
                        increments.append((finished, finished - first))
                        break
                    if finished >= stop_at:
                        break
                else:
                    counts["gave_up"] += 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
        measured = [(at, outcome, s) for at, outcome, s in attempts if measure_from <= at < stop_at]
        rates = []
        for window in range(plan.windows):
            low = measure_from + window * plan.window_s
            high = low + plan.window_s
            done = sum(
                1 for at, outcome, _ in measured if outcome == "committed" and low <= at < high
            )
            rates.append(done / plan.window_s)
        latencies = sorted(s for _, outcome, s in measured if outcome == "committed")
        whole = sorted(s for at, s in increments if measure_from <= at < stop_at)
        aborts = collections.Counter(
            outcome for _, outcome, _ in measured if outcome != "committed"
        )
        return ContendedResult(
            variant=variant,
            clients=clients,
            txn_per_s=statistics.median(rates),
            window_txn_per_s=rates,
            attempts_per_s=len(measured) / (stop_at - measure_from),
            abort_rate=(sum(aborts.values()) / len(measured)) if measured else 0.0,
            aborts={"conflict": aborts["conflict"], "other": aborts["other"]},
            p50_ms=1000 * _quantile(latencies, 0.5),
            p99_ms=1000 * _quantile(latencies, 0.99),
            increment_p50_ms=1000 * _quantile(whole, 0.5),
            increment_p99_ms=1000 * _quantile(whole, 0.99),
            committed=len(latencies),
            errors=counts["errors"],
            gave_up=counts["gave_up"],
            counters=await self.check_counters(variant, participants),
        )

    async def check_counters(self, variant: str, participants: Sequence[str]) -> dict[str, int]:
        """The committed counters against the increments that committed, once every
        decision is applied (polled up to ``COUNTERS_SETTLE_S``). ``lost`` counts
        increments that committed and are missing (a lost update would be one);
        ``unexplained`` counts more than committed plus those with unknown outcome."""
        from participant_sdk import ConcordError

        hot = hot_keys(variant)
        deadline = time.monotonic() + COUNTERS_SETTLE_S
        while True:
            lost = unexplained = observed_total = 0
            try:
                values = await self.read_committed(participants, hot)
            except ConcordError as error:
                # A decision applied between the read and its check at Prepare aborts
                # the read (its version changed): read again.
                if time.monotonic() >= deadline:
                    raise BenchError(f"cannot read the {variant} counters: {error}") from error
                await asyncio.sleep(0.05)
                continue
            for p in participants:
                for key, observed in zip(hot, values[p], strict=True):
                    expected = self.increments[(p, key)]
                    observed_total += observed
                    lost += max(0, expected - observed)
                    unexplained += max(0, observed - expected - self.unsure[(p, key)])
            settled = lost == 0 and unexplained == 0
            if settled or time.monotonic() >= deadline:
                expected_total = sum(self.increments[(p, k)] for p in participants for k in hot)
                return {
                    "expected": expected_total,
                    "observed": observed_total,
                    "lost": lost,
                    "unexplained": unexplained,
                }
            await asyncio.sleep(0.05)

    async def read_committed(
        self, participants: Sequence[str], keys: Sequence[str]
    ) -> dict[str, list[int]]:
        """The committed values of ``keys`` at each participant, read through their
        branches (the ``read`` action) in one transaction that writes nothing."""
        async with self.client.transaction(participants, timeout_s=TXN_TIMEOUT_S) as txn:
            read = [
                txn.call(p, "read", list(keys), timeout_s=ACTION_TIMEOUT_S) for p in participants
            ]
            values = await asyncio.gather(*read)
        return dict(zip(participants, values, strict=True))

    async def failover(
        self, cluster: LocalCluster, participants: Sequence[str], settle_s: float = 0.5
    ) -> float:
        """SIGKILL the leader under a 1-client load; seconds from the kill to the first
        commit decision returned for a transaction begun after it."""
        from participant_sdk import ConcordError

        killed_at: float | None = None
        recovered = asyncio.get_running_loop().create_future()

        async def loop() -> None:
            while not recovered.done():
                started = time.perf_counter()
                try:
                    committed = await self.transaction(participants)
                except (ConcordError, grpc.aio.AioRpcError):
                    await asyncio.sleep(0.001)
                    continue
                after_kill = killed_at is not None and started >= killed_at
                if committed and after_kill and not recovered.done():
                    assert killed_at is not None
                    recovered.set_result(time.perf_counter() - killed_at)

        leader = await asyncio.to_thread(cluster.leader)
        task = asyncio.create_task(loop())
        try:
            await asyncio.sleep(settle_s)  # a steady load before the kill
            killed_at = time.perf_counter()
            cluster.kill(leader)
            async with asyncio.timeout(30.0):
                seconds: float = await recovered
        finally:
            if not recovered.done():
                recovered.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(15.0):
                    await task
        cluster.start_node(leader)
        await asyncio.to_thread(_wait_caught_up, cluster, leader)
        return seconds


_IDS = re.compile(r"[0-9a-f]{8,}(-[0-9a-f]{4,})*|\d+")


def error_kind(error: BaseException) -> str:
    """An error's kind for the report: its class and message, ids and numbers blanked
    (so one kind of failure is one line however many transactions it hit)."""
    message = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
    return f"{type(error).__name__}: {_IDS.sub('#', message or '')[:160]}"


def cluster_term(cluster: LocalCluster) -> int:
    """The highest Raft term a live node reports (0 when none answers)."""
    terms = []
    for node_id in cluster.nodes:
        try:
            terms.append(cluster.status(node_id).term)
        except grpc.RpcError:
            continue
    return max(terms, default=0)


def _wait_caught_up(cluster: LocalCluster, node_id: str, timeout_s: float = 60.0) -> None:
    """Until the restarted node has applied what the leader had committed when it was
    asked: the next kill then measures a failover of a healthy cluster, not the time a
    node that is still replaying its log needs to become useful."""
    deadline = time.monotonic() + timeout_s
    target = cluster.status(cluster.leader()).commit_index
    while time.monotonic() < deadline:
        try:
            if cluster.status(node_id).applied_index >= target:
                return
        except Exception:  # still starting: not serving yet
            pass
        time.sleep(0.05)
    raise BenchError(f"restarted node {node_id} did not catch up within {timeout_s:.0f} s")


def hot_keys(variant: str) -> list[str]:
    """The contended counters of one variant (each variant has its own)."""
    return [f"hot-{variant}:{i}" for i in range(HOT_KEYS)]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * q))]


# ---------------------------------------------------------------------- the run


def run(plan: Plan, root: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The whole benchmark; returns the JSON object."""
    processes = Processes(root)
    traced = (f"--trace-file={plan.trace_file}",) if plan.trace_file else ()
    cluster = LocalCluster(root / "cluster", 3, insecure=not plan.tls, serve_flags=traced)
    try:
        if plan.trace_file:
            try:
                tracing.enable("concord-bench", jsonl_path=plan.trace_file)
            except ImportError:
                raise BenchError(tracing.INSTALL_HINT) from None
        say("measuring ceilings (raw gRPC unary, raw pysyncobj) ...")
        ceilings = measure_ceilings(processes, plan.ceiling_s)
        say(
            f"  gRPC {ceilings.grpc_unary_calls_per_s:,.0f} unary calls/s; "
            f"Raft {ceilings.raft_applied_entries_per_s:,.0f} applied entries/s"
        )
        say("starting a 3-node cluster and participant processes ...")
        cluster.start()
        leader = cluster.leader()
        # Leader first: no forwarding hop while it leads (the client rotates on failure).
        coordinators = [cluster.nodes[leader].address.grpc] + [
            a.grpc for a in cluster.addresses if a.node_id != leader
        ]
        count = SOAK_PARTICIPANTS if plan.soak_committed else max(plan.participant_counts)
        ids = [f"p{i + 1}" for i in range(count)]
        started = {
            pid: processes.start(
                pid,
                "participant",
                f"--id={pid}",
                f"--data-dir={root / pid}",
                f"--coordinators={','.join(coordinators)}",
                env={
                    **cluster.tls_env(Role.PARTICIPANT, pid),
                    **({tracing.ENV_FILE: plan.trace_file} if plan.trace_file else {}),
                },
            )
            for pid in ids
        }
        ports = {pid: processes.wait_ready(pid, *started[pid]) for pid in ids}
        roles = Roles(cluster, [started[pid][0].pid for pid in ids])
        return asyncio.run(_measure(plan, cluster, coordinators, ports, ceilings, roles, say))
    finally:
        processes.stop_all()
        cluster.stop()
        if plan.trace_file:
            tracing.disable()  # flushes this process's spans


async def saturate(
    level: Callable[[int], Awaitable[LoadResult]],
    counts: Sequence[int],
    clients_max: int,
) -> LoadResult:
    """The best level (most committed txn/s): one at each of ``counts``; then, while
    the last level was the best and gained ``SATURATION_GAIN_MIN`` over the one before
    it, one at twice its clients, up to ``clients_max``. A cluster that still gains
    with more transactions in flight is not saturated yet (they share more of each
    batch); one that stopped gaining is."""
    levels = [await level(clients) for clients in counts]
    while (
        len(levels) >= 2
        and levels[-1].clients * 2 <= clients_max
        and levels[-1] is max(levels, key=lambda found: found.txn_per_s)
        and levels[-1].txn_per_s >= levels[-2].txn_per_s * (1 + SATURATION_GAIN_MIN)
    ):
        levels.append(await level(levels[-1].clients * 2))
    return max(levels, key=lambda found: found.txn_per_s)


def _level_runner(
    load: Load,
    plan: Plan,
    participants: Sequence[str],
    label: str,
    say: Callable[[str], None],
    *,
    one_shot: bool = False,
) -> Callable[[int], Awaitable[LoadResult]]:
    async def level(clients: int) -> LoadResult:
        say(f"{label}: {clients} clients ...")
        return await load.run(participants, clients, plan, one_shot=one_shot)

    return level


async def _measure(
    plan: Plan,
    cluster: LocalCluster,
    coordinators: list[str],
    ports: dict[str, int],
    ceilings: Ceilings,
    roles: Roles,
    say: Callable[[str], None],
) -> dict[str, Any]:
    load = Load(
        coordinators,
        cluster.transport(Role.CLIENT, CLIENT),
        lambda: cluster_term(cluster),
        roles,
    )
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "plan": asdict(plan),
        "ceilings": {
            "grpc_unary_calls_per_s": round(ceilings.grpc_unary_calls_per_s, 1),
            "raft_applied_entries_per_s": round(ceilings.raft_applied_entries_per_s, 1),
            "raft_inflight": RAFT_CEILING_INFLIGHT,
            "raft_elections_during_ceiling": ceilings.raft_elections,
            "grpc_calls_per_txn": {str(k): grpc_calls_per_txn(k) for k in plan.participant_counts},
            "raft_entries_per_txn": RAFT_ENTRIES_PER_TXN,
        },
    }
    try:
        if plan.soak_committed:
            say(
                f"soak: one-shot, {SOAK_PARTICIPANTS} participants, "
                f"{plan.saturate_clients[0]} clients, until {plan.soak_committed[-1]:,} committed"
            )
            result["soak"] = await load.soak(
                sorted(ports), plan.saturate_clients[0], plan.soak_committed, say
            )
            return result
        for count in plan.participant_counts:
            participants = sorted(ports)[:count]
            say(f"{count} participant(s) per transaction: 1 client ...")
            one = await load.run(participants, 1, plan)

            label = f"{count} participant(s) per transaction"
            level = _level_runner(load, plan, participants, label, say)
            saturated = await saturate(level, plan.saturate_clients, plan.saturate_clients_max)
            ceiling = ceilings.txn_per_s(count)
            entry: dict[str, Any] = {
                "txn_per_s": round(saturated.txn_per_s, 1),
                "p50_ms": round(one.p50_ms, 2),
                "p99_ms": round(one.p99_ms, 2),
                "ceiling_txn_per_s": round(ceiling["min"], 1),
                "ceiling_grpc_txn_per_s": round(ceiling["grpc"], 1),
                "ceiling_raft_txn_per_s": round(ceiling["raft"], 1),
                "one_client": _rounded(asdict(one)),
                "saturated": _rounded(asdict(saturated)),
            }
            if count == 2 and plan.kills:
                times = []
                for kill in range(plan.kills):
                    say(f"failover {kill + 1}/{plan.kills}: SIGKILL the leader under 1 client ...")
                    times.append(await load.failover(cluster, participants))
                entry["failover_s"] = round(statistics.median(times), 3)
                entry["failover_runs_s"] = [round(t, 3) for t in times]
            result[COUNT_KEYS.get(count, f"{count}_participants")] = entry
            if count == ONE_SHOT_PARTICIPANTS:
                result["one_shot"] = await _measure_one_shot(plan, load, participants, ceiling, say)
        if plan.contended_clients:
            result["contended"] = await _measure_contended(plan, load, sorted(ports), say)
    finally:
        await load.close()
    return result


async def _measure_one_shot(
    plan: Plan,
    load: Load,
    participants: Sequence[str],
    ceiling: dict[str, float],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The same work as one-shot transactions (``client.run``): one client call, the
    actions inside each Prepare."""
    say(f"one-shot, {len(participants)} participants: 1 client ...")
    one = await load.run(participants, 1, plan, one_shot=True)

    label = f"one-shot, {len(participants)} participants"
    level = _level_runner(load, plan, participants, label, say, one_shot=True)
    saturated = await saturate(level, plan.saturate_clients, plan.saturate_clients_max)
    return {
        "participants": len(participants),
        "txn_per_s": round(saturated.txn_per_s, 1),
        "p50_ms": round(one.p50_ms, 2),
        "p99_ms": round(one.p99_ms, 2),
        # The naive ceiling: what the same run's raw unary gRPC allows for the calls an
        # interactive transaction makes (grpc_calls_per_txn).
        "naive_grpc_ceiling_txn_per_s": round(ceiling["grpc"], 1),
        "vs_naive_grpc_ceiling": round(saturated.txn_per_s / ceiling["grpc"], 2)
        if ceiling["grpc"]
        else None,
        "one_client": _rounded(asdict(one)),
        "saturated": _rounded(asdict(saturated)),
    }


async def _measure_contended(
    plan: Plan, load: Load, ids: list[str], say: Callable[[str], None]
) -> dict[str, Any]:
    participants = ids[:CONTENDED_PARTICIPANTS]
    contended: dict[str, Any] = {
        "participants": len(participants),
        "hot_keys": HOT_KEYS,
        "keys_per_txn": [1, 2],
    }
    for variant in CONTENDED_VARIANTS:
        levels = []
        for clients in plan.contended_clients:
            say(f"contended ({variant}, {HOT_KEYS} hot counters): {clients} client(s) ...")
            levels.append(await load.run_contended(variant, participants, clients, plan))
        top = levels[-1]  # the most clients: the contended figure
        contended[variant] = {
            "clients": top.clients,
            "txn_per_s": round(top.txn_per_s, 1),
            "abort_rate": round(top.abort_rate, 3),
            "aborts": top.aborts,
            "p50_ms": round(top.p50_ms, 2),
            "p99_ms": round(top.p99_ms, 2),
            "lost_updates": top.counters["lost"],
            "levels": [_rounded(asdict(level)) for level in levels],
        }
    return contended


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: round(v, 3 if k == "abort_rate" else 2)
        if isinstance(v, float)
        else [round(x, 1) for x in v]
        if isinstance(v, list)
        else v
        for k, v in values.items()
    }


# ---------------------------------------------------------------------- CLI


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (under 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="run the cluster and agents in plaintext (to measure what TLS costs)",
    )
    parser.add_argument(
        "--participants",
        type=_counts,
        default=None,
        help="participants per transaction to measure, comma-separated (default 1,2,4)",
    )
    parser.add_argument(
        "--clients",
        type=_counts,
        default=None,
        help="concurrent clients to try for saturation, comma-separated (default 16,32,64; "
        "--quick 32)",
    )
    parser.add_argument("--window-s", type=_positive, default=None, help="seconds per window")
    parser.add_argument("--windows", type=int, choices=range(1, 21), default=None, metavar="N")
    parser.add_argument("--ceiling-s", type=_positive, default=None, help="seconds per ceiling")
    parser.add_argument(
        "--kills", type=int, choices=range(0, 11), default=None, metavar="N",
        help="leader kills for the failover figure (0: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--contended-clients",
        type=_counts_or_none,
        default=None,
        help="clients for the contended case, comma-separated (default 1,16; --quick 16; "
        "0 skips it)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="keep data and logs here (default: a temp dir)"
    )
    parser.add_argument(
        "--soak",
        type=_soak_counts,
        default=None,
        metavar="N,M,...",
        help="only a soak run: one-shot transactions until each count committed, reporting "
        "every process's memory at each (e.g. 100000,1000000)",
    )
    parser.add_argument(
        "--trace-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="every process (nodes, participants, clients) appends its spans to PATH, one "
        "JSON line each; scripts/trace_steps.py PATH shows where a transaction's time goes "
        "(tracing costs CPU: compare traced runs only with traced runs)",
    )


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not values or any(not 1 <= v <= CLIENTS_MAX for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each value must be 1..{CLIENTS_MAX}")
    return values


def _soak_counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted(int(v.replace("_", "")) for v in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not values or any(not 1 <= v <= 100_000_000 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each count must be 1..100000000")
    return values


def _counts_or_none(text: str) -> tuple[int, ...]:
    return () if text.strip() == "0" else _counts(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 600]")
    return value


def plan_from(args: argparse.Namespace) -> Plan:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.participants is not None:
        if any(p > 16 for p in args.participants):
            raise BenchError("at most 16 participants per transaction")
        changes["participant_counts"] = args.participants
    for name, value in (
        ("saturate_clients", args.clients),
        ("window_s", args.window_s),
        ("windows", args.windows),
        ("ceiling_s", args.ceiling_s),
        ("kills", args.kills),
        ("contended_clients", args.contended_clients),
    ):
        if value is not None:
            changes[name] = value
    if args.clients is not None:
        changes["saturate_clients_max"] = 0
    if args.insecure:
        changes["tls"] = False
    if args.soak is not None:
        changes["soak_committed"] = args.soak
        changes.setdefault("saturate_clients", (SOAK_CLIENTS,))
    if args.trace_file is not None:
        if not args.trace_file.parent.is_dir():
            raise BenchError(f"--trace-file {args.trace_file}: its directory does not exist")
        changes["trace_file"] = str(args.trace_file.resolve())
    return Plan(**{**asdict(base), **changes})


def run_bench(args: argparse.Namespace) -> int:
    try:
        plan = plan_from(args)
    except BenchError as error:
        print(f"concord bench: {error}", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    root = args.dir or Path(tempfile.mkdtemp(prefix="concord-bench-"))
    if args.dir is not None and (args.dir / "cluster").exists():
        print(f"concord bench: {args.dir} holds an earlier run; remove it", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result = run(plan, root, say)
    except (BenchError, ClusterError) as error:
        print(f"concord bench: {error}", file=sys.stderr)
        return 1
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["quick"] = bool(args.quick)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 0


def _judged(met: bool, target: str) -> str:
    return f"{target}: {'met' if met else 'MISSED'}"


def _cpu_text(row: dict[str, Any]) -> str:
    cpu = row.get("cpu_ms_per_txn") or {}
    if not cpu:
        return "-"
    parts = ", ".join(
        f"{cpu[role]:.2f}" for role in ("leader", "followers", "participants", "client")
    )
    return f"{sum(cpu.values()):.2f} ({parts})"


def render(result: dict[str, Any]) -> str:
    c = result["ceilings"]
    lines = [
        f"concord bench: 3 coordinator nodes, participant processes and the clients on "
        f"this machine ({result['machine']['cpus']} CPUs, Python {result['machine']['python']})",
        f"ceilings measured in this run: gRPC {c['grpc_unary_calls_per_s']:,.0f} unary "
        f"calls/s; Raft {c['raft_applied_entries_per_s']:,.0f} applied entries/s "
        f"({c['raft_inflight']} in flight)",
    ]
    if "soak" not in result:
        lines += [
            "",
            f"{'participants':>12} {'clients':>7} {'txn/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'errors':>6} {'terms':>5} {'ceiling gRPC':>12} {'ceiling Raft':>12}  "
            "CPU ms/txn: leader, followers, participants, client",
        ]
    kinds: list[str] = []
    for count in result["plan"]["participant_counts"]:
        entry = result.get(COUNT_KEYS.get(count, f"{count}_participants"))
        if entry is None:
            continue
        for row in (entry["one_client"], entry["saturated"]):
            lines.append(
                f"{count:>12} {row['clients']:>7} {row['txn_per_s']:>8.1f} "
                f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['errors']:>6} "
                f"{row['term_changes']:>5} "
                f"{entry['ceiling_grpc_txn_per_s']:>12.0f} {entry['ceiling_raft_txn_per_s']:>12.0f}"
                f"  {_cpu_text(row)}"
            )
            kinds += [
                f"  {times} x {kind} ({count} participants, {row['clients']} clients)"
                for kind, times in row["error_kinds"].items()
            ]
    if kinds:
        lines += ["errors by kind:", *kinds]
    two = result.get("two_participants")
    if two is not None:
        lines.append("")
        if "failover_s" in two:
            lines.append(
                f"failover (2 participants, leader SIGKILL -> next commit decision): "
                f"{two['failover_s']:.3f} s (median of {two['failover_runs_s']})"
            )
        lines.append(
            "targets, 2 participants: "
            f"interactive saturated {two['txn_per_s']:.0f} txn/s "
            f"({_judged(two['txn_per_s'] >= 600, '>= 600')})"
            + (
                f"; failover {two['failover_s']:.2f} s ({_judged(two['failover_s'] <= 1, '<= 1')})"
                if "failover_s" in two
                else ""
            )
        )
    one_shot = result.get("one_shot")
    if one_shot is not None:
        lines += [
            "",
            f"one-shot ({one_shot['participants']} participants, client.run): "
            f"{one_shot['txn_per_s']:.0f} txn/s saturated "
            f"({one_shot['vs_naive_grpc_ceiling']}x the naive gRPC ceiling "
            f"{one_shot['naive_grpc_ceiling_txn_per_s']:.0f}); p50 at 1 client "
            f"{one_shot['p50_ms']:.2f} ms, p99 {one_shot['p99_ms']:.2f} ms; errors "
            f"{one_shot['saturated']['errors']}; CPU ms/txn saturated "
            f"{_cpu_text(one_shot['saturated'])}",
            "targets, one-shot: "
            f"saturated {one_shot['txn_per_s']:.0f} txn/s "
            f"({_judged(one_shot['txn_per_s'] >= 1500, '>= 1500')}), "
            f"{one_shot['vs_naive_grpc_ceiling']}x the naive ceiling "
            f"({_judged((one_shot['vs_naive_grpc_ceiling'] or 0) >= 2, '>= 2')}), "
            f"p50 at 1 client {one_shot['p50_ms']:.2f} ms "
            f"({_judged(one_shot['p50_ms'] <= 5, '<= 5')})",
        ]
    soak = result.get("soak")
    if soak is not None:
        lines += [
            "",
            f"soak: one-shot, {soak['participants']} participants, {soak['clients']} clients; "
            f"errors {soak['errors']}, term changes {soak['term_changes']}",
            f"{'committed':>10} {'elapsed s':>9} {'txn/s':>7} {'leader MiB':>10} "
            f"{'(anon)':>7} {'followers':>9} {'participants':>12} {'client':>7}",
        ]
        for mark in soak["checkpoints"]:
            lines.append(
                f"{mark['committed']:>10,} {mark['elapsed_s']:>9.1f} {mark['txn_per_s']:>7.1f} "
                f"{mark['leader_rss_mib']:>10.1f} {mark['leader_anon_rss_mib']:>7.1f} "
                f"{mark['followers_max_rss_mib']:>9.1f} "
                f"{mark['participants_max_rss_mib']:>12.1f} {mark['client_rss_mib']:>7.1f}"
            )
        lines.append(
            f"leader RSS, last / first checkpoint: {soak['leader_rss_ratio']} (target <= 1.2); "
            f"its anonymous part: {soak['leader_anon_rss_ratio']}"
        )
    contended = result.get("contended")
    if contended is not None:
        lines += [
            "",
            f"contended: {contended['participants']} participants, {contended['hot_keys']} hot "
            "counters, 1 or 2 incremented per transaction (rmw: read through the branch, "
            "then put; add: branch.add)",
            f"{'variant':>8} {'clients':>7} {'txn/s':>8} {'tries/s':>8} {'aborts':>7} "
            f"{'conflict':>8} {'other':>6} {'p50 ms':>8} {'p99 ms':>8} {'incr p99':>9} "
            f"{'lost':>5}",
        ]
        for variant in CONTENDED_VARIANTS:
            for row in contended[variant]["levels"]:
                lines.append(
                    f"{variant:>8} {row['clients']:>7} {row['txn_per_s']:>8.1f} "
                    f"{row['attempts_per_s']:>8.1f} {100 * row['abort_rate']:>6.1f}% "
                    f"{row['aborts']['conflict']:>8} {row['aborts']['other']:>6} "
                    f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                    f"{row['increment_p99_ms']:>9.2f} {row['counters']['lost']:>5}"
                )
    lines.append(f"elapsed {result['elapsed_s']} s")
    return "\n".join(lines)
