"""CI's chaos run: 45 s of the bank workload under coordinator kills, participant kills
(right after a YES, or at random) and partitions; half the transfers interactive
(transaction actions called through the cluster, then the commit), half one-shot (the
actions inside the commit: the begin travels with it, as production's one-call path
does); real processes on 127.0.0.1, mutual TLS on every gRPC link (the harness's
default, as users deploy). The history must pass every checker (serializability,
conservation and the read-only snapshots included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.runtime.cli import main

pytestmark = pytest.mark.integration


def test_short_chaos_run_is_valid(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    code = main(
        [
            "chaos", "run", "--workload=bank", "--nemesis=kill,partition,kill-participant",
            "--time=45", "--nodes=3", "--participants=4", "--seed=3", f"--out={out}",
        ]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    failed = {k: v["examples"][:3] for k, v in results["checkers"].items() if not v["valid"]}
    assert results["valid"], failed
    assert code == 0
    assert results["counts"]["ok"] > 100
    summary = results["summary"]
    assert summary["transfer"]["committed"] > 100, summary
    assert summary["read"].get("committed", 0) > 0, summary  # snapshots were checked
    assert summary["final_total"] == summary["initial_total"] > 0
    kinds = {fault["kind"] for fault in results["faults"]}
    assert kinds & {"kill-participant", "kill-participant-after-yes"}, kinds
    assert kinds - {"kill-participant", "kill-participant-after-yes"}, kinds
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    invokes = [e for e in history if e["type"] == "invoke" and e["f"] == "transfer"]
    one_shot = {e["txn"] for e in invokes if e["one_shot"]}
    assert 0 < len(one_shot) < len(invokes)
    committed = {e["txn"] for e in history if e["type"] == "ok"}
    assert committed & one_shot and committed - one_shot  # both kinds committed
    # A committed one-shot transfer's legs are judged like any other's.
    branches = {e["txn"] for e in history if e["type"] == "branch"}
    assert committed & one_shot <= branches
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1
    # It ran over TLS: every node served with its own certificate, no agent in plaintext.
    logs = out / "cluster"
    for node in ("c1", "c2", "c3"):
        served = f"TLS: serving as node '{node}' of cluster 'chaos'"
        assert served in (logs / f"{node}.log").read_text(errors="replace"), node
    for pid in ("p1", "p2", "p3", "p4"):
        assert "without TLS" not in (logs / f"{pid}.log").read_text(errors="replace"), pid
    assert json.loads((out / "config.json").read_text())["insecure"] is False
