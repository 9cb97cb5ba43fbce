"""Three hosts for real on one machine (the multi-host rehearsal of docs/deploy.md): three
network namespaces with the addresses of deploy/systemd/concord.toml's member list, each
running one coordinator as deploy/systemd/concord.service runs it (the shared
concord.toml, the host's node.env, only its paths moved into a scratch directory), and the
example agents (deploy/agent.py) in a fourth namespace. Transactions commit; then the
leader's link goes down, the other two elect a leader and commit; the link comes back and
the old leader follows the new one. Root only (it makes namespaces, in no way touching the
machine's own network)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.runtime import cli
from tests.deploy import netns
from tests.deploy.conftest import DEPLOY, STRONG_SECRET, env_file, host_port, systemd_unit

REASON = netns.unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

SYSTEMD = DEPLOY / "systemd"
AGENTS = "agents"  # the fourth namespace, which also holds the bridge
AGENT_PORTS = {"agent1": 9000, "agent2": 9001}
STEP_S = 60.0  # bound of each wait (a loaded machine: the agents register within 60 s)
CALL_S = 30.0  # bound of each command


def _members() -> dict[str, tuple[str, str]]:
    """node id -> (raft, grpc) from the shared config's member list."""
    peers = tomllib.loads((SYSTEMD / "concord.toml").read_text())["peers"]
    members = {}
    for peer in peers:
        node, _, addresses = peer.partition("=")
        raft, _, grpc = addresses.partition(",")
        members[node] = (raft, grpc)
    return members


class Cluster:
    """The three hosts, as deploy/systemd sets each one up, and the agents' host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.members = _members()
        self.address = {node: host_port(grpc)[0] for node, (_, grpc) in self.members.items()}
        used = set(self.address.values())
        prefix = next(iter(used)).rpartition(".")[0]
        self.agents_address = next(
            f"{prefix}.{n}" for n in range(21, 255) if f"{prefix}.{n}" not in used
        )
        self.coordinators = ",".join(grpc for _, grpc in self.members.values())
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
        self.env |= {"HOME": str(root), "CONCORD_COORDINATORS": self.coordinators}
        self.tls = root / "tls"
        self.concord = str(Path(sys.executable).parent / "concord")
        self.net: netns.Network | None = None

    def prepare(self) -> None:
        """Certificates and secret made once; each host gets the shared concord.toml, its
        node.env and what the unit file names, under its own directory."""
        names = ["--nodes", ",".join(self.members), "--participants", ",".join(AGENT_PORTS)]
        names += ["--operators", "admin", "--clients", "app"]
        assert cli.main(["certs", "init", str(self.tls), *names]) == 0
        shared = (SYSTEMD / "concord.toml").read_text()
        own = (SYSTEMD / "node.env").read_text()
        first, first_address = next(iter(self.address.items()))
        for node, address in self.address.items():
            etc, var = self.root / node / "etc", self.root / node / "var"
            (etc / "tls").mkdir(parents=True)
            var.mkdir(parents=True)
            (etc / "concord.toml").write_text(self._paths(node, shared))
            text = own.replace(f"={first}\n", f"={node}\n").replace(first_address, address)
            (etc / "node.env").write_text(text + "CONCORD_NEW_CLUSTER=true\n")
            (etc / "secret").write_text(STRONG_SECRET + "\n")
            (etc / "secret").chmod(0o600)
            for name in ("ca.pem", f"node-{node}.pem", f"node-{node}.key"):
                (etc / "tls" / name).write_bytes((self.tls / name).read_bytes())
            (etc / "tls" / f"node-{node}.key").chmod(0o600)

    def _paths(self, node: str, text: str) -> str:
        etc, var = self.root / node / "etc", self.root / node / "var"
        return text.replace("/etc/concord/", f"{etc}/").replace("/var/lib/concord/", f"{var}/")

    def start_nodes(self) -> None:
        """Each node the way the unit starts it: its Environment=, its EnvironmentFile=,
        ExecStart= in WorkingDirectory=."""
        assert self.net is not None
        service = systemd_unit(SYSTEMD / "concord.service")["Service"]
        (exec_start,) = service["ExecStart"]
        argv = shlex.split(exec_start)
        assert argv[0].endswith("/bin/concord"), exec_start
        for node in self.members:
            env = dict(self.env)
            for assignment in service.get("Environment", []):
                key, _, value = assignment.partition("=")
                env[key] = self._paths(node, value)
            (env_path,) = service["EnvironmentFile"]
            env |= env_file(Path(self._paths(node, env_path)))
            (workdir,) = service["WorkingDirectory"]
            cwd = Path(self._paths(node, workdir + "/"))
            log = self.root / node / "serve.log"
            self.net.start(node, [self.concord, *argv[1:]], env=env, cwd=cwd, log=log)

    def start_agents(self) -> None:
        assert self.net is not None
        env = self.env | {"CONCORD_TLS_DIR": str(self.tls)}
        for agent, port in AGENT_PORTS.items():
            where = f"{self.agents_address}:{port}"
            argv = [
                sys.executable,
                str(DEPLOY / "agent.py"),
                "serve",
                "--id",
                agent,
                "--data-dir",
                str(self.root / agent),
                "--listen",
                where,
                "--advertise",
                where,
                "--ready-file",
                str(self.root / f"{agent}.ready"),
            ]
            self.net.start(AGENTS, argv, env=env, cwd=self.root, log=self.root / f"{agent}.log")

    def move(self, *parts: str) -> tuple[int, str]:
        """deploy/agent.py move, run from the agents' host, told of all three nodes
        (CONCORD_COORDINATORS)."""
        assert self.net is not None
        env = self.env | {"CONCORD_TLS_DIR": str(self.tls)}
        argv = [sys.executable, str(DEPLOY / "agent.py"), "move", *parts]
        done = self.net.run(AGENTS, argv, env=env, cwd=self.root, timeout=CALL_S)
        return done.returncode, (done.stdout + done.stderr).strip()

    def views(self, nodes: list[str]) -> dict[str, dict[str, Any]]:
        """Each node's own view, of those in ``nodes`` that answer (`concord status --json`
        told of them alone, run from the agents' host as the operator)."""
        assert self.net is not None
        where = ",".join(self.members[node][1] for node in nodes)
        argv = [self.concord, "status", "--json", "--tls-dir", str(self.tls), "--coordinators"]
        done = self.net.run(AGENTS, [*argv, where], env=self.env, cwd=self.root, timeout=CALL_S)
        if done.returncode != 0:
            return {node: {"error": done.stderr.strip()[-300:]} for node in nodes}
        answers = {n.get("node_id"): n for n in json.loads(done.stdout)["nodes"]}
        return {node: answers.get(node, {"error": "no answer"}) for node in nodes}

    def logs(self) -> str:
        tails = []
        paths = [self.root / node / "serve.log" for node in self.members]
        for path in paths + [self.root / f"{agent}.log" for agent in AGENT_PORTS]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-15:]
                tails.append(f"--- {path.relative_to(self.root)}\n" + "\n".join(lines))
        return "\n".join(tails)


