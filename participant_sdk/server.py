"""``ParticipantService`` over gRPC: thin, as in the grpc examples.

Each ``CoordinatorBatch`` on the Exchange stream is handed whole to
``Participant.handle_messages``, which runs every message through the core and makes
all resulting Steps durable in one synced write (group commit) before it returns; only
then is the one ``ParticipantBatch`` of replies sent (rule 1). The server also offers
gRPC health checking and server reflection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from concord.v1 import participant_pb2, participant_pb2_grpc
from coordinator import tracing
from coordinator.core.limits import BATCH_ITEMS_MAX
from coordinator.core.messages import (
    Decide,
    FromParticipant,
    Prepare,
    Refused,
    ToParticipant,
    VoteReply,
)
from coordinator.protomap import (
    CodecError,
    coordinator_batch_size,
    from_coordinator_batch,
    to_participant_batch,
)
from coordinator.security.authz import Authorizer
from coordinator.security.identity import Identity
from coordinator.security.transport import Transport, TransportError
from coordinator.security.undecodable import RejectUndecodable

if TYPE_CHECKING:
    from coordinator.tracing_otel import Tracer

log = logging.getLogger(__name__)

SERVICE_NAME = participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"].full_name


class BatchHandler(Protocol):
    """What the server serves: the participant (participant.py)."""

    @property
    def participant_id(self) -> str: ...

    @property
    def term_seen(self) -> int: ...

    def handle_messages(self, items: Sequence[ToParticipant]) -> list[FromParticipant]: ...

    def run_action(
        self, txn_id: str, call_id: str, action: str, payload: bytes, calls_before: int
    ) -> tuple[bytes, str]: ...

    def audit_denial(self, caller: Identity | None, method: str, why: str) -> None: ...


class BatchRefused(Exception):
    """A coordinator batch the participant will not run: the status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def answer_batch(
    participant: BatchHandler, batch: participant_pb2.CoordinatorBatch
) -> participant_pb2.ParticipantBatch:
    """Run one coordinator batch (durable when this returns) and give its one reply
    batch: what both the Exchange stream and an attached stream (attach.py) answer."""
    count = coordinator_batch_size(batch)
    if count > BATCH_ITEMS_MAX:
        raise BatchRefused(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"batch of {count} messages > BATCH_ITEMS_MAX={BATCH_ITEMS_MAX}",
        )
    try:
        _, items = from_coordinator_batch(batch)
    except CodecError as error:
        raise BatchRefused(grpc.StatusCode.INVALID_ARGUMENT, f"bad batch: {error}") from None
    tracer = tracing.active()
    spans = (
        _start_spans(tracer, participant.participant_id, items, batch.trace_parents)
        if tracer is not None and batch.trace_parents
        else None
    )
    try:
        replies = await asyncio.to_thread(participant.handle_messages, items)
    except Exception as error:  # the participant stopped itself; said why at ERROR
        if spans and tracer is not None:
            _end_spans(tracer, spans, (), error=f"participant stopped: {error}")
        raise BatchRefused(grpc.StatusCode.UNAVAILABLE, f"participant stopped: {error}") from None
    if spans and tracer is not None:
        _end_spans(tracer, spans, replies)
    return to_participant_batch(replies)


async def run_call(
    participant: BatchHandler, request: participant_pb2.CallAction
) -> participant_pb2.CallResult:
    """Run one transaction action the leader relays (Call, or a call on an attached
    stream)."""
    if request.participant_id != participant.participant_id:
        raise BatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"call for {request.participant_id!r} reached {participant.participant_id!r}",
        )
    try:
        result, failed = await asyncio.to_thread(
            participant.run_action,
            request.txn_id,
            request.call_id,
            request.action,
            request.payload,
            request.calls_before,
        )
    except Exception as error:  # the participant stopped itself; said why at ERROR
        raise BatchRefused(grpc.StatusCode.UNAVAILABLE, f"participant stopped: {error}") from None
    return participant_pb2.CallResult(result=result, error=failed)


