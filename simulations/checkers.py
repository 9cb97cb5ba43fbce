"""Checkers over a whole tier-1 history. Each returns a list of violations (text).

They read only facts (what became durable, what was applied, what clients were told,
what happened in the outside world) and the final state, never the code's own opinion
of itself: a participant that aborts alone is caught because its abort precedes any
ABORT decision, not because it says so; a compensation is judged by what it did to
the outside world, not by the step state the participant wrote.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from coordinator.core.types import Kind
from participant_sdk.core import FINAL_STEP_STATES
from participant_sdk.isolation import Version
from simulations import history as h
from simulations.history import Fact, History
from simulations.serializability import Observed, check_serializable

if TYPE_CHECKING:
    from simulations.world import World


def decisions_never_flip(history: History) -> list[str]:
    """Every node that applies a decision for a round applies the same one, ever."""
    seen: dict[str, Fact] = {}
    bad = []
    for fact in history.of(h.DECIDED):
        first = seen.setdefault(fact.round_id, fact)
        if first.value != fact.value:
            bad.append(
                f"decision flipped: {fact.round_id} {first.value} on {first.node} "
                f"at {first.time_ms}ms, then {fact.value} on {fact.node} at {fact.time_ms}ms"
            )
    return bad


def atomicity(history: History) -> list[str]:
    """No round is committed at one participant and aborted at another, and no
    participant applies a decision the coordinator did not make first."""
    decided = _first_decisions(history)
    outcomes: dict[str, dict[str, str]] = defaultdict(dict)
    bad = []
    for fact in history.of(h.P_DECIDED):
        outcomes[fact.round_id].setdefault(fact.node, fact.value)
        if outcomes[fact.round_id][fact.node] != fact.value:
            bad.append(f"{fact.round_id}: {fact.node} applied both outcomes")
        if fact.value == "COMMIT":
            made = decided.get(fact.round_id)
            if made is None or made.value != "COMMIT" or made.time_ms > fact.time_ms:
                coordinator = (
                    f"decided {made.value} at {made.time_ms}ms" if made else "never decided"
                )
                bad.append(
                    f"{fact.round_id}: {fact.node} committed at {fact.time_ms}ms "
                    f"but the coordinator {coordinator}"
                )
    for round_id, by_participant in outcomes.items():
        if len(set(by_participant.values())) > 1:
            bad.append(f"{round_id}: split outcome {dict(sorted(by_participant.items()))}")
    return bad


def no_abort_alone_after_yes(history: History) -> list[str]:
    """A participant that voted YES aborts only after the coordinator decided ABORT."""
    decided = _first_decisions(history)
    voted_yes = {(f.node, f.round_id) for f in history.of(h.VOTED) if f.value == "yes"}
    bad = []
    for fact in history.of(h.P_DECIDED):
        if fact.value != "ABORT" or (fact.node, fact.round_id) not in voted_yes:
            continue
        made = decided.get(fact.round_id)
        if made is None or made.value != "ABORT" or made.time_ms > fact.time_ms:
            bad.append(
                f"{fact.round_id}: {fact.node} voted yes, then aborted alone at {fact.time_ms}ms"
            )
    return bad


def client_outcomes_match(history: History) -> list[str]:
    """What a client was told is what the log decided and what participants applied."""
    decided = _first_decisions(history)
    applied = {(f.round_id, f.value) for f in history.of(h.P_DECIDED)}
    bad = []
    for fact in history.of(h.CLIENT):
        made = decided.get(fact.round_id)
        if fact.value == "COMMITTED" and (made is None or made.value != "COMMIT"):
            log_says = made.value if made else "nothing"
            bad.append(f"{fact.round_id}: {fact.node} was told COMMITTED, the log says {log_says}")
        if fact.value == "ABORTED" and (
            (made is not None and made.value == "COMMIT") or (fact.round_id, "COMMIT") in applied
        ):
            bad.append(f"{fact.round_id}: {fact.node} was told ABORTED, but it committed")
    return bad


def reads_match_what_clients_were_told(world: World) -> list[str]:
    """Reads are linearizable: once a client was told a round's outcome, the leader
    answers every later read of it with that decision — not "undecided", not missing
    (until the round may have been forgotten, ``retention_ms`` after the entry that
    decided it, by the clock of whichever node leads then),
    not the other one. Judged only for reads served by the node that leads in the
    newest term: a deposed leader that has not noticed yet may answer from stale
    state until it steps down (docs/protocol.md, "Reads")."""
    history = world.history
    decided = _first_decisions(history)
    # A round is forgotten once the state's clock (the newest entry's time, a leader's
    # clock) is ``retention_ms`` past the time of the entry that finished it, which is
    # no earlier than the entry that decided it; a leader's clock runs up to the skew
    # ahead of the simulated time.
    forget_after_ms = world.config.retention_ms - world.config.clock_skew_ms
    told: dict[str, Fact] = {}
    bad = []
    for fact in history.facts:
        if fact.kind == h.CLIENT and fact.value in ("COMMITTED", "ABORTED"):
            told.setdefault(fact.round_id, fact)
            continue
        if fact.kind != h.READ or fact.extra.get("current") != "True":
            continue
        first = told.get(fact.round_id)
        if first is None or first.time_ms >= fact.time_ms:
            continue
        expected = "COMMIT" if first.value == "COMMITTED" else "ABORT"
        if fact.value == expected:
            continue
        made = decided.get(fact.round_id)
        if fact.value == "missing" and made is not None:
            decided_ms = int(made.extra.get("entry_ms", made.time_ms))
            if fact.time_ms >= decided_ms + forget_after_ms:
                continue  # forgotten, as it may be
        bad.append(
            f"{fact.round_id}: {fact.node} (term {fact.extra.get('term')}) answered a read "
            f"at {fact.time_ms}ms with {fact.value}; {first.node} had been told "
            f"{first.value} at {first.time_ms}ms"
        )
    return bad


def participant_violations(history: History) -> list[str]:
    """Participants refuse coordinator messages that contradict what they know; in a
    correct system there are none."""
    return [f"{f.node} refused: {f.value}" for f in history.of(h.VIOLATION)]


def sagas_exactly_once_in_effect(history: History) -> list[str]:
    """A COMPLETED saga left every step's effect in the outside world exactly once and
    compensated nothing; a COMPENSATED one left none (each effect applied is undone,
    by its compensation or by the operator). Effects happen only at the participant
    that runs the step, and only for sagas that were decided."""
    decided = _first_decisions(history)
    plans = {f.round_id: f.value.split(",") for f in history.of(h.SAGA_PLAN)}
    applied: Counter[tuple[str, int]] = Counter()
    undone: Counter[tuple[str, int]] = Counter()
    bad = []
    for fact in history.of(h.STEP_EFFECT):
        applied[(fact.round_id, int(fact.value))] += 1
        plan = plans.get(fact.round_id, [])
        if int(fact.value) >= len(plan) or plan[int(fact.value)] != fact.node:
            bad.append(f"{fact.round_id}: step {fact.value} had its effect at {fact.node}")
    for fact in history.of(h.STEP_UNDONE):
        if fact.extra.get("effect") == "undone":
            undone[(fact.round_id, int(fact.value))] += 1
    for saga_id, plan in plans.items():
        made = decided.get(saga_id)
        for step, participant_id in enumerate(plan):
            a, u = applied[(saga_id, step)], undone[(saga_id, step)]
            where = f"{saga_id}: step {step} at {participant_id} applied {a}, undone {u}"
            if made is None:
                if a or u:
                    bad.append(f"{where}, but the saga was never decided")
            elif made.value == "COMMIT" and (a, u) != (1, 0):
                bad.append(f"{where} in a COMPLETED saga")
            elif made.value == "ABORT" and a != u:
                bad.append(f"{where} in a COMPENSATED saga")
    return bad


def compensated_at_most_once_in_effect(history: History) -> list[str]:
    """A step is compensated at most once in effect. A rerun of its compensation (after
    a crash, for a resent CompensateStep) reaches the outside world with the key the
    first run had, which the service recognises as done, and is not a new compensation.
    One the service takes as new after the step was compensated is a second refund: the
    net effect alone hides it when it looked first and found nothing left to undo."""
    first: dict[tuple[str, str, str], Fact] = {}
    bad = []
    for fact in history.of(h.STEP_UNDONE):
        before = first.setdefault((fact.node, fact.round_id, fact.value), fact)
        if before is fact:
            continue
        bad.append(
            f"{fact.round_id}: step {fact.value} at {fact.node} compensated again by "
            f"{fact.extra.get('by')} at {fact.time_ms}ms with a new key (call "
            f"{fact.extra.get('call')}, effect {fact.extra.get('effect')}), after "
            f"{before.extra.get('by')} compensated it at {before.time_ms}ms "
            f"(effect {before.extra.get('effect')})"
        )
    return bad


def no_compensation_of_a_step_that_never_ran(history: History) -> list[str]:
    """A compensation undoes an effect that exists: never a step whose action never ran
    (whether it never started, failed, or was stopped by the barrier)."""
    net: Counter[tuple[str, str, str]] = Counter()
    bad = []
    for fact in history.facts:
        key = (fact.node, fact.round_id, fact.value)
        if fact.kind == h.STEP_EFFECT:
            net[key] += 1
        elif fact.kind == h.STEP_UNDONE and fact.extra.get("effect") == "undone":
            if net[key] <= 0:
                bad.append(
                    f"{fact.round_id}: step {fact.value} at {fact.node} compensated by "
                    f"{fact.extra.get('by')} at {fact.time_ms}ms, but its action never ran"
                )
            net[key] -= 1
    return bad


def no_step_runs_after_its_compensation(history: History) -> list[str]:
    """Once a step is compensated at its participant (undone, or a barrier written
    before it ever ran), its action never reaches the outside world again: no
    hanging steps, whatever a late or stale ExecuteStep says."""
    compensated: dict[tuple[str, str, str], int] = {}
    bad = []
    for fact in history.facts:
        if fact.kind == h.STEP_UNDONE:
            compensated.setdefault((fact.node, fact.round_id, fact.value), fact.time_ms)
        elif fact.kind == h.P_DECIDED and fact.value == "ABORT" and "step" in fact.extra:
            key = (fact.node, fact.round_id, fact.extra["step"])
            compensated.setdefault(key, fact.time_ms)
        elif fact.kind == h.STEP_CALL:
            since = compensated.get((fact.node, fact.round_id, fact.value))
            if since is not None:
                bad.append(
                    f"{fact.round_id}: step {fact.value} ran at {fact.node} at {fact.time_ms}ms, "
                    f"after its compensation at {since}ms"
                )
    return bad


def compensations_in_reverse_order(history: History) -> list[str]:
    """An aborted saga undoes its steps last first: no compensation of a step after
    that of an earlier step of the same saga."""
    last: dict[str, Fact] = {}
    bad = []
    for fact in history.of(h.STEP_UNDONE):
        before = last.get(fact.round_id)
        if before is not None and int(fact.value) > int(before.value):
            bad.append(
                f"{fact.round_id}: step {fact.value} compensated at {fact.time_ms}ms, after "
                f"step {before.value} at {before.time_ms}ms"
            )
        last[fact.round_id] = fact
    return bad


def observed(history: History) -> list[Observed]:
    """Each transaction as the participants saw it: the versions its branches read
    (HELD at a YES vote; a NO vote names them too), the sequence numbers its writes
    installed (APPLIED), committed if the log decided COMMIT.

    Blind adds are marked as such: they commute, and the checker orders them only
    against plain writes (serializability.py)."""
    decided = _first_decisions(history)
    branches: dict[str, dict[str, Fact]] = defaultdict(dict)  # txn -> participant -> HELD
    installed: dict[tuple[str, str], int] = {}  # (txn, participant) -> seq
    for fact in history.facts:
        refused = fact.kind == h.VOTED and fact.value == "no" and fact.extra.get("of") == "TXN"
        if fact.kind == h.HELD or refused:
            branches[fact.round_id].setdefault(fact.node, fact)
    for fact in history.of(h.APPLIED):
        if fact.value:
            installed[(fact.round_id, fact.node)] = int(fact.value)

    found = []
    for txn_id, by_participant in branches.items():
        reads: dict[tuple[str, str], Version] = {}
        scans: dict[tuple[str, str], int] = {}
        writes: dict[tuple[str, str], int | None] = {}
        blind_adds: set[tuple[str, str]] = set()
        for pid, held in by_participant.items():
            for key, version in h.decode_reads(held.extra.get("reads", "")).items():
                reads[(pid, key)] = version
            for prefix, scanned in h.decode_scans(held.extra.get("scans", "")).items():
                scans[(pid, prefix)] = scanned
            adds = set(h.decode_keys(held.extra.get("adds", "")))
            for key in h.decode_keys(held.extra.get("writes", "")):
                writes[(pid, key)] = installed.get((txn_id, pid))
                if key in adds and (pid, key) not in reads:
                    blind_adds.add((pid, key))
        made = decided.get(txn_id)
        committed = made is not None and made.value == "COMMIT"
        found.append(
            Observed(
                txn_id=txn_id,
                committed=committed,
                reads=reads,
                writes=writes,
                scans=scans,
                adds=frozenset(blind_adds),
            )
        )
    return found


def serializable(history: History) -> list[str]:
    """The committed transactions' reads and writes, by version, have a serial order:
    no lost update, no aborted read, no cycle of dependencies (serializability.py)."""
    return check_serializable(observed(history))


def audits_see_the_total(world: World) -> list[str]:
    """A read-only transaction that committed read every account as of one moment:
    the total it saw is the bank's total (a snapshot across participants)."""
    decided = _first_decisions(world.history)
    bad = []
    for fact in world.history.of(h.SNAPSHOT):
        made = decided.get(fact.round_id)
        if made is None or made.value != "COMMIT":
            continue
        if int(fact.value) != world.expected_total:
            bad.append(
                f"{fact.round_id}: committed, but saw a total of {fact.value} != "
                f"{world.expected_total} ({fact.extra.get('accounts')} accounts by "
                f"{fact.extra.get('by')})"
            )
    return bad


