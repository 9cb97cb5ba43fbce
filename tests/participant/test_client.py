"""The initiator's client against a fake CoordinatorService on port 0."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from participant_fakes import DEAD_ADDRESS, fake_coordinator, run

from concord.v1 import common_pb2
from coordinator.core.types import Decision
from participant_sdk import (
    Busy,
    ConcordClient,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    SyncConcordClient,
    TransactionAborted,
)


def test_commit_on_normal_exit_after_rotating_past_a_dead_address() -> None:
    async def body() -> None:
        async with (
            fake_coordinator() as (fake, address),
            ConcordClient([DEAD_ADDRESS, address]) as client,
        ):
            async with client.transaction(participants=["p1"], timeout_s=5) as txn:
                await txn.ready()  # registered now, not with the commit
                assert [b.txn_id for b in fake.begun] == [txn.id]
                assert list(fake.begun[0].participants) == ["p1"]
                assert fake.begun[0].timeout_ms == 5000
            assert txn.decision is Decision.COMMIT
            assert fake.commits == [txn.id] and fake.aborts == []

    run(body())


def test_the_begin_travels_with_the_commit_and_names_who_was_enlisted() -> None:
    async def body() -> None:
        async with fake_coordinator() as (fake, address), ConcordClient([address]) as client:
            async with client.transaction(participants=["p1"], timeout_s=5) as txn:
                await txn.enlist("p2")  # nothing sent yet: the begin will name it
            assert fake.begun == [] and fake.enlisted == []
            assert fake.commits == [txn.id]
            (begin,) = fake.commit_begins
            assert begin is not None and begin.txn_id == txn.id
            assert list(begin.participants) == ["p1", "p2"] and begin.timeout_ms == 5000

            async with client.transaction(participants=["p1"]) as txn:
                await txn.ready()
                await txn.enlist("p3")  # registered: an Enlist call now
            assert fake.enlisted == [(txn.id, "p3")]
            assert fake.commit_begins[-1] is None  # the cluster has the begin already
            assert txn.participants == ["p1", "p3"]

    run(body())


def test_an_exception_aborts_and_propagates() -> None:
    async def body() -> None:
        async with fake_coordinator() as (fake, address), ConcordClient([address]) as client:
            with pytest.raises(RuntimeError, match="boom"):
                async with client.transaction(participants=["p1"]) as txn:
                    raise RuntimeError("boom")
            assert fake.commits == []
            assert fake.aborts == [(txn.id, "initiator raised RuntimeError: boom")]

    run(body())


def test_an_abort_decision_raises_transaction_aborted_with_the_reason() -> None:
    async def body() -> None:
        async with fake_coordinator() as (fake, address), ConcordClient([address]) as client:
            fake.commit_answer = common_pb2.DECISION_ABORT
            fake.vote_reason = "no seats left"
            with pytest.raises(TransactionAborted, match="p1: no seats left") as aborted:
                async with client.transaction(participants=["p1"]) as txn:
                    pass
            assert aborted.value.txn_id == txn.id

    run(body())


@pytest.mark.parametrize(
    "answer",
    [grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, common_pb2.DECISION_UNSPECIFIED],
)
def test_an_unknown_outcome_is_reported_never_retried(answer: object) -> None:
    async def body() -> None:
        async with fake_coordinator() as (fake, address), ConcordClient([address]) as client:
            fake.commit_answer = answer  # type: ignore[assignment]
            with pytest.raises(OutcomeUnknown) as unknown:
                async with client.transaction(participants=["p1"]) as txn:
                    pass
            assert unknown.value.txn_id == txn.id
            assert fake.commits == [txn.id]  # exactly once: no blind retry
            fake.txn_decision = common_pb2.DECISION_COMMIT
            assert await client.outcome(txn.id) is Decision.COMMIT

    run(body())


def test_an_unknown_commit_that_carried_its_begin_is_settled_by_sending_it_again() -> None:
    """The cluster has never heard of the id (the commit with its begin was lost on the
    way): "not found" cannot say whether it ever will, so ``outcome`` sends that same
    commit again, begin included, and its answer is definitive."""

    async def body() -> None:
        async with (
            fake_coordinator() as (fake, address),
            ConcordClient([address]) as client,
            ConcordClient([address]) as other,
        ):
            fake.commit_answer = grpc.StatusCode.UNKNOWN
            with pytest.raises(OutcomeUnknown):
                async with client.transaction(participants=["p1"], timeout_s=5) as txn:
                    pass
            fake.txn_known = False
            with pytest.raises(NotFound):  # another process cannot tell
                await other.outcome(txn.id)
            assert fake.commits == [txn.id]
            fake.commit_answer = common_pb2.DECISION_COMMIT
            assert await client.outcome(txn.id) is Decision.COMMIT
            assert fake.commits == [txn.id, txn.id]
            first, again = fake.commit_begins
            assert again == first and again is not None and again.timeout_ms == 5000
            with pytest.raises(NotFound):  # settled: nothing more to send
                await client.outcome(txn.id)
            assert len(fake.commits) == 2

            # A commit whose begin the cluster already had is not sent again.
            fake.txn_known = True
            fake.commit_answer = grpc.StatusCode.UNKNOWN
            with pytest.raises(OutcomeUnknown):
                async with client.transaction(participants=["p1"]) as txn:
                    await txn.ready()
            fake.txn_known = False
            with pytest.raises(NotFound):
                await client.outcome(txn.id)
            assert fake.commits.count(txn.id) == 1

    run(body())


def test_status_codes_map_to_errors() -> None:
    async def body() -> None:
        async with fake_coordinator() as (fake, address), ConcordClient([address]) as client:
            fake.begin_error = (grpc.StatusCode.ABORTED, "participants busy with round r1")
            with pytest.raises(Busy, match="busy with round r1"):
                await client.begin(["p1"])
            fake.begin_error = (grpc.StatusCode.INVALID_ARGUMENT, "participants_per_round_max")
            with pytest.raises(InvalidArgument, match="participants_per_round_max"):
                await client.begin(["p1"])

    run(body())


def test_sync_client() -> None:
    async def serve(started: asyncio.Event, done: asyncio.Event, out: list[object]) -> None:
        async with fake_coordinator() as (fake, address):
            out.extend([fake, address])
            started.set()
            await done.wait()

    loop = asyncio.new_event_loop()
    started, done, out = asyncio.Event(), asyncio.Event(), []  # type: ignore[var-annotated]
    import threading

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(started, done, out),))
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(started.wait(), 10), loop).result(10)
        fake, address = out
        with SyncConcordClient([address]) as client, client.transaction(["p1"]) as txn:
            txn_id = txn.id
        assert txn.decision is Decision.COMMIT
        assert fake.commits == [txn_id]  # type: ignore[attr-defined]
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(10)
        loop.close()