class ParticipantServicer(participant_pb2_grpc.ParticipantServiceServicer):
    def __init__(self, participant: BatchHandler) -> None:
        self._participant = participant

    async def Exchange(
        self,
        request_iterator: AsyncIterator[participant_pb2.CoordinatorBatch],
        context: grpc.aio.ServicerContext[
            participant_pb2.CoordinatorBatch, participant_pb2.ParticipantBatch
        ],
    ) -> AsyncIterator[participant_pb2.ParticipantBatch]:
        async for batch in request_iterator:
            try:
                reply = await answer_batch(self._participant, batch)
            except BatchRefused as refused:
                await context.abort(refused.code, refused.message)
            yield reply

    async def Ping(
        self,
        request: participant_pb2.PingRequest,
        context: grpc.aio.ServicerContext[participant_pb2.PingRequest, participant_pb2.PingReply],
    ) -> participant_pb2.PingReply:
        return participant_pb2.PingReply(
            participant_id=self._participant.participant_id,
            term_seen=self._participant.term_seen,
        )

    async def Call(
        self,
        request: participant_pb2.CallAction,
        context: grpc.aio.ServicerContext[participant_pb2.CallAction, participant_pb2.CallResult],
    ) -> participant_pb2.CallResult:
        try:
            return await run_call(self._participant, request)
        except BatchRefused as refused:
            await context.abort(refused.code, refused.message)


def _start_spans(
    tracer: Tracer,
    participant_id: str,
    items: Sequence[ToParticipant],
    trace_parents: Mapping[str, str],
) -> dict[str, Any]:
    """One span per traced message, under the leader's span for it: the batch's
    handling, durable write included (the whole batch is one synced write)."""
    spans: dict[str, Any] = {}
    for message in items:
        parent = trace_parents.get(message.round_id, "")
        if parent and isinstance(message, Prepare | Decide):
            spans[message.round_id] = tracer.start(
                f"concord.participant.{'prepare' if isinstance(message, Prepare) else 'decide'}",
                parent=parent,
                attributes=_attributes(participant_id, message),
            )
    return spans


def _attributes(participant_id: str, message: ToParticipant) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "concord.round_id": message.round_id,
        "concord.participant_id": participant_id,
        "concord.term": message.term,
    }
    if isinstance(message, Decide):
        attributes["concord.decision"] = message.decision.name
    return attributes


def _end_spans(
    tracer: Tracer, spans: dict[str, Any], replies: Sequence[FromParticipant], error: str = ""
) -> None:
    by_round: dict[str, FromParticipant] = {r.round_id: r for r in replies}
    for round_id, span in spans.items():
        reply = by_round.get(round_id)
        attributes: dict[str, Any] = {}
        if isinstance(reply, VoteReply):
            attributes = {
                "concord.vote": "YES" if reply.yes else "NO",
                "concord.reason": reply.reason,
            }
        refused = f"refused: {reply.reason}" if isinstance(reply, Refused) else ""
        tracer.end(span, error=error or refused, attributes=attributes)


async def create_server(
    participant: BatchHandler, listen: str, transport: Transport
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build and start the server: (server, bound port, health servicer). Turns
    tracing on first if the environment asks for it (coordinator/tracing.py). With
    TLS, only the coordinators of the participant's cluster may call it (authz.POLICY:
    a certificate of another cluster, or of a participant or a client, is refused
    before any message is looked at, term included)."""
    tracing.enable_from_env("concord-agent")
    interceptors: list[grpc.aio.ServerInterceptor] = [RejectUndecodable()]
    if transport.identity is not None:
        interceptors.append(Authorizer(transport.identity, on_denied=participant.audit_denial))
    server = grpc.aio.server(interceptors=interceptors, options=transport.server_options())
    participant_pb2_grpc.add_ParticipantServiceServicer_to_server(
        ParticipantServicer(participant), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = transport.add_port(server, listen)
    except TransportError as error:
        raise OSError(str(error)) from None
    except RuntimeError:  # grpc's own "Failed to bind", with advice about its log level
        raise OSError(f"cannot listen on {listen} (in use, or not an address here)") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


async def set_not_serving(health_servicer: health.aio.HealthServicer) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
