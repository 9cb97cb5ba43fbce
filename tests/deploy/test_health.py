"""`concord health`, the check the image and the StatefulSet use: with a node's own
settings it answers 0 once the node serves, and 1 with one line when nothing answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.runtime.local_cluster import free_ports
from tests.deploy.conftest import STRONG_SECRET

pytestmark = pytest.mark.integration
READY_S = 30.0


def _concord(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.runtime.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_health_answers_for_a_serving_node_and_fails_in_one_line_without_one(
    tmp_path: Path,
) -> None:
    raft, grpc = free_ports(2)
    config = tmp_path / "c1.toml"
    config.write_text(
        f'node_id = "c1"\nraft = "127.0.0.1:{raft}"\ngrpc = "127.0.0.1:{grpc}"\n'
        f'data_dir = "{tmp_path / "data"}"\ninsecure = true\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env |= {"CONCORD_CONFIG": str(config), "CONCORD_SECRET": STRONG_SECRET}
    down = _concord("health", "--timeout-s", "1", env=env)
    assert down.returncode == 1, down
    assert down.stderr.strip().splitlines() == [
        f"concord health: c1 at 127.0.0.1:{grpc}: UNAVAILABLE"
    ]
    node = subprocess.Popen(
        [sys.executable, "-m", "coordinator.runtime.cli", "serve", "--new-cluster"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            answer = _concord("health", env=env)
            seen.append((answer.returncode, answer.stdout.strip(), answer.stderr.strip()))
            if answer.returncode == 0:
                break
            assert node.poll() is None, f"the node exited: {node.stderr and node.stderr.read()}"
        assert seen[-1][:2] == (0, f"c1 at 127.0.0.1:{grpc}: SERVING"), seen
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    bad = _concord("health", env={**env, "CONCORD_HEARTBEAT_MS": "soon"})
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad
