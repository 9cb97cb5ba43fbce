"""Isolation against a real 3-node cluster: the lost-update experiment of issue 11.

An inventory agent and a wallet agent (embedded here, each with its own LMDB) and 20
concurrent orders for one widget against a stock of 10. Without isolation 14-15 of
them committed and the stock still ended at 0. With the documented patterns exactly 10
commit, and every other order is refused with the reason that names the conflict or
the bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from participant_sdk import ConcordClient, Participant, Role, TransactionAborted

pytestmark = pytest.mark.integration

P = Role.PARTICIPANT
ORDERS = 20
STOCK = 10
PRICE = 7
BALANCE = 1000
DEADLINE_S = 120.0


class OutOfStock(Exception):
    pass


@asynccontextmanager
async def shop(cluster: LocalCluster, root: Path) -> AsyncIterator[tuple[Participant, Participant]]:
    coordinators = cluster.grpc_addresses
    inventory = Participant(
        "inventory", root / "inventory", coordinators, tls=cluster.transport(P, "inventory")
    )
    wallet = Participant(
        "wallet", root / "wallet", coordinators, tls=cluster.transport(P, "wallet")
    )
    await inventory.start()
    await wallet.start()
    try:
        await inventory.wait_registered(30)
        await wallet.wait_registered(30)
        async with (
            ConcordClient(coordinators, tls=cluster.transport(Role.CLIENT, CLIENT)) as client,
            client.transaction(["inventory", "wallet"], wait_applied=True) as txn,
        ):
            inventory.begin(txn.id).put("stock:widget", str(STOCK).encode())
            wallet.begin(txn.id).put("balance:alice", str(BALANCE).encode())
        yield inventory, wallet
    finally:
        await inventory.stop()
        await wallet.stop()


def test_twenty_orders_with_add_commit_exactly_ten(cluster: LocalCluster, tmp_path: Path) -> None:
    """Commutative updates: no order conflicts with another; the bound refuses the
    eleventh and later at Prepare."""

    async def order(client: ConcordClient, inventory: Participant, wallet: Participant) -> str:
        try:
            async with client.transaction(["inventory", "wallet"], wait_applied=True) as txn:
                inventory.begin(txn.id).add("stock:widget", -1, min=0)
                wallet.begin(txn.id).add("balance:alice", -PRICE, min=0)
        except TransactionAborted as aborted:
            return aborted.reason
        return "COMMIT"

    async def body() -> None:
        async with shop(cluster, tmp_path) as (inventory, wallet):
            tls = cluster.transport(Role.CLIENT, CLIENT)
            async with ConcordClient(cluster.grpc_addresses, tls=tls) as client:
                outcomes = await asyncio.gather(
                    *(order(client, inventory, wallet) for _ in range(ORDERS))
                )
            assert outcomes.count("COMMIT") == STOCK, outcomes
            refused = [o for o in outcomes if o != "COMMIT"]
            assert all(
                "inventory: bound: 'stock:widget' would go below min=0" in r for r in refused
            )
            assert inventory.state.get("stock:widget") == b"0"
            assert wallet.state.get("balance:alice") == str(BALANCE - STOCK * PRICE).encode()

    asyncio.run(asyncio.wait_for(body(), DEADLINE_S))


def test_twenty_read_modify_write_orders_commit_exactly_ten(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The lost-update pattern made safe: read through the branch, write the new value,
    and retry an order whose read was overtaken (its vote names the conflict)."""

    async def order(client: ConcordClient, inventory: Participant, wallet: Participant) -> str:
        conflicts = []
        while True:
            try:
                async with client.transaction(["inventory", "wallet"], wait_applied=True) as txn:
                    stock = inventory.begin(txn.id)
                    left = int(stock.get("stock:widget") or b"0")
                    if left <= 0:
                        raise OutOfStock()
                    stock.put("stock:widget", str(left - 1).encode())
                    money = wallet.begin(txn.id)
                    balance = int(money.get("balance:alice") or b"0")
                    money.put("balance:alice", str(balance - PRICE).encode())
            except OutOfStock:
                return "OUT_OF_STOCK"
            except TransactionAborted as aborted:
                assert "conflict: " in aborted.reason, aborted.reason
                conflicts.append(aborted.reason)
                assert len(conflicts) < 4 * ORDERS, conflicts[-3:]
                continue
            return "COMMIT"

    async def body() -> None:
        async with shop(cluster, tmp_path) as (inventory, wallet):
            tls = cluster.transport(Role.CLIENT, CLIENT)
            async with ConcordClient(cluster.grpc_addresses, tls=tls) as client:
                outcomes = await asyncio.gather(
                    *(order(client, inventory, wallet) for _ in range(ORDERS))
                )
            assert outcomes.count("COMMIT") == STOCK, outcomes
            assert outcomes.count("OUT_OF_STOCK") == ORDERS - STOCK
            assert inventory.state.get("stock:widget") == b"0"
            assert wallet.state.get("balance:alice") == str(BALANCE - STOCK * PRICE).encode()

    asyncio.run(asyncio.wait_for(body(), DEADLINE_S))