def conserved_total(world: World) -> list[str]:
    """At every quiet point (no transfer or rollback half done) and at the end, the
    money in the bank is what it started with."""
    bad = [
        f"total {f.value} != {world.expected_total} at {f.time_ms}ms after a write by {f.node}"
        for f in world.history.of(h.BALANCES)
        if int(f.value) != world.expected_total
    ]
    final = world.bank_total()
    if final != world.expected_total:
        bad.append(f"final total {final} != {world.expected_total}")
    return bad


def liveness(world: World) -> list[str]:
    """Within the liveness bound after the last fault healed, every round is decided
    and acknowledged by everyone, and no participant is left in doubt. Every saga is
    finished: completed and acknowledged, or compensated to its first step (the
    operator resolves an escalation within seconds), and no participant has a step
    still running, compensating, or done and never told how its saga ended."""
    bad = []
    leader = world.cluster.leader
    if leader is None:
        return ["no leader at the end of the liveness bound"]
    for rnd in world.cluster.nodes[leader].state.open_rounds():
        if rnd.kind is Kind.SAGA:
            steps = ",".join(s.status.value for s in rnd.steps)
            bad.append(f"saga {rnd.round_id} still {rnd.phase.value} at the end (steps {steps})")
            continue
        bad.append(
            f"{rnd.round_id} still {rnd.phase.value} at the end "
            f"(votes {sorted(rnd.votes)}, acks {sorted(rnd.acks)} of {rnd.participants})"
        )
    for participant in world.participants.values():
        for record in participant.core.in_doubt():
            bad.append(f"{participant.participant_id} still in doubt about {record.round_id}")
        if participant.memory.held:
            held = sorted(participant.memory.held)
            bad.append(f"{participant.participant_id} still holds work for {held}")
        if participant.locks.prepared:
            locked = sorted(participant.locks.prepared)
            bad.append(f"{participant.participant_id} still holds locks for {locked}")
        for step in participant.core.steps.values():
            if step.state not in FINAL_STEP_STATES:
                bad.append(
                    f"{participant.participant_id} still has step {step.key} {step.state.value}"
                )
    busy = [name for name, client in world.clients.items() if client.busy]
    if busy:
        bad.append(f"clients still waiting at the end: {busy}")
    return bad


