"""The edge: every request is checked here before a node acts on it.

Nothing a caller sends reaches the Raft log, the audit log or a participant before it
has passed the same rules the apply path uses (coordinator/core/limits.py and
validate.py, with the cluster's own ``Limits``): a bad request costs one refusal,
never a log entry, a journal write or a participant that cannot store an id.

- ``check_request(method, request, limits)``: one rule set per RPC of every service
  the coordinator serves (``REQUEST_CHECKS``; a test keeps it complete). Write
  requests are turned into the entries they would propose and checked with
  ``check_entry``; reads check the ids they name. A refusal is a ``ProtocolError``
  whose one-line message names the field and the limit; ``refuse`` answers it as a
  gRPC status (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for counts).
- The entry builders (``begin_txn_entry`` ...) are the servicers' too, so what is
  checked is exactly what is proposed.
- ``caller_owner``: who a round is counted against (``rounds_inflight_per_caller_max``):
  the TLS identity, or without TLS the peer's address (a follower that forwards a
  call names the original peer, believed only on a forwarded call without TLS).
- ``clean_reply``: a participant's reply as the leader may propose it (its free text
  cleaned and cut, never the vote lost for it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from concord.v1 import coordinator_pb2, membership_pb2, operations_pb2
from coordinator.audit.derive import OPERATOR_PREFIX
from coordinator.core.entries import (
    Abort,
    BeginRound,
    BeginSaga,
    BeginTxn,
    Enlist,
    EscalationNote,
    RecordEscalations,
    RegisterParticipant,
    RequestCommit,
    ResolveStep,
    SagaStepSpec,
    UnregisterParticipant,
)
from coordinator.core.errors import ErrorCode, ProtocolError
from coordinator.core.limits import (
    CALL_PAYLOAD_BYTES_MAX,
    Limits,
    check_id,
    clean_text,
)
from coordinator.core.messages import FromParticipant, Refused, StepReply, VoteReply
from coordinator.core.types import Kind
from coordinator.core.validate import check_entry
from coordinator.protomap import TXN_ACTION
from coordinator.rpc.status import STATUS_OF
from coordinator.security.authz import current_caller
from coordinator.security.secret import NONCE_BYTES

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "FORWARDED",
    "PEER_METADATA",
    "REQUEST_CHECKS",
    "caller_owner",
    "check_request",
    "clean_reply",
    "refuse",
]

log = logging.getLogger(__name__)

FORWARDED = "x-concord-forwarded"
# A forwarded call without TLS: the peer the follower took it from (for quotas only;
# without TLS nobody is authenticated, so this is a courtesy, not a proof).
PEER_METADATA = "x-concord-peer"
DEFAULT_TIMEOUT_MS = 30_000
SECRET_MAC_BYTES_MAX = 64  # an HMAC-SHA256 is 32

_C = "/concord.v1.CoordinatorService/"
_O = "/concord.v1.OperationsService/"
_M = "/concord.v1.MembershipService/"


# ---------------------------------------------------------------------- entries


def begin_txn_entry(request: Any, now_ms: int, owner: str = "") -> BeginTxn:
    return BeginTxn(
        txn_id=request.txn_id,
        session_id=request.session_id,
        participants=tuple(request.participants),
        timeout_ms=request.timeout_ms or DEFAULT_TIMEOUT_MS,
        now_ms=now_ms,
        owner=owner,
        actions=tuple(TXN_ACTION.from_proto(action) for action in request.actions),
    )


def begin_round_entry(request: Any, kind: Kind, now_ms: int, owner: str = "") -> BeginRound:
    label = request.reason if kind is Kind.ROLLBACK else request.label
    return BeginRound(
        round_id=request.round_id,
        kind=kind,
        session_id=request.session_id,
        participants=tuple(request.participants),
        checkpoint_id=request.checkpoint_id,
        label=label,
        timeout_ms=request.timeout_ms or DEFAULT_TIMEOUT_MS,
        now_ms=now_ms,
        owner=owner,
    )


def begin_saga_entry(request: Any, now_ms: int, owner: str = "") -> BeginSaga:
    return BeginSaga(
        saga_id=request.saga_id,
        session_id=request.session_id,
        steps=tuple(
            SagaStepSpec(participant_id=s.participant_id, action=s.action, payload=s.payload)
            for s in request.steps
        ),
        step_timeout_ms=request.step_timeout_ms or DEFAULT_TIMEOUT_MS,
        now_ms=now_ms,
        owner=owner,
    )


def escalations_entry(request: Any, now_ms: int) -> RecordEscalations:
    return RecordEscalations(
        participant_id=request.participant_id,
        escalations=tuple(
            EscalationNote(round_id=e.round_id, key=e.key, detail=e.detail)
            for e in request.escalations
        ),
        now_ms=now_ms,
    )


def resolve_entry(request: Any, now_ms: int) -> ResolveStep:
    return ResolveStep(
        saga_id=request.round_id,
        step=request.step,
        note=f"{OPERATOR_PREFIX} {request.note}".strip(),
        now_ms=now_ms,
    )


def unregister_entry(request: Any, now_ms: int) -> UnregisterParticipant:
    return UnregisterParticipant(
        participant_id=request.participant_id,
        drop_escalations=request.drop_escalations,
        now_ms=now_ms,
    )


# ---------------------------------------------------------------------- requests


def _commit(limits: Limits, request: Any) -> None:
    check_entry(limits, RequestCommit(txn_id=request.txn_id, now_ms=0))
    if request.HasField("begin"):
        if request.begin.txn_id != request.txn_id:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, "begin.txn_id must be the txn_id being committed"
            )
        check_entry(limits, begin_txn_entry(request.begin, 0))


def _call(limits: Limits, request: Any) -> None:
    check_id(limits, "txn_id", request.txn_id)
    check_id(limits, "participant_id", request.participant_id)
    check_id(limits, "call_id", request.call_id)
    check_id(limits, "action", request.action)
    if len(request.payload) > CALL_PAYLOAD_BYTES_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_ARGUMENT,
            f"payload is {len(request.payload)} bytes; the limit is {CALL_PAYLOAD_BYTES_MAX}",
        )


def _secret(limits: Limits, request: Any) -> None:
    del limits
    if len(request.nonce) != NONCE_BYTES:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"a {NONCE_BYTES}-byte nonce is needed")
    if len(request.mac) > SECRET_MAC_BYTES_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_ARGUMENT,
            f"mac is {len(request.mac)} bytes; the limit is {SECRET_MAC_BYTES_MAX}",
        )


def _address(name: str) -> Callable[[Limits, str], None]:
    def check(limits: Limits, value: str) -> None:
        check_id(limits, name, value)
        host, sep, port = value.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536) or " " in value:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, f"{name} is not HOST:PORT (e.g. 127.0.0.1:7004)"
            )

    return check


_RAFT, _GRPC = _address("raft"), _address("grpc")


def _add_member(limits: Limits, request: Any) -> None:
    check_id(limits, "node_id", request.node_id)
    _RAFT(limits, request.raft)
    _GRPC(limits, request.grpc)


def _nothing(limits: Limits, request: Any) -> None:
    del limits, request


def _query_outcome(limits: Limits, request: Any) -> None:
    check_id(limits, "round_id", request.round_id)
    check_id(limits, "participant_id", request.participant_id, allow_empty=True)


def _resolve(limits: Limits, request: Any) -> None:
    check_id(limits, "participant_id", request.participant_id, allow_empty=True)
    check_entry(limits, resolve_entry(request, 0))


RequestCheck = Callable[[Limits, Any], None]
# Every RPC the coordinator serves -> what its request must satisfy.
REQUEST_CHECKS: dict[str, RequestCheck] = {
    # CoordinatorService: writes are checked as the entries they propose
    _C + "BeginTxn": lambda lim, r: check_entry(lim, begin_txn_entry(r, 0)),
    _C + "Enlist": lambda lim, r: check_entry(
        lim, Enlist(txn_id=r.txn_id, participant_id=r.participant_id, now_ms=0)
    ),
    _C + "Commit": _commit,
    _C + "Call": _call,
    _C + "Abort": lambda lim, r: check_entry(
        lim, Abort(round_id=r.txn_id, reason=r.reason, now_ms=0)
    ),
    _C + "RequestRollback": lambda lim, r: check_entry(lim, begin_round_entry(r, Kind.ROLLBACK, 0)),
    _C + "BeginCheckpoint": lambda lim, r: check_entry(
        lim, begin_round_entry(r, Kind.CHECKPOINT, 0)
    ),
    _C + "BeginSaga": lambda lim, r: check_entry(lim, begin_saga_entry(r, 0)),
    _C + "ReportEscalations": lambda lim, r: check_entry(lim, escalations_entry(r, 0)),
    _C + "RegisterParticipant": lambda lim, r: check_entry(
        lim, RegisterParticipant(participant_id=r.participant_id, endpoint=r.endpoint, now_ms=0)
    ),
    _C + "QueryOutcome": _query_outcome,
    # the stream's first message; what follows passes the link's edge (clean_reply)
    _C + "Attach": lambda lim, r: check_id(lim, "participant_id", r.participant_id),
    # reads
    _C + "GetTxn": lambda lim, r: check_id(lim, "round_id", r.round_id),
    _C + "ListTxns": _nothing,  # open_only, and a limit the server caps
    _C + "WatchTxns": lambda lim, r: check_id(lim, "round_id", r.round_id, allow_empty=True),
    _C + "ClusterStatus": _nothing,
    _C + "CheckSecret": _secret,
    # MembershipService
    _M + "ListMembers": _nothing,
    _M + "AddMember": _add_member,
    _M + "RemoveMember": lambda lim, r: check_id(lim, "node_id", r.node_id),
    # OperationsService
    _O + "ExportAudit": lambda lim, r: check_id(lim, "round_id", r.round_id, allow_empty=True),
    _O + "VerifyAudit": _nothing,
    _O + "NodeStatus": _nothing,
    _O + "RetryRound": lambda lim, r: check_id(lim, "round_id", r.round_id),
    _O + "TransferLeader": lambda lim, r: check_id(lim, "node_id", r.node_id, allow_empty=True),
    _O + "ResolveEscalation": _resolve,
    _O + "UnregisterParticipant": lambda lim, r: check_entry(lim, unregister_entry(r, 0)),
    _O + "Backup": _nothing,
}
# The request type of each method, for the tests that keep the table complete.
SERVICES = (
    coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"],
    membership_pb2.DESCRIPTOR.services_by_name["MembershipService"],
    operations_pb2.DESCRIPTOR.services_by_name["OperationsService"],
)


def check_request(method: str, request: Any, limits: Limits) -> None:
    """Raise ``ProtocolError`` if ``request`` to ``method`` (its full name,
    ``/concord.v1.Service/Method``) breaks a rule. A method without rules is refused:
    new methods are closed until someone writes down what their requests may hold."""
    check = REQUEST_CHECKS.get(method)
    if check is None:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"{method} has no request rules")
    check(limits, request)


async def refuse(context: grpc.aio.ServicerContext, error: ProtocolError) -> NoReturn:
    await context.abort(STATUS_OF[error.code], error.message)
    raise AssertionError("unreachable: context.abort raises")


async def admit(
    context: grpc.aio.ServicerContext, method: str, request: Any, limits: Limits
) -> None:
    """``check_request``, answered as the call's status when it fails."""
    try:
        check_request(method, request, limits)
    except ProtocolError as error:
        await refuse(context, error)


