"""Real processes on 127.0.0.1: a 3-node coordinator cluster (`concord serve` x3) and
key-value participant processes (tests/integration/kv_agent.py) on the real SDK.

Every process is started here and stopped here, by its own PID. Waits are bounded
polls that fail with what they saw; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from coordinator.core.types import Decision
from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from coordinator.security.identity import Role
from participant_sdk import ConcordError, SyncConcordClient, SyncTransaction, TransactionAborted

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0

T = TypeVar("T")


def new_txn_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def begin_staged(client: SyncConcordClient, agents: dict[str, AgentProcess]) -> str:
    """Begin a transaction across ``agents`` and stage ``k-<txn id>`` at each; its id."""
    txn_id = new_txn_id()
    txn = client.begin(sorted(agents), txn_id=txn_id)
    for agent in agents.values():
        agent.stage(txn, f"k-{txn_id}", "v")
    return txn_id


def wait_done(client: SyncConcordClient, txn_id: str) -> Decision:
    """Wait until every participant has acknowledged ``txn_id``; return the decision."""
    status = wait_for(
        f"{txn_id} to be DONE", lambda: (s := client.get(txn_id)).phase == "DONE" and s
    )
    assert status.decision is not None
    return status.decision


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the
    last thing seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last saw {last!r}")


@dataclass
class AgentProcess:
    participant_id: str
    data_dir: Path
    ready_file: Path
    log_path: Path
    coordinators: str
    tls_env: dict[str, str] = field(default_factory=dict)  # its certificate, if TLS
    connect: str = "inbound"  # "outbound": it serves nothing and attaches to the leader
    process: subprocess.Popen[bytes] | None = None
    http_port: int = 0

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        command = [
            sys.executable, str(REPO / "tests/integration/kv_agent.py"),
            f"--id={self.participant_id}",
            f"--data-dir={self.data_dir}", f"--coordinators={self.coordinators}",
            f"--ready-file={self.ready_file}",
            f"--world={self.world_path}", f"--saga-mode={self.saga_mode_path}",
            f"--connect={self.connect}",
        ]  # fmt: skip
        env = {**os.environ, **self.tls_env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
            )
        wait_for(f"participant {self.participant_id} to register", self._ready)
        self.http_port = json.loads(self.ready_file.read_text())["http"]

    @property
    def world_path(self) -> Path:
        return self.data_dir.with_name(f"{self.participant_id}.world.jsonl")

    @property
    def saga_mode_path(self) -> Path:
        return self.data_dir.with_name(f"{self.participant_id}.saga.json")

    def set_saga_mode(self, **mode: Any) -> None:
        self.saga_mode_path.write_text(json.dumps(mode))

    def world(self) -> list[tuple[str, str]]:
        """The agent's effects on the outside world, in order: (op, step key)."""
        if not self.world_path.exists():
            return []
        lines = self.world_path.read_text().splitlines()
        return [(entry["op"], entry["key"]) for entry in map(json.loads, lines) if entry]

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.participant_id} exited: {self.log_path.read_text()[-2000:]}"
            )
        return self.ready_file.exists()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stage(
        self,
        txn: SyncTransaction,
        key: str,
        value: str,
        *,
        vote: str = "yes",
        vote_delay_s: float = 0,
    ) -> None:
        """Stage ``key=value`` on this agent's branch of ``txn``, through the cluster (its
        ``stage`` action); it votes ``vote`` at Prepare, ``vote_delay_s`` late."""
        request = {"key": key, "value": value, "vote": vote, "vote_delay_s": vote_delay_s}
        txn.call(self.participant_id, "stage", request)

    def view(self) -> dict[str, Any]:
        """What the agent holds, from its read-only HTTP view."""
        url = f"http://127.0.0.1:{self.http_port}/"
        with urllib.request.urlopen(url, timeout=10) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path / "cluster", 3)
    if not local.insecure:  # the `concord` CLI dials as the cluster's operator
        monkeypatch.setenv("CONCORD_TLS_DIR", str(local.tls_dir))
    try:
        local.start()
        local.wait_all_serving()
        yield local
    finally:
        local.stop()


@contextlib.contextmanager
def agent_processes(
    cluster: LocalCluster,
    tmp_path: Path,
    ids: tuple[str, ...],
    *,
    outbound: tuple[str, ...] = (),
) -> Iterator[dict[str, AgentProcess]]:
    """kv_agent processes with these ids, registered with ``cluster`` (those in
    ``outbound`` only connect out); stopped after."""
    coordinators = ",".join(cluster.grpc_addresses)
    started = {
        pid: AgentProcess(
            pid,
            tmp_path / pid,
            tmp_path / f"{pid}.ready",
            tmp_path / f"{pid}.log",
            coordinators,
            cluster.tls_env(Role.PARTICIPANT, pid),
            connect="outbound" if pid in outbound else "inbound",
        )
        for pid in ids
    }
    try:
        for agent in started.values():
            agent.start()
        yield started
    finally:
        for agent in started.values():
            agent.stop()


@pytest.fixture
def agents(cluster: LocalCluster, tmp_path: Path) -> Iterator[dict[str, AgentProcess]]:
    with agent_processes(cluster, tmp_path, ("p1", "p2")) as started:
        yield started


def concord(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator.runtime.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class OneShotLoad:
    """One client committing one-shot transactions (a ``stage`` action at p1 and p2) in
    a thread while a test does something to the cluster. ``told`` notes what the client
    was told of each transaction: COMMIT, ABORT, or None (an error: its outcome is
    unknown to the client and is resolved by id afterwards)."""

    def __init__(self, cluster: LocalCluster) -> None:
        tls = cluster.transport(Role.CLIENT, CLIENT)
        self.client = SyncConcordClient(cluster.grpc_addresses, tls=tls, call_timeout_s=5.0)
        self._told: dict[str, Decision | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load")

    def _run(self) -> None:
        while not self._stop.is_set():
            txn_id = new_txn_id()
            work = {"key": f"k-{txn_id}", "value": "v"}
            told: Decision | None = None
            try:
                self.client.run({"p1": ("stage", work), "p2": ("stage", work)}, txn_id=txn_id)
            except TransactionAborted:
                told = Decision.ABORT
            except ConcordError:
                pass
            else:
                told = Decision.COMMIT
            with self._lock:
                self._told[txn_id] = told

    def told(self) -> dict[str, Decision | None]:
        with self._lock:
            return dict(self._told)

    def committed(self) -> int:
        return sum(d is Decision.COMMIT for d in self.told().values())

    def wait_commits(self, what: str, count: int) -> None:
        """Wait until ``count`` more transactions committed."""
        start = self.committed()
        wait_for(what, lambda: self.committed() - start >= count or None)

    def __enter__(self) -> OneShotLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self.client.close()


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[SyncConcordClient]:
    tls = cluster.transport(Role.CLIENT, CLIENT)
    with SyncConcordClient(cluster.grpc_addresses, tls=tls, call_timeout_s=5.0) as concord:
        yield concord
