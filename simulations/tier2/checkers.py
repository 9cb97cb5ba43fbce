"""Checkers over a chaos history (history.jsonl, see run.py). Each takes the list of
events and returns violations (text). They read only observed facts: what clients were
told, what coordinator nodes applied, what participants made durable.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]
EXAMPLES_MAX = 10


def _of(history: list[Event], kind: str) -> list[Event]:
    return [e for e in history if e["type"] == kind]


def _records(history: list[Event]) -> dict[str, dict[str, Event]]:
    """txn -> participant -> its final record."""
    out: dict[str, dict[str, Event]] = defaultdict(dict)
    for event in _of(history, "record"):
        out[event["txn"]][event["participant"]] = event
    return out


def _invokes(history: list[Event]) -> dict[str, Event]:
    return {e["txn"]: e for e in _of(history, "invoke")}


def _outcomes(history: list[Event]) -> dict[str, Event]:
    return {e["txn"]: e for e in history if e["type"] in ("ok", "fail", "info")}


def _state(history: list[Event]) -> dict[str, dict[str, str]]:
    return {e["participant"]: e["state"] for e in _of(history, "final_state")}


def _committed_at(history: list[Event], txn: str, pid: str) -> bool:
    """Committed at pid: its record says so; or, if it kept no record, its writes are there."""
    record = _memo(history, _records).get(txn, {}).get(pid)
    if record is not None:
        return bool(record["state"] == "COMMITTED")
    writes = _memo(history, _invokes)[txn]["value"].get(pid, {})
    state = _memo(history, _state).get(pid, {})
    return bool(writes) and all(state.get(k) == v for k, v in writes.items())


# Indexes of the history being checked (one history at a time): a lookup per txn must
# not rescan it (a 120 s run has ~100k events; rescanning made checking take minutes).
_CACHE: dict[tuple[int, int, str], Any] = {}


def _memo(history: list[Event], index: Callable[[list[Event]], Any]) -> Any:
    key = (id(history), len(history), index.__name__)
    if key not in _CACHE:
        if any(k[:2] != key[:2] for k in _CACHE):
            _CACHE.clear()
        _CACHE[key] = index(history)
    return _CACHE[key]


def collected(history: list[Event]) -> list[str]:
    """The checkers below need every participant's final records and state."""
    bad = [
        f"could not collect from {e['participant']}: {e['error']}"
        for e in _of(history, "collect_failed")
    ]
    if not _of(history, "final_state"):
        bad.append("no participant state was collected")
    return bad


def atomicity(history: list[Event]) -> list[str]:
    """No txn committed at one of its participants and aborted (or absent) at another."""
    bad = []
    for txn, invoke in _invokes(history).items():
        pids = sorted(invoke["value"])
        committed = [p for p in pids if _committed_at(history, txn, p)]
        if committed and len(committed) != len(pids):
            bad.append(
                f"{txn}: committed at {committed} but not at {sorted(set(pids) - set(committed))}"
            )
    return bad


def acknowledged_applied(history: list[Event]) -> list[str]:
    """ok -> committed (and its writes present) at every participant; fail -> nowhere."""
    bad = []
    invokes = _invokes(history)
    state = _state(history)
    for txn, outcome in _outcomes(history).items():
        writes = invokes[txn]["value"]
        for pid, keys in sorted(writes.items()):
            committed = _committed_at(history, txn, pid)
            if outcome["type"] == "ok":
                missing = [k for k, v in keys.items() if state.get(pid, {}).get(k) != v]
                if not committed or missing:
                    bad.append(
                        f"{txn}: acknowledged commit not applied at {pid} (missing {missing})"
                    )
            elif outcome["type"] == "fail" and committed:
                bad.append(
                    f"{txn}: reported failed ({outcome['error'][:80]}) but committed at {pid}"
                )
    return bad


def unknown_resolved(history: list[Event]) -> list[str]:
    """Every info (unknown) txn ended all-or-nothing, and nobody still holds it prepared."""
    bad = []
    invokes = _invokes(history)
    records = _memo(history, _records)
    for txn, outcome in _outcomes(history).items():
        if outcome["type"] != "info":
            continue
        pids = sorted(invokes[txn]["value"])
        states = {p: _committed_at(history, txn, p) for p in pids}
        if len(set(states.values())) > 1:
            bad.append(f"{txn}: unknown outcome resolved partially: {states}")
        prepared = [p for p, r in records.get(txn, {}).items() if r["state"] == "PREPARED"]
        if prepared:
            bad.append(f"{txn}: unknown outcome still PREPARED at {prepared}")
    return bad


