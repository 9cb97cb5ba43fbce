"""Who may call what: one table for every gRPC method Concord serves, enforced before
any servicer code runs.

Theory of operation
-------------------
``POLICY`` maps each method to the roles that may call it and, for methods a
participant calls about itself, the request field that must name the caller. The
``Authorizer`` interceptor wraps every handler: it reads the caller's identity from
the verified client certificate, refuses a caller of another cluster, a role the
method does not allow, or a participant speaking for another participant id, and
only then runs the servicer, with the caller in ``current_caller()`` for the checks
that need state (who may abort which transaction). A method missing from the table is
refused: new methods are closed until someone decides who may call them.

A follower forwards client calls to the leader; the leader then sees a node as the
caller. The follower has authorized the original caller already and names it in the
``x-concord-caller`` metadata, which is believed only when the direct caller is a node
of this cluster, and is checked against the table again.

Denials answer PERMISSION_DENIED with one line; each is counted, and the first per
(caller, method) is logged and passed to ``on_denied`` (the audit log). Without TLS
there are no identities and nothing is checked: plaintext is for development only, and
says so at start.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from coordinator.security.certs import peer_identity
from coordinator.security.identity import Identity, IdentityError, Role

__all__ = ["CALLER_METADATA", "POLICY", "Authorizer", "Rule", "current_caller"]

CALLER_METADATA = "x-concord-caller"
DENIALS_LOGGED_MAX = 1000  # distinct (caller, method) pairs logged; later ones counted only

log = logging.getLogger(__name__)
_caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "concord_caller", default=None
)


def current_caller() -> Identity | None:
    """The identity the current call is made by (after forwarding: the original
    caller), or None without TLS."""
    return _caller.get()


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[Role]
    # A participant caller must name itself in this request field (of a stream: of
    # its first message, read before the servicer runs).
    as_itself: str = ""


NODE, PARTICIPANT, OPERATOR, CLIENT = Role.NODE, Role.PARTICIPANT, Role.OPERATOR, Role.CLIENT
ANYONE = frozenset(Role)
INITIATORS = frozenset({CLIENT, PARTICIPANT, OPERATOR})

_C = "/concord.v1.CoordinatorService/"
_O = "/concord.v1.OperationsService/"
_M = "/concord.v1.MembershipService/"
_P = "/concord.v1.ParticipantService/"
POLICY: dict[str, Rule] = {
    # transactions and rounds: initiators (an agent may be one too)
    _C + "BeginTxn": Rule(INITIATORS),
    _C + "Enlist": Rule(INITIATORS),
    _C + "Commit": Rule(INITIATORS),
    _C + "Call": Rule(INITIATORS),
    _C + "Abort": Rule(INITIATORS),  # whose: checked by the servicer (current_caller)
    _C + "RequestRollback": Rule(INITIATORS),
    _C + "BeginCheckpoint": Rule(INITIATORS),
    _C + "BeginSaga": Rule(INITIATORS),
    # a participant about itself
    _C + "RegisterParticipant": Rule(frozenset({PARTICIPANT}), as_itself="participant_id"),
    _C + "ReportEscalations": Rule(frozenset({PARTICIPANT}), as_itself="participant_id"),
    _C + "QueryOutcome": Rule(frozenset({PARTICIPANT, OPERATOR}), as_itself="participant_id"),
    # a participant that only connects out: its own stream, named in the first message
    _C + "Attach": Rule(frozenset({PARTICIPANT}), as_itself="participant_id"),
    # reads
    _C + "GetTxn": Rule(ANYONE),
    _C + "ListTxns": Rule(ANYONE),
    _C + "WatchTxns": Rule(ANYONE),
    _C + "ClusterStatus": Rule(ANYONE),
    # between nodes
    _C + "CheckSecret": Rule(frozenset({NODE})),
    _M + "ListMembers": Rule(frozenset({NODE, OPERATOR})),
    # operators
    _M + "AddMember": Rule(frozenset({OPERATOR})),
    _M + "RemoveMember": Rule(frozenset({OPERATOR})),
    _O + "ExportAudit": Rule(frozenset({OPERATOR})),
    _O + "VerifyAudit": Rule(frozenset({OPERATOR})),
    _O + "NodeStatus": Rule(frozenset({OPERATOR, NODE})),
    _O + "RetryRound": Rule(frozenset({OPERATOR})),
    _O + "TransferLeader": Rule(frozenset({OPERATOR})),
    _O + "ResolveEscalation": Rule(frozenset({OPERATOR})),
    _O + "UnregisterParticipant": Rule(frozenset({OPERATOR})),
    _O + "Backup": Rule(frozenset({OPERATOR})),
    # a participant's own service: only the coordinators of its cluster drive it
    _P + "Exchange": Rule(frozenset({NODE})),
    _P + "Ping": Rule(frozenset({NODE, OPERATOR})),
    _P + "Call": Rule(frozenset({NODE})),
    # standard services
    "/grpc.health.v1.Health/Check": Rule(ANYONE),
    "/grpc.health.v1.Health/Watch": Rule(ANYONE),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Rule(frozenset({OPERATOR})),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Rule(frozenset({OPERATOR})),
}


class Denied(Exception):
    pass


class Authorizer(grpc.aio.ServerInterceptor):
    """Enforces ``POLICY`` for the servers of one identity (``own``)."""

    def __init__(
        self,
        own: Identity,
        *,
        policy: dict[str, Rule] | None = None,
        on_denied: Callable[[Identity | None, str, str], None] | None = None,
    ) -> None:
        self.own = own
        self.policy = POLICY if policy is None else policy
        self.on_denied = on_denied
        self.denials = 0
        self._logged: set[tuple[str, str]] = set()
        # method -> (the handler gRPC gave, its wrapped twin): built once per method,
        # not per call
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            rule = self.policy.get(method)
            wrapped = _wrap(
                handler,
                lambda context, request: self._admit(method, rule, context, request),
                first_message=rule is not None and bool(rule.as_itself),
            )
            cached = self._wrapped[method] = (handler, wrapped)
        return cached[1]

    def _admit(self, method: str, rule: Rule | None, context: Any, request: Any) -> Identity:
        forwarded = _metadata(context.invocation_metadata(), CALLER_METADATA)
        caller = peer_identity(context.auth_context())
        try:
            if caller is None:
                raise Denied("no client certificate with a Concord identity")
            if caller.cluster != self.own.cluster:
                raise Denied(f"{caller} is not of cluster {self.own.cluster!r}")
            if forwarded:
                if caller.role is not Role.NODE:
                    raise Denied(f"{caller} may not call on behalf of another")
                try:
                    caller = Identity.parse(forwarded)
                except IdentityError as error:
                    raise Denied(f"forwarded caller: {error}") from None
                if caller.cluster != self.own.cluster:
                    raise Denied(f"{caller} is not of cluster {self.own.cluster!r}")
            if rule is None:
                raise Denied(f"{method} is not open to anyone")
            if caller.role not in rule.roles:
                allowed = ", ".join(sorted(r.value for r in rule.roles))
                raise Denied(f"{caller} may not call {method} (allowed: {allowed})")
            if rule.as_itself and caller.role is Role.PARTICIPANT and request is not None:
                claimed = getattr(request, rule.as_itself, "")
                if claimed != caller.name:
                    raise Denied(f"{caller} may not speak for participant {claimed[:128]!r}")
        except Denied as denied:
            self._denied(caller, method, str(denied))
            raise
        return caller

    def _denied(self, caller: Identity | None, method: str, why: str) -> None:
        """Counted always; logged and audited once per (caller, method), so a flood of
        refused calls costs no flood of log lines or durable writes."""
        self.denials += 1
        key = (str(caller), method)
        if key in self._logged or len(self._logged) >= DENIALS_LOGGED_MAX:
            return
        self._logged.add(key)
        log.warning("denied: %s", why)
        if self.on_denied is not None:
            try:
                self.on_denied(caller, method, why)
            except Exception:  # the audit must never turn a denial into an error
                log.exception("on_denied failed")


def _metadata(metadata: Any, key: str) -> str:
    for item_key, value in metadata or ():
        if item_key == key:
            return str(value)
    return ""


def _wrap(
    handler: Any, admit: Callable[[Any, Any], Identity], *, first_message: bool = False
) -> Any:
    """The same handler, with ``admit`` run first (unary requests are passed to it;
    with ``first_message``, a request stream's first message, read here and handed on
    to the servicer in front of the rest: a stream that ends before it is judged as an
    empty message, which names nobody)."""

    async def deny(context: Any, error: Denied) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            try:
                _caller.set(admit(context, request))
            except Denied as error:
                await deny(context, error)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> Any:
            try:
                _caller.set(admit(context, request))
            except Denied as error:
                await deny(context, error)
            async for reply in inner_us(request, context):
                yield reply

        async def unary_writer(request: Any, context: Any) -> None:
            try:
                _caller.set(admit(context, request))
            except Denied as error:
                await deny(context, error)
            await inner_us(request, context)  # writes with context.write()

        return grpc.unary_stream_rpc_method_handler(
            unary_stream if inspect.isasyncgenfunction(inner_us) else unary_writer,
            handler.request_deserializer,
            handler.response_serializer,
        )

    async def admit_stream(requests: Any, context: Any) -> Any:
        """``admit`` for a request stream; the requests the servicer is to read."""
        first = None
        if first_message:
            first = await anext(aiter(requests), None)
            if first is None:
                first = handler.request_deserializer(b"")
        try:
            _caller.set(admit(context, first))
        except Denied as error:
            await deny(context, error)
        return requests if first is None else _chain(first, requests)

    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            requests = await admit_stream(requests, context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: Any) -> Any:
        requests = await admit_stream(requests, context)
        async for reply in inner_ss(requests, context):
            yield reply

    async def stream_writer(requests: Any, context: Any) -> None:
        requests = await admit_stream(requests, context)
        await inner_ss(requests, context)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream if inspect.isasyncgenfunction(inner_ss) else stream_writer,
        handler.request_deserializer,
        handler.response_serializer,
    )


async def _chain(first: Any, rest: Any) -> Any:
    """``first``, then what ``rest`` yields: a stream whose first message was read."""
    yield first
    async for item in rest:
        yield item
