"""`concord bench` end to end, very briefly: real cluster, real participant processes,
both ceilings. Checks the JSON shape and that every figure is a positive number; it
asserts nothing about speed (that is what the bench itself reports)."""

from __future__ import annotations

import json
import math

import pytest

from coordinator.runtime.cli import main

pytestmark = pytest.mark.integration


def test_bench_measures_and_prints_the_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench", "--quick", "--json", "--participants", "2", "--clients", "1",
            "--window-s", "1", "--windows", "1", "--ceiling-s", "0.5", "--kills", "0",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    two = result["two_participants"]
    for key in ("txn_per_s", "p50_ms", "p99_ms", "ceiling_txn_per_s"):
        assert isinstance(two[key], float | int) and math.isfinite(two[key]) and two[key] > 0, (
            key,
            two,
        )
    assert two["one_client"]["committed"] > 0
    assert result["ceilings"]["grpc_unary_calls_per_s"] > 0
    assert result["ceilings"]["raft_applied_entries_per_s"] > 0
    assert "one_participant" not in result


def test_bench_bad_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--clients", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--clients" in err
