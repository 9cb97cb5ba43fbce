"""`concord checkpoints` / `concord effects` against a data dir, and the participant's
on_decided hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.cli import main
from participant_sdk import Participant
from participant_sdk.checkpoints import LmdbCheckpointStore, checkpoints_dir
from participant_sdk.effects import Effect, EffectLog

REPO = Path(__file__).resolve().parents[2]


def test_checkpoints_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = LmdbCheckpointStore(checkpoints_dir(tmp_path))
    store.save({"plan": ["a"]}, label="start", txn_id="t1")
    store.save({"plan": ["a", "b"], "raw": b"\x01"})
    # Read-only beside the running writer: another process (LMDB allows one env per
    # process), exactly as an operator would run it.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "protos")])}
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.runtime.cli",
            "checkpoints",
            "list",
            "--json",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert [c["checkpoint_id"] for c in data["checkpoints"]] == ["cp-1", "cp-2"]
    assert data["corrupt"] == []
    key = (2).to_bytes(8, "big")  # damage generation 2's record beneath the store
    with store.kv.write() as tx:
        raw = tx.get("records", key) or b"\x00"
        tx.put("records", key, raw[:-1] + bytes([raw[-1] ^ 0xFF]))
    store.close()
    assert main(["checkpoints", "show", "cp-1", "--data-dir", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == {"plan": ["a"]} and shown["info"]["label"] == "start"
    assert main(["checkpoints", "list", "--data-dir", str(tmp_path)]) == 1
    assert "CORRUPT" in capsys.readouterr().out
    assert main(["checkpoints", "show", "nope", "--data-dir", str(tmp_path)]) == 1
    assert main(["checkpoints", "list", "--data-dir", str(tmp_path / "none")]) == 1


def test_effects_escalations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = EffectLog.open(tmp_path, compensation_attempts_max=1, sleep=lambda s: None)

    def refund(effect: Effect) -> None:
        raise ConnectionError("bank down")

    @log.compensable(compensate=refund, name="charge")
    def charge(amount: int) -> int:
        return amount

    with log.transaction("t1"):
        charge(5, idempotency_key="k")
    log.on_decision("t1", Decision.ABORT)
    log.close()
    assert main(["effects", "escalations", "--data-dir", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["status"]) for r in rows] == [("k", "ESCALATED")]


def test_participant_calls_on_decided_after_a_durable_decision(tmp_path: Path) -> None:
    seen: list[tuple[str, Decision]] = []
    # The rollback envs may exist before the participant's own store.
    LmdbCheckpointStore(checkpoints_dir(tmp_path / "p")).close()
    p = Participant("p", tmp_path / "p", [], on_decided=lambda t, d: seen.append((t, d)))
    p.start_in_thread()
    try:
        p.begin("t1")
        p.abort_alone("t1")
    finally:
        p.stop_in_thread()
    assert seen == [("t1", Decision.ABORT)]
