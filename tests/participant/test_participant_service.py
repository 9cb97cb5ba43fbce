"""ParticipantService over real gRPC on 127.0.0.1 port 0; the test plays the leader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from participant_fakes import DEAD_ADDRESS, eventually, fake_coordinator, run

from concord.v1 import common_pb2, participant_pb2, participant_pb2_grpc
from coordinator.core.limits import BATCH_ITEMS_MAX
from coordinator.core.messages import AckReply, Decide, Prepare, Refused, VoteReply
from coordinator.core.types import Decision, Kind
from coordinator.protomap import from_participant_batch, to_coordinator_batch
from participant_sdk import BranchClosed, MustAsk, Participant, ParticipantOptions, StateView
from participant_sdk.core import LocalState


def prepare(round_id: str, term: int = 1, **fields: object) -> Prepare:
    fields.setdefault("kind", Kind.TXN)
    return Prepare(round_id=round_id, participant_id="p1", session_id="s", term=term, **fields)  # type: ignore[arg-type]


def decide(round_id: str, decision: Decision, term: int = 1, **fields: object) -> Decide:
    fields.setdefault("kind", Kind.TXN)
    return Decide(round_id=round_id, participant_id="p1", decision=decision, term=term, **fields)  # type: ignore[arg-type]


class Leader:
    """One Exchange stream, as the coordinator's leader holds it."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = participant_pb2_grpc.ParticipantServiceStub(self.channel)
        self.call = self.stub.Exchange()

    async def send(self, term: int, *messages: Prepare | Decide) -> list[object]:
        await self.call.write(to_coordinator_batch(term, messages))
        reply = await self.call.read()
        return list(from_participant_batch(reply))

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


def no_seat_twice(
    txn_id: str, writes: Mapping[str, bytes | None], state: StateView
) -> tuple[bool, str]:
    taken = [key for key in writes if key in state]
    return (not taken, f"taken: {taken}" if taken else "")


def test_prepare_decide_state_health_and_ping(tmp_path: Path) -> None:
    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [], validate=no_seat_twice)
        await p.start()
        leader = Leader(p.port)
        try:
            branch = p.begin("t1")
            branch.put("seat/1", b"alice")
            replies = await leader.send(1, prepare("t1"), prepare("never-begun"))
            assert replies[0] == VoteReply(round_id="t1", participant_id="p1", yes=True)
            assert isinstance(replies[1], VoteReply) and not replies[1].yes
            assert "no work for this transaction" in replies[1].reason
            assert p.store.held("t1") == {"seat/1": b"alice"}
            assert p.state.get("seat/1") is None
            with pytest.raises(BranchClosed):
                branch.put("seat/2", b"late")

            # one batch: the decision for t1, then a vote that must see its effect
            p.begin("t2").put("seat/1", b"bob")
            replies = await leader.send(1, decide("t1", Decision.COMMIT), prepare("t2"))
            assert AckReply(round_id="t1", participant_id="p1") in replies
            assert (
                VoteReply(round_id="t2", participant_id="p1", yes=False, reason="taken: ['seat/1']")
                in replies
            )
            assert p.state.get("seat/1") == b"alice"

            ping = await leader.stub.Ping(participant_pb2.PingRequest(term=1))
            assert (ping.participant_id, ping.term_seen) == ("p1", 1)
            health = health_pb2_grpc.HealthStub(leader.channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_a_key_written_by_an_in_doubt_branch_is_locked_until_its_decision(tmp_path: Path) -> None:
    """Without the lock both branches would pass a "seat free?" check and both commit."""

    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [], validate=no_seat_twice)
        await p.start()
        leader = Leader(p.port)
        try:
            p.begin("t1").put("seat/1", b"alice")
            p.begin("t2").put("seat/1", b"bob")
            p.begin("t3").put("seat/2", b"carol")
            replies = await leader.send(1, prepare("t1"), prepare("t2"), prepare("t3"))
            votes = {r.round_id: r for r in replies if isinstance(r, VoteReply)}
            assert votes["t1"].yes and votes["t3"].yes
            assert not votes["t2"].yes and "locked by in-doubt txn 't1'" in votes["t2"].reason

            p.begin("t4").put("seat/1", b"dave")
            await leader.send(1, decide("t1", Decision.ABORT))
            replies = await leader.send(1, prepare("t4"))
            assert replies == [VoteReply(round_id="t4", participant_id="p1", yes=True)]
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_a_yes_vote_survives_a_restart_and_old_terms_are_refused(tmp_path: Path) -> None:
    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        try:
            p.begin("t1").put("k", b"v")
            p.begin("abandoned").put("x", b"y")
            assert (await leader.send(3, prepare("t1", term=3)))[0].yes  # type: ignore[attr-defined]
        finally:
            await leader.close()
            await p.stop()

        again = Participant("p1", tmp_path / "p1", [])
        await again.start()
        leader = Leader(again.port)
        try:
            assert again.in_doubt() == ["t1"]
            assert again.term_seen == 3
            with pytest.raises(MustAsk):
                again.abort_alone("t1")
            abandoned = again.record("abandoned")
            assert abandoned is not None and abandoned.state is LocalState.ABORTED
            with pytest.raises(BranchClosed):
                again.begin("abandoned")

            replies = await leader.send(3, prepare("t1", term=3))  # the barrier: same answer
            assert replies == [VoteReply(round_id="t1", participant_id="p1", yes=True)]
            [refused] = await leader.send(2, decide("t1", Decision.ABORT, term=2))
            assert isinstance(refused, Refused) and refused.term_seen == 3
            assert again.in_doubt() == ["t1"]
            replies = await leader.send(4, decide("t1", Decision.COMMIT, term=4))
            assert replies == [AckReply(round_id="t1", participant_id="p1")]
            assert again.state.get("k") == b"v"
            assert again.violations == 0
            [conflict] = await leader.send(4, decide("t1", Decision.ABORT, term=4))
            assert isinstance(conflict, Refused) and again.violations == 1
        finally:
            await leader.close()
            await again.stop()

    run(body())


