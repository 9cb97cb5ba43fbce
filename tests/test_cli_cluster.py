"""`concord serve`, `status` and `txn`: a user's mistake is one line on stderr and
exit code 2, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.runtime.local_cluster import free_ports


def concord(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture
def ports() -> Iterator[list[int]]:
    yield free_ports(2)


STRONG = "0123456789abcdef0123"  # long enough, varied enough


def _serve(tmp_path: Path, ports: list[int], *extra: str) -> list[str]:
    return [
        "serve", "--node-id=c1", f"--raft=127.0.0.1:{ports[0]}", f"--grpc=127.0.0.1:{ports[1]}",
        f"--data-dir={tmp_path / 'c1'}", "--insecure", *extra,
    ]  # fmt: skip


def test_serve_without_a_secret(tmp_path: Path, ports: list[int]) -> None:
    result = concord(*_serve(tmp_path, ports), env={"PATH": "/usr/bin"})
    assert_one_line_usage_error(result, "secret", "CONCORD_SECRET")


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("--secret=s3cret", "too weak"),
        ("--secret=aaaaaaaaaaaaaaaaaaaaaaaa", "too weak"),
        ("--secret-file=/nonexistent/secret", "does not exist"),
    ],
)
def test_serve_with_a_weak_or_missing_secret(
    tmp_path: Path, ports: list[int], secret: str, problem: str
) -> None:
    result = concord(*_serve(tmp_path, ports, secret))
    assert_one_line_usage_error(result, problem)


def test_serve_with_a_secret_file_others_can_read(tmp_path: Path, ports: list[int]) -> None:
    secret = tmp_path / "secret"
    secret.write_text(STRONG)
    secret.chmod(0o644)
    result = concord(*_serve(tmp_path, ports, f"--secret-file={secret}"))
    assert_one_line_usage_error(result, "readable by other users", "chmod 600")


def test_serve_with_a_bad_address(tmp_path: Path, ports: list[int]) -> None:
    result = concord(
        "serve",
        "--node-id=c1",
        "--raft=nowhere",
        "--grpc=127.0.0.1:1",
        "--data-dir=x",
        f"--secret={STRONG}",
    )
    assert_one_line_usage_error(result, "--raft", "HOST:PORT")


def test_serve_with_a_bad_peer(tmp_path: Path, ports: list[int]) -> None:
    result = concord(*_serve(tmp_path, ports, f"--secret={STRONG}", "--peer=c2"))
    assert_one_line_usage_error(result, "--peer")


def test_serve_on_a_used_port(tmp_path: Path, ports: list[int]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[1]))
        busy.listen()
        result = concord(*_serve(tmp_path, ports, f"--secret={STRONG}"))
    assert_one_line_usage_error(result, "--grpc", "pick a free port")


def test_serve_with_an_unknown_config_key(tmp_path: Path, ports: list[int]) -> None:
    config = tmp_path / "node.toml"
    config.write_text('node_id = "c1"\nsecrett = "typo"\n')
    result = concord("serve", f"--config={config}")
    assert_one_line_usage_error(result, "unknown keys", "secrett")


def test_serve_with_a_corrupt_data_dir(tmp_path: Path, ports: list[int]) -> None:
    journal = tmp_path / "c1" / "raft-journal"
    journal.mkdir(parents=True)
    (journal / "data.mdb").write_bytes(b"this is not an lmdb file" * 100)
    result = concord(*_serve(tmp_path, ports, f"--secret={STRONG}"))
    assert_one_line_usage_error(result, str(tmp_path / "c1"))


def test_status_of_an_unreachable_cluster(ports: list[int]) -> None:
    result = concord("status", f"--coordinators=127.0.0.1:{ports[0]}")
    assert_one_line_usage_error(result, "no coordinator answered", "--coordinators")


def test_cluster_up_refuses_a_different_size(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(
        '[[nodes]]\nnode_id = "c1"\nraft = "127.0.0.1:1"\ngrpc = "127.0.0.1:2"\n'
    )
    result = concord("cluster", "up", "--nodes=3", f"--dir={tmp_path}")
    assert_one_line_usage_error(result, "1-node cluster", "--nodes 1")


def _cluster_up(tmp_path: Path, nodes: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`concord cluster up` in the background, as a newcomer types it, with no TLS
    variable and a context file of the test's own; returns once its context is written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_TLS")}
    env["CONCORD_CONTEXT"] = str(tmp_path / "context.toml")
    up = subprocess.Popen(
        [sys.executable, "-m", "coordinator.runtime.cli", "cluster", "up", f"--nodes={nodes}",
         f"--dir={tmp_path / 'cluster'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert up.stdout is not None
    lines = []
    for line in up.stdout:  # bounded: cluster up prints these lines or exits
        lines.append(line)
        if line.startswith("context: "):
            return up, env
    _stop(up)
    raise AssertionError(
        f"cluster up did not come up: {lines} {up.stderr.read() if up.stderr else ''}"
    )


def _stop(up: subprocess.Popen[str]) -> None:
    """As Ctrl-C, by its PID."""
    up.send_signal(signal.SIGINT)
    try:
        up.wait(timeout=60)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait(timeout=10)


def test_cluster_up_writes_the_context_that_status_then_uses_with_no_flags(
    tmp_path: Path,
) -> None:
    """`concord cluster up`, then `concord status` with no flag and no variable: the
    context `cluster up` wrote names the nodes and the certificates."""
    up, env = _cluster_up(tmp_path, 1)
    try:
        status = concord("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "c1" in status.stdout and "leader" in status.stdout.lower(), status.stdout
        # A flag still wins over the context.
        elsewhere = concord("status", "--coordinators=127.0.0.1:1", env=env)
        assert elsewhere.returncode != 0 and "127.0.0.1:1" in elsewhere.stderr
        # So does the variable.
        env_elsewhere = {**env, "CONCORD_COORDINATORS": "127.0.0.1:1"}
        assert concord("status", env=env_elsewhere).returncode != 0
        # A second `cluster up` on the same directory is refused in one line.
        again = concord("cluster", "up", "--nodes=1", f"--dir={tmp_path / 'cluster'}", env=env)
        assert_one_line_error(again, "is in use by another `concord cluster up`")
    finally:
        _stop(up)


def test_a_node_of_a_local_cluster_stops_and_starts_for_a_drill(tmp_path: Path) -> None:
    """One node stopped: the others go on and keep a leader; started again, it is a
    member again. Both through the context, by the node's PID."""
    up, env = _cluster_up(tmp_path, 3)
    try:
        stopped = concord("cluster", "stop", "c2", env=env)
        assert stopped.returncode == 0 and "node c2 stopped" in stopped.stdout, stopped
        assert up.poll() is None, "cluster up stopped with one node"
        assert concord("status", env=env).returncode == 0  # two of three lead on
        assert_one_line_error(concord("cluster", "stop", "c2", env=env), "no running node 'c2'")
        started = concord("cluster", "start", "c2", env=env)
        assert started.returncode == 0 and "node c2 started" in started.stdout, started
        assert_one_line_error(concord("cluster", "start", "c2", env=env), "is running")
    finally:
        _stop(up)
    assert_one_line_error(concord("cluster", "start", "c2", env=env), "no `concord cluster up`")


