"""`concord cluster up` turns the dashboard on for its nodes and prints where it is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_cluster_up_prints_a_dashboard_that_answers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env["CONCORD_CONTEXT"] = str(tmp_path / "context.toml")
    up = subprocess.Popen(
        [sys.executable, "-m", "coordinator.runtime.cli", "cluster", "up", "--nodes=1",
         f"--dir={tmp_path / 'cluster'}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines: list[str] = []
        for line in up.stdout:  # bounded: cluster up prints these lines or exits
            lines.append(line)
            if line.startswith("context: "):
                break
        dashboard = [line for line in lines if line.startswith("dashboard: ")]
        assert dashboard, f"no dashboard line: {lines}"
        url = dashboard[0].split()[1]
        assert url.startswith("http://127.0.0.1:"), dashboard
        with urllib.request.urlopen(url + "rounds", timeout=10) as response:
            page = response.read().decode()
        assert response.status == 200 and "<h1>Rounds</h1>" in page
        # The line names the operator token's file; the token opens an operator session.
        token = Path(dashboard[0].rsplit("token in ", 1)[1].strip()).read_text().strip()
        with urllib.request.urlopen(f"{url}login?token={token}", timeout=10) as response:
            assert response.status == 200  # redirected to the cluster page
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(f"{url}login?token=not-{token}", timeout=10)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(timeout=10)
