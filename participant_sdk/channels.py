"""Calls to ``CoordinatorService`` over a list of addresses (the client's and the
participant's: registration, in-doubt questions, escalations).

How answers map (rule 8, "unknown is not failure"):

- UNAVAILABLE: no leader reachable through that node; try the next address, at most
  ``attempts_max`` calls in all. Every write is idempotent by its id (the caller
  chooses it), so repeating one after UNAVAILABLE cannot do it twice.
- UNKNOWN or DEADLINE_EXCEEDED on a write: the write may have been applied. Raised as
  ``OutcomeUnknown(round_id)``; resolved by id, never by retrying.
- ABORTED: ``Busy`` (a rollback or checkpoint round holds the participants).
- INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED: the matching ``ConcordError`` subclass with the server's message.
- UNIMPLEMENTED, or an address that accepts connections but does not complete a gRPC
  handshake with this client: ``NotACoordinator``, at once, naming the address and
  the likely mistake (probe.py), instead of retries that end in UNAVAILABLE.
- An address never reached before that no TCP connection opens to (a host down or cut
  off by the network): passed over without sending, like UNAVAILABLE; its call would
  only have waited for a connection until its deadline and then counted as "may have
  landed".

Followers forward calls to the leader themselves, so addresses rotate only on
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import grpc
from google.protobuf.message import Message

from concord.v1 import coordinator_pb2
from coordinator import tracing
from coordinator.protomap import LEADER_HINT
from coordinator.security.identity import Role
from coordinator.security.transport import Transport
from participant_sdk.errors import (
    AlreadyExists,
    Busy,
    ConcordError,
    FailedPrecondition,
    InvalidArgument,
    NotACoordinator,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from participant_sdk.probe import diagnose

__all__ = ["CoordinatorChannels", "Rpc"]

_ERRORS: dict[grpc.StatusCode, type[ConcordError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ABORTED: Busy,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
_MAYBE_APPLIED = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED)
# First contact with an address: how long a handshake may take before the address is
# probed. A coordinator completes one in milliseconds; a port that closes the
# connection fails it at once, and one that accepts and stays silent would otherwise
# hold the call for gRPC's 20 s connect timeout.
FIRST_CONTACT_S = 0.5
# _first_contact's answer for an address no TCP connection opens to (its host is down
# or cut off): the call is not sent there, so nothing can have landed; the next address.
_UNREACHABLE = "unreachable"
_SERVICE = "concord.v1.CoordinatorService"
# As the generated stubs do: the method is registered with the channel once, not
# looked up by name at every call (the typing stubs do not list the argument).
_REGISTERED: dict[str, Any] = {"_registered_method": True}

RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[RequestT, ReplyT]):
    """One method of ``CoordinatorService`` with its request and reply types."""

    name: str
    request: type[RequestT]
    reply: type[ReplyT]


BEGIN_TXN = Rpc("BeginTxn", coordinator_pb2.BeginTxnRequest, coordinator_pb2.BeginTxnReply)
ENLIST = Rpc("Enlist", coordinator_pb2.EnlistRequest, coordinator_pb2.EnlistReply)
COMMIT = Rpc("Commit", coordinator_pb2.CommitRequest, coordinator_pb2.CommitReply)
CALL = Rpc("Call", coordinator_pb2.CallRequest, coordinator_pb2.CallReply)
ABORT = Rpc("Abort", coordinator_pb2.AbortRequest, coordinator_pb2.AbortReply)
REQUEST_ROLLBACK = Rpc(
    "RequestRollback", coordinator_pb2.RequestRollbackRequest, coordinator_pb2.RoundReply
)
BEGIN_CHECKPOINT = Rpc(
    "BeginCheckpoint", coordinator_pb2.BeginCheckpointRequest, coordinator_pb2.RoundReply
)
BEGIN_SAGA = Rpc("BeginSaga", coordinator_pb2.BeginSagaRequest, coordinator_pb2.GetTxnReply)
GET_TXN = Rpc("GetTxn", coordinator_pb2.GetTxnRequest, coordinator_pb2.GetTxnReply)
REPORT_ESCALATIONS = Rpc(
    "ReportEscalations",
    coordinator_pb2.ReportEscalationsRequest,
    coordinator_pb2.ReportEscalationsReply,
)
QUERY_OUTCOME = Rpc(
    "QueryOutcome", coordinator_pb2.QueryOutcomeRequest, coordinator_pb2.QueryOutcomeReply
)
REGISTER_PARTICIPANT = Rpc(
    "RegisterParticipant",
    coordinator_pb2.RegisterParticipantRequest,
    coordinator_pb2.RegisterParticipantReply,
)


class CoordinatorChannels:
    """Calls to ``CoordinatorService`` over a list of addresses, rotating on
    UNAVAILABLE."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        transport: Transport | None = None,
        attempts_max: int = 6,
        call_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.02,
        backoff_max_s: float = 1.0,
    ) -> None:
        if not addresses:
            raise ValueError("at least one coordinator address is needed")
        if attempts_max <= 0:
            raise ValueError(f"attempts_max must be positive, got {attempts_max}")
        if call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s must be positive, got {call_timeout_s}")
        self.addresses = tuple(addresses)
        self.transport = transport or Transport.insecure()
        self.attempts_max = attempts_max
        self.call_timeout_s = call_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._current = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._methods: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}
        self._reached: set[str] = set()  # addresses whose handshake completed once

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self.transport.aio_channel(address, to=Role.NODE)
        return channel

    def _method(
        self, address: str, rpc: Rpc[RequestT, ReplyT]
    ) -> grpc.aio.UnaryUnaryMultiCallable[RequestT, ReplyT]:
        """The callable of ``rpc`` on the channel to ``address`` (made once)."""
        key = (address, rpc.name)
        method = self._methods.get(key)
        if method is None:
            method = self._channel(address).unary_unary(
                f"/{_SERVICE}/{rpc.name}",
                request_serializer=rpc.request.SerializeToString,
                response_deserializer=rpc.reply.FromString,
                **_REGISTERED,
            )
            self._methods[key] = method
        return cast(grpc.aio.UnaryUnaryMultiCallable[RequestT, ReplyT], method)

    async def _first_contact(self, address: str) -> str:
        """Until this address's handshake completed once: wait for it briefly, and if
        it failed or is slow, ask what listens there. The mistake, in one line, when
        it is one (a wrong port, TLS against plaintext, a foreign certificate); "" to
        go on with the call (an address where nothing listens is a node that is down:
        the call fails over as usual)."""
        if address in self._reached:
            return ""
        channel = self._channel(address)
        state = channel.get_state(try_to_connect=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_CONTACT_S
        settled = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        while state not in settled:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    await channel.wait_for_state_change(state)
            except TimeoutError:
                break
            state = channel.get_state()
        if state is grpc.ChannelConnectivity.READY:
            self._reached.add(address)
            return ""
        refused = state is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        problem = await diagnose(address, tls=self.transport.secure, refused=refused)
        if channel.get_state() is grpc.ChannelConnectivity.READY:
            # Only slow (a loaded machine): the handshake completed while we looked.
            self._reached.add(address)
            return ""
        if problem is None:
            # Nothing answers there. Sending the call would wait for a connection until
            # its deadline, and a write's deadline means "may have landed": an
            # OutcomeUnknown for a call that never left this process.
            return _UNREACHABLE
        return problem

    async def call(
        self,
        rpc: Rpc[RequestT, ReplyT],
        request: RequestT,
        *,
        round_id: str = "",
        write: bool = True,
        timeout_s: float | None = None,
        unavailable_is_unknown: bool = False,
        trace_parent: str = "",
    ) -> ReplyT:
        """One logical call. ``write``: UNKNOWN/DEADLINE_EXCEEDED raise OutcomeUnknown.
        ``unavailable_is_unknown``: running out of attempts raises OutcomeUnknown
        instead of Unavailable (for writes whose earlier attempt may have landed).
        ``trace_parent``: sent as ``traceparent`` metadata (tracing on only).

        An address that is not a coordinator is passed over like one that is down;
        once every address turned out so, ``NotACoordinator`` names them (nothing was
        sent to a coordinator, so nothing was written)."""
        metadata = tracing.call_metadata(trace_parent)
        backoff_s = self.backoff_initial_s
        failures: list[str] = []
        wrong: dict[str, str] = {}
        for attempt in range(self.attempts_max):
            index = self._current % len(self.addresses)
            address = self.addresses[index]
            problem = await self._first_contact(address)
            if problem == _UNREACHABLE:  # as UNAVAILABLE: the next address, after a backoff
                failures.append(f"{address}: no connection (nothing sent)")
                problem = ""
            elif not problem:
                method = self._method(address, rpc)
                try:
                    timeout = timeout_s or self.call_timeout_s
                    call = method(request, timeout=timeout, metadata=metadata)
                    reply = await call
                    self._reached.add(address)
                    self._follow_leader_hint(await call.trailing_metadata())
                    return reply
                except grpc.aio.AioRpcError as error:
                    code, details = error.code(), error.details() or ""
                    if code in _ERRORS:
                        raise _ERRORS[code](details) from None
                    if code in _MAYBE_APPLIED and write:
                        raise OutcomeUnknown(
                            round_id, f"{rpc.name} via {address}: {code.name}"
                        ) from None
                    if code is grpc.StatusCode.UNIMPLEMENTED:
                        problem = (
                            f"{address} serves gRPC but not {_SERVICE}.{rpc.name}: not a "
                            "Concord coordinator (a participant's port?) or one of another "
                            "version"
                        )
                    else:
                        failures.append(f"{address}: {code.name} {details}".strip())
            if problem:
                wrong[address] = problem
                failures.append(problem)
                if len(wrong) == len(self.addresses):
                    raise NotACoordinator("; ".join(wrong[a] for a in self.addresses))
            if self._current % len(self.addresses) == index:
                # Move on, unless a concurrent call already did (no ping-pong).
                self._current = index + 1
            if problem:
                continue  # the next address at once: this one will not get better
            if attempt + 1 < self.attempts_max:
                await asyncio.sleep(backoff_s)  # back off before the next address
                backoff_s = min(backoff_s * 2, self.backoff_max_s)
        summary = "; ".join(failures[-len(self.addresses) :])
        if write and unavailable_is_unknown:
            raise OutcomeUnknown(round_id, f"{rpc.name}: no leader reached ({summary})")
        raise Unavailable(
            f"{rpc.name}: no leader reached in {self.attempts_max} attempts: {summary}"
        )

    def _follow_leader_hint(self, trailing: Any) -> bool:
        """A follower that forwarded the call names the leader: call it directly next
        time, if it is one of the addresses we were given (never a stranger)."""
        for key, value in trailing or ():
            if key == LEADER_HINT and value in self.addresses:
                self._current = self.addresses.index(value)
                return True
        return False

    # A stream to the leader (the participant's Attach, participant_sdk/attach.py)
    # follows the leader the same way: opened at ``address_now``, and when it finds no
    # leader there, ``passed_over`` moves on as a call would.

    def address_now(self) -> str:
        """The address the next call goes to: the leader, once one was named."""
        return self.addresses[self._current % len(self.addresses)]

    def passed_over(self, address: str, trailing: Any = None) -> None:
        """No leader at ``address``: next time the leader it named (``LEADER_HINT`` in
        ``trailing``), else the next address (unless a call moved on already)."""
        if not self._follow_leader_hint(trailing) and self.address_now() == address:
            self._current += 1

    def stream_method(
        self, address: str, name: str, request: type[RequestT], reply: type[ReplyT]
    ) -> grpc.aio.StreamStreamMultiCallable[RequestT, ReplyT]:
        """``CoordinatorService.<name>``, a bidirectional stream, on the channel to
        ``address``."""
        return self._channel(address).stream_stream(
            f"/{_SERVICE}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=reply.FromString,
            **_REGISTERED,
        )

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._methods = {}
        self._reached = set()
        for channel in channels.values():
            await channel.close()
