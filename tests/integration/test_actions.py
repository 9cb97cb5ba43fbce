"""Transaction actions: the initiator calls an agent's declared handler through the
cluster (``txn.call``), the handler works on the transaction's branch, and its result
comes back; a handler that raises makes its branch vote NO; a retried call runs once;
nobody but the transaction's initiator may drive its actions, and nobody but a
coordinator may call a participant's ``Call`` directly.

A real 3-node cluster (processes, mutual TLS); the agents run in this process (the
SDK's plain-thread mode) with in-memory stores, so the test can look at their state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc, participant_pb2, participant_pb2_grpc
from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import (
    ActionFailed,
    Branch,
    Decision,
    FailedPrecondition,
    Participant,
    PermissionDenied,
    Role,
    SyncConcordClient,
    TransactionAborted,
    TxnActions,
)
from participant_sdk.channels import CALL
from tests.integration.conftest import CLIENT, wait_for

pytestmark = pytest.mark.integration


class Shop:
    """Two agents: an inventory that reserves stock, payments that charges."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}  # action -> how many times a handler ran
        self.lock = threading.Lock()
        self.inventory = TxnActions()
        self.payments = TxnActions()
        self.inventory.add("reserve", self.reserve)
        self.inventory.add("restock", self.restock)
        self.payments.add("charge", self.charge)

    def _ran(self, action: str) -> None:
        with self.lock:
            self.runs[action] = self.runs.get(action, 0) + 1

    def reserve(self, branch: Branch, order: dict[str, Any]) -> dict[str, int]:
        self._ran("reserve")
        key = f"stock:{order['sku']}"
        stock = int(branch.get(key) or b"0")
        if stock < order["qty"]:
            raise ValueError(f"only {stock} {order['sku']} left")
        branch.put(key, str(stock - order["qty"]).encode())
        return {"left": stock - order["qty"]}

    def restock(self, branch: Branch, order: dict[str, Any]) -> None:
        branch.add(f"stock:{order['sku']}", order["qty"])

    def charge(self, branch: Branch, charge: dict[str, Any]) -> str:
        self._ran("charge")
        branch.put(f"charge:{charge['order']}", str(charge["amount"]).encode())
        return f"charged {charge['amount']}"


@pytest.fixture
def shop(cluster: LocalCluster) -> Iterator[tuple[Shop, dict[str, Participant]]]:
    shop = Shop()
    participants = {
        name: Participant(
            name,
            None,
            cluster.grpc_addresses,
            actions=actions,
            tls=cluster.transport(Role.PARTICIPANT, name),
        )
        for name, actions in (("inventory", shop.inventory), ("payments", shop.payments))
    }
    try:
        for participant in participants.values():
            participant.start_in_thread()
            participant.wait_registered_in_thread()
        tls = cluster.transport(Role.CLIENT, "integration-client")
        with (
            SyncConcordClient(cluster.grpc_addresses, tls=tls) as client,
            client.transaction(wait_applied=True) as txn,
        ):
            txn.call("inventory", "restock", {"sku": "widget", "qty": 10})
        yield shop, participants
    finally:
        for participant in participants.values():
            participant.stop_in_thread()


def _stock(participant: Participant) -> bytes | None:
    return participant.state.get("stock:widget")


def test_calls_return_results_and_the_commit_applies_what_the_handlers_wrote(
    client: SyncConcordClient, shop: tuple[Shop, dict[str, Participant]]
) -> None:
    _, agents = shop
    with client.transaction(wait_applied=True) as txn:
        left = txn.call("inventory", "reserve", {"sku": "widget", "qty": 3})
        charged = txn.call("payments", "charge", {"order": txn.id, "amount": 45})
        again = txn.call("inventory", "reserve", {"sku": "widget", "qty": 2})
    assert (left, charged, again) == ({"left": 7}, "charged 45", {"left": 5})
    assert txn.decision is Decision.COMMIT
    assert _stock(agents["inventory"]) == b"5"
    assert agents["payments"].state.get(f"charge:{txn.id}") == b"45"
    status = client.get(txn.id)
    assert sorted(p.participant_id for p in status.participants) == ["inventory", "payments"]


def test_a_handler_that_raises_makes_its_branch_vote_no_with_the_error(
    client: SyncConcordClient, shop: tuple[Shop, dict[str, Participant]]
) -> None:
    _, agents = shop
    # Leaving the block with the error aborts the transaction at once.
    with (
        pytest.raises(ActionFailed, match="only 10 widget left") as failed,
        client.transaction() as txn,
    ):
        txn.call("inventory", "reserve", {"sku": "widget", "qty": 11})
    assert failed.value.participant_id == "inventory" and failed.value.action == "reserve"
    assert client.get(txn.id).decision is Decision.ABORT
    # Committing anyway: the branch votes NO, with the handler's error as its reason.
    with (
        pytest.raises(TransactionAborted, match="reserve raised ValueError: only 10"),
        client.transaction() as txn,
    ):
        txn.call("payments", "charge", {"order": "o2", "amount": 5})
        with pytest.raises(ActionFailed):
            txn.call("inventory", "reserve", {"sku": "widget", "qty": 99})
    assert _stock(agents["inventory"]) == b"10"
    assert agents["payments"].state.get("charge:o2") is None
    # An action the agent does not declare fails the same way, naming what it offers.
    with (
        pytest.raises(ActionFailed, match=r"no action 'refund' here \(offered: reserve, restock\)"),
        client.transaction() as txn,
    ):
        txn.call("inventory", "refund", {})


