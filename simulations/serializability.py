"""A serializability checker over observed reads and writes with versions (after Elle).

Theory of operation
-------------------
Every committed write gives a key a version: the participant's commit sequence
number and the writer's txn id (``participant_sdk.isolation.Version``). A history
lists, per transaction, the version of every key it read (as the branch saw it), the
prefixes it scanned (with the commit sequence of the scan), and the keys it wrote
(with the sequence number installed, when known). Keys are per participant:
``(participant id, key)``.

From that the checker knows each key's version order (sequence numbers), and builds
Adya's direct serialization graph over the committed transactions:

- ww: the writer of a version -> the writer of the next version of that key;
- wr: the writer of a version -> every transaction that read it;
- rw: a transaction that read a version -> the writer of the next version (an
  anti-dependency: it read something that was overwritten after); a scan at sequence
  ``s`` -> the writer of the first version newer than ``s`` of any key under the prefix.

Blind adds (``Branch.add`` without a read of the key) commute: a run of them between
two plain writes may apply in any order, at each participant independently. So the
order within a run orders nothing: the plain write before a run precedes every add in
it, every add precedes the plain write after it, a reader of a version inside a run
saw every add up to it, and a reader is anti-dependent on every add after what it saw.

A cycle means no serial order explains what was observed. Cycles are named by their
edges: only ww (G0, dirty writes), ww and wr (G1c, circular information flow), exactly
one rw (G-single: read skew, or a lost update), two or more (G2: write skew). A lost
update is also reported directly, without a cycle: two committed transactions read the
same version of a key and both wrote it. A committed transaction that read a version
written by a transaction that aborted is an aborted read (G1a).

Sound, not complete: a write whose sequence number is unknown (never read, and not
given) adds only the edges it can; nothing is invented, so a report is a real anomaly.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from participant_sdk.isolation import NEVER_WRITTEN, Version

__all__ = ["Observed", "check_serializable"]

Key = tuple[str, str]  # (participant id, key)


@dataclass(frozen=True, kw_only=True)
class Observed:
    """One transaction as the agents saw it."""

    txn_id: str
    committed: bool
    reads: Mapping[Key, Version] = field(default_factory=dict)
    # key -> the sequence number the write installed, or None when not known
    writes: Mapping[Key, int | None] = field(default_factory=dict)
    scans: Mapping[Key, int] = field(default_factory=dict)  # (participant, prefix) -> seq
    adds: frozenset[Key] = frozenset()  # keys of ``writes`` that were blind adds


@dataclass(frozen=True, slots=True)
class _Edge:
    src: str
    dst: str
    kind: str  # ww | wr | rw
    why: str


def check_serializable(history: Iterable[Observed], limit: int = 20) -> list[str]:
    """The anomalies found (at most ``limit``), each one line; [] if serializable."""
    txns = {t.txn_id: t for t in history}
    committed = {t.txn_id: t for t in txns.values() if t.committed}
    bad: list[str] = []
    order = _version_order(committed.values())

    for t in committed.values():
        for key, seen in sorted(t.reads.items()):
            writer = txns.get(seen.txn_id)
            if writer is not None and not writer.committed:
                bad.append(
                    f"G1a aborted read: {t.txn_id} read {_k(key)} as written by "
                    f"{seen.txn_id}, which aborted"
                )
    bad += _lost_updates(committed.values())

    edges = _edges(committed, order)
    for cycle in _cycles(committed, edges):
        bad.append(_describe(cycle))
    return bad[:limit]


def _k(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


@dataclass(frozen=True, slots=True)
class _Order:
    """One key's committed versions, by sequence number, and which are blind adds."""

    versions: list[Version]
    seqs: list[int]
    adds: frozenset[int]

    def after(self, seq: int) -> list[Version]:
        """What a reader of ``seq`` did not see and that overwrote it: the next plain
        write, and every add before it."""
        unseen = []
        for version in self.versions[bisect.bisect_right(self.seqs, seq) :]:
            unseen.append(version)
            if version.seq not in self.adds:
                break
        return unseen

    def seen(self, seq: int) -> list[Version]:
        """What a reader of ``seq`` saw: that version, and if it is an add, every add
        back to the plain write before the run, and that write."""
        at = bisect.bisect_right(self.seqs, seq) - 1
        found: list[Version] = []
        while at >= 0:
            version = self.versions[at]
            if version.seq <= seq:
                found.append(version)
                if version.seq not in self.adds:
                    break
            at -= 1
        return found


def _version_order(committed: Iterable[Observed]) -> dict[Key, _Order]:
    """Per key, every committed version known, by sequence number."""
    known: dict[Key, set[Version]] = defaultdict(set)
    adds: dict[Key, set[int]] = defaultdict(set)
    for t in committed:
        for key, seq in t.writes.items():
            if seq is not None:
                known[key].add(Version(seq, t.txn_id))
                if key in t.adds:
                    adds[key].add(seq)
        for key, seen in t.reads.items():
            if seen != NEVER_WRITTEN:
                known[key].add(seen)
    orders = {}
    for key, versions in known.items():
        ordered = sorted(versions)
        orders[key] = _Order(ordered, [v.seq for v in ordered], frozenset(adds[key]))
    return orders