def test_checkpoint_and_rollback_rounds(tmp_path: Path) -> None:
    async def body() -> None:
        p = Participant("p1", None, [])
        await p.start()
        leader = Leader(p.port)
        try:
            p.begin("t1").put("k", b"1")
            await leader.send(1, prepare("t1"))
            await leader.send(1, decide("t1", Decision.COMMIT))
            cp = {"kind": Kind.CHECKPOINT, "checkpoint_id": "cp1"}
            [vote] = await leader.send(1, prepare("c1", label="nightly", **cp))
            assert vote.yes  # type: ignore[attr-defined]
            await leader.send(1, decide("c1", Decision.COMMIT, **cp))
            assert [c.label for c in p.checkpoints()] == ["nightly"]
            p.begin("t2").put("k", b"2")
            await leader.send(1, prepare("t2"))
            await leader.send(1, decide("t2", Decision.COMMIT))
            rb = {"kind": Kind.ROLLBACK, "checkpoint_id": "cp1"}
            [vote] = await leader.send(
                1, prepare("r-missing", kind=Kind.ROLLBACK, checkpoint_id="x")
            )
            assert not vote.yes  # type: ignore[attr-defined]
            [vote] = await leader.send(1, prepare("r1", **rb))
            assert vote.yes  # type: ignore[attr-defined]
            await leader.send(1, decide("r1", Decision.COMMIT, **rb))
            assert p.state.get("k") == b"1"
        finally:
            await leader.close()
            await p.stop()

    run(body())


