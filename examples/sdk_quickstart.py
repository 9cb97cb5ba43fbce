"""The SDK end to end, in one file: a local 3-node cluster, two participants embedded
in this process (one asyncio, one on its own thread), and an initiator.

    .venv/bin/python -m examples.sdk_quickstart

A seat booking: the "seats" participant votes NO for a seat that is already taken, so
the second booking of seat 12A aborts everywhere and the "payments" participant keeps
its money. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from pathlib import Path

from coordinator.runtime.local_cluster import LocalCluster
from participant_sdk import ConcordClient, Participant, StateView, TransactionAborted


def seat_is_free(
    txn_id: str, writes: Mapping[str, bytes | None], state: StateView
) -> tuple[bool, str]:
    """The seats agent's vote: NO when a seat it would write is already taken."""
    taken = [key for key in writes if state.get(key) is not None]
    return (not taken, f"already taken: {taken}" if taken else "")


async def book(client: ConcordClient, seats: Participant, payments: Participant, who: str) -> str:
    try:
        async with client.transaction(participants=["seats", "payments"], timeout_s=10) as txn:
            # Each agent does its part under the transaction id (here: in this process).
            seats.begin(txn.id).put("seat/12A", who.encode())
            payments.begin(txn.id).put(f"paid/{who}", b"120")
        return f"{who}: committed"
    except TransactionAborted as aborted:
        return f"{who}: aborted everywhere ({aborted.reason})"


async def main(root: Path) -> list[str]:
    cluster = LocalCluster(root / "cluster", 3)
    cluster.start()
    try:
        cluster.leader()
        coordinators = cluster.grpc_addresses
        seats = Participant("seats", root / "seats", coordinators, validate=seat_is_free)
        payments = Participant("payments", root / "payments", coordinators)
        await seats.start()  # an asyncio agent
        payments.start_in_thread()  # an agent written with plain threads
        try:
            await seats.wait_registered(30)
            await asyncio.to_thread(payments.wait_registered_in_thread, 30)
            async with ConcordClient(coordinators) as client:
                lines = [await book(client, seats, payments, who) for who in ("alice", "bob")]
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
