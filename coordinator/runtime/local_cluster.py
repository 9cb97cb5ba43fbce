"""A local cluster of `concord serve` processes on 127.0.0.1: for `concord cluster up`,
the example, benchmarks and process-level tests.

Addresses are chosen once and kept in ``ROOT/cluster.toml`` (pysyncobj knows members by
address, so a restarted cluster must reuse them); the secret is kept in
``ROOT/secret`` (mode 600). Every process is started and stopped by its own PID.

TLS by default: ``ROOT/tls`` holds a development CA (``concord certs``) and a
certificate per node, an operator ``admin`` and a client ``app``; ``transport(role,
name)`` issues more (participants, other clients) on demand. ``insecure=True`` runs
the nodes in plaintext with ``--insecure``.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.replication.node import NodeAddress
from coordinator.security.certs import CA_CERT, file_stem, init_dir, issue
from coordinator.security.identity import Identity, Role
from coordinator.security.transport import Transport, TransportError

CLUSTER_NAME = "local"
STARTED_MARK = "started"  # in the root: the cluster was started once (no --new-cluster)
OPERATOR, CLIENT = "admin", "app"  # the identities every local cluster has
_ISSUE_LOCK = threading.Lock()
STOP_WAIT_S = 10.0  # a node that has not exited this long after SIGTERM is killed
READY_WAIT_S = 30.0


class ClusterError(Exception):
    pass


class PortAllocator:
    """Ports free on 127.0.0.1, never the same one twice from one allocator.

    The OS picks each port (bind to port 0); a port it picks again after we released it
    (it does: about one in seven over a thousand picks here) is skipped, so two callers
    of one process can never be handed one port, which would make two nodes collide.
    Sockets are held until a whole call is picked, so one call has no repeats either."""

    def __init__(self, bind: Callable[[], socket.socket] | None = None) -> None:
        self._bind = bind or _bind_any_port
        self._handed_out: set[int] = set()
        self._lock = threading.Lock()

    def take(self, count: int) -> list[int]:
        held: list[socket.socket] = []
        ports: list[int] = []
        try:
            with self._lock:
                while len(ports) < count:
                    if len(held) >= count + 10_000:
                        raise ClusterError(f"no {count} ports left that were never handed out")
                    sock = self._bind()
                    held.append(sock)
                    port = int(sock.getsockname()[1])
                    if port not in self._handed_out:
                        self._handed_out.add(port)
                        ports.append(port)
            return ports
        finally:
            for sock in held:
                sock.close()


def _bind_any_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
    except BaseException:
        sock.close()
        raise
    return sock


_PORTS = PortAllocator()


def free_ports(count: int) -> list[int]:
    """``count`` ports free right now on 127.0.0.1, none ever handed out before in this
    process (one allocator for the whole process: every harness and test uses it)."""
    return _PORTS.take(count)


@dataclass
class NodeProcess:
    address: NodeAddress
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        insecure: bool = False,
        serve_flags: tuple[str, ...] = (),
        ui: bool = False,
    ) -> None:
        """``serve_flags`` go to every node's `concord serve` (e.g. Raft timing); ``ui``
        gives every node a web dashboard on a free port (``ui_urls``)."""
        if nodes not in (1, 3, 5):
            raise ClusterError(f"a cluster has 1, 3 or 5 nodes, not {nodes}")
        self.root = root
        self.serve_flags = serve_flags
        self.root.mkdir(parents=True, exist_ok=True)
        self.insecure = bool(insecure)
        self.secret = self._secret()
        self.addresses = self._addresses(nodes)
        self.tls_dir = root / "tls"
        if not self.insecure:
            self._certificates()
        self.nodes = {
            a.node_id: NodeProcess(a, root / a.node_id, root / f"{a.node_id}.log")
            for a in self.addresses
        }
        ui_ports = free_ports(nodes) if ui else []
        self.ui = {
            a.node_id: f"127.0.0.1:{p}" for a, p in zip(self.addresses, ui_ports, strict=False)
        }

    @property
    def ui_urls(self) -> dict[str, str]:
        """Each node's dashboard, when the cluster was made with ``ui=True``."""
        return {node_id: f"http://{address}/" for node_id, address in self.ui.items()}

    def ui_token_path(self, node_id: str) -> Path:
        """Where the node writes its dashboard's operator token (coordinator/ui)."""
        return self.nodes[node_id].data_dir / "ui-token"

    @property
    def grpc_addresses(self) -> list[str]:
        return [a.grpc for a in self.addresses]

    def start(self) -> None:
        for node_id in self.nodes:
            self.start_node(node_id)
        (self.root / STARTED_MARK).touch()

    def start_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive:
            return
        peers = [
            f"--peer={a.node_id}={a.raft},{a.grpc}" for a in self.addresses if a.node_id != node_id
        ]
        command = [
            sys.executable,
            "-m",
            "coordinator.runtime.cli",
            "serve",
            f"--node-id={node_id}",
            f"--raft={node.address.raft}",
            f"--grpc={node.address.grpc}",
            f"--data-dir={node.data_dir}",
            "--insecure" if self.insecure else f"--tls-dir={self.tls_dir}",
            *peers,
            *([f"--ui={self.ui[node_id]}"] if node_id in self.ui else []),
            *self.serve_flags,
        ]
        if not (self.root / STARTED_MARK).exists():
            # The cluster's first start; from then on a node without data refuses (a
            # wiped data dir must stop the node, not lose the data).
            command.append("--new-cluster")
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.node_env()
            )

    def node_env(self) -> dict[str, str]:
        """A node's environment: this process's, without any ``CONCORD_*`` setting (each
        is a `serve` setting: a user's CONCORD_METRICS or CONCORD_CONFIG would reach
        every node, and three nodes would want one port), plus the cluster's secret."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
        return {**inherited, "CONCORD_SECRET": self.secret}

    def kill(self, node_id: str) -> None:
        """SIGKILL: the node gets no chance to flush anything."""
        node = self.nodes[node_id]
        if node.process is not None and node.alive:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()

    def stop_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.process is None:
            return
        if node.alive:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def stop(self) -> None:
        for node_id in self.nodes:
            self.stop_node(node_id)

    def leader(self, timeout_s: float = READY_WAIT_S, *, every_node: bool = False) -> str:
        """The node id every live node that answers agrees leads, waiting up to
        ``timeout_s``. ``every_node``: every node must answer and agree (right after a
        start a slow node may not serve yet: its gRPC port closed, its data dir not
        even made)."""
        deadline = time.monotonic() + timeout_s
        last = "no node answered"
        while time.monotonic() < deadline:
            views = {}
            for node_id, node in self.nodes.items():
                if not node.alive and not every_node:
                    continue
                try:
                    views[node_id] = self.status(node_id).leader_id
                except grpc.RpcError as error:
                    last = f"{node_id}: {error.code()}"  # type: ignore[attr-defined]
                    if every_node:
                        views[node_id] = ""  # not answering: no agreement yet
            leaders = set(views.values())
            if len(leaders) == 1 and "" not in leaders and views:
                leader = leaders.pop()
                if self.nodes[leader].alive:
                    return leader
            elif views:
                last = f"views of the leader: {views}"
            self._check_alive()
            time.sleep(0.05)
        raise ClusterError(
            f"no agreed leader within {timeout_s}s ({last}); see logs in {self.root}"
        )

    def wait_all_serving(self, timeout_s: float = READY_WAIT_S) -> str:
        """Wait until every node answers and names the same leader; return it."""
        return self.leader(timeout_s, every_node=True)

    def status(self, node_id: str) -> coordinator_pb2.ClusterStatusReply:
        address = self.nodes[node_id].address.grpc
        with self.transport(Role.OPERATOR, OPERATOR).channel(address, to=Role.NODE) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            reply: coordinator_pb2.ClusterStatusReply = stub.ClusterStatus(
                coordinator_pb2.ClusterStatusRequest(), timeout=1.0
            )
            return reply

    def _check_alive(self) -> None:
        for node_id, node in self.nodes.items():
            if node.process is not None and node.process.poll() not in (None, -signal.SIGKILL, 0):
                tail = node.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise ClusterError(
                    f"node {node_id} exited with {node.process.returncode}: {' | '.join(tail)}"
                )

    # ------------------------------------------------------------------ TLS

    def transport(self, role: Role, name: str) -> Transport:
        """A certificate of this cluster for ``role``/``name`` (issued now if new), or
        plaintext for an insecure cluster."""
        if self.insecure:
            return Transport.insecure()
        with _ISSUE_LOCK:
            try:
                return Transport.from_dir(self.tls_dir, role, name)
            except TransportError:
                issue(self.tls_dir, Identity(CLUSTER_NAME, role, name))
                return Transport.from_dir(self.tls_dir, role, name)

    def tls_env(self, role: Role, name: str) -> dict[str, str]:
        """Environment for a child process of this identity (an agent, a tool): the
        SDK and the CLI take their certificate from it. Empty for an insecure cluster."""
        if self.insecure:
            return {}
        self.transport(role, name)  # issued if new
        stem = file_stem(Identity(CLUSTER_NAME, role, name))
        return {
            "CONCORD_TLS_CA": str(self.tls_dir / CA_CERT),
            "CONCORD_TLS_CERT": str(self.tls_dir / f"{stem}.pem"),
            "CONCORD_TLS_KEY": str(self.tls_dir / f"{stem}.key"),
        }

    def _certificates(self) -> None:
        if (self.tls_dir / CA_CERT).exists():
            return
        identities = [Identity(CLUSTER_NAME, Role.NODE, a.node_id) for a in self.addresses]
        identities += [
            Identity(CLUSTER_NAME, Role.OPERATOR, OPERATOR),
            Identity(CLUSTER_NAME, Role.CLIENT, CLIENT),
        ]
        init_dir(self.tls_dir, CLUSTER_NAME, identities)

    # ------------------------------------------------------------------ files

    def _secret(self) -> str:
        path = self.root / "secret"
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def _addresses(self, count: int) -> list[NodeAddress]:
        path = self.root / "cluster.toml"
        if path.exists():
            try:
                with path.open("rb") as file:
                    saved = tomllib.load(file)
                addresses = [NodeAddress(**n) for n in saved["nodes"]]
            except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as error:
                raise ClusterError(
                    f"{path} is unreadable ({error}); remove {self.root} to start afresh"
                ) from None
            if len(addresses) != count:
                raise ClusterError(
                    f"{self.root} holds a {len(addresses)}-node cluster; "
                    f"use --nodes {len(addresses)} "
                    f"or remove {self.root} to start afresh"
                )
            return addresses
        ports = free_ports(2 * count)
        addresses = [
            NodeAddress(
                node_id=f"c{i + 1}",
                raft=f"127.0.0.1:{ports[2 * i]}",
                grpc=f"127.0.0.1:{ports[2 * i + 1]}",
            )
            for i in range(count)
        ]
        lines = [
            f'[[nodes]]\nnode_id = "{a.node_id}"\nraft = "{a.raft}"\ngrpc = "{a.grpc}"\n'
            for a in addresses
        ]
        path.write_text("\n".join(lines))
        return addresses