def test_registration_and_in_doubt_resolution_on_start(tmp_path: Path) -> None:
    async def body() -> None:
        first = Participant("p1", tmp_path / "p1", [])
        await first.start()
        leader = Leader(first.port)
        try:
            first.begin("t-commit").put("a", b"1")
            first.begin("t-abort").put("b", b"1")
            await leader.send(1, prepare("t-commit"), prepare("t-abort"))
        finally:
            await leader.close()
            await first.stop()

        async with fake_coordinator() as (fake, address):
            undecided, commit = common_pb2.DECISION_UNSPECIFIED, common_pb2.DECISION_COMMIT
            fake.outcomes["t-commit"] = [undecided, commit]
            p = Participant(
                "p1",
                tmp_path / "p1",
                [DEAD_ADDRESS, address],
                options=ParticipantOptions(query_backoff_initial_s=0.01),
            )
            await p.start()
            try:
                await p.wait_registered(10)
                assert fake.registered == {"p1": f"127.0.0.1:{p.port}"}
                await eventually(lambda: p.in_doubt() == [])
                assert p.state.items() == [("a", b"1")]
                assert fake.queries.count("t-commit") == 2  # asked again after "undecided"
            finally:
                await p.stop()

    run(body())


def test_calls_to_the_cluster_end_after_call_timeout_s() -> None:
    """A coordinator that never answers holds a registration for ``call_timeout_s``,
    then it is tried again (three tries well within one default 5 s timeout)."""

    async def body() -> None:
        async with fake_coordinator() as (fake, address):
            fake.registration_hangs = True
            p = Participant("p1", None, [address], options=ParticipantOptions(call_timeout_s=0.2))
            await p.start()
            try:
                await eventually(lambda: fake.registrations >= 3, timeout_s=3.0)
                assert not p.registered
            finally:
                await p.stop()

    run(body())


def test_thread_api(tmp_path: Path) -> None:
    p = Participant("p1", tmp_path / "p1", [])
    p.start_in_thread()
    try:
        p.begin("t1").put("k", b"v")
        with grpc.insecure_channel(f"127.0.0.1:{p.port}") as channel:
            stub = participant_pb2_grpc.ParticipantServiceStub(channel)
            batches = [
                to_coordinator_batch(1, [prepare("t1")]),
                to_coordinator_batch(1, [decide("t1", Decision.COMMIT)]),
            ]
            replies = [from_participant_batch(r) for r in stub.Exchange(iter(batches), timeout=10)]
        assert replies[0] == (VoteReply(round_id="t1", participant_id="p1", yes=True),)
        assert p.state.get("k") == b"v"
    finally:
        p.stop_in_thread()
    assert not p.running


def test_a_failed_write_stops_the_participant(tmp_path: Path) -> None:
    async def body() -> None:
        p = Participant("p1", None, [])
        await p.start()
        leader = Leader(p.port)
        try:
            p.begin("t1").put("k", b"v")

            # Simulate a disk failure: the store refuses every write from now on.
            def broken_write() -> None:
                raise OSError("disk on fire")

            p.store.write = broken_write  # type: ignore[method-assign]
            # No reply: the stream ends with UNAVAILABLE (or CANCELLED / EOF when the
            # participant's self-stop closes it first); never a vote.
            try:
                await leader.call.write(to_coordinator_batch(1, [prepare("t1")]))
                reply = await leader.call.read()
            except grpc.aio.AioRpcError as error:
                codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                assert error.code() in codes
            else:
                assert reply is grpc.aio.EOF
            await eventually(lambda: not p.running)
        finally:
            await leader.channel.close()
            await p.stop()

    run(body())


def test_a_batch_over_the_bound_is_refused_whatever_its_kinds(tmp_path: Path) -> None:
    """Saga executes and compensations count against BATCH_ITEMS_MAX like prepares
    and decides: one stream message cannot carry unbounded work of any kind."""

    async def body() -> None:
        p = Participant("p1", tmp_path / "p1", [])
        await p.start()
        leader = Leader(p.port)
        half = BATCH_ITEMS_MAX // 2 + 1
        step = {"round_id": "s1", "participant_id": "p1", "action": "book", "term": 1}
        batch = participant_pb2.CoordinatorBatch(
            term=1,
            executes=[participant_pb2.ExecuteStep(step=i, **step) for i in range(half)],
            compensates=[participant_pb2.CompensateStep(step=i, **step) for i in range(half)],
        )
        try:
            await leader.call.write(batch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await leader.call.read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"batch of {2 * half} messages > BATCH_ITEMS_MAX" in str(refused.value.details())
        finally:
            await leader.channel.close()
            await p.stop()

    run(body())
