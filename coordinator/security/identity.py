"""Who a peer is: identities carried in X.509 certificates, never in messages.

Theory of operation
-------------------
Every gRPC link is mutual TLS. A certificate names one identity in a URI subject
alternative name, ``concord://CLUSTER/ROLE/NAME``: the cluster it belongs to, its role
(a coordinator ``node``, a ``participant``, an ``operator``, or a ``client`` that runs
transactions) and its name (node id, participant id, operator or application name,
percent-encoded). What a peer may do follows from that identity alone: a participant
registers, votes and acknowledges only as itself, only nodes of the cluster drive
participants, only operators change membership or force outcomes.

Servers learn the caller's identity from the verified client certificate
(``certs.peer_identity``). Clients check the server's identity through TLS hostname
verification: each server certificate also carries a DNS name derived from its
identity (``server_name``), and a client connects with that name as the expected
host, so a participant dialled as ``p1`` must present ``p1``'s certificate and a
participant dials only certificates that are coordinators of its cluster.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote, unquote

__all__ = ["Identity", "IdentityError", "Role", "server_name"]

SCHEME = "concord://"
CLUSTER_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
NAME_BYTES_MAX = 128


class IdentityError(ValueError):
    """A name or certificate that cannot carry a Concord identity."""


class Role(Enum):
    NODE = "node"
    PARTICIPANT = "participant"
    OPERATOR = "operator"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Identity:
    cluster: str
    role: Role
    name: str

    def __post_init__(self) -> None:
        check_cluster_name(self.cluster)
        encoded = self.name.encode()
        if not encoded or len(encoded) > NAME_BYTES_MAX or not self.name.isprintable():
            raise IdentityError(
                f"a {self.role.value} name must be 1..{NAME_BYTES_MAX} printable bytes, "
                f"got {self.name[:40]!r}"
            )

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.cluster}/{self.role.value}/{quote(self.name, safe='')}"

    @classmethod
    def parse(cls, uri: str) -> Identity:
        if not uri.startswith(SCHEME):
            raise IdentityError(f"not a Concord identity: {uri[:80]!r}")
        parts = uri[len(SCHEME) :].split("/")
        if len(parts) != 3:
            raise IdentityError(f"not a Concord identity: {uri[:80]!r}")
        cluster, role, name = parts
        try:
            return cls(cluster, Role(role), unquote(name, errors="strict"))
        except ValueError as error:
            raise IdentityError(f"not a Concord identity: {uri[:80]!r} ({error})") from None

    def __str__(self) -> str:
        return f"{self.role.value} {self.name!r} of cluster {self.cluster!r}"


def check_cluster_name(cluster: str) -> str:
    if not CLUSTER_NAME.match(cluster):
        raise IdentityError(
            f"cluster name {cluster[:40]!r} must be 1-40 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-'"
        )
    return cluster


def server_name(cluster: str, role: Role, name: str = "") -> str:
    """The DNS name a server of this identity presents, and that a client dialling it
    expects. Every node of a cluster shares one (any node may answer a client);
    a participant's is derived from its id (ids need not be DNS labels)."""
    check_cluster_name(cluster)
    if role is Role.NODE:
        return f"coordinator.{cluster}.concord"
    if role is Role.PARTICIPANT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        return f"p{digest}.participant.{cluster}.concord"
    raise IdentityError(f"a {role.value} does not serve")
