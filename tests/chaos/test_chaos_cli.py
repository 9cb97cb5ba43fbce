"""`concord chaos` flag errors: one line, exit code 2, nothing started."""

from __future__ import annotations

import pytest

from coordinator.runtime.cli import main


def test_bad_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "run", "--nemesis=kill,frobnicate", "--out=/nonexistent/x"]) == 2
    assert main(["chaos", "run", "--workload=poker", "--out=/nonexistent/x"]) == 2
    assert main(["chaos", "run", "--time=abc", "--out=/nonexistent/x"]) == 2
    assert main(["chaos", "run", "--hot-keys=11", "--out=/nonexistent/x"]) == 2
    assert main(["chaos", "run", "--hot-keys=0", "--out=/nonexistent/x"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5, lines


def test_the_seed_fixes_the_fault_schedule() -> None:
    from simulations.tier2.nemesis import NEMESES, parse_nemeses, schedule

    assert parse_nemeses("all") == NEMESES
    assert schedule(5, NEMESES, 120) == schedule(5, NEMESES, 120)
    assert schedule(5, NEMESES, 120) != schedule(6, NEMESES, 120)
    faults = schedule(5, ("kill",), 120)
    assert faults and all(f.kind.startswith("kill") for f in faults)
    assert all(f.start_s + f.duration_s <= 117 for f in faults)


def test_the_seed_fixes_the_workload() -> None:
    import random

    from simulations.tier2.run import plan_txn

    def plans(seed: int) -> list[dict]:  # type: ignore[type-arg]
        rng = random.Random(seed)
        return [plan_txn("booking", rng, ["p1", "p2", "p3", "p4"], f"t{i}") for i in range(20)]

    assert plans(1) == plans(1) != plans(2)
