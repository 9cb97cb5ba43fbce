"""The processes of a chaos run and the proxies between them.

Raft identity through proxies. pysyncobj knows a peer by the address string it was
given, opens one TCP connection per pair of nodes, and only from the node whose own
address (``selfNode``) compares greater, as a string, than the peer's address in its
list; the connecting side then sends its ``selfNode`` address and the accepting side
looks that string up in *its* list of peers (unknown -> disconnect). So:

- every node binds its real Raft port, which is also its identity (``--raft``);
- for each pair, the node with the greater identity (the *dialler*) lists the other at a
  proxy port P (``--peer other=127.0.0.1:P,...``) that forwards to the other's real Raft
  port; the accepting node lists the dialler at the dialler's real address, which
  matches the identity the dialler sends, and never dials it;
- the ports are chosen so that every dialler's identity still compares greater than
  each proxy address it dials (identities and proxy ports are handed out in string
  order), so every pair has exactly one connection and it crosses its proxy.

That connection carries both directions of that pair's Raft traffic, and the proxy knows
which side is which, so a cut can be one-way. Coordinator gRPC forwarding, client ->
coordinator and participant -> coordinator links have one proxy per ordered pair;
coordinator -> participant has one proxy per participant (its advertised endpoint) and
tells coordinators apart by connection tracking (proxy.owner_of).

Half the agents (p2, p4, ...: ``outbound_agents``) only connect out
(``--connect=outbound``): they serve nothing, have no inbound proxy, and the leader
reaches them over the Attach stream they open through their participant -> coordinator
proxies, so the same cuts, kills and power losses reach their streams.

TLS, as users deploy: every gRPC link is mutual TLS unless ``insecure``. ``ROOT/tls``
holds a development CA made for this run (``concord certs``: cluster ``chaos``) and one
certificate per identity: each node (``concord serve --tls-ca/--tls-cert/--tls-key``,
its own files), each participant (its agent process gets its own files in
``CONCORD_TLS_CA/CERT/KEY``), and each of the harness's clients and observers
(``transport(Role.CLIENT, name)``, issued on first use). The proxies only forward
bytes, so TLS runs end to end through them: a client checks the server's identity
(the name it expects, not the proxy's address) and the server the client's. Raft
traffic is pysyncobj's, encrypted with the cluster secret either way. Children never
inherit the harness's own ``CONCORD_TLS_*`` variables.

Power loss (``lazy_disks``): every process's data dir is a LazyFS mount
(simulations/tier2/lazyfs.py) at ``ROOT/lazyfs/NAME`` whose disk is ``ROOT/NAME``;
``power_cut(NAME)`` SIGKILLs that process and drops what its disk had not synced. At the
end every disk is unmounted cleanly, so ``ROOT/NAME`` holds the data dir as usual.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.runtime.local_cluster import free_ports
from coordinator.security.certs import CA_CERT, Issued, file_stem, init_dir, issue
from coordinator.security.identity import Identity, Role
from coordinator.security.transport import Transport
from simulations.tier2.lazyfs import LazyFs
from simulations.tier2.proxy import Network, Proxy, owner_of

REPO = Path(__file__).resolve().parents[2]
CLIENT = "client"
CLUSTER_NAME = "chaos"  # the identities' cluster (concord://chaos/ROLE/NAME)
STOP_WAIT_S = 10.0
TLS_ENV_PREFIX = "CONCORD_TLS_"


def child_env(own: dict[str, str]) -> dict[str, str]:
    """The harness's environment without its own TLS settings (a child takes only the
    certificate it is given, or none), plus ``own``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(TLS_ENV_PREFIX)}
    return {**inherited, **own}


