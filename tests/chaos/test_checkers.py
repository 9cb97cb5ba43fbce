"""Each tier-2 checker accepts a clean hand-made history and rejects a planted bug."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from simulations.serializability import check_serializable
from simulations.tier2 import checkers

Event = dict[str, Any]
COMMIT, ABORT = "DECISION_COMMIT", "DECISION_ABORT"


class Bank:
    """A bank history built the way run.py records one: two participants with one
    account each (100 + 100), then

    - t1: read-modify-write transfer of 5 from p1 to p2 (ok; installs seq 2 at each);
    - t2: a transfer that aborted (fail);
    - t3: an add transfer of 10 from p2 to p1 whose outcome was unknown (info), resolved
      COMMIT by id (seq 3 at each);
    - t4: unknown outcome that never reached anyone, resolved ABORT;
    - r1: a read-only audit (ok) that saw p1 = 105 and p2 = 95 (total 200).
    """

    def __init__(self) -> None:
        self.h: list[Event] = [{"t": 0, "type": "start", "workload": "bank"}]
        self.add_txn(
            "open",
            "open",
            "ok",
            {
                pid: {
                    "reads": {"acct/0": [0, ""]},
                    "values": {"acct/0": None},
                    "writes": {"acct/0": "100"},
                }
                for pid in ("p1", "p2")
            },
            installed=1,
        )
        self.h.append(
            {
                "t": 0.5,
                "type": "bank_open",
                "txn": "open",
                "balances": {"p1": {"acct/0": 100}, "p2": {"acct/0": 100}},
                "total": 200,
            }
        )
        self.add_txn(
            "t1",
            "transfer",
            "ok",
            self.rmw(p1=(1, "open", 100, 95), p2=(1, "open", 100, 105)),
            installed=2,
        )
        self.add_txn(
            "t2",
            "transfer",
            "fail",
            self.rmw(p1=(2, "t1", 95, 45), p2=(2, "t1", 105, 155)),
            committed=False,
        )
        self.add_txn(
            "t3",
            "transfer",
            "info",
            {
                "p2": {"writes": {"acct/0": {"add": -10, "min": 0, "max": None}}},
                "p1": {"writes": {"acct/0": {"add": 10, "min": None, "max": None}}},
            },
            installed=3,
            resolved="COMMIT",
        )
        self.add_txn("t4", "transfer", "info", {}, committed=False, resolved="ABORT", reached=False)
        self.add_txn(
            "r1",
            "read",
            "ok",
            {
                "p1": self.audit(3, "t3", 105),
                "p2": self.audit(3, "t3", 95),
            },
        )
        for term, pid in ((1, "p1"), (2, "p1"), (2, "p2")):
            self.h.append(
                {"t": 3, "type": "observe", "participant": pid, "term_seen": term,
                 "violations": 0, "in_doubt": 1}
            )  # fmt: skip
        self.h.append({"t": 8, "type": "healed"})
        self.h.append(
            {"t": 8.5, "type": "liveness", "healed_at": 8, "bound_s": 20, "settled_s": 0.5,
             "in_doubt": []}
        )  # fmt: skip
        for pid, balance in (("p1", "105"), ("p2", "95")):
            self.h.append(
                {
                    "t": 9,
                    "type": "final_state",
                    "participant": pid,
                    "state": {"acct/0": balance},
                    "in_doubt": [],
                    "held": [],
                    "term_seen": 2,
                    "violations": 0,
                }
            )

    @staticmethod
    def rmw(**legs: tuple[int, str, int, int]) -> dict[str, Event]:
        """pid=(version seq read, its writer, value read, value written)."""
        return {
            pid: {
                "reads": {"acct/0": [seq, writer]},
                "values": {"acct/0": str(before)},
                "writes": {"acct/0": str(after)},
            }
            for pid, (seq, writer, before, after) in legs.items()
        }

    @staticmethod
    def audit(seq: int, writer: str, value: int) -> Event:
        return {
            "reads": {"acct/0": [seq, writer]},
            "values": {"acct/0": str(value)},
            "scans": {"acct/": seq},
            "writes": {},
        }

    def add_txn(
        self,
        txn: str,
        f: str,
        outcome: str,
        branches: dict[str, Event],
        *,
        committed: bool = True,
        installed: int | None = None,
        resolved: str | None = None,
        reached: bool = True,
    ) -> None:
        pids = sorted(branches) or ["p1", "p2"]
        self.h.append(
            {"t": 1, "type": "invoke", "f": f, "txn": txn, "participants": pids, "value": {}}
        )
        for pid, branch in sorted(branches.items()):
            self.h.append(
                {"t": 1.5, "type": "branch", "txn": txn, "participant": pid,
                 "reads": {}, "scans": {}, "values": {}, **branch}
            )  # fmt: skip
        self.h.append({"t": 2, "type": outcome, "txn": txn, "f": f, "error": "", "latency_s": 0.1})
        if resolved is not None:
            self.h.append({"t": 2.5, "type": "resolved", "txn": txn, "decision": resolved})
        if not reached:
            return
        for node in ("c1", "c2"):
            self.h.append(
                {"t": 2, "type": "decision", "txn": txn, "node": node,
                 "decision": COMMIT if committed else ABORT}
            )  # fmt: skip
        for pid in pids:
            writes = branches.get(pid, {}).get("writes", {})
            self.h.append(
                {
                    "t": 9,
                    "type": "record",
                    "participant": pid,
                    "txn": txn,
                    "state": "COMMITTED" if committed else "ABORTED",
                    "voted_yes": True,
                    "installed": dict.fromkeys(writes, installed) if committed else {},
                }
            )


def bank_history() -> list[Event]:
    return Bank().h


def booking_history() -> list[Event]:
    """b1 booked seat/1 at p1 and room/1 at p2 (ok); write-once keys."""
    value = {"p1": {"seat/1": "b1"}, "p2": {"room/1": "b1"}}
    history: list[Event] = [
        {"t": 1, "type": "invoke", "f": "booking", "txn": "b1", "participants": ["p1", "p2"],
         "value": value},
        {"t": 2, "type": "ok", "txn": "b1", "f": "booking", "error": "", "latency_s": 0.1},
        {"t": 8.5, "type": "liveness", "healed_at": 8, "bound_s": 20, "settled_s": 0.5,
         "in_doubt": []},
    ]  # fmt: skip
    for pid, writes in value.items():
        history.append(
            {"t": 9, "type": "record", "participant": pid, "txn": "b1", "state": "COMMITTED",
             "voted_yes": True}
        )  # fmt: skip
        history.append(
            {"t": 9, "type": "final_state", "participant": pid, "state": dict(writes),
             "in_doubt": [], "term_seen": 1, "violations": 0}
        )  # fmt: skip
    return history


def _find(history: list[Event], **match: Any) -> Event:
    return next(e for e in history if all(e.get(k) == v for k, v in match.items()))


def test_clean_histories_are_valid() -> None:
    results = checkers.check(bank_history())
    assert results["valid"], {k: v for k, v in results["checkers"].items() if not v["valid"]}
    assert results["counts"] == {"invoke": 6, "ok": 3, "fail": 1, "info": 2}
    summary = results["summary"]
    assert summary["transfer"] == {
        "aborted_other": 1,
        "committed": 1,
        "unknown_abort": 1,
        "unknown_commit": 1,
    }
    assert summary["read"] == {"committed": 1}
    assert (summary["initial_total"], summary["final_total"], summary["in_doubt_max"]) == (
        200,
        200,
        1,
    )
    results = checkers.check(booking_history())
    assert results["valid"], {k: v for k, v in results["checkers"].items() if not v["valid"]}


# ---------------------------------------------------------------- planted bugs


def _split_commit(h: list[Event]) -> None:
    """A planted atomicity bug: p2 aborts t1 while p1 commits it."""
    _find(h, type="record", participant="p2", txn="t1")["state"] = "ABORTED"


def _lost_ack(h: list[Event]) -> None:
    """An acknowledged commit that p2 never applied (it has no record of t1)."""
    h.remove(_find(h, type="record", participant="p2", txn="t1"))


def _unknown_half(h: list[Event]) -> None:
    _find(h, type="record", participant="p2", txn="t3")["state"] = "PREPARED"


def _abort_alone(h: list[Event]) -> None:
    """p2 voted YES on t3 (decided COMMIT) and aborted alone."""
    _find(h, type="record", participant="p2", txn="t3")["state"] = "ABORTED"


def _two_decisions(h: list[Event]) -> None:
    _find(h, type="decision", txn="t1", node="c2")["decision"] = ABORT


def _money_printed(h: list[Event]) -> None:
    """A non-conserving final state: p2 holds one more than the transfers left it."""
    _find(h, type="final_state", participant="p2")["state"]["acct/0"] = "96"


def _lost_update(h: list[Event]) -> None:
    """t5 moved 10 from p1 to p2 having read the same versions as t1 (both at seq 1),
    and both committed: t1's transfer is lost. The total still adds up (p1 = 100,
    p2 = 100 after t3), so only the ledger and the serializability checker see it."""
    bank = Bank()
    bank.h = h
    i = h.index(_find(h, type="invoke", txn="t3"))
    tail, h[i:] = h[i:], []
    bank.add_txn(
        "t5",
        "transfer",
        "ok",
        Bank.rmw(p1=(1, "open", 100, 90), p2=(1, "open", 100, 110)),
        installed=3,
    )
    h.extend(tail)
    for e in h:
        if e["type"] == "record" and e["txn"] == "t3":
            e["installed"] = {"acct/0": 4}
        if e["type"] == "branch" and e["txn"] == "r1":
            e["reads"]["acct/0"] = [4, "t3"]
            e["scans"]["acct/"] = 4
            e["values"]["acct/0"] = "100"
        if e["type"] == "final_state":
            e["state"]["acct/0"] = "100"


def _read_skew(h: list[Event]) -> None:
    """r1 committed having read p1 after t3 and p2 before it: 105 + 105 = 210."""
    branch = _find(h, type="branch", txn="r1", participant="p2")
    branch["reads"]["acct/0"] = [2, "t1"]
    branch["scans"]["acct/"] = 2
    branch["values"]["acct/0"] = "105"


def _term_regressed(h: list[Event]) -> None:
    h.append(
        {"t": 4, "type": "observe", "participant": "p1", "term_seen": 1, "violations": 0,
         "in_doubt": 0}
    )  # fmt: skip
    h.sort(key=lambda e: e["t"])


def _refused(h: list[Event]) -> None:
    _find(h, type="observe", participant="p2")["violations"] = 1


def _stuck(h: list[Event]) -> None:
    _find(h, type="liveness")["settled_s"] = None
    _find(h, type="final_state", participant="p1")["in_doubt"] = ["t9"]


def _never_completed(h: list[Event]) -> None:
    h.remove(_find(h, type="info", txn="t4"))


def _harness_crash(h: list[Event]) -> None:
    h.append({"t": 5, "type": "error", "what": "observer crashed"})


def _orphaned_hold(h: list[Event]) -> None:
    # p2 restarted without the record of its YES on t9: it still holds t9's keys.
    _find(h, type="final_state", participant="p2")["held"] = ["t9"]


def _not_collected(h: list[Event]) -> None:
    h.append({"t": 9, "type": "collect_failed", "participant": "p2", "error": "timeout"})


PLANTED = {
    "atomicity": _split_commit,
    "acknowledged_applied": _lost_ack,
    "unknown_resolved": _unknown_half,
    "no_abort_alone_after_yes": _abort_alone,
    "one_decision": _two_decisions,
    "bank_conserved": _money_printed,
    "bank_ledger": _lost_update,
    "bank_snapshot": _read_skew,
    "serializable": _lost_update,
    "fencing": _refused,
    "liveness": _stuck,
    "harness_errors": _harness_crash,
    "collected": _not_collected,
    "no_orphaned_holds": _orphaned_hold,
}


def test_every_checker_has_a_planted_bug() -> None:
    assert set(PLANTED) == set(checkers.CHECKERS)


@pytest.mark.parametrize("checker", sorted(PLANTED))
def test_checker_rejects_its_planted_bug(checker: str) -> None:
    history = copy.deepcopy(bank_history())
    PLANTED[checker](history)
    results = checkers.check(history)
    assert not results["valid"]
    assert not results["checkers"][checker]["valid"], results["checkers"]
    assert checkers.CHECKERS[checker](bank_history()) == []


def _violations(history: list[Event]) -> dict[str, list[str]]:
    results = checkers.check(history)
    return {k: v["examples"] for k, v in results["checkers"].items() if not v["valid"]}


def test_a_lost_update_is_named_even_when_the_total_adds_up() -> None:
    history = bank_history()
    _lost_update(history)
    bad = _violations(history)
    assert set(bad) == {"bank_ledger", "serializable"}, bad
    assert any(
        "lost update: t1, t5 all read p1:acct/0 at version 1" in v for v in bad["serializable"]
    )
    assert "p1:acct/0 is 100; the committed transactions make it 95" in bad["bank_ledger"]


def test_a_lost_update_is_found_without_the_writes_sequence_numbers() -> None:
    history = bank_history()
    _lost_update(history)
    for event in history:
        if event["type"] == "record":
            event["installed"] = {}  # the participants were restarted: nothing known
    assert any(v.startswith("lost update") for v in checkers.serializable(history))


def test_adds_applied_in_different_orders_at_two_participants_are_serializable() -> None:
    """a1 and a2 both move money from p1 to p2 with Branch.add; p1 applied a1 first, p2
    a2 first. Adds commute, so that is serializable (as plain writes it would be a G0
    write cycle)."""
    bank = Bank()
    h = bank.h
    i = h.index(_find(h, type="healed"))
    tail, h[i:] = h[i:], []
    for txn, amount in (("a1", 5), ("a2", 7)):
        bank.add_txn(
            txn,
            "transfer",
            "ok",
            {
                "p1": {"writes": {"acct/0": {"add": -amount, "min": 0, "max": None}}},
                "p2": {"writes": {"acct/0": {"add": amount, "min": None, "max": None}}},
            },
        )
    h.extend(tail)
    seqs = {("a1", "p1"): 4, ("a2", "p1"): 5, ("a2", "p2"): 4, ("a1", "p2"): 5}
    for e in h:
        if e["type"] == "record" and (e["txn"], e["participant"]) in seqs:
            e["installed"] = {"acct/0": seqs[(e["txn"], e["participant"])]}
    _find(h, type="final_state", participant="p1")["state"]["acct/0"] = "93"
    _find(h, type="final_state", participant="p2")["state"]["acct/0"] = "107"
    assert _violations(h) == {}
    as_plain_writes = [
        replace(o, adds=frozenset()) for o in checkers.observed(h)
    ]  # what the checker would see without knowing they are adds
    assert check_serializable(as_plain_writes)[0].startswith("G0 write cycle")


def test_a_non_conserving_final_state_is_flagged() -> None:
    history = bank_history()
    _money_printed(history)
    assert checkers.bank_conserved(history) == ["final total is 201, not the initial 200 (+1)"]
    assert "p2:acct/0 is 96; the committed transactions make it 95" in checkers.bank_ledger(history)


def test_a_read_only_transaction_seeing_a_wrong_total_is_flagged() -> None:
    history = bank_history()
    _read_skew(history)
    bad = _violations(history)
    assert set(bad) == {"bank_snapshot", "serializable"}, bad
    assert bad["bank_snapshot"][0].startswith(
        "r1: committed read-only, saw a total of 210, not 200"
    )
    assert bad["serializable"][0].startswith("G-single read skew")


def test_a_read_only_transaction_that_aborted_may_have_seen_anything() -> None:
    history = bank_history()
    _read_skew(history)
    _find(history, type="ok", txn="r1")["type"] = "fail"
    for event in history:
        if event.get("txn") == "r1":
            if event["type"] == "record":
                event["state"] = "ABORTED"
            if event["type"] == "decision":
                event["decision"] = ABORT
    assert _violations(history) == {}


def test_conservation_is_not_judged_while_something_is_in_doubt() -> None:
    history = bank_history()
    _find(history, type="final_state", participant="p2")["in_doubt"] = ["t9"]
    assert checkers.bank_conserved(history) == [
        "still in doubt at the end, conservation cannot be judged: {'p2': ['t9']}"
    ]


def test_an_unknown_outcome_is_never_assumed() -> None:
    history = bank_history()
    history.remove(_find(history, type="resolved", txn="t3"))
    bad = _violations(history)
    assert bad["unknown_resolved"] == [
        "t3: unknown outcome not resolved through the cluster (never asked)"
    ]
    assert bad["bank_ledger"] == [
        "t3: wrote, and its outcome is unknown: its changes cannot be accounted",
        "p1:acct/0 is 105; the committed transactions make it 95",
        "p2:acct/0 is 95; the committed transactions make it 105",
    ]


def test_the_cluster_s_answer_must_match_the_participants() -> None:
    history = bank_history()
    _find(history, type="resolved", txn="t4")["decision"] = "COMMIT"
    assert checkers.unknown_resolved(history) == [
        "t4: the cluster says COMMIT, the participants did not commit it"
    ]
    history = bank_history()
    _find(history, type="resolved", txn="t3")["decision"] = "ABORT"
    assert "t3: the cluster answered ABORT by id, a node applied DECISION_COMMIT" in (
        checkers.one_decision(history)
    )


def test_a_booking_acknowledged_but_missing_is_flagged() -> None:
    history = booking_history()
    del _find(history, type="final_state", participant="p2")["state"]["room/1"]
    assert checkers.acknowledged_applied(history) == [
        "b1: acknowledged commit not applied at p2 (missing ['room/1'])"
    ]


@pytest.mark.parametrize(
    ("checker", "plant"),
    [
        ("one_decision", _two_decisions),
        ("fencing", _term_regressed),
        ("liveness", _never_completed),
        ("bank_ledger", _money_printed),
    ],
)
def test_more_bad_histories_are_rejected(checker: str, plant: Any) -> None:
    history = copy.deepcopy(bank_history())
    plant(history)
    assert checkers.CHECKERS[checker](history), checker


def test_recovery_is_measured_from_the_history() -> None:
    history: list[Event] = [{"t": 0, "type": "start"}]
    history += [{"t": t / 10, "type": "ok", "txn": f"a{t}"} for t in range(0, 100)]  # 10/s
    history.append({"t": 10.0, "type": "fault", "event": "start", "id": 0, "kind": "bridge"})
    history.append({"t": 12.0, "type": "fault", "event": "end", "id": 0, "kind": "bridge"})
    history += [{"t": 13 + t / 10, "type": "ok", "txn": f"b{t}"} for t in range(0, 50)]
    history.append({"t": 20.0, "type": "healed"})
    (fault,) = checkers.recovery(history)
    assert fault["baseline_ops_s"] == 10.0
    assert fault["throughput_recovery_s"] == pytest.approx(2.0, abs=0.15)


def test_a_hold_for_a_round_still_in_doubt_is_no_orphan() -> None:
    final = {"type": "final_state", "participant": "p1", "in_doubt": ["t9"], "held": ["t9"]}
    assert checkers.no_orphaned_holds([final]) == []
    assert checkers.no_orphaned_holds([{**final, "in_doubt": []}]) != []
