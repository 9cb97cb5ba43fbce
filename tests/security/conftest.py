"""Fixtures and tools for the attack and fuzz tests: real TLS clusters on 127.0.0.1,
the identities an attacker may hold, and what an operator sees of the cluster.

The integration fixtures (``cluster``, ``agents``, ``client``: a fresh 3-node TLS
cluster per test) are re-exported for the tests that need a cluster of their own. Most
attack tests share one cluster per module (``shared_cluster``, ``shared_agents``,
``shared_client``): every attack is refused, so one cluster serves them all, and each
test checks that nothing changed. Every process is started here and stopped here, by
its own PID (LocalCluster and AgentProcess do that); waits are bounded polls.

Attackers (``Attacker``) dial with whatever they hold: a certificate of this cluster's
CA (client, participant, operator, node), a certificate of the same CA for another
cluster, a certificate of another CA with this cluster's name, or nothing (plaintext).
An attacker trusts the cluster's CA certificate (it is public) and names the server
identity it expects, so a refusal always comes from the server being attacked, never
from the attacker's own checks.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from concord.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
)
from coordinator.runtime.local_cluster import CLIENT, CLUSTER_NAME, OPERATOR, LocalCluster
from coordinator.security.certs import CA_CERT, CA_KEY, file_stem, init_dir, issue
from coordinator.security.identity import Identity, Role, server_name
from participant_sdk import SyncConcordClient
from tests.integration.conftest import (  # noqa: F401  (fixtures re-exported)
    AgentProcess,
    agent_processes,
    agents,
    client,
    cluster,
)

CALL_TIMEOUT_S = 5.0
WAIT_S = 30.0

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the
    last thing seen (an exception counts as not yet)."""
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


# ---------------------------------------------------------------------- attackers


@dataclass(frozen=True)
class Attacker:
    """Credentials someone may hold, and how they dial a server of this cluster."""

    label: str
    ca: bytes  # the CA the attacker trusts for the server: the cluster's (public)
    cert: bytes | None = None  # None: plaintext
    key: bytes | None = None
    cluster: str = CLUSTER_NAME  # of the server identity the attacker expects

    @property
    def plaintext(self) -> bool:
        return self.cert is None

    def channel(self, address: str, to: Role = Role.NODE, name: str = "") -> grpc.Channel:
        if self.cert is None:
            return grpc.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        override = ("grpc.ssl_target_name_override", server_name(self.cluster, to, name))
        return grpc.secure_channel(address, credentials, options=[override])

    def aio_channel(self, address: str, to: Role = Role.NODE, name: str = "") -> grpc.aio.Channel:
        if self.cert is None:
            return grpc.aio.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        override = ("grpc.ssl_target_name_override", server_name(self.cluster, to, name))
        return grpc.aio.secure_channel(address, credentials, options=[override])


class Attackers:
    """Every kind of credential, issued on demand for one LocalCluster."""

    def __init__(self, local: LocalCluster, scratch: Path) -> None:
        self.local = local
        self.scratch = scratch
        self.ca = (local.tls_dir / CA_CERT).read_bytes()
        # The same CA, certificates of another cluster: a copy of the CA files, so the
        # cluster's own directory never holds two certificates of one role and name.
        self._same_ca = scratch / "same-ca-other-cluster"
        if not (self._same_ca / CA_CERT).exists():
            self._same_ca.mkdir(parents=True, mode=0o700)
            for name in (CA_CERT, CA_KEY):
                shutil.copy2(local.tls_dir / name, self._same_ca / name)
        # Another CA that calls its cluster by this cluster's name.
        self._other_ca = scratch / "other-ca"
        if not (self._other_ca / CA_CERT).exists():
            init_dir(self._other_ca, CLUSTER_NAME, [])

    def of_cluster(self, role: Role, name: str) -> Attacker:
        """A certificate of this cluster's CA and cluster (issued now if new)."""
        self.local.transport(role, name)
        stem = file_stem(Identity(CLUSTER_NAME, role, name))
        return Attacker(
            f"{role.value} {name!r} of this cluster",
            self.ca,
            (self.local.tls_dir / f"{stem}.pem").read_bytes(),
            (self.local.tls_dir / f"{stem}.key").read_bytes(),
        )

    def other_cluster(self, role: Role, name: str, cluster_name: str = "other") -> Attacker:
        """Issued by this cluster's CA for another cluster name."""
        identity = Identity(cluster_name, role, name)
        return self._issued(self._same_ca, identity, "same CA, cluster")

    def other_ca(self, role: Role, name: str) -> Attacker:
        """Issued by another CA, with this cluster's name and a real identity's name."""
        return self._issued(self._other_ca, Identity(CLUSTER_NAME, role, name), "another CA,")

    def plaintext(self) -> Attacker:
        return Attacker("plaintext", self.ca)

    def _issued(self, directory: Path, identity: Identity, what: str) -> Attacker:
        stem = file_stem(identity)
        if not (directory / f"{stem}.pem").exists():
            issue(directory, identity)
        return Attacker(
            f"{identity.role.value} {identity.name!r} ({what} {identity.cluster!r})",
            self.ca,
            (directory / f"{stem}.pem").read_bytes(),
            (directory / f"{stem}.key").read_bytes(),
        )


