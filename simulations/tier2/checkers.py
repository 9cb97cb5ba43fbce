"""Checkers over a chaos history (history.jsonl, see run.py). Each takes the list of
events and returns violations (text). They read only observed facts: what clients were
told, what the cluster answered when asked by id, what coordinator nodes applied, what
participants read and made durable.

A transaction's *decision as the client knows it*: ``ok`` is COMMIT, ``fail`` is ABORT
(it definitely did not commit), ``info`` is what the cluster answered when asked by id
(``resolved``), never assumed; unresolved, it is unknown.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from participant_sdk.isolation import Version
from simulations.serializability import Observed, check_serializable
from simulations.tier2.bank import PREFIX

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


def _participants(invoke: Event) -> list[str]:
    return sorted(invoke.get("participants") or invoke["value"])


def _literal_writes(invoke: Event) -> dict[str, dict[str, str]] | None:
    """The booking's writes, known when invoked: {pid: {key: value}} (write-once keys,
    so their presence in the final state shows a commit). None for the bank, whose
    values depend on what was read."""
    if invoke.get("f") == "booking":
        return dict(invoke["value"])
    return None


def _outcomes(history: list[Event]) -> dict[str, Event]:
    return {e["txn"]: e for e in history if e["type"] in ("ok", "fail", "info")}


def _state(history: list[Event]) -> dict[str, dict[str, str]]:
    return {e["participant"]: e["state"] for e in _of(history, "final_state")}


def _committed_at(history: list[Event], txn: str, pid: str) -> bool:
    """Committed at pid: its record says so; or, if it kept no record, its (write-once)
    writes are there. Bank: no record, no commit (records outlive the run)."""
    record = _memo(history, _records).get(txn, {}).get(pid)
    if record is not None:
        return bool(record["state"] == "COMMITTED")
    literal = _literal_writes(_memo(history, _invokes)[txn])
    writes = (literal or {}).get(pid, {})
    state = _memo(history, _state).get(pid, {})
    return bool(writes) and all(state.get(k) == v for k, v in writes.items())


def _resolved(history: list[Event]) -> dict[str, Event]:
    return {e["txn"]: e for e in _of(history, "resolved")}


def _decisions(history: list[Event]) -> dict[str, str | None]:
    """txn -> COMMIT | ABORT | None (unknown) as the client knows it (module doc)."""
    resolved = _memo(history, _resolved)
    out: dict[str, str | None] = {}
    for txn, outcome in _memo(history, _outcomes).items():
        if outcome["type"] == "ok":
            out[txn] = "COMMIT"
        elif outcome["type"] == "fail":
            out[txn] = "ABORT"
        else:
            out[txn] = resolved.get(txn, {}).get("decision")
    return out


def _branches(history: list[Event]) -> dict[str, dict[str, Event]]:
    """txn -> participant -> the last recorded call of its branch (bank)."""
    out: dict[str, dict[str, Event]] = defaultdict(dict)
    for event in _of(history, "branch"):
        out[event["txn"]][event["participant"]] = event
    return out


def _bank_open(history: list[Event]) -> Event | None:
    events = _of(history, "bank_open")
    return events[-1] if events else None


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
        pids = _participants(invoke)
        committed = [p for p in pids if _committed_at(history, txn, p)]
        if committed and len(committed) != len(pids):
            bad.append(
                f"{txn}: committed at {committed} but not at {sorted(set(pids) - set(committed))}"
            )
    return bad


def acknowledged_applied(history: list[Event]) -> list[str]:
    """ok -> committed (and, for write-once keys, its writes present) at every
    participant; fail -> nowhere. (Bank balances: ``bank_ledger``.)"""
    bad = []
    invokes = _invokes(history)
    state = _state(history)
    for txn, outcome in _outcomes(history).items():
        literal = _literal_writes(invokes[txn])
        for pid in _participants(invokes[txn]):
            keys = (literal or {}).get(pid, {})
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
    """Every info (unknown) txn was resolved by id through the cluster, ended
    all-or-nothing as the cluster said, and nobody still holds it prepared."""
    bad = []
    invokes = _invokes(history)
    records = _memo(history, _records)
    resolved = _memo(history, _resolved)
    for txn, outcome in _outcomes(history).items():
        if outcome["type"] != "info":
            continue
        pids = _participants(invokes[txn])
        states = {p: _committed_at(history, txn, p) for p in pids}
        if len(set(states.values())) > 1:
            bad.append(f"{txn}: unknown outcome resolved partially: {states}")
        answer = resolved.get(txn)
        if answer is None or answer["decision"] is None:
            why = "never asked" if answer is None else answer.get("error", "")
            bad.append(f"{txn}: unknown outcome not resolved through the cluster ({why})")
        elif set(states.values()) == {answer["decision"] != "COMMIT"}:
            bad.append(
                f"{txn}: the cluster says {answer['decision']}, the participants "
                f"{'committed' if answer['decision'] != 'COMMIT' else 'did not commit'} it"
            )
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
    for txn, answer in _memo(history, _resolved).items():
        other = {"COMMIT": "DECISION_ABORT", "ABORT": "DECISION_COMMIT"}.get(answer["decision"])
        if other in decisions.get(txn, set()):
            bad.append(
                f"{txn}: the cluster answered {answer['decision']} by id, a node applied {other}"
            )
    return bad


def _final_balances(history: list[Event]) -> dict[tuple[str, str], int]:
    return {
        (pid, key): int(value)
        for pid, state in _memo(history, _state).items()
        for key, value in state.items()
        if key.startswith(PREFIX)
    }


def bank_conserved(history: list[Event]) -> list[str]:
    """Bank: the accounts' final total (read after the run, quiescent) is the initial
    total. Judged only when nothing is in doubt anywhere (else it says so)."""
    opened = _bank_open(history)
    if opened is None:
        if any(e.get("f") in ("transfer", "read") for e in _of(history, "invoke")):
            return ["the accounts were never opened (no bank_open event)"]
        return []
    missing = sorted(set(opened["balances"]) - set(_memo(history, _state)))
    if missing:
        return [f"no final state of {missing}: conservation cannot be judged"]
    in_doubt = {
        e["participant"]: e["in_doubt"] for e in _of(history, "final_state") if e["in_doubt"]
    }
    if in_doubt:
        return [f"still in doubt at the end, conservation cannot be judged: {in_doubt}"]
    total = sum(_final_balances(history).values())
    if total != opened["total"]:
        return [
            f"final total is {total}, not the initial {opened['total']} "
            f"({total - opened['total']:+d})"
        ]
    return []


def _delta(write: Any, before: str | None) -> int | None:
    """The change a committed write made to a balance; None if it cannot be known (a
    value written without the branch having read the key)."""
    if isinstance(write, dict):
        return int(write["add"])
    base = 0 if before is None else int(before)
    return -base if write is None else int(write) - base


def bank_ledger(history: list[Event]) -> list[str]:
    """Bank: each account's final balance is what the committed transactions' changes
    make it (a read-modify-write changes a balance by what it wrote minus what it read;
    an add by its delta): a lost update or a half-applied transfer shows here. Every
    transaction that wrote must have a known decision. No balance is negative."""
    opened = _bank_open(history)
    if opened is None:
        return []
    bad: list[str] = []
    expected: dict[tuple[str, str], int] = defaultdict(int)
    branches = _memo(history, _branches)
    invokes = _memo(history, _invokes)
    for txn, decision in sorted(_memo(history, _decisions).items()):
        by_pid = branches.get(txn, {})
        wrote = any(b["writes"] for b in by_pid.values())
        if decision is None and wrote:
            bad.append(f"{txn}: wrote, and its outcome is unknown: its changes cannot be accounted")
        if decision != "COMMIT":
            continue
        for pid in _participants(invokes[txn]):
            if pid not in by_pid:
                bad.append(f"{txn}: committed, but what its branch at {pid} did is not recorded")
        for pid, branch in sorted(by_pid.items()):
            for key, write in sorted(branch["writes"].items()):
                if not key.startswith(PREFIX):
                    continue
                read = key in branch["values"]
                if not read and not isinstance(write, dict):
                    bad.append(f"{txn}: wrote {pid}:{key} without reading it first")
                    continue
                change = _delta(write, branch["values"].get(key))
                expected[(pid, key)] += change or 0
    final = _final_balances(history)
    for pid, key in sorted(set(expected) | set(final)):
        have, want = final.get((pid, key)), expected.get((pid, key), 0)
        if have is None:
            if want:
                bad.append(f"{pid}:{key} is missing; the committed transactions make it {want}")
            continue
        if have != want:
            bad.append(f"{pid}:{key} is {have}; the committed transactions make it {want}")
        if have < 0:
            bad.append(f"{pid}:{key} is negative: {have}")
    return bad


def bank_snapshot(history: list[Event]) -> list[str]:
    """Bank: every committed read-only transaction saw, over every account of every
    participant, exactly the initial total (a consistent snapshot)."""
    opened = _bank_open(history)
    if opened is None:
        return []
    bad = []
    branches = _memo(history, _branches)
    every = sorted(opened["balances"])
    for txn, invoke in sorted(_memo(history, _invokes).items()):
        if invoke.get("f") != "read" or _memo(history, _decisions).get(txn) != "COMMIT":
            continue
        by_pid = branches.get(txn, {})
        missing = [pid for pid in every if pid not in by_pid]
        if missing:
            bad.append(f"{txn}: committed read-only, but what it read at {missing} is not recorded")
            continue
        seen = {
            pid: sum(
                int(v)
                for k, v in by_pid[pid]["values"].items()
                if k.startswith(PREFIX) and v is not None
            )
            for pid in every
        }
        total = sum(seen.values())
        if total != opened["total"]:
            bad.append(
                f"{txn}: committed read-only, saw a total of {total}, not {opened['total']} "
                f"(per participant {seen})"
            )
    return bad


def observed(history: list[Event]) -> list[Observed]:
    """Every transaction some agent did work for, as ``simulations.serializability``
    takes it: what each branch read (versions) and scanned at the end of its work, the
    commit sequence each write installed (from the participant, when it saw it), which
    writes were blind adds (they commute: concurrent adds may apply in different orders
    at different participants), and whether it committed (the participants' records)."""
    records = _memo(history, _records)
    out = []
    for txn, by_pid in sorted(_memo(history, _branches).items()):
        reads: dict[tuple[str, str], Version] = {}
        writes: dict[tuple[str, str], int | None] = {}
        scans: dict[tuple[str, str], int] = {}
        adds: set[tuple[str, str]] = set()
        committed = False
        for pid, branch in by_pid.items():
            for key, (seq, writer) in branch["reads"].items():
                reads[(pid, key)] = Version(seq, writer)
            for prefix, seq in branch["scans"].items():
                scans[(pid, prefix)] = seq
            record = records.get(txn, {}).get(pid) or {}
            installed = record.get("installed", {})
            for key, write in branch["writes"].items():
                writes[(pid, key)] = installed.get(key)
                if isinstance(write, dict) and key not in branch["reads"]:
                    adds.add((pid, key))  # a blind add: commutes with other adds
            committed = committed or _committed_at(history, txn, pid)
        out.append(
            Observed(
                txn_id=txn,
                committed=committed,
                reads=reads,
                writes=writes,
                scans=scans,
                adds=frozenset(adds),
            )
        )
    return out


def serializable(history: list[Event]) -> list[str]:
    """No anomaly among the committed transactions' reads and writes
    (``simulations.serializability``: lost updates, aborted reads, G0/G1c/G-single/G2
    cycles over ww, wr and rw dependencies)."""
    return check_serializable(observed(history), limit=EXAMPLES_MAX * 10)


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


def no_orphaned_holds(history: list[Event]) -> list[str]:
    """At the end, a participant holds keys only for transactions it is in doubt
    about: a hold with no PREPARED record behind it (a YES whose record was lost, or
    an in-doubt round forgotten at a restart) is never released, and blocks every
    later transaction on those keys, whatever the cluster decided."""
    bad = []
    for e in _of(history, "final_state"):
        orphans = sorted(set(e.get("held", ())) - set(e["in_doubt"]))
        if orphans:
            bad.append(f"{e['participant']} holds keys for {orphans[:5]} with no round in doubt")
    return bad


CHECKERS: dict[str, Callable[[list[Event]], list[str]]] = {
    "harness_errors": harness_errors,
    "collected": collected,
    "atomicity": atomicity,
    "acknowledged_applied": acknowledged_applied,
    "unknown_resolved": unknown_resolved,
    "no_abort_alone_after_yes": no_abort_alone_after_yes,
    "one_decision": one_decision,
    "bank_conserved": bank_conserved,
    "bank_ledger": bank_ledger,
    "bank_snapshot": bank_snapshot,
    "serializable": serializable,
    "fencing": fencing,
    "liveness": liveness,
    "no_orphaned_holds": no_orphaned_holds,
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
            if "after_yes" in e:  # whether the participant was in doubt when it died
                entry["after_yes"] = e["after_yes"]
                entry["held"] = e.get("held", "")  # the cluster's decision for that YES
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


def _why_aborted(error: str) -> str:
    if "insufficient funds" in error or "bound:" in error:
        return "funds"
    if "conflict" in error:
        return "conflict"
    return "other"


def summary(history: list[Event]) -> dict[str, Any]:
    """Per kind of transaction (``f``): committed; aborted by a conflict (an isolation
    NO vote, or a lease refused), for lack of funds (a refused transfer, or an add's
    bound), or otherwise (told to vote NO, timeouts, faults); unknown outcomes by how
    the cluster resolved them. And the most transactions in doubt at one participant
    at one observation, and the bank's totals."""
    outcomes = _memo(history, _outcomes)
    decisions = _memo(history, _decisions)
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for txn, invoke in _memo(history, _invokes).items():
        counts = kinds[invoke.get("f", "")]
        outcome = outcomes.get(txn)
        if outcome is None:
            counts["pending"] += 1
        elif outcome["type"] == "ok":
            counts["committed"] += 1
        elif outcome["type"] == "fail":
            counts[f"aborted_{_why_aborted(outcome.get('error', ''))}"] += 1
        else:
            decision = decisions.get(txn)
            counts[f"unknown_{(decision or 'unresolved').lower()}"] += 1
    out: dict[str, Any] = {f: dict(sorted(c.items())) for f, c in sorted(kinds.items())}
    out["in_doubt_max"] = max((e["in_doubt"] for e in _of(history, "observe")), default=0)
    opened = _bank_open(history)
    if opened is not None:
        out["initial_total"] = opened["total"]
        out["final_total"] = sum(_final_balances(history).values())
    return out


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
        "summary": summary(history),
    }


def check_file(path: Path) -> dict[str, Any]:
    return check(load(path))
