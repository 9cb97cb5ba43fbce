"""`concord bench` end to end, very briefly: real cluster, real participant processes,
both ceilings, the contended case. Checks the JSON shape, that every figure is a
positive number and that no counter lost an update; it asserts nothing about speed
(that is what the bench itself reports)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from coordinator.bench.command import (
    CLIENTS_MAX,
    LoadResult,
    configure_bench,
    plan_from,
    render,
    saturate,
)
from coordinator.runtime.cli import main

pytestmark = pytest.mark.integration


def test_bench_measures_and_prints_the_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench", "--quick", "--json", "--participants", "2", "--clients", "1",
            "--window-s", "1", "--windows", "1", "--ceiling-s", "0.5", "--kills", "0",
            "--contended-clients", "2",
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
    # CPU per committed transaction, by role: every process of the run did some work.
    for level in (two["one_client"], two["saturated"], result["one_shot"]["saturated"]):
        cpu = level["cpu_ms_per_txn"]
        assert set(cpu) == {"leader", "followers", "participants", "client"}, level
        assert all(ms > 0 for ms in cpu.values()), level
        assert level["raft_entries_per_txn"] > 0, level
    assert result["ceilings"]["grpc_unary_calls_per_s"] > 0
    assert result["ceilings"]["raft_applied_entries_per_s"] > 0
    assert "one_participant" not in result
    contended = result["contended"]
    assert (contended["participants"], contended["hot_keys"]) == (2, 4)
    for variant in ("rmw", "add"):
        figures = contended[variant]
        assert figures["clients"] == 2 and figures["lost_updates"] == 0, figures
        (level,) = figures["levels"]
        assert level["committed"] > 0, level
        assert 0 <= level["abort_rate"] <= 1, level
        assert set(level["aborts"]) == {"conflict", "other"}, level
        # Every increment that committed is in the counters, and nothing else is.
        counters = level["counters"]
        assert counters["lost"] == 0 and counters["unexplained"] == 0, counters
        assert counters["observed"] >= counters["expected"] > 0, counters
    assert contended["add"]["aborts"]["conflict"] == 0  # adds never conflict


def test_bench_renders_the_contended_case_and_can_skip_it() -> None:
    level = {
        "clients": 16, "txn_per_s": 20.5, "attempts_per_s": 150.0, "abort_rate": 0.863,
        "aborts": {"conflict": 400, "other": 1}, "p50_ms": 70.0, "p99_ms": 130.0,
        "increment_p99_ms": 2900.0, "counters": {"lost": 0},
    }  # fmt: skip
    result = {
        "machine": {"cpus": 2, "python": "3.11"},
        "ceilings": {
            "grpc_unary_calls_per_s": 4000.0, "raft_applied_entries_per_s": 15000.0,
            "raft_inflight": 200,
        },
        "plan": {"participant_counts": []},
        "contended": {
            "participants": 2, "hot_keys": 4,
            "rmw": {"levels": [level]}, "add": {"levels": [{**level, "abort_rate": 0.0}]},
        },
        "elapsed_s": 1.0,
    }  # fmt: skip
    text = render(result)
    assert "contended: 2 participants, 4 hot counters" in text
    assert any(
        line.split()[:3] == ["rmw", "16", "20.5"] and "86.3%" in line for line in text.splitlines()
    )
    assert any(line.split()[:2] == ["add", "16"] and "0.0%" in line for line in text.splitlines())

    parser = argparse.ArgumentParser()
    configure_bench(parser)
    assert plan_from(parser.parse_args(["--contended-clients", "0"])).contended_clients == ()
    assert plan_from(parser.parse_args(["--quick"])).contended_clients == (16,)
    assert plan_from(parser.parse_args([])).contended_clients == (1, 16)


def _levels_at(
    rates: dict[int, float],
) -> tuple[list[int], Callable[[int], Awaitable[LoadResult]]]:
    """A fake level runner with these committed txn/s per client count, and the
    counts it was asked for, in order."""
    asked: list[int] = []

    async def level(clients: int) -> LoadResult:
        asked.append(clients)
        return LoadResult(
            clients=clients, txn_per_s=rates[clients], window_txn_per_s=[], p50_ms=1.0,
            p99_ms=1.0, committed=1, aborted=0, errors=0,
        )  # fmt: skip

    return asked, level


def test_saturation_keeps_doubling_the_clients_while_throughput_still_rises() -> None:
    """Saturated means more in flight no longer helps: the search goes past the
    plan's counts while the last one was the best and gained 5 %, and stops at the
    bound or once a doubling gains less."""
    rates = {16: 300.0, 32: 400.0, 64: 480.0, 128: 560.0, 256: 570.0}
    asked, level = _levels_at(rates)
    best = asyncio.run(saturate(level, (16, 32, 64), CLIENTS_MAX))
    assert asked == [16, 32, 64, 128, 256] and best.clients == 256
    # 256 gained under 5 % over 128: with a higher bound it would still stop there.
    asked, level = _levels_at({**rates, 512: 999.0})
    assert asyncio.run(saturate(level, (16, 32, 64), 1024)).clients == 256
    assert asked == [16, 32, 64, 128, 256]
    # Past its peak: no search; the best of the plan's counts.
    asked, level = _levels_at({16: 300.0, 32: 410.0, 64: 400.0})
    assert asyncio.run(saturate(level, (16, 32, 64), CLIENTS_MAX)).clients == 32
    assert asked == [16, 32, 64]
    # --clients names its counts exactly; so does --quick.
    parser = argparse.ArgumentParser()
    configure_bench(parser)
    assert plan_from(parser.parse_args(["--clients", "8,16"])).saturate_clients_max == 0
    assert plan_from(parser.parse_args(["--quick"])).saturate_clients_max == 0
    assert plan_from(parser.parse_args([])).saturate_clients_max == CLIENTS_MAX


def test_bench_soak_reports_memory_at_each_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--json", "--soak", "40,20", "--clients", "4", "--ceiling-s", "0.2"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    assert "two_participants" not in result  # a soak run measures only the soak
    soak = result["soak"]
    assert (soak["participants"], soak["clients"]) == (2, 4)
    marks = soak["checkpoints"]
    assert [m["committed"] >= at for m, at in zip(marks, (20, 40), strict=True)] == [True, True]
    for mark in marks:
        for role in ("leader", "followers_max", "participants_max", "client"):
            assert mark[f"{role}_rss_mib"] >= mark[f"{role}_anon_rss_mib"] > 0, mark
    assert soak["leader_rss_ratio"] > 0 and soak["leader_anon_rss_ratio"] > 0
    assert "leader RSS, last / first checkpoint" in render(result)


def test_bench_trace_file_shows_where_a_transaction_s_time_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every process of the run traces into one file (nodes, participants, the client),
    and scripts/trace_steps.py lines their spans up per transaction."""
    trace = tmp_path / "trace.jsonl"
    code = main(
        ["bench", "--json", "--soak", "20", "--clients", "2", "--ceiling-s", "0.2",
         "--trace-file", str(trace)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    services = {json.loads(line)["service"] for line in trace.read_text().splitlines()}
    assert services == {"concord-bench", "concord-coordinator", "concord-agent"}, services
    script = Path(__file__).resolve().parents[2] / "scripts" / "trace_steps.py"
    done = subprocess.run(
        [sys.executable, str(script), str(trace), "--shapes", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith("traces of 11 spans"), done.stdout
    # The client's transaction starts first; each participant's prepare after the
    # leader's Commit began.
    starts = {" ".join(line.split()[3:]): float(line.split()[0]) for line in lines[2:] if line}
    assert starts["concord-bench concord.transaction"] == 0.0, done.stdout
    commit = starts["concord-coordinator concord.coordinator.Commit"]
    assert starts["concord-agent concord.participant.prepare"] >= commit, done.stdout
    assert "concord-agent concord.participant.prepare #2" in done.stdout, done.stdout
    assert main(["bench", "--trace-file", str(tmp_path / "missing" / "t.jsonl")]) == 2


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--clients", "0"], "--clients"), (["--soak", "0"], "--soak"), (["--soak", "x"], "--soak")],
)
def test_bench_bad_flag_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    assert main(["bench", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err
