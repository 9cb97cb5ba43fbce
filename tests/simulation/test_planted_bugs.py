"""A checker that cannot fail is a defect: each planted bug must be caught, and by
the checker that guards against it, within a bounded number of seeds."""

from __future__ import annotations

import pytest

from simulations.planted import PLANTED
from simulations.world import run_seed

# bug -> (checker expected to catch it, seeds within which it must be caught)
EXPECTED: dict[str, tuple[str, int]] = {
    "decide-before-all-votes": ("atomicity", 20),
    "send-decision-before-applied": ("atomicity", 20),
    "abort-alone-after-yes": ("no abort alone after yes", 40),
    "ignore-fencing": ("atomicity", 150),
    "unknown-is-failure": ("client outcomes match", 40),
    "reply-before-sync": ("conserved total", 40),
    "timeout-overrides-decision": ("decisions never flip", 300),
    "never-retry": ("liveness", 20),
}


def test_every_planted_bug_has_an_expectation() -> None:
    assert set(EXPECTED) == set(PLANTED)


@pytest.mark.parametrize("bug", sorted(EXPECTED))
def test_planted_bug_is_caught(bug: str) -> None:
    checker, seeds_max = EXPECTED[bug]
    for seed in range(seeds_max):
        violations = run_seed(seed, plant=PLANTED[bug]).violations
        if violations:
            assert any(v.startswith(f"{checker}: ") for v in violations), violations
            return
    pytest.fail(f"{bug} not caught in {seeds_max} seeds")
