"""A participant that only connects out (``ParticipantOptions(connect="outbound")``):
it serves nothing and opens ``CoordinatorService.Attach`` to the leader itself.

On the stream the leader sends what it would send a dialled participant: coordinator
batches, each answered by one reply batch in the order they came (the same
``answer_batch`` the Exchange stream runs: durable before the reply), and transaction
actions, each answered by its number when its handler returns (handlers run
concurrently, as dialled calls do). When the leader has nothing to send it sends a
heartbeat; a stream silent for ``ATTACH_SILENCE_MS`` is given up, as is one the leader
ends (it stepped down). Then the participant attaches again, with backoff, where its
calls to the cluster go: the leader a follower named (``LEADER_HINT``), else the next
address (``CoordinatorChannels``, the same leader-following as every call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from concord.v1 import coordinator_pb2
from coordinator.protomap import ATTACH_SILENCE_MS
from participant_sdk.channels import CoordinatorChannels
from participant_sdk.server import BatchHandler, BatchRefused, answer_batch, run_call

__all__ = ["Attacher"]

log = logging.getLogger(__name__)

# Refusals that attaching again cannot cure: said at ERROR once, then retried slowly
# (an operator may still fix a certificate or the cluster's policy).
_MISTAKES = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INVALID_ARGUMENT,
)


class Attacher:
    def __init__(
        self,
        participant: BatchHandler,
        channels: CoordinatorChannels,
        *,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> None:
        self.participant = participant
        self.channels = channels
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.attached = asyncio.Event()  # set while a leader holds our stream
        self.attaches = 0  # streams a leader accepted, in all
        self._said: set[str] = set()

    async def run_forever(self) -> None:
        backoff_s = self.backoff_initial_s
        while True:
            address = self.channels.address_now()
            try:
                if await self._attach_once(address):
                    backoff_s = self.backoff_initial_s  # it worked: try again at once
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or ""
                if code in _MISTAKES:
                    backoff_s = self.backoff_max_s
                    self._say_once(f"cannot attach at {address}: {code.name} {details}")
                else:
                    log.info(
                        "participant %s: attach at %s: %s %s",
                        self.participant.participant_id,
                        address,
                        code.name,
                        details,
                    )
                self.channels.passed_over(address, error.trailing_metadata())
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self.backoff_max_s)

    def _say_once(self, what: str) -> None:
        if what not in self._said:
            self._said.add(what)
            log.error("participant %s: %s", self.participant.participant_id, what)

    async def _attach_once(self, address: str) -> bool:
        """One stream, until it ends; True if a leader accepted it."""
        out: asyncio.Queue[coordinator_pb2.AttachRequest | None] = asyncio.Queue()
        out.put_nowait(
            coordinator_pb2.AttachRequest(participant_id=self.participant.participant_id)
        )

        async def requests() -> AsyncIterator[coordinator_pb2.AttachRequest]:
            while (item := await out.get()) is not None:
                yield item

        method = self.channels.stream_method(
            address, "Attach", coordinator_pb2.AttachRequest, coordinator_pb2.AttachReply
        )
        call = method(requests())
        accepted = False
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait((read,), timeout=ATTACH_SILENCE_MS / 1000)
                if not done:
                    read.cancel()
                    log.warning(
                        "participant %s: nothing from %s for %d ms; attaching again",
                        self.participant.participant_id,
                        address,
                        ATTACH_SILENCE_MS,
                    )
                    self.channels.passed_over(address)
                    return accepted
                reply = read.result()
                if not isinstance(reply, coordinator_pb2.AttachReply):  # the end: EOF
                    return accepted
                if not accepted:
                    accepted = True
                    self.attaches += 1
                    self.attached.set()
                    log.info(
                        "participant %s attached to the leader at %s",
                        self.participant.participant_id,
                        address,
                    )
                kind = reply.WhichOneof("kind")
                if kind == "batch":
                    try:
                        answer = await answer_batch(self.participant, reply.batch)
                    except BatchRefused as refused:  # as Exchange: the stream ends
                        log.warning(
                            "participant %s: batch refused: %s",
                            self.participant.participant_id,
                            refused.message,
                        )
                        return accepted
                    out.put_nowait(coordinator_pb2.AttachRequest(batch=answer))
                elif kind == "call":
                    task = asyncio.create_task(self._call(reply.call, out))
                    calls.add(task)
                    task.add_done_callback(calls.discard)
        finally:
            self.attached.clear()
            out.put_nowait(None)
            call.cancel()
            for task in list(calls):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _call(
        self,
        call: coordinator_pb2.AttachCall,
        out: asyncio.Queue[coordinator_pb2.AttachRequest | None],
    ) -> None:
        try:
            result = await run_call(self.participant, call.action)
        except BatchRefused as refused:  # unanswered: the leader's call fails, the caller retries
            log.warning(
                "participant %s: call refused: %s", self.participant.participant_id, refused.message
            )
            return
        out.put_nowait(
            coordinator_pb2.AttachRequest(
                call_result=coordinator_pb2.AttachCallResult(
                    call_number=call.call_number, result=result
                )
            )
        )