def test_a_retried_call_runs_once_and_answers_the_first_result(
    cluster: LocalCluster,
    client: SyncConcordClient,
    shop: tuple[Shop, dict[str, Participant]],
) -> None:
    shop_, agents = shop
    txn = client.begin(["inventory"])
    request = coordinator_pb2.CallRequest(
        txn_id=txn.id,
        participant_id="inventory",
        call_id="c1",
        action="reserve",
        payload=json.dumps({"sku": "widget", "qty": 4}).encode(),
    )
    tls = cluster.transport(Role.CLIENT, CLIENT)  # the identity that began it
    with tls.channel(cluster.grpc_addresses[0], to=Role.NODE) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        replies = [stub.Call(request, timeout=10) for _ in range(3)]
    assert [json.loads(r.result) for r in replies] == [{"left": 6}] * 3
    assert shop_.runs["reserve"] == 1
    assert client.commit(txn.id) is Decision.COMMIT
    wait_for("the commit applied", lambda: _stock(agents["inventory"]) == b"6")


def test_only_the_initiator_drives_actions_and_only_coordinators_reach_a_participant(
    cluster: LocalCluster,
    client: SyncConcordClient,
    shop: tuple[Shop, dict[str, Participant]],
) -> None:
    shop_, agents = shop
    txn = client.begin(["inventory"])
    mallory_tls = cluster.transport(Role.CLIENT, "mallory")
    with SyncConcordClient(cluster.grpc_addresses, tls=mallory_tls) as mallory:
        forged = coordinator_pb2.CallRequest(
            txn_id=txn.id, participant_id="inventory", call_id="m1", action="reserve",
            payload=json.dumps({"sku": "widget", "qty": 10}).encode(),
        )  # fmt: skip
        with pytest.raises(PermissionDenied, match="only who began it"):
            mallory._run(mallory._client._channels.call(CALL, forged, write=False))
    # Straight to the participant's port, past the cluster: refused by its identity.
    with mallory_tls.channel(f"127.0.0.1:{agents['inventory'].port}", to=Role.PARTICIPANT,
                             name="inventory") as channel:  # fmt: skip
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Call(
                participant_pb2.CallAction(
                    txn_id=txn.id, participant_id="inventory", call_id="m2", action="reserve",
                    payload=json.dumps({"sku": "widget", "qty": 10}).encode(),
                ),
                timeout=10,
            )  # fmt: skip
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert shop_.runs.get("reserve", 0) == 0
    # Once the commit is asked for, the branch is voting: no more calls. (It had no
    # work at the inventory, whose branch the forged calls never opened: it votes NO.)
    with pytest.raises(TransactionAborted, match="no work for this transaction"):
        client.commit(txn.id)
    with pytest.raises(FailedPrecondition, match="actions run only before its commit"):
        client._run(
            client._client._channels.call(
                CALL,
                coordinator_pb2.CallRequest(
                    txn_id=txn.id, participant_id="inventory", call_id="late", action="reserve"
                ),
                write=False,
            )
        )


def test_a_one_shot_transaction_runs_each_action_inside_its_prepare(
    client: SyncConcordClient, shop: tuple[Shop, dict[str, Participant]]
) -> None:
    """`client.run`: the actions travel inside the commit; each participant runs its
    handler in the Prepare and the results come back with the COMMIT."""
    shop_, agents = shop
    results = client.run(
        {
            "inventory": ("reserve", {"sku": "widget", "qty": 4}),
            "payments": ("charge", {"order": "o-one-shot", "amount": 60}),
        },
        wait_applied=True,
    )
    assert results == {"inventory": {"left": 6}, "payments": "charged 60"}
    assert _stock(agents["inventory"]) == b"6"
    assert agents["payments"].state.get("charge:o-one-shot") == b"60"
    assert shop_.runs == {"reserve": 1, "charge": 1}
    # A handler that raises votes NO with its error: nothing happens anywhere.
    with pytest.raises(TransactionAborted, match="reserve raised ValueError: only 6 widget"):
        client.run(
            {
                "inventory": ("reserve", {"sku": "widget", "qty": 7}),
                "payments": ("charge", {"order": "o-too-many", "amount": 70}),
            }
        )
    assert _stock(agents["inventory"]) == b"6"
    assert agents["payments"].state.get("charge:o-too-many") is None
    # An action nobody declared is a NO too, naming what the agent offers.
    with pytest.raises(TransactionAborted, match="no action 'refund' here"):
        client.run({"inventory": ("refund", {})})
