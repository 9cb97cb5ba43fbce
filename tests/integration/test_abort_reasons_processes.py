"""Aborts the cluster decides on its own, on a real 3-node cluster, and what the
initiator is told about them.

- A transaction naming a participant that never registered: aborted at once with a
  reason naming it, and the round ends (it used to wait for its timeout, abort with
  an empty reason at the client, then stay DECIDED forever waiting for an ack).
- A commit whose participant asked about it before the commit reached the log (the
  in-doubt query after an early Prepare that beat the commit's retry to a new leader,
  docs/protocol.md "Early Prepare"): presumed aborted, and the client's
  TransactionAborted says so (it used to say nothing).

Waits are bounded polls that fail with what they saw; nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import grpc
import pytest

from concord.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from coordinator.security.identity import Role
from participant_sdk import ConcordClient, Decision, Participant, TransactionAborted, TxnStatus

pytestmark = pytest.mark.integration

WAIT_S = 30.0


async def _wait_phase(client: ConcordClient, txn_id: str, phase: str) -> TxnStatus:
    deadline = time.monotonic() + WAIT_S
    status = None
    while time.monotonic() < deadline:
        status = await client.get(txn_id)
        if status.phase == phase:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"{txn_id} is not {phase} after {WAIT_S}s; last seen: {status}")


async def _ask_outcome(cluster: LocalCluster, round_id: str, participant_id: str) -> int:
    """QueryOutcome as an in-doubt participant asks it (through any node), retrying
    UNAVAILABLE as the SDK does: the node may not know the leader yet."""
    transport = cluster.transport(Role.PARTICIPANT, participant_id)
    request = coordinator_pb2.QueryOutcomeRequest(round_id=round_id, participant_id=participant_id)
    deadline = time.monotonic() + WAIT_S
    async with transport.aio_channel(cluster.grpc_addresses[0], to=Role.NODE) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        while True:
            try:
                reply = await stub.QueryOutcome(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            decision: int = reply.decision
            return decision


def test_a_participant_that_never_registered_aborts_naming_it_and_the_round_ends(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    async def body() -> None:
        coordinators = cluster.grpc_addresses
        p1 = Participant(
            "p1", tmp_path / "p1", coordinators, tls=cluster.transport(Role.PARTICIPANT, "p1")
        )
        await p1.start()
        ghost: Participant | None = None
        try:
            await p1.wait_registered(WAIT_S)
            async with ConcordClient(
                coordinators, tls=cluster.transport(Role.CLIENT, CLIENT)
            ) as client:
                with pytest.raises(TransactionAborted) as aborted:
                    async with client.transaction(["p1", "ghost"], timeout_s=20) as txn:
                        p1.begin(txn.id).put("k", b"v")
                assert "participant 'ghost' is not registered" in aborted.value.reason
                # The round ends: p1 applied the ABORT, ghost is acknowledged on its
                # behalf (it never got a Prepare: nothing to apply).
                status = await _wait_phase(client, txn.id, "DONE")
                assert status.decision is Decision.ABORT
                assert await p1.applied(txn.id, WAIT_S) is not None
                assert p1.state.get("k") is None
                # Registering later, it has nothing in doubt; asked anyway: ABORT.
                ghost = Participant(
                    "ghost",
                    tmp_path / "ghost",
                    coordinators,
                    tls=cluster.transport(Role.PARTICIPANT, "ghost"),
                )
                await ghost.start()
                await ghost.wait_registered(WAIT_S)
                assert ghost.in_doubt() == []
                assert await _ask_outcome(cluster, txn.id, "ghost") == common_pb2.DECISION_ABORT
        finally:
            await p1.stop()
            if ghost is not None:
                await ghost.stop()

    asyncio.run(body())


def test_a_commit_asked_about_before_it_reached_the_log_is_aborted_saying_so(
    cluster: LocalCluster,
) -> None:
    """The race, made deterministic: the participant's question arrives first."""

    async def body() -> None:
        tls = cluster.transport(Role.CLIENT, CLIENT)
        async with ConcordClient(cluster.grpc_addresses, tls=tls) as client:
            # Unknown when asked (its begin travels with the commit): a tombstone.
            unknown = f"t-{uuid.uuid4().hex[:8]}"
            assert await _ask_outcome(cluster, unknown, "p1") == common_pb2.DECISION_ABORT
            with pytest.raises(TransactionAborted) as aborted:
                async with client.transaction(["p1"], txn_id=unknown):
                    pass
            assert aborted.value.reason == (
                "presumed abort: asked about before its commit reached the log"
            )

            # Begun (ACTIVE) when asked by one of its participants: aborted, naming it.
            active = f"t-{uuid.uuid4().hex[:8]}"
            with pytest.raises(TransactionAborted) as aborted:
                async with client.transaction(["p1"], txn_id=active) as txn:
                    await txn.ready()
                    decision = await _ask_outcome(cluster, active, "p1")
                    assert decision == common_pb2.DECISION_ABORT
            assert aborted.value.reason == (
                "presumed abort: participant 'p1' asked about it before its commit reached the log"
            )

    asyncio.run(body())
