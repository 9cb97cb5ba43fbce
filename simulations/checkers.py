"""Checkers over a whole tier-1 history. Each returns a list of violations (text).

They read only facts (what became durable, what was applied, what clients were told)
and the final state, never the code's own opinion of itself: a participant that
aborts alone is caught because its abort precedes any ABORT decision, not because it
says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from simulations import history as h
from simulations.history import Fact, History

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


def participant_violations(history: History) -> list[str]:
    """Participants refuse coordinator messages that contradict what they know; in a
    correct system there are none."""
    return [f"{f.node} refused: {f.value}" for f in history.of(h.VIOLATION)]


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
    and acknowledged by everyone, and no participant is left in doubt."""
    bad = []
    leader = world.cluster.leader
    if leader is None:
        return ["no leader at the end of the liveness bound"]
    for rnd in world.cluster.nodes[leader].state.open_rounds():
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
}
WORLD_CHECKERS: dict[str, Callable[[World], list[str]]] = {
    "conserved total": conserved_total,
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
