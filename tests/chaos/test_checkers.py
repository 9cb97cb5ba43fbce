"""Each tier-2 checker accepts a clean hand-made history and rejects a planted bug."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from simulations.tier2 import checkers

Event = dict[str, Any]


def bank_history() -> list[Event]:
    """t1 committed (ok), t2 aborted (fail), t3 unknown that committed, t4 unknown that
    never reached anyone; both accounts consistent."""
    history: list[Event] = [{"t": 0, "type": "start"}]

    def txn(txn: str, outcome: str, committed: bool, recorded: bool = True) -> None:
        value = {"p1": {f"tx/{txn}": "-5"}, "p2": {f"tx/{txn}": "5"}}
        history.append({"t": 1, "type": "invoke", "f": "bank", "txn": txn, "value": value})
        history.append({"t": 2, "type": outcome, "txn": txn, "error": "", "latency_s": 0.1})
        decision = "DECISION_COMMIT" if committed else "DECISION_ABORT"
        if recorded:
            for node in ("c1", "c2"):
                history.append(
                    {"t": 2, "type": "decision", "txn": txn, "node": node, "decision": decision}
                )
            for pid in value:
                history.append(
                    {
                        "t": 9,
                        "type": "record",
                        "participant": pid,
                        "txn": txn,
                        "state": "COMMITTED" if committed else "ABORTED",
                        "voted_yes": True,
                    }
                )

    txn("t1", "ok", True)
    txn("t2", "fail", False)
    txn("t3", "info", True)
    txn("t4", "info", False, recorded=False)
    for term, pid in ((1, "p1"), (2, "p1"), (2, "p2")):
        history.append(
            {
                "t": 3,
                "type": "observe",
                "participant": pid,
                "term_seen": term,
                "violations": 0,
                "in_doubt": 0,
            }
        )
    history.append({"t": 8, "type": "healed"})
    history.append(
        {"t": 8.5, "type": "liveness", "healed_at": 8, "bound_s": 20, "settled_s": 0.5,
         "in_doubt": []}
    )  # fmt: skip
    for pid, sign in (("p1", "-"), ("p2", "")):
        history.append(
            {
                "t": 9,
                "type": "final_state",
                "participant": pid,
                "state": {"tx/t1": f"{sign}5", "tx/t3": f"{sign}5"},
                "in_doubt": [],
                "term_seen": 2,
                "violations": 0,
            }
        )
    return history


def test_clean_history_is_valid() -> None:
    results = checkers.check(bank_history())
    assert results["valid"], results["checkers"]
    assert results["counts"] == {"invoke": 4, "ok": 1, "fail": 1, "info": 2}


def _find(history: list[Event], **match: Any) -> Event:
    return next(e for e in history if all(e.get(k) == v for k, v in match.items()))


def _split_commit(h: list[Event]) -> None:
    """A planted atomicity bug: p2 aborts t1 while p1 commits it."""
    _find(h, type="record", participant="p2", txn="t1")["state"] = "ABORTED"
    del _find(h, type="final_state", participant="p2")["state"]["tx/t1"]


def _lost_ack(h: list[Event]) -> None:
    """An acknowledged commit whose write is gone at p2 (lost after the ack)."""
    state = _find(h, type="final_state", participant="p2")["state"]
    state["tx/t1"] = "999"


def _failed_but_committed(h: list[Event]) -> None:
    """t2 was reported failed but the cluster committed it."""
    for node in ("c1", "c2"):
        _find(h, type="decision", txn="t2", node=node)["decision"] = "DECISION_COMMIT"
    for pid, sign in (("p1", "-"), ("p2", "")):
        _find(h, type="record", participant=pid, txn="t2")["state"] = "COMMITTED"
        _find(h, type="final_state", participant=pid)["state"]["tx/t2"] = f"{sign}5"


def _unknown_half(h: list[Event]) -> None:
    _find(h, type="record", participant="p2", txn="t3")["state"] = "PREPARED"
    del _find(h, type="final_state", participant="p2")["state"]["tx/t3"]


def _abort_alone(h: list[Event]) -> None:
    """p2 voted YES on t3 (decided COMMIT) and aborted alone; its money vanished."""
    _find(h, type="record", participant="p2", txn="t3")["state"] = "ABORTED"
    del _find(h, type="final_state", participant="p2")["state"]["tx/t3"]


def _two_decisions(h: list[Event]) -> None:
    _find(h, type="decision", txn="t1", node="c2")["decision"] = "DECISION_ABORT"


def _money_printed(h: list[Event]) -> None:
    _find(h, type="final_state", participant="p2")["state"]["tx/extra"] = "100"


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


def _not_collected(h: list[Event]) -> None:
    h.append({"t": 9, "type": "collect_failed", "participant": "p2", "error": "timeout"})


PLANTED = {
    "atomicity": _split_commit,
    "acknowledged_applied": _lost_ack,
    "unknown_resolved": _unknown_half,
    "no_abort_alone_after_yes": _abort_alone,
    "one_decision": _two_decisions,
    "bank_conserved": _money_printed,
    "fencing": _refused,
    "liveness": _stuck,
    "harness_errors": _harness_crash,
    "collected": _not_collected,
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


@pytest.mark.parametrize(
    ("checker", "plant"),
    [
        ("acknowledged_applied", _failed_but_committed),
        ("one_decision", _failed_but_committed),
        ("fencing", _term_regressed),
        ("liveness", _never_completed),
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