# ---------------------------------------------------------------------- callers


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return str(value)
    return ""


def caller_owner(context: grpc.aio.ServicerContext, limits: Limits) -> str:
    """Who the rounds this call begins count against: ``ROLE/NAME`` of the TLS
    identity, else ``peer/ADDRESS`` (a forwarded call's original peer, when the
    follower named it)."""
    caller = current_caller()
    if caller is not None:
        owner = f"{caller.role.value}/{caller.name}"
    else:
        forwarded = metadata_value(context, FORWARDED) != ""
        peer = metadata_value(context, PEER_METADATA) if forwarded else ""
        owner = f"peer/{peer or context.peer() or 'unknown'}"
    try:
        check_id(limits, "owner", owner, limit_name="owner_bytes_max")
    except ProtocolError:  # not expected from grpc; never the caller's fault
        owner = "peer/unnamed"
    return owner


# ---------------------------------------------------------------------- replies


def clean_reply(message: FromParticipant, limits: Limits) -> FromParticipant:
    """A participant's reply with its free text made acceptable (control characters
    escaped, cut to ``reason_bytes_max``): a reason must never cost the vote or the
    step report it explains (applied, an oversized one would be refused). A YES
    whose action result is over ``step_payload_bytes_max`` becomes a NO saying so:
    the result could not be kept, and the coordinator may always abort."""
    if isinstance(message, VoteReply) and len(message.result) > limits.step_payload_bytes_max:
        why = (
            f"action result of {len(message.result)} bytes > "
            f"step_payload_bytes_max={limits.step_payload_bytes_max}"
        )
        message = dataclasses.replace(message, yes=False, result=b"", reason=why)
    if isinstance(message, VoteReply | Refused | StepReply):
        reason = clean_text(message.reason, limits.reason_bytes_max)
        if reason != message.reason:
            return dataclasses.replace(message, reason=reason)
    return message