def test_cluster_up_fails_when_a_node_cannot_start(tmp_path: Path) -> None:
    """A node's port is taken: `cluster up` exits non-zero naming the node, and does
    not say the cluster is up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (raft,) = free_ports(1)
        cluster = tmp_path / "cluster"
        cluster.mkdir()
        (cluster / "cluster.toml").write_text(
            f'[[nodes]]\nnode_id = "c1"\nraft = "127.0.0.1:{raft}"\ngrpc = "127.0.0.1:{port}"\n'
        )
        result = concord("cluster", "up", "--nodes=1", f"--dir={cluster}")
    assert "cluster of 1 up" not in result.stdout
    assert_one_line_error(result, "node c1 exited at start", "in use")


def test_version_flag() -> None:
    result = concord("--version")
    assert result.returncode == 0 and result.stdout.startswith("concord "), result


def test_config_check_prints_the_settings_or_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(STRONG)
    secret.chmod(0o600)
    good = tmp_path / "c1.toml"
    good.write_text(
        'node_id = "c1"\nraft = "127.0.0.1:7001"\ngrpc = "127.0.0.1:8001"\n'
        f'data_dir = "{tmp_path / "c1"}"\nsecret_file = "{secret}"\ninsecure = true\n'
        'peers = ["c2=127.0.0.1:7002,127.0.0.1:8002"]\nheartbeat_ms = 150\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    result = concord("config", "check", str(good), env=env)
    assert result.returncode == 0, result.stderr
    assert f"{good}: valid" in result.stdout
    assert 'peers = ["c2=127.0.0.1:7002,127.0.0.1:8002"]' in result.stdout
    assert "heartbeat_ms = 150" in result.stdout and STRONG not in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text() + 'metricz = "127.0.0.1:9100"\n')
    assert_one_line_usage_error(concord("config", "check", str(bad), env=env), "unknown keys")
    no_secret = tmp_path / "no_secret.toml"
    no_secret.write_text(good.read_text().replace(f'secret_file = "{secret}"\n', ""))
    assert_one_line_usage_error(
        concord("config", "check", str(no_secret), env=env), "no cluster secret"
    )


def test_a_local_cluster_keeps_the_users_concord_settings_from_its_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CONCORD_* variable is a `serve` setting: a user's CONCORD_METRICS would send
    three nodes to one port, CONCORD_CONFIG would give them another node's file."""
    from coordinator.runtime.local_cluster import LocalCluster

    monkeypatch.setenv("CONCORD_METRICS", "127.0.0.1:9100")
    monkeypatch.setenv("CONCORD_CONFIG", str(tmp_path / "elsewhere.toml"))
    monkeypatch.setenv("CONCORD_SECRET", "the user's own secret, not the cluster's")
    monkeypatch.setenv("PATH_FOR_THE_TEST", "kept")
    cluster = LocalCluster(tmp_path / "cluster", 3, insecure=True)
    env = cluster.node_env()
    assert {k for k in env if k.startswith("CONCORD_")} == {"CONCORD_SECRET"}
    assert env["CONCORD_SECRET"] == cluster.secret
    assert env["PATH_FOR_THE_TEST"] == "kept"