def status_of(call: Callable[[], Any]) -> tuple[str, str]:
    """(status code name, details) of a blocking gRPC call; ("OK", "") if it worked.
    A streaming reply is read to its end."""
    try:
        reply = call()
        if hasattr(reply, "__next__"):
            for _ in reply:
                pass
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""  # type: ignore[attr-defined]
    return "OK", ""


# ---------------------------------------------------------------------- the operator's view


class OperatorView:
    """What an operator (the cluster's ``admin`` certificate) sees: the leader, the
    replicated audit chain, local chains, members, open rounds."""

    def __init__(self, local: LocalCluster) -> None:
        self.local = local
        self.transport = local.transport(Role.OPERATOR, OPERATOR)
        self._channels: dict[str, grpc.Channel] = {}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = self.transport.channel(address, to=Role.NODE)
        return self._channels[address]

    def leader_id(self) -> str:
        return self.local.leader()

    def leader_address(self) -> str:
        return self.local.nodes[self.leader_id()].address.grpc

    def coordinator(self, address: str | None = None) -> Any:
        return coordinator_pb2_grpc.CoordinatorServiceStub(
            self.channel(address or self.leader_address())
        )

    def operations(self, address: str | None = None) -> Any:
        return operations_pb2_grpc.OperationsServiceStub(
            self.channel(address or self.leader_address())
        )

    def membership(self, address: str | None = None) -> Any:
        return membership_pb2_grpc.MembershipServiceStub(
            self.channel(address or self.leader_address())
        )

    def chain(self, address: str | None = None, *, local: bool = False) -> list[dict[str, Any]]:
        """The audit records of one node (default: the leader): the replicated log
        chain, or with ``local`` also that node's local chain."""
        request = operations_pb2.ExportAuditRequest(include_local=local)
        replies = self.operations(address).ExportAudit(request, timeout=CALL_TIMEOUT_S)
        return [json.loads(r.json) for r in replies]

    def members(self) -> list[tuple[str, str, str]]:
        reply = self.membership().ListMembers(
            membership_pb2.ListMembersRequest(), timeout=CALL_TIMEOUT_S
        )
        return sorted((m.node_id, m.raft, m.grpc) for m in reply.members)

    def status(self, address: str | None = None) -> Any:
        return self.coordinator(address).ClusterStatus(
            coordinator_pb2.ClusterStatusRequest(), timeout=CALL_TIMEOUT_S
        )

    def get(self, round_id: str) -> Any:
        return self.coordinator().GetTxn(
            coordinator_pb2.GetTxnRequest(round_id=round_id), timeout=CALL_TIMEOUT_S
        )

    def open_rounds(self) -> list[str]:
        reply = self.coordinator().ListTxns(
            coordinator_pb2.ListTxnsRequest(open_only=True), timeout=CALL_TIMEOUT_S
        )
        return [r.round_id for r in reply.rounds]

    def quiet(
        self, timeout_s: float = WAIT_S, *, open_ok: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """Once no round is open (but those in ``open_ok``, which must be idle: ACTIVE
        transactions) and every node holds the same log chain: that chain. Nothing is
        in flight then, so a later difference is someone's doing."""

        def settled() -> tuple[list[dict[str, Any]]] | None:
            if set(self.open_rounds()) - set(open_ok):
                return None
            chains = [
                self.chain(node.address.grpc) for node in self.local.nodes.values() if node.alive
            ]
            # (a tuple: an empty chain, a new cluster's, is settled too)
            return (chains[0],) if all(c == chains[0] for c in chains) else None

        return wait_for("the cluster to settle (no open round, equal chains)", settled, timeout_s)[
            0
        ]


# ---------------------------------------------------------------------- shared cluster


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("shared") / "cluster", 3)
    try:
        local.start()
        local.leader()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def shared_agents(
    shared_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, AgentProcess]]:
    with agent_processes(shared_cluster, tmp_path_factory.mktemp("agents"), ("p1", "p2")) as found:
        yield found


@pytest.fixture(scope="module")
def shared_client(shared_cluster: LocalCluster) -> Iterator[SyncConcordClient]:
    tls = shared_cluster.transport(Role.CLIENT, CLIENT)
    with SyncConcordClient(
        shared_cluster.grpc_addresses, tls=tls, call_timeout_s=CALL_TIMEOUT_S
    ) as concord:
        yield concord


@pytest.fixture(scope="module")
def attackers(shared_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Attackers:
    return Attackers(shared_cluster, tmp_path_factory.mktemp("attackers"))


@pytest.fixture(scope="module")
def operator(shared_cluster: LocalCluster) -> Iterator[OperatorView]:
    view = OperatorView(shared_cluster)
    try:
        yield view
    finally:
        view.close()