def _until(
    what: str, probe: Callable[[], Any], done: Callable[[Any], bool], cluster: Cluster
) -> Any:
    """Polls ``probe`` until ``done`` holds of its answer, at most STEP_S."""
    deadline = time.monotonic() + STEP_S
    seen = probe()
    while not done(seen):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {STEP_S:.0f} s; last seen {seen}\n{cluster.logs()}")
        time.sleep(0.2)  # poll interval, not synchronisation
        seen = probe()
    return seen


def _one_leader(views: dict[str, dict[str, Any]]) -> str | None:
    leaders = {v.get("leader_id") for v in views.values()}
    if len(leaders) != 1 or any("error" in v for v in views.values()):
        return None
    (leader,) = leaders
    return leader if leader in views else None


def test_three_namespaces_commit_fail_over_and_rejoin(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.prepare()
    hosts = {node: cluster.address[node] for node in cluster.members}
    try:
        cluster.net = netns.Network(hosts, AGENTS, cluster.agents_address)
    except netns.NetnsError as error:
        if "not permitted" not in str(error) and "denied" not in str(error):
            raise
        pytest.skip(f"cannot create network namespaces here: {error}")
    problems: list[str] = []
    try:
        cluster.start_nodes()
        cluster.start_agents()
        ready = [tmp_path / f"{agent}.ready" for agent in AGENT_PORTS]
        _until(
            "both agents registered",
            lambda: [p.exists() and p.read_text().strip() for p in ready],
            all,
            cluster,
        )
        nodes = list(cluster.members)
        views = _until(
            "one leader that all three name",
            lambda: cluster.views(nodes),
            lambda v: _one_leader(v) is not None,
            cluster,
        )
        old = _one_leader(views)
        assert old is not None
        assert cluster.move("agent1:coins:100") == (0, "committed: agent1 coins +100")
        assert cluster.move("agent1:coins:-30", "agent2:coins:30")[0] == 0
        code, said = cluster.move("agent1:coins:-500", "agent2:coins:500")
        assert code == 1 and said.startswith("aborted:"), said

        cluster.net.cut(old)
        others = [node for node in nodes if node != old]
        views = _until(
            f"a new leader among {others} after {old}'s link went down",
            lambda: cluster.views(others),
            lambda v: _one_leader(v) not in (None, old),
            cluster,
        )
        new = _one_leader(views)
        assert new is not None
        # Told of all three, the cut one among them: no connection opens to it, so the
        # client passes it over without sending (participant_sdk/channels.py).
        code, said = cluster.move("agent1:coins:-10", "agent2:coins:10")
        assert code == 0, f"{old} cut, {new} leads: {said}\n{cluster.logs()}"
        committed = cluster.views([new])[new]["commit_index"]

        cluster.net.restore(old)
        _until(
            f"{old} back, following the cluster's leader, caught up to {committed}",
            lambda: cluster.views(nodes),
            lambda v: (
                _one_leader(v) not in (None, old) and v[old].get("commit_index", 0) >= committed
            ),
            cluster,
        )
        code, said = cluster.move("agent1:coins:-60", "agent2:coins:60")
        assert code == 0, f"{said}\n{cluster.logs()}"
    finally:
        problems = cluster.net.close()
    assert not problems, problems
