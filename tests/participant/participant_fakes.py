"""Helpers for the participant tests: a fake CoordinatorService on port 0, bounded
waits, and an asyncio runner with a deadline (no pytest-asyncio needed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc

from concord.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

TEST_DEADLINE_S = 30.0
# An address where nothing listens: connecting fails at once with UNAVAILABLE.
DEAD_ADDRESS = "127.0.0.1:1"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run one async test body with a hard deadline."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TEST_DEADLINE_S)

    return asyncio.run(bounded())


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail after ``timeout_s`` (a bound, not a guess)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class FakeCoordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """Records calls; answers as the test tells it to."""

    def __init__(self) -> None:
        self.registered: dict[str, str] = {}
        # round id -> decisions to answer in turn (the last one repeats)
        self.outcomes: dict[str, list[int]] = {}
        self.queries: list[str] = []
        self.begun: list[coordinator_pb2.BeginTxnRequest] = []
        self.commits: list[str] = []
        self.commit_begins: list[coordinator_pb2.BeginTxnRequest | None] = []
        self.enlisted: list[tuple[str, str]] = []
        self.aborts: list[tuple[str, str]] = []
        # a Decision value to answer Commit with, or a status code to fail it with
        self.commit_answer: int | grpc.StatusCode = common_pb2.DECISION_COMMIT
        self.begin_error: tuple[grpc.StatusCode, str] | None = None
        self.txn_decision = common_pb2.DECISION_UNSPECIFIED
        self.txn_known = True  # False: GetTxn answers NOT_FOUND (the begin never arrived)
        self.vote_reason = ""
        self.registrations = 0  # RegisterParticipant calls, answered or not
        self.registration_hangs = False  # never answer: the caller's deadline ends the call

    async def RegisterParticipant(self, request: Any, context: Any) -> Any:
        self.registrations += 1
        if self.registration_hangs:
            await asyncio.Event().wait()
        self.registered[request.participant_id] = request.endpoint
        return coordinator_pb2.RegisterParticipantReply()

    async def QueryOutcome(self, request: Any, context: Any) -> Any:
        self.queries.append(request.round_id)
        answers = self.outcomes.get(request.round_id, [common_pb2.DECISION_ABORT])
        decision = answers.pop(0) if len(answers) > 1 else answers[0]
        return coordinator_pb2.QueryOutcomeReply(round_id=request.round_id, decision=decision)

    async def BeginTxn(self, request: Any, context: Any) -> Any:
        if self.begin_error is not None:
            await context.abort(*self.begin_error)
        self.begun.append(request)
        return coordinator_pb2.BeginTxnReply(txn_id=request.txn_id)

    async def Enlist(self, request: Any, context: Any) -> Any:
        self.enlisted.append((request.txn_id, request.participant_id))
        return coordinator_pb2.EnlistReply()

    async def Commit(self, request: Any, context: Any) -> Any:
        self.commits.append(request.txn_id)
        self.commit_begins.append(request.begin if request.HasField("begin") else None)
        if isinstance(self.commit_answer, grpc.StatusCode):
            await context.abort(self.commit_answer, "lost track of it")
        return coordinator_pb2.CommitReply(txn_id=request.txn_id, decision=self.commit_answer)

    async def Abort(self, request: Any, context: Any) -> Any:
        self.aborts.append((request.txn_id, request.reason))
        return coordinator_pb2.AbortReply(txn_id=request.txn_id, decision=common_pb2.DECISION_ABORT)

    async def GetTxn(self, request: Any, context: Any) -> Any:
        if not self.txn_known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no round {request.round_id!r}")
        return coordinator_pb2.GetTxnReply(
            round_id=request.round_id,
            kind=common_pb2.KIND_TXN,
            phase="DECIDED",
            decision=self.txn_decision,
            participants=[
                coordinator_pb2.ParticipantStatus(
                    participant_id="p1", voted=True, yes=False, reason=self.vote_reason
                )
            ],
        )


@contextlib.asynccontextmanager
async def fake_coordinator() -> AsyncIterator[tuple[FakeCoordinator, str]]:
    fake = FakeCoordinator()
    server = grpc.aio.server()
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
