"""`concord txn` with the habits of etcdctl and temporal, against a real 3-node cluster:
newest first with a time column, one word per outcome in the table and the JSON
(COMPENSATED for a compensated saga), snake_case JSON with numbers as numbers (also
`status --json`), unique id prefixes for show/abort/retry (an ambiguous or unknown one
is one line and exit 2), and `txn list --watch` printing changes as they apply."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import SagaStep, SyncConcordClient
from tests.integration.conftest import REPO, AgentProcess, concord, wait_for

pytestmark = pytest.mark.integration


def _one_line_usage_error(result: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and phrase in result.stderr, result.stderr


def test_list_show_abort_retry_and_json(
    cluster: LocalCluster, client: SyncConcordClient, agents: dict[str, AgentProcess]
) -> None:
    where = f"--coordinators={','.join(cluster.grpc_addresses)}"
    tag = uuid.uuid4().hex[:8]
    ids = [f"t-{tag}-{n}" for n in ("a1", "a2", "b1")]
    for txn_id in ids:
        client.begin([], txn_id=txn_id)
        assert client.commit(txn_id) is Decision.COMMIT
    saga = f"s-{tag}"  # its second step fails: the first is compensated
    agents["p2"].set_saga_mode(fail=[f"{saga}/1"])
    steps = [SagaStep(participant_id=p, action="put", payload={"saga": saga}) for p in agents]
    result = client.run_saga(steps, saga_id=saga, step_timeout_s=10)
    assert result.outcome == "COMPENSATED", result
    stuck = f"x-{tag}"
    client.begin(["nobody"], txn_id=stuck, timeout_s=60)

    listed = concord("txn", "list", "--limit=3", where)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "KIND", "PHASE", "DECISION"] and "BEGUN" in header
    assert [r.split()[0] for r in rows] == [stuck, saga, ids[2]]  # newest first
    assert rows[1].split()[1:4] == ["SAGA", "DONE", "COMPENSATED"]

    as_json = concord("txn", "list", "--limit=3", "--json", where)
    assert as_json.returncode == 0, as_json.stderr
    out = json.loads(as_json.stdout)
    assert [r["round_id"] for r in out] == [stuck, saga, ids[2]]
    assert (out[1]["kind"], out[1]["decision"]) == ("SAGA", "COMPENSATED")
    assert out[2]["kind"] == "TXN" and isinstance(out[0]["deadline_ms"], int)
    begun = [r["begun_ms"] for r in out]  # the replicated clock: the table's BEGUN column
    assert begun == sorted(begun, reverse=True) and begun[-1] > 0, begun
    assert out[1]["decided_ms"] >= out[1]["begun_ms"] and out[0]["decided_ms"] == 0
    assert all(not r.rstrip().endswith(" -") for r in rows), rows
    shown = concord("txn", "show", saga, "--json", where)
    assert json.loads(shown.stdout)["decision"] == "COMPENSATED", shown.stderr
    assert "COMPENSATED" in concord("txn", "show", saga, where).stdout

    by_prefix = concord("txn", "show", f"t-{tag}-b", where)
    assert by_prefix.returncode == 0 and by_prefix.stdout.startswith(ids[2]), by_prefix
    _one_line_usage_error(concord("txn", "show", f"t-{tag}-a", where), "is ambiguous")
    _one_line_usage_error(concord("txn", "retry", f"t-{tag}-a", where), "is ambiguous")
    _one_line_usage_error(concord("txn", "show", f"nothing-{tag}", where), f"nothing-{tag}")
    aborted = concord("txn", "abort", f"x-{tag[:6]}", where)
    assert aborted.returncode == 0 and aborted.stdout.strip() == f"{stuck}: ABORT", aborted

    status = concord("status", "--json", where)
    assert status.returncode == 0, status.stderr
    reply = json.loads(status.stdout)
    assert isinstance(reply["cluster"]["term"], int) and reply["cluster"]["term"] >= 1
    assert all(isinstance(n["commit_index"], int) for n in reply["nodes"])
    keys = set(reply["cluster"]) | {k for n in reply["nodes"] for k in n}
    assert not [k for k in keys if any(c.isupper() for c in k)], keys


def test_list_watch_prints_changes_as_they_apply(
    cluster: LocalCluster, client: SyncConcordClient
) -> None:
    where = f"--coordinators={','.join(cluster.grpc_addresses)}"
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator.runtime.cli",
            "txn",
            "list",
            "--watch",
            "--json",
            where,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[dict[str, object]] = []

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:

        def changes() -> list[dict[str, object]]:
            while not lines.empty():
                seen.append(json.loads(lines.get()))
            return seen

        def committed_and_seen() -> bool:
            """A new transaction, then whether the watch has printed anything yet (one
            begun before the watch started is not shown: try again)."""
            probe = f"w-{uuid.uuid4().hex[:8]}"
            client.begin([], txn_id=probe)
            client.commit(probe)
            return bool(changes())

        wait_for("the watch to print a change", committed_and_seen)
        txn_id = f"w-{uuid.uuid4().hex[:8]}"
        client.begin([], txn_id=txn_id)
        assert client.commit(txn_id) is Decision.COMMIT
        wait_for(
            f"the watch to show {txn_id} done",
            lambda: any(e["round_id"] == txn_id and e["phase"] == "DONE" for e in changes()),
        )
        mine = [e for e in seen if e["round_id"] == txn_id]
        assert mine[-1]["decision"] == "COMMIT" and mine[-1]["kind"] == "TXN"
        assert all(isinstance(e["applied_index"], int) for e in mine)
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            code = watcher.wait(30)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait(30)
    assert watcher.stderr is not None
    assert code == 130 and "Traceback" not in watcher.stderr.read()
