"""The SDK end to end, in one file: a local 3-node cluster, two participants embedded
in this process (one asyncio, one on its own thread), and an initiator.

    .venv/bin/python -m examples.sdk_quickstart

Seat bookings with the two safe patterns of docs/sdk.md ("Isolation"): the seats agent
reads the seat through its branch before it writes it (the read is checked at Prepare,
so two bookings of one seat can never both commit), and the payments agent takes the
price off the balance with ``add(..., min=0)`` (checked at Prepare against the balance
and every payment in doubt). Alice books seat 12A; Bob finds 12A taken and gives up
before committing; Carol cannot pay, the payments agent votes NO, and her booking of
seat 14C is undone everywhere. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import ConcordClient, Participant, Role, TransactionAborted

PARTICIPANT, CLIENT = Role.PARTICIPANT, Role.CLIENT
BALANCES = {"alice": 500, "bob": 500, "carol": 50}
PRICE = 120


class SeatTaken(Exception):
    pass


async def open_accounts(client: ConcordClient, payments: Participant) -> None:
    async with client.transaction(participants=["payments"], wait_applied=True) as txn:
        branch = payments.begin(txn.id)
        for who, balance in BALANCES.items():
            branch.put(f"balance/{who}", str(balance).encode())


async def book(
    client: ConcordClient, seats: Participant, payments: Participant, who: str, seat: str
) -> str:
    try:
        # wait_applied: once this returns, both agents' state shows the booking.
        async with client.transaction(["seats", "payments"], wait_applied=True) as txn:
            # Each agent does its part under the transaction id (here: in this process).
            booking = seats.begin(txn.id)
            if booking.get(f"seat/{seat}") is not None:
                raise SeatTaken(seat)  # leaving the block with an error aborts everywhere
            booking.put(f"seat/{seat}", who.encode())
            payments.begin(txn.id).add(f"balance/{who}", -PRICE, min=0)
        return f"{who}: seat {seat} booked"
    except SeatTaken:
        return f"{who}: seat {seat} is taken; nothing happened anywhere"
    except TransactionAborted as aborted:
        return f"{who}: aborted everywhere ({aborted.reason})"


async def main(root: Path) -> list[str]:
    cluster = LocalCluster(root / "cluster", 3)
    cluster.start()
    try:
        cluster.leader()
        coordinators = cluster.grpc_addresses
        # Each agent proves who it is with a certificate of the cluster's CA (here the
        # local cluster's development CA issues them; see docs/security.md).
        seats = Participant(
            "seats", root / "seats", coordinators, tls=cluster.transport(PARTICIPANT, "seats")
        )
        payments = Participant(
            "payments",
            root / "payments",
            coordinators,
            tls=cluster.transport(PARTICIPANT, "payments"),
        )
        await seats.start()  # an asyncio agent
        payments.start_in_thread()  # an agent written with plain threads
        try:
            await seats.wait_registered(30)
            await asyncio.to_thread(payments.wait_registered_in_thread, 30)
            async with ConcordClient(coordinators, tls=cluster.transport(CLIENT, "app")) as client:
                await open_accounts(client, payments)
                bookings = [("alice", "12A"), ("bob", "12A"), ("carol", "14C")]
                lines = [await book(client, seats, payments, w, s) for w, s in bookings]
            lines.append(f"seats: {seats.state.items('seat/')}")
            lines.append(f"balances: {payments.state.items('balance/')}")
        finally:
            await seats.stop()
            payments.stop_in_thread()
    finally:
        cluster.stop()
    return lines


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        for line in asyncio.run(main(Path(scratch))):
            print(line)
