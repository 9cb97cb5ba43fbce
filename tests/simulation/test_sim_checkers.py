"""Each history checker judged on small hand-made histories: one that is fine, and
one with exactly the fault the checker exists for."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulations import checkers
from simulations import history as h
from simulations.history import History

Row = tuple[int, str, str, str, str]  # time_ms, kind, node, round_id, value


def _history(rows: list[Row]) -> History:
    clock = {"now": 0}
    history = History(lambda: clock["now"])
    for time_ms, kind, node, round_id, value in rows:
        clock["now"] = time_ms
        history.record(kind, node, round_id, value)
    return history


COMMITTED_EVERYWHERE: list[Row] = [
    (1, h.VOTED, "p0", "t1", "yes"),
    (2, h.VOTED, "p1", "t1", "yes"),
    (3, h.DECIDED, "c0", "t1", "COMMIT"),
    (4, h.DECIDED, "c1", "t1", "COMMIT"),
    (5, h.P_DECIDED, "p0", "t1", "COMMIT"),
    (6, h.P_DECIDED, "p1", "t1", "COMMIT"),
    (7, h.CLIENT, "client0", "t1", "COMMITTED"),
]

CASES: list[tuple[Callable[[History], list[str]], list[Row]]] = [
    (
        checkers.decisions_never_flip,
        [(3, h.DECIDED, "c0", "t1", "COMMIT"), (9, h.DECIDED, "c2", "t1", "ABORT")],
    ),
    (
        checkers.atomicity,
        [
            (3, h.DECIDED, "c0", "t1", "COMMIT"),
            (5, h.P_DECIDED, "p0", "t1", "COMMIT"),
            (6, h.P_DECIDED, "p1", "t1", "ABORT"),
        ],
    ),
    (  # committed before the coordinator decided: a decision sent before it was applied
        checkers.atomicity,
        [(2, h.P_DECIDED, "p0", "t1", "COMMIT"), (3, h.DECIDED, "c0", "t1", "COMMIT")],
    ),
    (
        checkers.no_abort_alone_after_yes,
        [
            (1, h.VOTED, "p0", "t1", "yes"),
            (2, h.P_DECIDED, "p0", "t1", "ABORT"),
            (3, h.DECIDED, "c0", "t1", "ABORT"),
        ],
    ),
    (
        checkers.client_outcomes_match,
        [(3, h.DECIDED, "c0", "t1", "COMMIT"), (4, h.CLIENT, "client0", "t1", "ABORTED")],
    ),
    (
        checkers.client_outcomes_match,
        [(3, h.DECIDED, "c0", "t1", "ABORT"), (4, h.CLIENT, "client0", "t1", "COMMITTED")],
    ),
    (
        checkers.participant_violations,
        [(3, h.VIOLATION, "p0", "", "commit of a branch that never voted yes")],
    ),
]


@pytest.mark.parametrize(
    "checker", sorted(set(checkers.HISTORY_CHECKERS.values()), key=lambda c: c.__name__)
)
def test_checker_accepts_a_good_history(checker: Callable[[History], list[str]]) -> None:
    assert checker(_history(COMMITTED_EVERYWHERE)) == []


@pytest.mark.parametrize(
    ("checker", "rows"), CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)]
)
def test_checker_rejects_a_bad_history(
    checker: Callable[[History], list[str]], rows: list[Row]
) -> None:
    assert checker(_history(rows)) != []


def test_every_history_checker_has_a_bad_case() -> None:
    assert {c for c, _ in CASES} == set(checkers.HISTORY_CHECKERS.values())


def test_aborting_after_the_abort_decision_is_fine() -> None:
    rows: list[Row] = [
        (1, h.VOTED, "p0", "t1", "yes"),
        (2, h.DECIDED, "c0", "t1", "ABORT"),
        (3, h.P_DECIDED, "p0", "t1", "ABORT"),
        (4, h.CLIENT, "client0", "t1", "ABORTED"),
    ]
    history = _history(rows)
    assert all(checker(history) == [] for checker in checkers.HISTORY_CHECKERS.values())