def _lost_updates(committed: Iterable[Observed]) -> list[str]:
    readers: dict[tuple[Key, Version], list[str]] = defaultdict(list)
    for t in committed:
        for key, seen in t.reads.items():
            if key in t.writes and key not in t.adds:
                readers[(key, seen)].append(t.txn_id)
    return [
        f"lost update: {', '.join(sorted(ids))} all read {_k(key)} at version "
        f"{seen.seq} ({seen.txn_id or 'initial'}) and all wrote it"
        for (key, seen), ids in sorted(readers.items(), key=lambda kv: (kv[0][0], kv[0][1]))
        if len(ids) > 1
    ]


def _ww(key: Key, order: _Order) -> list[_Edge]:
    """Plain write -> each add of the run after it -> the next plain write; a plain
    write directly -> the next one. Adds within a run are not ordered."""
    edges = []
    barrier: Version | None = None
    run: list[Version] = []
    for version in order.versions:
        if version.seq in order.adds:
            if barrier is not None:
                edges.append((barrier, version))
            run.append(version)
            continue
        for before in run or ([barrier] if barrier is not None else []):
            edges.append((before, version))
        barrier, run = version, []
    return [
        _Edge(a.txn_id, b.txn_id, "ww", f"{_k(key)} v{a.seq} -> v{b.seq}")
        for a, b in edges
        if a.txn_id != b.txn_id
    ]


def _edges(committed: Mapping[str, Observed], order: Mapping[Key, _Order]) -> list[_Edge]:
    edges: list[_Edge] = []
    for key, versions in order.items():
        edges += _ww(key, versions)
    by_participant: dict[str, list[Key]] = defaultdict(list)
    for key in order:
        by_participant[key[0]].append(key)
    for t in committed.values():
        for key, seen in t.reads.items():
            key_order = order.get(key)
            if key_order is None:
                continue
            for writer in key_order.seen(seen.seq):
                if writer.txn_id != t.txn_id:
                    why = f"{_k(key)} v{writer.seq} seen at v{seen.seq}"
                    edges.append(_Edge(writer.txn_id, t.txn_id, "wr", why))
            for overwrite in key_order.after(seen.seq):
                if overwrite.txn_id != t.txn_id:
                    why = f"{_k(key)} read v{seen.seq}, next v{overwrite.seq}"
                    edges.append(_Edge(t.txn_id, overwrite.txn_id, "rw", why))
        for (participant, prefix), seq in t.scans.items():
            for key in by_participant.get(participant, []):
                if not key[1].startswith(prefix):
                    continue
                for overwrite in order[key].after(seq):
                    if overwrite.txn_id != t.txn_id:
                        why = f"scan {participant}:{prefix}* at {seq}, {key[1]} v{overwrite.seq}"
                        edges.append(_Edge(t.txn_id, overwrite.txn_id, "rw", why))
    return [e for e in edges if e.src in committed and e.dst in committed]


def _cycles(committed: Mapping[str, Observed], edges: list[_Edge]) -> list[list[_Edge]]:
    """One cycle per strongly connected component with more than one transaction
    (Tarjan's algorithm, iterative: histories have many thousands of transactions)."""
    out: dict[str, list[_Edge]] = defaultdict(list)
    for edge in edges:
        if edge.src != edge.dst:
            out[edge.src].append(edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(committed):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = out.get(node, [])
            if i < len(successors):
                work.append((node, i + 1))
                nxt = successors[i].dst
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return [_a_cycle(set(c), out) for c in components]


def _a_cycle(members: set[str], out: Mapping[str, list[_Edge]]) -> list[_Edge]:
    """A shortest cycle through the component's smallest id (breadth first), preferring
    edges that are not rw so the name of the anomaly is the mildest that fits."""
    start = min(members)
    parent: dict[str, _Edge] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for edge in sorted(out.get(node, []), key=lambda e: (e.kind == "rw", e.dst)):
                if edge.dst not in members:
                    continue
                if edge.dst == start:
                    cycle = [edge]
                    while cycle[0].src != start:
                        cycle.insert(0, parent[cycle[0].src])
                    return cycle
                if edge.dst not in seen:
                    seen.add(edge.dst)
                    parent[edge.dst] = edge
                    following.append(edge.dst)
        frontier = following
    raise AssertionError(f"a strongly connected component without a cycle: {sorted(members)}")


def _describe(cycle: list[_Edge]) -> str:
    kinds = [e.kind for e in cycle]
    rw = kinds.count("rw")
    if rw == 0:
        name = "G0 write cycle" if set(kinds) == {"ww"} else "G1c circular information flow"
    elif rw == 1:
        name = "G-single read skew"
    else:
        name = "G2 write skew" if len(cycle) == 2 else "G2 anti-dependency cycle"
    steps = "; ".join(f"{e.src} -{e.kind}-> {e.dst} ({e.why})" for e in cycle)
    return f"{name}: {steps}"