@dataclass
class Process:
    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.alive and self.popen is not None else None

    def start(self) -> None:
        if self.alive:
            return
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(self.env),
                cwd=REPO,
            )
        self.paused = False

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
        self.paused = False

    def pause(self) -> None:
        if self.alive and self.popen is not None:
            self.popen.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """SIGCONT (if paused), SIGTERM, then SIGKILL after STOP_WAIT_S: by PID only."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGCONT)
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Coordinator:
    node_id: str
    raft_port: int
    grpc_port: int
    process: Process


@dataclass
class Agent:
    participant_id: str
    grpc_port: int  # 0: it only connects out
    advertise: str  # "": it only connects out
    ready_file: Path
    process: Process
    http_port: int = 0


class ChaosCluster:
    """Coordinators, participants and every proxy; started and stopped together."""

    def __init__(
        self,
        root: Path,
        *,
        nodes: int,
        participants: int,
        insecure: bool = False,
        lazy_disks: bool = False,
        outbound_agents: bool = True,
    ) -> None:
        """``outbound_agents``: every second agent only connects out (module doc)."""
        if nodes not in (3, 5):
            raise ValueError(f"--nodes is 3 or 5, not {nodes}")
        self.root = root
        self.lazy_disks = lazy_disks
        self.disks: dict[str, LazyFs] = {}  # by process name, when lazy_disks
        self.insecure = bool(insecure)
        self.tls_dir = root / "tls"
        self._transports: dict[tuple[Role, str], Transport] = {}
        if not self.insecure:
            ids = [(Role.NODE, f"c{i + 1}") for i in range(nodes)]
            ids += [(Role.PARTICIPANT, f"p{i + 1}") for i in range(participants)]
            init_dir(self.tls_dir, CLUSTER_NAME, [Identity(CLUSTER_NAME, *i) for i in ids])
        self.network = Network()
        self.secret = secrets.token_hex(32)
        self.coordinators: dict[str, Coordinator] = {}
        self.agents: dict[str, Agent] = {}
        self.proxies: list[Proxy] = []
        self.client_addresses: list[str] = []
        self.outbound = (
            {f"p{i + 1}" for i in range(participants) if i % 2 == 1} if outbound_agents else set()
        )
        self._plan(nodes, participants)

    # ------------------------------------------------------------------ layout

    def _plan(self, nodes: int, participants: int) -> None:
        ids = [f"c{i + 1}" for i in range(nodes)]
        pairs = nodes * (nodes - 1) // 2
        # identities and raft proxies, handed out in string order (see module doc)
        ordered = sorted(free_ports(nodes + pairs), key=lambda p: f"127.0.0.1:{p}")
        raft_port: dict[str, int] = {}
        raft_view: dict[tuple[str, str], str] = {}  # (viewer, peer) -> address
        cursor = 0
        for index, node_id in enumerate(ids):
            for lower in ids[:index]:
                proxy = Proxy(
                    self.network,
                    src=node_id,
                    dst=lower,
                    target_port=0,  # set below, once the lower node's port is known
                    listen_port=ordered[cursor],
                )
                cursor += 1
                self.proxies.append(proxy)
                raft_view[(node_id, lower)] = proxy.address
            raft_port[node_id] = ordered[cursor]
            cursor += 1
        for proxy in self.proxies:
            proxy.target_port = raft_port[proxy.dst]
        for index, node_id in enumerate(ids):
            for higher in ids[index + 1 :]:
                raft_view[(node_id, higher)] = f"127.0.0.1:{raft_port[higher]}"
        # the process's one allocator never hands out a port twice, so the ports above
        # and these (picked in a second call) are all distinct
        self._pool = iter(
            free_ports(nodes + nodes * (nodes - 1) + nodes + participants * (2 + nodes))
        )
        grpc_ports = {node_id: self._port() for node_id in ids}

        def grpc_proxy(src: str, dst: str) -> str:
            proxy = Proxy(
                self.network,
                src=src,
                dst=dst,
                target_port=grpc_ports[dst],
                listen_port=self._port(),
            )
            self.proxies.append(proxy)
            return proxy.address

        for node_id in ids:
            peers = [
                f"--peer={other}={raft_view[(node_id, other)]},{grpc_proxy(node_id, other)}"
                for other in ids
                if other != node_id
            ]
            command = [
                sys.executable, "-m", "coordinator.runtime.cli", "serve",
                f"--node-id={node_id}",
                f"--raft=127.0.0.1:{raft_port[node_id]}",
                f"--grpc=127.0.0.1:{grpc_ports[node_id]}",
                f"--data-dir={self._data_dir(node_id)}",
                *self._serve_tls_flags(node_id),
                "--new-cluster",  # a chaos run's cluster is new; restarts keep their data
                *peers,
            ]  # fmt: skip
            self.coordinators[node_id] = Coordinator(
                node_id,
                raft_port[node_id],
                grpc_ports[node_id],
                Process(
                    node_id,
                    command,
                    self.root / f"{node_id}.log",
                    env={"CONCORD_SECRET": self.secret},
                ),
            )
        self.client_addresses = [grpc_proxy(CLIENT, node_id) for node_id in ids]
        for index in range(participants):
            pid = f"p{index + 1}"
            coordinators = ",".join(grpc_proxy(pid, node_id) for node_id in ids)
            ready = self.root / f"{pid}.ready"
            if pid in self.outbound:
                listen_port, advertise = 0, ""
                serving = ["--connect=outbound"]
            else:
                listen_port = self._port()
                inbound = Proxy(
                    self.network,
                    dst=pid,
                    target_port=listen_port,
                    listen_port=self._port(),
                    identify=self._identifier(),
                )
                self.proxies.append(inbound)
                inbound.identify = self._identifier(inbound)
                advertise = inbound.address
                serving = [f"--listen=127.0.0.1:{listen_port}", f"--advertise={advertise}"]
            command = [
                sys.executable, "-m", "simulations.tier2.agent",
                f"--id={pid}", f"--data-dir={self._data_dir(pid)}",
                f"--coordinators={coordinators}",
                *serving,
                f"--ready-file={ready}",
                *(["--insecure"] if self.insecure else []),
            ]  # fmt: skip
            self.agents[pid] = Agent(
                pid,
                listen_port,
                advertise,
                ready,
                Process(pid, command, self.root / f"{pid}.log", env=self.tls_env(pid)),
            )

    def _data_dir(self, name: str) -> Path:
        if not self.lazy_disks:
            return self.root / name
        disk = self.disks[name] = LazyFs(self.root / name, self.root / "lazyfs" / name)
        return disk.mountpoint

    def _port(self) -> int:
        return next(self._pool)

    def _identifier(self, proxy: Proxy | None = None):  # type: ignore[no-untyped-def]
        def identify(peer_port: int) -> str:
            assert proxy is not None
            pids = {
                c.node_id: c.process.pid
                for c in self.coordinators.values()
                if c.process.pid is not None
            }
            return owner_of(peer_port, proxy.listen_port, pids)  # type: ignore[arg-type]

        return identify

    # ------------------------------------------------------------------ TLS

    def _files(self, role: Role, name: str) -> Issued:
        identity = Identity(CLUSTER_NAME, role, name)
        stem = file_stem(identity)
        cert, key = self.tls_dir / f"{stem}.pem", self.tls_dir / f"{stem}.key"
        if not cert.exists():
            return issue(self.tls_dir, identity)
        return Issued(identity, cert, key)

    def _serve_tls_flags(self, node_id: str) -> list[str]:
        """``concord serve``'s TLS flags: the node's own files, or ``--insecure``."""
        if self.insecure:
            return ["--insecure"]
        issued = self._files(Role.NODE, node_id)
        return [
            f"--tls-ca={self.tls_dir / CA_CERT}",
            f"--tls-cert={issued.cert}",
            f"--tls-key={issued.key}",
        ]

    def tls_env(self, participant_id: str) -> dict[str, str]:
        """A participant agent's certificate, for its environment (the SDK reads it
        there); empty when insecure."""
        if self.insecure:
            return {}
        issued = self._files(Role.PARTICIPANT, participant_id)
        return {
            f"{TLS_ENV_PREFIX}CA": str(self.tls_dir / CA_CERT),
            f"{TLS_ENV_PREFIX}CERT": str(issued.cert),
            f"{TLS_ENV_PREFIX}KEY": str(issued.key),
        }

    def transport(self, role: Role, name: str) -> Transport:
        """How the harness dials as ``role``/``name`` (a client, an observer): its own
        certificate, issued on first use; plaintext when insecure."""
        if self.insecure:
            return Transport.insecure()
        found = self._transports.get((role, name))
        if found is None:
            issued = self._files(role, name)
            found = Transport.from_files(self.tls_dir / CA_CERT, issued.cert, issued.key)
            self._transports[(role, name)] = found
        return found

    # ------------------------------------------------------------------ names

    @property
    def node_ids(self) -> list[str]:
        return list(self.coordinators)

    @property
    def participant_ids(self) -> list[str]:
        return list(self.agents)

    def real_grpc(self, node_id: str) -> str:
        return f"127.0.0.1:{self.coordinators[node_id].grpc_port}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self, ready_timeout_s: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for disk in self.disks.values():
            await asyncio.to_thread(disk.mount)
        for proxy in self.proxies:
            await proxy.start()
        for coordinator in self.coordinators.values():
            coordinator.process.start()
        for agent in self.agents.values():
            agent.ready_file.unlink(missing_ok=True)
            agent.process.start()
        deadline = time.monotonic() + ready_timeout_s
        for agent in self.agents.values():
            await self.wait_agent_ready(agent, deadline - time.monotonic())

    async def wait_agent_ready(self, agent: Agent, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while time.monotonic() < deadline:
            if agent.ready_file.exists():
                try:
                    agent.http_port = json.loads(agent.ready_file.read_text())["http"]
                    return True
                except (ValueError, KeyError):
                    pass
            for coordinator in self.coordinators.values():
                popen = coordinator.process.popen
                if popen is not None and popen.poll() not in (None, -signal.SIGKILL):
                    tail = coordinator.process.log_path.read_text(errors="replace")
                    raise RuntimeError(
                        f"coordinator {coordinator.node_id} exited with {popen.returncode}: "
                        + " | ".join(tail.strip().splitlines()[-2:])
                    )
            if agent.process.popen is not None and agent.process.popen.poll() is not None:
                tail = agent.process.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"participant {agent.participant_id} exited: {tail}")
            await asyncio.sleep(0.05)
        raise RuntimeError(
            f"participant {agent.participant_id} not registered within {timeout_s:.0f}s; "
            f"see {agent.process.log_path}"
        )

    def restart_agent(self, pid: str) -> None:
        agent = self.agents[pid]
        agent.ready_file.unlink(missing_ok=True)
        agent.http_port = 0
        agent.process.start()

    def process(self, name: str) -> Process:
        """The process of coordinator node or participant ``name``."""
        if name in self.coordinators:
            return self.coordinators[name].process
        return self.agents[name].process

    async def power_cut(self, name: str, seed: int, *, everything: bool = False) -> None:
        """SIGKILL ``name`` and cut its disk's power: a random prefix (``seed``) of each
        file's unsynced writes survives, the first write lost torn; ``everything``:
        nothing unsynced survives. Its disk is mounted again; restarting the process is
        the caller's."""
        self.process(name).kill()
        disk = self.disks[name]
        keep = "none" if everything else "prefix"
        await asyncio.to_thread(disk.power_cut, keep, torn=not everything, seed=seed)
        await asyncio.to_thread(disk.mount)

    def processes(self) -> list[Process]:
        return [c.process for c in self.coordinators.values()] + [
            a.process for a in self.agents.values()
        ]

    async def stop(self) -> None:
        self.network.heal()
        for process in self.processes():
            process.stop()
        for proxy in self.proxies:
            await proxy.close()
        for disk in self.disks.values():
            await asyncio.to_thread(disk.close)
