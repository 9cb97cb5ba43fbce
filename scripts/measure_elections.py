#!/usr/bin/env python3
"""Measure leader elections of a local 3-node cluster (`concord serve` x3 on 127.0.0.1).

    .venv/bin/python scripts/measure_elections.py [--idle-minutes 10] [--kills 10]
        [--pauses 5] [--restarts 5] [--fill-entries 4000] [--json]
        [-- <flags for every concord serve, e.g. --election-timeout-min-ms=300>]

Phases, in this order (each skipped when its count is 0):

- idle: the cluster runs with no load and no fault for ``--idle-minutes``; the term
  is read from every node every 0.5 s. Every term change is an election nobody needed.
- kills: ``--kills`` times, SIGKILL the leader; failover is the time from the kill to
  the first status answer of a survivor that leads a later term (status polled every
  few ms, so the figure is a few ms late at most). The killed node is then restarted
  and the script waits until all three agree on a leader; a term change while it
  rejoins is counted (``rejoin_terms``): a restarted follower that deposes a healthy
  leader shows there.
- pauses: ``--pauses`` times, SIGSTOP a follower for ``--pause-s``, then SIGCONT it,
  and wait until it follows the leader again; term changes are counted.
- restarts: the log is first filled with ``--fill-entries`` Raft entries (begin/abort
  pairs of empty transactions); then ``--restarts`` times every node is SIGKILLed and
  all three started again. Reported: seconds from the start of the processes to the
  first node that leads (``from_launch``) and to the first leader every node answers
  that it follows (``agreed_from_launch``), and from the moment the last node's Raft port
  accepts connections to the first leader (``from_raft_up``: the part that is Raft's,
  not Python's start),
  the time until that leader applied the whole log (``leader_caught_up``: it answers
  reads only then), and the term changes per restart.

Every process is started here and stopped by its own handle. Figures depend on what
else runs on the machine: report the load next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.runtime.local_cluster import CLIENT, OPERATOR, LocalCluster
from coordinator.security.identity import Role

POLL_S = 0.005  # between status rounds while waiting for a leader
IDLE_POLL_S = 0.5
STATUS_TIMEOUT_S = 0.25
WAIT_S = 60.0  # a leader that takes longer than this is a failure of the run
# Reconnect at once to a restarted node (gRPC's default backoff starts at 1 s).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
)


@dataclass
class Observer:
    """Status of each node over one long-lived channel per node."""

    cluster: LocalCluster
    stubs: dict[str, Any] = field(default_factory=dict)
    channels: list[grpc.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        transport = self.cluster.transport(Role.OPERATOR, OPERATOR)
        for node_id, node in self.cluster.nodes.items():
            channel = transport.channel(node.address.grpc, to=Role.NODE, options=CHANNEL_OPTIONS)
            self.channels.append(channel)
            self.stubs[node_id] = coordinator_pb2_grpc.CoordinatorServiceStub(channel)

    def status(self, node_id: str) -> coordinator_pb2.ClusterStatusReply | None:
        try:
            reply: coordinator_pb2.ClusterStatusReply = self.stubs[node_id].ClusterStatus(
                coordinator_pb2.ClusterStatusRequest(), timeout=STATUS_TIMEOUT_S
            )
            return reply
        except grpc.RpcError:
            return None

    def views(self) -> dict[str, coordinator_pb2.ClusterStatusReply]:
        views = {}
        for node_id, node in self.cluster.nodes.items():
            if node.alive and (reply := self.status(node_id)) is not None:
                views[node_id] = reply
        return views

    def self_leader(self, after_term: int = 0) -> tuple[str, int] | None:
        """A live node that says it leads a term later than ``after_term``."""
        for node_id, view in self.views().items():
            if view.leader_id == node_id and view.term > after_term:
                return node_id, int(view.term)
        return None

    def wait(self, what: str, probe: Any, timeout_s: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if result := probe():
                return result
            time.sleep(POLL_S)
        raise SystemExit(f"no {what} within {timeout_s} s; logs in {self.cluster.root}")

    def agreed(self) -> tuple[str, int] | None:
        """(leader, term) when every live node answers and names the same leader."""
        views = self.views()
        alive = [n for n, node in self.cluster.nodes.items() if node.alive]
        if sorted(views) != sorted(alive):
            return None
        seen = {(v.leader_id, v.term) for v in views.values()}
        if len(seen) == 1:
            leader, term = seen.pop()
            if leader:
                return leader, int(term)
        return None

    def max_term(self) -> int:
        return max((int(v.term) for v in self.views().values()), default=0)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered) + 0.5) - 1))]
    return {
        "median": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
        "min": round(ordered[0], 3),
    }


def idle(observer: Observer, minutes: float, say: Any) -> dict[str, Any]:
    observer.wait("agreed leader", observer.agreed)
    first = observer.max_term()
    changes = []
    start = time.monotonic()
    term = first
    while (elapsed := time.monotonic() - start) < minutes * 60:
        now = observer.max_term()
        if now and now != term:  # 0: no node answered this time
            changes.append({"at_s": round(elapsed, 1), "term": now})
            say(f"  term {term} -> {now} at {elapsed:.1f} s")
            term = now
        time.sleep(IDLE_POLL_S)
    last = observer.max_term()
    return {"minutes": minutes, "term_first": first, "term_last": last, "changes": changes}


def kills(observer: Observer, count: int, say: Any) -> dict[str, Any]:
    cluster = observer.cluster
    times, rejoin_terms, kill_terms = [], [], []
    for kill in range(count):
        leader, term = observer.wait("agreed leader", observer.agreed)
        killed_at = time.monotonic()
        cluster.kill(leader)
        new_leader, new_term = observer.wait(
            "new leader", lambda after=term: observer.self_leader(after)
        )
        failover = time.monotonic() - killed_at
        times.append(failover)
        kill_terms.append(new_term - term)
        cluster.start_node(leader)
        _, settled_term = observer.wait("agreed leader after rejoin", observer.agreed)
        rejoin_terms.append(settled_term - new_term)
        say(
            f"  kill {kill + 1}/{count}: {leader} -> {new_leader} in {failover:.3f} s "
            f"(+{new_term - term} terms; +{settled_term - new_term} while it rejoined)"
        )
    return {
        "kills": count,
        "failover_s": summary(times),
        "failover_runs_s": [round(t, 3) for t in times],
        "terms_per_failover": kill_terms,
        "rejoin_terms": rejoin_terms,
    }


def pauses(observer: Observer, count: int, pause_s: float, say: Any) -> dict[str, Any]:
    cluster = observer.cluster
    terms = []
    for pause in range(count):
        leader, term = observer.wait("agreed leader", observer.agreed)
        follower = next(n for n in cluster.nodes if n != leader)
        process = cluster.nodes[follower].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        time.sleep(pause_s)  # the fault itself: a follower frozen this long
        process.send_signal(signal.SIGCONT)
        _, settled = observer.wait("agreed leader after the pause", observer.agreed)
        terms.append(settled - term)
        say(f"  pause {pause + 1}/{count}: {follower} for {pause_s} s: +{settled - term} terms")
    return {"pauses": count, "pause_s": pause_s, "terms_per_pause": terms}


async def _fill(cluster: LocalCluster, pairs: int) -> None:
    from participant_sdk.client import ConcordClient

    client = ConcordClient(cluster.grpc_addresses, tls=cluster.transport(Role.CLIENT, CLIENT))
    async with client:

        async def worker(count: int) -> None:
            for _ in range(count):
                # Filler only: a pair that fails (an election under way) is not retried;
                # fill_log counts the entries that made it.
                with contextlib.suppress(Exception):
                    txn = await client.begin(timeout_s=60)
                    await client.abort(txn.id)

        workers = 4
        # Every pair is given out: a remainder too small to split (fewer pairs than
        # workers) still goes to the first workers, or a fill short by a few entries
        # would never finish.
        shares = [pairs // workers + (1 if i < pairs % workers else 0) for i in range(workers)]
        await asyncio.gather(*(worker(share) for share in shares if share))


def fill_log(observer: Observer, entries: int) -> int:
    """Begin/abort pairs of empty transactions until the log holds ``entries`` (group
    commit folds concurrent requests into one entry, so count, don't assume)."""

    def leader_commit() -> int | None:
        agreed = observer.agreed()
        view = observer.status(agreed[0]) if agreed else None
        return None if view is None else int(view.commit_index)

    while True:
        index: int = observer.wait("the leader's commit index", leader_commit)
        if index >= entries:
            return index
        asyncio.run(_fill(observer.cluster, min(400, entries - index)))


def settled(observer: Observer) -> int | None:
    """The commit index once every node follows one leader and applied all of it."""
    views = observer.views()
    if len(views) != len(observer.cluster.nodes):
        return None
    indexes = {(v.leader_id, v.commit_index, v.applied_index) for v in views.values()}
    if len(indexes) == 1:
        leader, commit, applied = indexes.pop()
        if leader and commit == applied:
            return int(commit)
    return None


def restarts(observer: Observer, count: int, fill: int, say: Any) -> dict[str, Any]:
    cluster = observer.cluster
    observer.wait("agreed leader", observer.agreed)
    if fill:
        say(f"  filling the log with about {fill} entries ...")
        fill_log(observer, fill)
    from_launch, from_raft_up, ready, terms, log_lengths = [], [], [], [], []
    agreed: list[float] = []
    loads: list[float] = []
    for restart in range(count):
        commit = observer.wait("a settled cluster", lambda: settled(observer))
        term = observer.max_term()
        log_lengths.append(commit)
        for node_id in cluster.nodes:
            cluster.kill(node_id)
        loads.append(round(os.getloadavg()[0], 2))
        launched = time.monotonic()
        for node_id in cluster.nodes:
            cluster.start_node(node_id)
        raft_up = _raft_ports_up(cluster)
        leader, new_term = observer.wait("first leader after restart", observer.self_leader)
        elected = time.monotonic()
        observer.wait("a leader every node agrees on", observer.agreed)
        agreed.append(time.monotonic() - launched)

        def caught_up(leader: str = leader, commit: int = commit) -> bool:
            view = observer.status(leader)
            return view is not None and view.applied_index > commit

        observer.wait("the leader to apply the log", caught_up)
        ready.append(time.monotonic() - launched)
        from_launch.append(elected - launched)
        from_raft_up.append(elected - raft_up)
        terms.append(new_term - term)
        say(
            f"  restart {restart + 1}/{count} (log {commit}): leader "
            f"{elected - launched:.3f} s after launch, {elected - raft_up:.3f} s after "
            f"the Raft ports opened, agreed by all {agreed[-1]:.3f} s after launch, caught "
            f"up {ready[-1]:.3f} s after launch (load {loads[-1]}); "
            f"+{new_term - term} terms"
        )
    return {
        "restarts": count,
        "commit_index": log_lengths,
        "from_launch_s": summary(from_launch),
        "agreed_from_launch_s": summary(agreed),
        "agreed_from_launch_runs_s": [round(t, 3) for t in agreed],
        "load_average_1m_at_launch": loads,
        "from_raft_up_s": summary(from_raft_up),
        "from_raft_up_runs_s": [round(t, 3) for t in from_raft_up],
        "leader_caught_up_from_launch_s": summary(ready),
        "terms_per_restart": terms,
    }


def _raft_ports_up(cluster: LocalCluster) -> float:
    """When the last node's Raft port accepted a connection (pysyncobj binds it once
    the journal is open, right before its first tick)."""
    pending = {n.address.raft for n in cluster.nodes.values()}
    deadline = time.monotonic() + WAIT_S
    while pending and time.monotonic() < deadline:
        for address in list(pending):
            host, _, port = address.rpartition(":")
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.05):
                pending.discard(address)
        if pending:
            time.sleep(POLL_S)
    if pending:
        raise SystemExit(f"Raft ports {sorted(pending)} never opened; logs in {cluster.root}")
    return time.monotonic()