def _first_decisions(history: History) -> dict[str, Fact]:
    first: dict[str, Fact] = {}
    for fact in history.of(h.DECIDED):
        first.setdefault(fact.round_id, fact)
    return first


HISTORY_CHECKERS: dict[str, Callable[[History], list[str]]] = {
    "decisions never flip": decisions_never_flip,
    "atomicity": atomicity,
    "no abort alone after yes": no_abort_alone_after_yes,
    "client outcomes match": client_outcomes_match,
    "participant saw a violation": participant_violations,
    "exactly once in effect": sagas_exactly_once_in_effect,
    "compensated at most once in effect": compensated_at_most_once_in_effect,
    "no compensation of a step that never ran": no_compensation_of_a_step_that_never_ran,
    "compensations in reverse order": compensations_in_reverse_order,
    "no step runs after its compensation": no_step_runs_after_its_compensation,
    "serializable": serializable,
}
WORLD_CHECKERS: dict[str, Callable[[World], list[str]]] = {
    "conserved total": conserved_total,
    "audits see the total": audits_see_the_total,
    "reads match what clients were told": reads_match_what_clients_were_told,
    "liveness": liveness,
}


def check(world: World) -> list[str]:
    """Every violation every checker finds, each prefixed with the checker's name."""
    found = []
    for name, history_checker in HISTORY_CHECKERS.items():
        found += [f"{name}: {v}" for v in history_checker(world.history)]
    for name, world_checker in WORLD_CHECKERS.items():
        found += [f"{name}: {v}" for v in world_checker(world)]
    return found
