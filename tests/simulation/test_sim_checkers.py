"""Each history checker judged on small hand-made histories: one that is fine, and
one with exactly the fault the checker exists for."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulations import checkers
from simulations import history as h
from simulations.history import History

# time_ms, kind, node, round_id, value[, extra]
Row = tuple[int, str, str, str, str] | tuple[int, str, str, str, str, dict[str, str]]


def _history(rows: list[Row]) -> History:
    clock = {"now": 0}
    history = History(lambda: clock["now"])
    for time_ms, kind, node, round_id, value, *extra in rows:
        clock["now"] = time_ms
        history.record(kind, node, round_id, value, **(extra[0] if extra else {}))
    return history


def _ran(time_ms: int, node: str, saga: str, step: int) -> list[Row]:
    """A step's action reached the outside world and had its effect."""
    return [
        (time_ms, h.STEP_CALL, node, saga, str(step), {"result": "applied"}),
        (time_ms, h.STEP_EFFECT, node, saga, str(step)),
    ]


def _undone(time_ms: int, node: str, saga: str, step: int, effect: str = "undone") -> list[Row]:
    """A compensation ran to its end, and the participant made it durable."""
    return [
        (time_ms, h.STEP_UNDONE, node, saga, str(step), {"effect": effect, "by": node}),
        (time_ms, h.P_DECIDED, node, saga, "ABORT", {"of": "SAGA", "step": str(step)}),
    ]


# s1 completes; s2 fails at its last step and compensates the first two, last first;
# s3 times out before its second step ran: a barrier there, the first step undone.
SAGAS_FINE: list[Row] = [
    (0, h.SAGA_PLAN, "client0", "s1", "p0,p1"),
    *_ran(1, "p0", "s1", 0),
    *_ran(2, "p1", "s1", 1),
    (3, h.DECIDED, "c0", "s1", "COMMIT"),
    (4, h.P_DECIDED, "p0", "s1", "COMMIT", {"of": "SAGA", "step": "0"}),
    (4, h.P_DECIDED, "p1", "s1", "COMMIT", {"of": "SAGA", "step": "1"}),
    (5, h.CLIENT, "client0", "s1", "COMMITTED"),
    (10, h.SAGA_PLAN, "client0", "s2", "p0,p1,p2"),
    *_ran(11, "p0", "s2", 0),
    *_ran(12, "p1", "s2", 1),
    (13, h.STEP_CALL, "p2", "s2", "2", {"result": "refused"}),
    (14, h.DECIDED, "c0", "s2", "ABORT"),
    *_undone(15, "p1", "s2", 1),
    *_undone(16, "p0", "s2", 0),
    (20, h.SAGA_PLAN, "client0", "s3", "p0,p2"),
    *_ran(21, "p0", "s3", 0),
    (22, h.DECIDED, "c0", "s3", "ABORT"),
    (23, h.P_DECIDED, "p2", "s3", "ABORT", {"of": "SAGA", "step": "1"}),
    *_undone(24, "p0", "s3", 0),
]
COMPENSATED_PLAN: list[Row] = [
    (0, h.SAGA_PLAN, "client0", "s1", "p0,p1"),
    *_ran(1, "p0", "s1", 0),
    *_ran(2, "p1", "s1", 1),
    (3, h.DECIDED, "c0", "s1", "ABORT"),
]


# s1's step 0 compensated, then compensated again under a new key that looked first
# and found nothing left to undo: the net effect is right, the second refund was not.
COMPENSATED_TWICE: list[Row] = [
    *COMPENSATED_PLAN,
    *_undone(4, "p1", "s1", 1),
    *_undone(5, "p0", "s1", 0),
    (6, h.STEP_UNDONE, "p0", "s1", "0", {"effect": "nothing", "by": "p0", "call": "2"}),
]


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
    (  # a completed saga whose step took effect twice (rerun without its key)
        checkers.sagas_exactly_once_in_effect,
        [
            (0, h.SAGA_PLAN, "client0", "s1", "p0"),
            *_ran(1, "p0", "s1", 0),
            *_ran(2, "p0", "s1", 0),
            (3, h.DECIDED, "c0", "s1", "COMMIT"),
        ],
    ),
    (  # a compensated saga that left an effect behind
        checkers.sagas_exactly_once_in_effect,
        [*COMPENSATED_PLAN, *_undone(4, "p1", "s1", 1)],
    ),
    (  # a completed saga with a compensation
        checkers.sagas_exactly_once_in_effect,
        [*COMPENSATED_PLAN[:3], (3, h.DECIDED, "c0", "s1", "COMMIT"), *_undone(4, "p0", "s1", 0)],
    ),
    (checkers.compensated_at_most_once_in_effect, COMPENSATED_TWICE),
    (  # a compensation for a step whose action never ran
        checkers.no_compensation_of_a_step_that_never_ran,
        [(0, h.SAGA_PLAN, "client0", "s1", "p0"), *_undone(4, "p0", "s1", 0)],
    ),
    (
        checkers.compensations_in_reverse_order,
        [*COMPENSATED_PLAN, *_undone(4, "p0", "s1", 0), *_undone(5, "p1", "s1", 1)],
    ),
    (  # t1 and t2 read acct/0 at one version and both wrote it: a lost update
        checkers.serializable,
        [
            (1, h.HELD, "p0", "t1", "", {"reads": "acct/0@1:genesis", "writes": "acct/0"}),
            (1, h.HELD, "p0", "t2", "", {"reads": "acct/0@1:genesis", "writes": "acct/0"}),
            (2, h.DECIDED, "c0", "t1", "COMMIT"),
            (2, h.DECIDED, "c0", "t2", "COMMIT"),
            (3, h.APPLIED, "p0", "t1", "2", {"writes": "acct/0"}),
            (4, h.APPLIED, "p0", "t2", "3", {"writes": "acct/0"}),
        ],
    ),
    (  # a barrier, then the step ran anyway (a hanging step)
        checkers.no_step_runs_after_its_compensation,
        [
            (0, h.SAGA_PLAN, "client0", "s1", "p0"),
            (1, h.DECIDED, "c0", "s1", "ABORT"),
            (2, h.P_DECIDED, "p0", "s1", "ABORT", {"of": "SAGA", "step": "0"}),
            *_ran(3, "p0", "s1", 0),
        ],
    ),
]


@pytest.mark.parametrize(
    "checker", sorted(set(checkers.HISTORY_CHECKERS.values()), key=lambda c: c.__name__)
)
def test_checker_accepts_a_good_history(checker: Callable[[History], list[str]]) -> None:
    assert checker(_history(COMMITTED_EVERYWHERE)) == []
    assert checker(_history(SAGAS_FINE)) == []


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


def test_a_second_compensation_is_caught_even_when_the_net_effect_is_right() -> None:
    assert checkers.sagas_exactly_once_in_effect(_history(COMPENSATED_TWICE)) == []
    assert checkers.compensated_at_most_once_in_effect(_history(COMPENSATED_TWICE)) == [
        "s1: step 0 at p0 compensated again by p0 at 6ms with a new key (call 2, effect "
        "nothing), after p0 compensated it at 5ms (effect undone)"
    ]