@contextlib.contextmanager
def running(root: Path, serve_flags: tuple[str, ...]) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root, 3, serve_flags=serve_flags)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-minutes", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--pauses", type=int, default=5)
    parser.add_argument("--pause-s", type=float, default=1.0)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--fill-entries", type=int, default=4000)
    parser.add_argument("--dir", type=Path, default=None, help="cluster root (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("serve_flags", nargs="*", help="after --: flags for every concord serve")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    figures: dict[str, Any] = {
        "serve_flags": args.serve_flags,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="concord-elections-") as temp:
        root = args.dir or Path(temp) / "cluster"
        with running(root, tuple(args.serve_flags)) as cluster:
            observer = Observer(cluster)
            try:
                if args.idle_minutes > 0:
                    say(f"idle: {args.idle_minutes} min without load or faults ...")
                    figures["idle"] = idle(observer, args.idle_minutes, say)
                if args.kills > 0:
                    say(f"kills: SIGKILL the leader {args.kills} times ...")
                    figures["kills"] = kills(observer, args.kills, say)
                if args.pauses > 0:
                    say(f"pauses: SIGSTOP a follower {args.pauses} times ...")
                    figures["pauses"] = pauses(observer, args.pauses, args.pause_s, say)
                if args.restarts > 0:
                    say(f"restarts: SIGKILL every node and start them {args.restarts} times ...")
                    figures["restarts"] = restarts(observer, args.restarts, args.fill_entries, say)
            finally:
                observer.close()
    figures["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
