"""CoordinatorService: a thin servicer from protobuf requests to log entries.

Every write becomes one entry proposed on the leader; the answer is what applying it
did (``Applied``), so every replica would have answered the same. A follower forwards
the call to the leader it knows (once: a forwarded call that lands on a non-leader
fails UNAVAILABLE rather than bouncing), so SDK users never see leadership.

Every request is checked first, on whichever node takes it (coordinator/rpc/edge.py:
the rules the apply path uses, with the cluster's limits), and a write once more on
the leader just before it is proposed, with the room it needs (rounds in flight, in
all and for its caller): a bad request never becomes a log entry.

Outcomes of a write, as gRPC status (coordinator/rpc/status.py):
- applied, no error -> the reply; applied with a ProtocolError -> its status code;
- not leader and no leader known -> UNAVAILABLE (definitely not applied: try again);
- overloaded (backpressure) -> RESOURCE_EXHAUSTED (definitely not applied);
- unknown -> UNKNOWN: maybe applied; resolve by id (GetTxn), never retry blindly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from concord.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator import tracing
from coordinator.audit.derive import OPERATOR_PREFIX
from coordinator.core.entries import (
    Abort,
    BeginTxn,
    Enlist,
    Entry,
    RegisterParticipant,
    RequestCommit,
    RoundChanged,
)
from coordinator.core.errors import ProtocolError
from coordinator.core.leader import Answer, ProposeStatus
from coordinator.core.limits import Limits
from coordinator.core.state import Applied, CoordinatorState, Phase, Round, StepStatus
from coordinator.core.types import Decision, Kind
from coordinator.core.validate import check_entry
from coordinator.protomap import KIND, LEADER_HINT, decision_to_proto
from coordinator.replication.node import ReplicatedCoordinator
from coordinator.rpc.edge import (
    FORWARDED,
    PEER_METADATA,
    admit,
    begin_round_entry,
    begin_saga_entry,
    begin_txn_entry,
    caller_owner,
    escalations_entry,
    refuse,
)
from coordinator.rpc.participant_links import ParticipantLinks
from coordinator.rpc.status import NO_LEADER, OUTCOME_UNKNOWN, OVERLOADED, STATUS_OF
from coordinator.rpc.traces import RoundTraces, traced
from coordinator.security.authz import CALLER_METADATA, current_caller
from coordinator.security.identity import Identity, Role
from coordinator.security.secret import RateLimiter
from coordinator.security.transport import Transport

log = logging.getLogger(__name__)

R = TypeVar("R")

SERVICE = "/concord.v1.CoordinatorService/"
WRITE_TIMEOUT_S = 5.0  # a write not applied by then has an unknown outcome
DECISION_WAIT_S_MAX = 60.0  # longest a call may wait for a decision, whatever its deadline
FORWARD_TIMEOUT_S_MAX = DECISION_WAIT_S_MAX + 5.0  # a forwarded call outlives the wait it may do
LIST_ROUNDS_MAX = 1_000
# Reads from the applied state: a new leader answers them only once it caught up.
# Served from the leader's applied state: only once it has caught up with the log.
READ_METHODS = frozenset({"GetTxn", "ListTxns", "Call"})
LEADER_CATCH_UP_WAIT_S = 2.0
SECRET_CHECKS_PER_S = 2.0  # per caller: start-up and add-node need a handful
SECRET_CHECKS_BURST = 10
# Calls whose trace the round's Prepare/Decide messages join (coordinator/tracing.py).
TRACE_ROUND_METHODS = frozenset(
    {"BeginTxn", "Commit", "Abort", "RequestRollback", "BeginCheckpoint", "BeginSaga"}
)


class LeaderNode(Protocol):
    """What the servicer needs of the node it serves (coordinator/runtime/node.py):
    the leader to ask, the applied state to read, decisions and changes to wait for."""

    replicated: ReplicatedCoordinator
    transport: Transport
    traces: RoundTraces | None
    links: ParticipantLinks

    @property
    def node_id(self) -> str: ...
    def now_ms(self) -> int: ...
    def read(self, fn: Callable[[CoordinatorState], R]) -> R: ...
    async def write(self, entry: Entry) -> Answer: ...
    async def commit(self, commit: RequestCommit, begin: BeginTxn | None) -> Answer: ...
    async def outcome_query(self, round_id: str, participant_id: str) -> Answer: ...
    async def call_action(
        self, endpoint: str, request: coordinator_pb2.CallRequest, timeout_s: float
    ) -> coordinator_pb2.CallReply: ...
    async def wait_reads_ready(self, timeout_s: float) -> bool: ...
    async def wait_decided(self, round_id: str, timeout_s: float) -> None: ...
    async def wait_until(
        self, round_id: str, done: Callable[[CoordinatorState], bool], timeout_s: float
    ) -> bool: ...
    def watch(self, round_id: str) -> AsyncIterator[RoundChanged]: ...


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        node: LeaderNode,
        grpc_address_of: Mapping[str, str],
        secret_check: Callable[[bytes, bytes], bytes | None] | None = None,
    ) -> None:
        self.node = node
        # (nonce, the asker's mac) -> our proof, or None if the asker does not prove it
        self._secret_check = secret_check
        self._secret_checks = RateLimiter(SECRET_CHECKS_PER_S, SECRET_CHECKS_BURST)
        self._grpc_address_of = grpc_address_of  # may be live (membership changes)
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    # ------------------------------------------------------------------ writes

    async def BeginTxn(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            entry = begin_txn_entry(request, self.node.now_ms(), self._owner(context))
            await self._write(entry, request.txn_id, context)
            return coordinator_pb2.BeginTxnReply(txn_id=request.txn_id)

        return await self._on_leader("BeginTxn", request, context, handle)

    async def Enlist(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            entry = Enlist(
                txn_id=request.txn_id,
                participant_id=request.participant_id,
                now_ms=self.node.now_ms(),
            )
            await self._write(entry, request.txn_id, context)
            return coordinator_pb2.EnlistReply()

        return await self._on_leader("Enlist", request, context, handle)

    async def Commit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            begin: BeginTxn | None = None
            if request.HasField("begin"):  # the edge checked it is for this txn
                begin = begin_txn_entry(request.begin, self.node.now_ms(), self._owner(context))
                await self._admit(begin, context)
            commit = RequestCommit(txn_id=request.txn_id, now_ms=self.node.now_ms())
            await self._admit(commit, context)
            answer = await self.node.commit(commit, begin)
            await self._check(answer, request.txn_id, context)
            if request.wait_for_decision:
                await self.node.wait_decided(request.txn_id, self._wait_s(context))
            decision = self._decision(request.txn_id)
            results = self.node.read(lambda s: _action_results(s.get(request.txn_id), decision))
            return coordinator_pb2.CommitReply(
                txn_id=request.txn_id, decision=decision_to_proto(decision), results=results
            )

        return await self._on_leader("Commit", request, context, handle)

    async def Call(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """A transaction action, relayed to the participant (nothing is proposed: the
        branch is not durable before Prepare, and the call is idempotent there)."""

        async def handle() -> Any:
            caller = current_caller()
            target = self.node.read(lambda s: _call_target(caller, s, request))
            if isinstance(target, ProtocolError):
                await refuse(context, target)
            if not isinstance(target, str):
                await _abort(context, grpc.StatusCode.PERMISSION_DENIED, target.message)
            try:
                return await self.node.call_action(target, request, self._wait_s(context))
            except grpc.aio.AioRpcError as error:
                await _abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"participant {request.participant_id!r} did not answer the call "
                    f"({error.code().name}: {error.details()}); the call is idempotent: retry",
                )

        return await self._on_leader("Call", request, context, handle)

    async def Abort(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            caller = current_caller()
            why_not, known = self.node.read(
                lambda s: (may_abort(caller, s, request), s.get(request.txn_id) is not None)
            )
            if why_not and not known and not request.reason.startswith(OPERATOR_PREFIX):
                # Nothing to abort, and only an operator may abort an id before it begins
                # (a tombstone that would abort its owner's transaction when it comes).
                await _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"txn {request.txn_id[:128]!r} is unknown to the cluster: nothing to abort",
                )
            if why_not:
                await _abort(context, grpc.StatusCode.PERMISSION_DENIED, why_not)
            entry = Abort(round_id=request.txn_id, reason=request.reason, now_ms=self.node.now_ms())
            await self._write(entry, request.txn_id, context)
            decision = self._decision(request.txn_id)
            return coordinator_pb2.AbortReply(
                txn_id=request.txn_id, decision=decision_to_proto(decision)
            )

        return await self._on_leader("Abort", request, context, handle)

    async def RequestRollback(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._on_leader(
            "RequestRollback",
            request,
            context,
            lambda: self._round(request, Kind.ROLLBACK, request.reason, context),
        )

    async def BeginCheckpoint(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._on_leader(
            "BeginCheckpoint",
            request,
            context,
            lambda: self._round(request, Kind.CHECKPOINT, request.label, context),
        )

    async def BeginSaga(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            entry = begin_saga_entry(request, self.node.now_ms(), self._owner(context))
            await self._write(entry, request.saga_id, context)
            if request.wait:
                await self.node.wait_until(
                    request.saga_id,
                    lambda s: _saga_settled(s.get(request.saga_id)),
                    self._wait_s(context),
                )
            return self.node.read(lambda s: _round_reply(s.get(request.saga_id), s))

        return await self._on_leader("BeginSaga", request, context, handle)

    async def _round(
        self, request: Any, kind: Kind, label: str, context: grpc.aio.ServicerContext
    ) -> Any:
        entry = begin_round_entry(request, kind, self.node.now_ms(), self._owner(context))
        await self._write(entry, request.round_id, context)
        if request.wait_for_decision:
            await self.node.wait_decided(request.round_id, self._wait_s(context))
        decision = self._decision(request.round_id)
        return coordinator_pb2.RoundReply(
            round_id=request.round_id, decision=decision_to_proto(decision)
        )

    async def ReportEscalations(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            entry = escalations_entry(request, self.node.now_ms())
            await self._write(entry, request.participant_id, context)
            return coordinator_pb2.ReportEscalationsReply()

        return await self._on_leader("ReportEscalations", request, context, handle)

    async def RegisterParticipant(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            entry = RegisterParticipant(
                participant_id=request.participant_id,
                endpoint=request.endpoint,
                now_ms=self.node.now_ms(),
            )
            await self._write(entry, request.participant_id, context)
            return coordinator_pb2.RegisterParticipantReply()

        return await self._on_leader("RegisterParticipant", request, context, handle)

    async def QueryOutcome(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The leader answers from applied state, or resolves the round through the
        log first (``Leader.outcome_query``); UNSPECIFIED: ask again later."""

        async def handle() -> Any:
            answer = await self.node.outcome_query(request.round_id, request.participant_id)
            if answer.results:
                await self._check(answer, request.round_id, context)
            return coordinator_pb2.QueryOutcomeReply(
                round_id=request.round_id, decision=decision_to_proto(answer.decision)
            )

        return await self._on_leader("QueryOutcome", request, context, handle)

    async def Attach(
        self,
        request_iterator: AsyncIterator[coordinator_pb2.AttachRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[coordinator_pb2.AttachReply]:
        """A participant that only connects out: the leader's link to it runs on this
        stream (coordinator/rpc/participant_links.py). The first message names it (with
        TLS the authorization table has checked it is the caller). A follower refuses
        with the leader's address in ``LEADER_HINT``: the stream is never forwarded."""
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "participant_id":
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message of Attach must name the participant",
            )
        await admit(context, SERVICE + "Attach", first, self._limits())
        participant_id = first.participant_id
        replicated = self.node.replicated
        if not (
            replicated.is_leader() and await self.node.wait_reads_ready(LEADER_CATCH_UP_WAIT_S)
        ):
            leader = replicated.leader_id()
            address = self._grpc_address_of.get(leader) if leader else None
            if address is None:
                await _abort(context, NO_LEADER, "no leader known to this node; attach elsewhere")
            await context.abort(
                NO_LEADER,
                f"not the leader: attach to {address}",
                trailing_metadata=((LEADER_HINT, address),),
            )
        log.info("participant %s attached from %s", participant_id, context.peer())
        # aclosing: the link learns at once that the stream ended, however it ended.
        replies = self.node.links.attach(participant_id).serve(request_iterator)
        async with contextlib.aclosing(replies):
            async for reply in replies:
                yield reply
        log.info("participant %s: its attached stream ended", participant_id)

    # ------------------------------------------------------------------ reads

    async def GetTxn(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            round_id = request.round_id
            reply = self.node.read(lambda s: _round_reply(s.get(round_id), s, round_id))
            if reply is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no round {request.round_id!r} (never begun, or forgotten)",
                )
            return reply

        return await self._on_leader("GetTxn", request, context, handle)

    async def ListTxns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            limit = min(request.limit or LIST_ROUNDS_MAX, LIST_ROUNDS_MAX)
            rounds = self.node.read(lambda s: _list_rounds(s, request.open_only, limit))
            return coordinator_pb2.ListTxnsReply(rounds=rounds)

        return await self._on_leader("ListTxns", request, context, handle)

    async def WatchTxns(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Served from this node's applied state: events arrive as entries apply here."""
        await admit(context, SERVICE + "WatchTxns", request, self._limits())
        try:
            async for change in self.node.watch(request.round_id):
                reply = self.node.read(lambda s, rid=change.round_id: _round_reply(s.get(rid), s))
                if reply is not None:
                    yield coordinator_pb2.TxnEvent(round=reply, applied_index=change.index)
        except OverflowError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))

    async def CheckSecret(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Does the caller hold our cluster secret? If so, our proof (coordinator.proto,
        coordinator/security/secret.py). Nodes only (authz), a few times a second each."""
        await admit(context, SERVICE + "CheckSecret", request, self._limits())
        if self._secret_check is None:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "this node checks no secret")
        caller = current_caller()
        if not self._secret_checks.allow(caller.uri if caller else context.peer()):
            await _abort(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many secret checks; slow down"
            )
        proof = self._secret_check(request.nonce, request.mac)
        return coordinator_pb2.CheckSecretReply(
            match=proof is not None, proof=proof or b"", node_id=self.node.node_id
        )

    async def ClusterStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "ClusterStatus", request, self._limits())
        status = self.node.replicated.status()
        inflight = self.node.read(lambda s: s.rounds_inflight())
        return coordinator_pb2.ClusterStatusReply(
            node_id=status.node_id,
            leader_id=status.leader_id or "",
            term=status.term,
            commit_index=status.commit_index,
            applied_index=status.applied_index,
            members=[
                coordinator_pb2.ClusterMember(
                    node_id=m.node_id, address=m.raft, reachable=m.reachable
                )
                for m in status.members
            ],
            rounds_inflight=inflight,
        )

    # ------------------------------------------------------------------ plumbing

    async def _on_leader(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handle: Callable[[], Awaitable[R]],
    ) -> R:
        # Checked where it arrives, before it is forwarded or acted on (edge.py).
        await admit(context, SERVICE + method, request, self._limits())
        tracer = tracing.active()
        if tracer is not None:
            parent = tracing.traceparent_in(context.invocation_metadata())
            if parent:  # the caller traces this call: a span for it, its round joins
                attributes = {"concord.round_id": _round_id_of(request)}

                def route(trace_parent: str) -> Awaitable[R]:
                    return self._route(method, request, context, handle, trace_parent)

                name = f"concord.coordinator.{method}"
                return await traced(tracer, name, parent, attributes, route)
        return await self._route(method, request, context, handle)

    async def _route(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handle: Callable[[], Awaitable[R]],
        trace_parent: str = "",
    ) -> R:
        if self.node.replicated.is_leader():
            if method in READ_METHODS and not await self.node.wait_reads_ready(
                LEADER_CATCH_UP_WAIT_S
            ):
                await _abort(
                    context,
                    NO_LEADER,
                    "the leader was just elected and is still applying the log; retry",
                )
            if trace_parent and method in TRACE_ROUND_METHODS and self.node.traces is not None:
                self.node.traces.remember(_round_id_of(request), trace_parent)
            return await handle()
        forwarded = any(key == FORWARDED for key, _ in context.invocation_metadata() or ())
        leader = self.node.replicated.leader_id()
        address = self._grpc_address_of.get(leader) if leader else None
        if forwarded or address is None:
            await _abort(
                context, NO_LEADER, "no leader reachable from this node; retry, or try another node"
            )
        return await self._forward(method, request, context, address, trace_parent)  # type: ignore[arg-type]

    async def _forward(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        address: str,
        trace_parent: str = "",
    ) -> Any:
        channel = self._channels.get(address)
        if channel is None:
            channel = self.node.transport.aio_channel(address, to=Role.NODE)
            self._channels[address] = channel
        call = getattr(coordinator_pb2_grpc.CoordinatorServiceStub(channel), method)
        # A call without a deadline still gets one when forwarded: never wait forever.
        remaining = context.time_remaining()
        timeout_s = (
            FORWARD_TIMEOUT_S_MAX if remaining is None else min(remaining, FORWARD_TIMEOUT_S_MAX)
        )
        try:
            metadata = ((FORWARDED, "1"), *(tracing.call_metadata(trace_parent) or ()))
            caller = current_caller()
            if caller is not None:  # the leader checks the original caller, not us
                metadata = (*metadata, (CALLER_METADATA, caller.uri))
            else:  # without TLS: whose quota its rounds count against (edge.caller_owner)
                metadata = (*metadata, (PEER_METADATA, context.peer() or ""))
            reply = await call(request, timeout=timeout_s, metadata=metadata)
            # Tell the client where the leader is, so its next call goes there directly.
            context.set_trailing_metadata(((LEADER_HINT, address),))
            return reply
        except grpc.aio.AioRpcError as error:
            await _abort(
                context, error.code(), error.details() or "forwarding to the leader failed"
            )

    async def _write(
        self, entry: Entry, round_id: str, context: grpc.aio.ServicerContext
    ) -> Applied:
        await self._admit(entry, context)
        return await self._check(await self.node.write(entry), round_id, context)

    async def _admit(self, entry: Entry, context: grpc.aio.ServicerContext) -> None:
        """The entry as it will be proposed must keep its rules (the leader checks
        that there is room for it, and applying it checks both again)."""
        try:
            check_entry(self._limits(), entry)
        except ProtocolError as error:
            await refuse(context, error)

    def _limits(self) -> Limits:
        """The replicated limits, the ones every entry is applied with."""
        return self.node.read(lambda s: s.limits)

    def _owner(self, context: grpc.aio.ServicerContext) -> str:
        return caller_owner(context, self._limits())

    async def _check(
        self, answer: Answer, round_id: str, context: grpc.aio.ServicerContext
    ) -> Applied:
        """The leader's answer to a write as the call's answer (see the module doc)."""
        if answer.refused is not None:
            await refuse(context, answer.refused)
        result = answer.outcome()
        if result.status is ProposeStatus.APPLIED and result.applied is not None:
            if result.applied.error is not None:
                await _abort(
                    context, STATUS_OF[result.applied.error.code], result.applied.error.message
                )
            return result.applied
        if result.status is ProposeStatus.NOT_LEADER:
            await _abort(context, NO_LEADER, "leadership moved before the request was sent; retry")
        if result.status is ProposeStatus.OVERLOADED:
            await _abort(
                context, OVERLOADED, "the coordinator is overloaded; retry later with backoff"
            )
        await _abort(
            context,
            OUTCOME_UNKNOWN,
            f"outcome unknown for {round_id!r}: it may or may not have been applied; "
            "resolve it by id (GetTxn or QueryOutcome), do not retry blindly",
        )

    def _decision(self, round_id: str) -> Decision | None:
        return self.node.read(lambda s: _decision_of(s, round_id))

    @staticmethod
    def _wait_s(context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return DECISION_WAIT_S_MAX
        # Answer a little before the client's deadline so it gets a reply, not a timeout.
        return max(0.0, min(DECISION_WAIT_S_MAX, remaining - 0.05))


def _action_results(rnd: Round | None, decision: Decision | None) -> dict[str, bytes]:
    """A committed one-shot transaction's results: participant -> its action's."""
    if rnd is None or decision is not Decision.COMMIT or not rnd.actions:
        return {}
    return {p: rnd.votes[p].result for p in rnd.actions if p in rnd.votes}


@dataclass(frozen=True)
class _Denied:
    message: str


def _call_target(
    caller: Identity | None, state: CoordinatorState, request: Any
) -> str | ProtocolError | _Denied:
    """The endpoint a call goes to, or why it may not be made: only who began the
    transaction (or an operator; without TLS, anyone) drives its actions."""
    try:
        endpoint = state.call_endpoint(request.txn_id, request.participant_id)
    except ProtocolError as error:
        return error
    rnd = state.get(request.txn_id)
    owner = "" if caller is None else f"{caller.role.value}/{caller.name}"
    if caller is not None and caller.role is not Role.OPERATOR and rnd and rnd.owner != owner:
        return _Denied(
            f"{caller} may not call actions of {request.txn_id[:128]!r}: only who began it"
        )
    return endpoint


def may_abort(caller: Identity | None, state: CoordinatorState, request: Any) -> str:
    """Who may abort a round: an operator any (and only an operator may give a reason
    that starts with "operator:", which the audit reads as an operator's action); who
    began it; a participant named in it (it could vote NO anyway). Nobody else: not
    another client, and nobody a round the cluster does not know. Without TLS there
    are no identities: "" (allowed)."""
    if caller is None or caller.role is Role.OPERATOR:
        return ""
    if request.reason.startswith(OPERATOR_PREFIX):
        return f"{caller} may not give an {OPERATOR_PREFIX!r} reason: operators only"
    rnd = state.get(request.txn_id)
    if rnd is not None and (
        rnd.owner == f"{caller.role.value}/{caller.name}"
        or (caller.role is Role.PARTICIPANT and caller.name in rnd.participants)
    ):
        return ""
    return (
        f"{caller} may not abort {request.txn_id[:128]!r}: only who began it, its "
        "participants and operators may"
    )


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _round_id_of(request: Any) -> str:
    return str(
        getattr(request, "txn_id", "")
        or getattr(request, "round_id", "")
        or getattr(request, "saga_id", "")
    )


def _decision_of(state: CoordinatorState, round_id: str) -> Decision | None:
    rnd = state.get(round_id)
    return rnd.decision if rnd is not None else None


def _round_reply(rnd: Round | None, state: CoordinatorState, round_id: str = "") -> Any:
    escalations = [
        coordinator_pb2.Escalation(
            participant_id=participant, round_id=note.round_id, key=note.key, detail=note.detail
        )
        for participant, note in state.escalations_of(rnd.round_id if rnd else round_id)
    ]
    if rnd is None:
        if not escalations:
            return None
        # Forgotten by the cluster, but a participant still needs an operator for it.
        return coordinator_pb2.GetTxnReply(
            round_id=round_id, phase="FORGOTTEN", escalations=escalations
        )
    return coordinator_pb2.GetTxnReply(
        escalations=escalations,
        round_id=rnd.round_id,
        kind=KIND.to_wire(rnd.kind),
        session_id=rnd.session_id,
        phase=rnd.phase.value,
        decision=decision_to_proto(rnd.decision),
        participants=[
            coordinator_pb2.ParticipantStatus(
                participant_id=p,
                voted=p in rnd.votes,
                yes=p in rnd.votes and rnd.votes[p].yes,
                reason=rnd.votes[p].reason if p in rnd.votes else "",
                acked=p in rnd.acks,
                result=rnd.votes[p].result if p in rnd.votes else b"",
            )
            for p in rnd.participants
        ],
        deadline_ms=rnd.deadline_ms,
        begun_ms=rnd.begun_ms,
        decided_ms=rnd.decided_ms or 0,
        decision_reason=rnd.decision_reason,
        steps=[
            coordinator_pb2.SagaStepStatus(
                participant_id=s.participant_id,
                action=s.action,
                status=s.status.value,
                reason=s.reason,
                result=s.result,
            )
            for s in rnd.steps
        ],
    )


def _saga_settled(rnd: Round | None) -> bool:
    """Finished, or held until an operator resolves an escalated compensation."""
    return (
        rnd is None
        or rnd.phase is Phase.DONE
        or any(s.status is StepStatus.ESCALATED for s in rnd.steps)
    )


def _list_rounds(state: CoordinatorState, open_only: bool, limit: int) -> list[Any]:
    """Newest first (rounds are held in the order they began), up to ``limit``."""
    rounds = reversed(list(state.open_rounds())) if open_only else reversed(state.rounds.values())
    replies = []
    for rnd in rounds:
        if len(replies) >= limit:
            break
        if not open_only or rnd.phase is not Phase.DONE:
            replies.append(_round_reply(rnd, state))
    return replies