def _coordinator_decisions(history: list[Event]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for event in _of(history, "decision"):
        out[event["txn"]].add(event["decision"])
    return out


def no_abort_alone_after_yes(history: list[Event]) -> list[str]:
    """A participant that voted YES and aborted did so because the cluster decided ABORT
    (or presumed it): never while a coordinator decided COMMIT."""
    bad = []
    decisions = _coordinator_decisions(history)
    for txn, by_pid in _memo(history, _records).items():
        for pid, record in by_pid.items():
            if (
                record["voted_yes"]
                and record["state"] == "ABORTED"
                and "DECISION_COMMIT" in decisions.get(txn, set())
            ):
                bad.append(f"{txn}: {pid} voted YES and aborted, but the cluster decided COMMIT")
    return bad


def one_decision(history: list[Event]) -> list[str]:
    """At most one decision per txn, across every node and all time; and the client's
    ok/fail agrees with it."""
    bad = []
    decisions = _coordinator_decisions(history)
    for txn, seen in sorted(decisions.items()):
        if len(seen) > 1:
            nodes = sorted(
                (e["node"], e["decision"], e.get("term"))
                for e in _of(history, "decision")
                if e["txn"] == txn
            )
            bad.append(f"{txn}: two decisions applied: {nodes}")
    for txn, outcome in _outcomes(history).items():
        seen = decisions.get(txn, set())
        if outcome["type"] == "ok" and "DECISION_ABORT" in seen:
            bad.append(f"{txn}: client told COMMIT, a node applied ABORT")
        if outcome["type"] == "fail" and "DECISION_COMMIT" in seen:
            bad.append(f"{txn}: client told failure, a node applied COMMIT")
    return bad


def bank_conserved(history: list[Event]) -> list[str]:
    """Bank: every transfer's legs sum to zero, so the final total over all accounts is 0."""
    invokes = _invokes(history)
    if not invokes or next(iter(invokes.values()))["f"] != "bank":
        return []
    total = 0
    for state in _state(history).values():
        total += sum(int(v) for k, v in state.items() if k.startswith("tx/"))
    return [] if total == 0 else [f"bank total is {total}, not 0"]


def fencing(history: list[Event]) -> list[str]:
    """Participants' term_seen never decreases (across restarts too: it is durable), and
    no participant counted a violation (a Refused coordinator message)."""
    bad = []
    last: dict[str, int] = {}
    for event in history:
        if event["type"] not in ("observe", "final_state"):
            continue
        pid = event["participant"]
        if event["term_seen"] < last.get(pid, 0):
            bad.append(
                f"{pid}: term_seen went from {last[pid]} down to {event['term_seen']} "
                f"at {event['t']}s"
            )
        last[pid] = max(last.get(pid, 0), event["term_seen"])
        if event["violations"]:
            bad.append(f"{pid}: {event['violations']} violation(s) counted at {event['t']}s")
    return bad


def liveness(history: list[Event]) -> list[str]:
    """After the last heal, nothing is in doubt anywhere within the bound; every client
    operation completed; no record is left PREPARED."""
    bad = []
    events = _of(history, "liveness")
    if not events:
        return ["no liveness check ran"]
    event = events[-1]
    if event["settled_s"] is None:
        bad.append(f"still in doubt {event['bound_s']}s after the heal: {event['in_doubt'][:5]}")
    outcomes = _outcomes(history)
    pending = [t for t in _invokes(history) if t not in outcomes]
    if pending:
        bad.append(f"{len(pending)} client operation(s) never completed: {pending[:5]}")
    for e in _of(history, "final_state"):
        if e["in_doubt"]:
            bad.append(f"{e['participant']} still in doubt at the end: {e['in_doubt'][:5]}")
    return bad


def harness_errors(history: list[Event]) -> list[str]:
    """The harness itself failed (an observer crashed, a participant did not restart)."""
    return [e["what"] for e in _of(history, "error")]


CHECKERS: dict[str, Callable[[list[Event]], list[str]]] = {
    "harness_errors": harness_errors,
    "collected": collected,
    "atomicity": atomicity,
    "acknowledged_applied": acknowledged_applied,
    "unknown_resolved": unknown_resolved,
    "no_abort_alone_after_yes": no_abort_alone_after_yes,
    "one_decision": one_decision,
    "bank_conserved": bank_conserved,
    "fencing": fencing,
    "liveness": liveness,
}


def load(path: Path) -> list[Event]:
    with path.open() as file:
        return [json.loads(line) for line in file if line.strip()]


def recovery(history: list[Event]) -> list[dict[str, Any]]:
    """Per fault: window, and (a) for leader kills the measured in-doubt -> decided time,
    (b) throughput recovery: seconds from the fault's end until a 1 s window of ok
    operations reaches 90% of the rate in the 5 s before the fault (None: not before
    the next fault or the end)."""
    faults: dict[int, dict[str, Any]] = {}
    for e in _of(history, "fault"):
        entry = faults.setdefault(e["id"], {"id": e["id"], "kind": e["kind"]})
        entry[e["event"]] = e["t"]
        if e["event"] == "start":
            entry["targets"] = e.get("targets", [])
    for e in _of(history, "recovery"):
        faults.get(e["id"], {})["in_doubt_decided_s"] = e["seconds"]
    oks = sorted(e["t"] for e in _of(history, "ok"))
    ordered = sorted(faults.values(), key=lambda f: f.get("start", 0))
    ends = [e["t"] for e in _of(history, "healed")]
    horizon = ends[0] if ends else (oks[-1] if oks else 0)
    for i, fault in enumerate(ordered):
        start, end = fault.get("start"), fault.get("end")
        fault["throughput_recovery_s"] = None
        if start is None or end is None:
            continue
        baseline = sum(1 for t in oks if start - 5 <= t < start) / 5.0
        fault["baseline_ops_s"] = baseline
        limit = ordered[i + 1]["start"] if i + 1 < len(ordered) else horizon
        if baseline <= 0:
            continue
        probe = end
        while probe + 1.0 <= limit:
            if sum(1 for t in oks if probe <= t < probe + 1.0) >= 0.9 * baseline:
                fault["throughput_recovery_s"] = round(probe + 1.0 - end, 2)
                break
            probe += 0.1
    return ordered


def check(history: list[Event]) -> dict[str, Any]:
    _CACHE.clear()
    results: dict[str, list[str]] = {name: fn(history) for name, fn in CHECKERS.items()}
    counts = {k: len(_of(history, k)) for k in ("invoke", "ok", "fail", "info")}
    faults = recovery(history)
    return {
        "valid": not any(results.values()),
        "counts": counts,
        "checkers": {
            name: {"valid": not bad, "violations": len(bad), "examples": bad[:EXAMPLES_MAX]}
            for name, bad in results.items()
        },
        "faults": faults,
        "liveness": (_of(history, "liveness") or [None])[-1],
    }


def check_file(path: Path) -> dict[str, Any]:
    return check(load(path))
