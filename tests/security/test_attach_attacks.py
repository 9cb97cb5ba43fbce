"""Attacks on CoordinatorService.Attach, the stream an agent that only connects out
opens to the leader (participant_sdk/attach.py), against a real TLS cluster.

Whoever holds a participant's stream gets its Prepares and Decides and answers for
it, so the stream is a participant's own: a participant attaching in another's name
(its first message names p1, its certificate says p2) is refused and audited once; an
operator, a client, a node of another cluster and a plaintext caller are refused; a
follower refuses even the rightful participant and names the leader. After the
attempts p1 (a dialled agent) still gets its own messages: nothing was taken from it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.core.types import Decision
from coordinator.protomap import LEADER_HINT
from coordinator.runtime.local_cluster import CLUSTER_NAME, LocalCluster
from coordinator.security.identity import Identity, Role
from participant_sdk import SyncConcordClient
from tests.integration.conftest import AgentProcess
from tests.security.conftest import Attacker, Attackers, OperatorView

pytestmark = pytest.mark.integration

ATTACH = "/concord.v1.CoordinatorService/Attach"


def _attach(
    attacker: Attacker, address: str, participant_id: str
) -> tuple[str, str, dict[str, str]]:
    """(status, details, trailing metadata) of an Attach naming ``participant_id``,
    read until its end (a refused one ends at once; an accepted one would not)."""
    with attacker.channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        first = coordinator_pb2.AttachRequest(participant_id=participant_id)
        try:
            for _ in stub.Attach(iter([first]), timeout=5):
                pass
        except grpc.RpcError as error:
            trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
            return error.code().name, error.details() or "", trailing  # type: ignore[attr-defined]
    return "OK", "", {}


@pytest.fixture
def p1_still_served(
    shared_agents: dict[str, AgentProcess], shared_client: SyncConcordClient
) -> Iterator[None]:
    yield
    txn_id = f"t-{uuid.uuid4().hex[:12]}"
    txn = shared_client.begin(["p1"], txn_id=txn_id)
    shared_agents["p1"].stage(txn, f"k-{txn_id}", "v")
    assert shared_client.commit(txn_id) is Decision.COMMIT


def test_a_participant_attaching_as_another_is_refused_and_audited(
    attackers: Attackers, operator: OperatorView, p1_still_served: None
) -> None:
    name = f"p2-{uuid.uuid4().hex[:6]}"
    impostor = attackers.of_cluster(Role.PARTICIPANT, name)
    answers = [_attach(impostor, operator.leader_address(), "p1") for _ in range(3)]
    for code, details, _ in answers:
        assert code == "PERMISSION_DENIED", (code, details)
        assert "may not speak for participant 'p1'" in details and "\n" not in details
    uri = Identity(CLUSTER_NAME, Role.PARTICIPANT, name).uri
    denied = [
        r
        for r in operator.chain(local=True)
        if r["event"] == "denied" and r["detail"].get("caller") == uri
    ]
    assert len(denied) == 1, denied  # audited once per (caller, method)
    assert ATTACH in str(denied[0]["detail"])


@pytest.mark.parametrize(
    "kind", ["operator", "client", "participant-of-another-cluster", "plaintext"]
)
def test_only_a_participant_of_this_cluster_may_attach(
    kind: str, attackers: Attackers, operator: OperatorView, p1_still_served: None
) -> None:
    attacker = {
        "operator": lambda: attackers.of_cluster(Role.OPERATOR, "admin"),
        "client": lambda: attackers.of_cluster(Role.CLIENT, "mallory"),
        "participant-of-another-cluster": lambda: attackers.other_cluster(Role.PARTICIPANT, "p1"),
        "plaintext": attackers.plaintext,
    }[kind]()
    code, details, _ = _attach(attacker, operator.leader_address(), "p1")
    expected = "UNAVAILABLE" if attacker.plaintext else "PERMISSION_DENIED"  # no handshake
    assert code == expected, (code, details)


def test_a_follower_refuses_an_attach_and_names_the_leader(
    shared_cluster: LocalCluster, attackers: Attackers, operator: OperatorView
) -> None:
    """Even the rightful participant: only the leader holds streams."""
    p3 = attackers.of_cluster(Role.PARTICIPANT, "p3")
    leader = operator.leader_address()
    follower = next(a for a in shared_cluster.grpc_addresses if a != leader)
    code, details, trailing = _attach(p3, follower, "p3")
    assert code == "UNAVAILABLE", (code, details)
    assert trailing.get(LEADER_HINT) == leader, (details, trailing)
