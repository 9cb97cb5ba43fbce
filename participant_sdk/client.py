"""The initiator's API over ``CoordinatorService``.

::

    async with ConcordClient(coordinators) as client:
        async with client.transaction(participants=["seats", "payments"]) as txn:
            ...  # ask the participants to stage their work under txn.id
    # here: committed everywhere, or TransactionAborted / OutcomeUnknown was raised

How the cluster's answers map to errors: channels.py. ``SyncConcordClient``
(sync_client.py) is the same API without asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from concord.v1 import common_pb2, coordinator_pb2
from coordinator import tracing
from coordinator.core.types import Decision
from coordinator.protomap import decision_from_proto
from coordinator.security.identity import Role
from coordinator.security.transport import Transport
from participant_sdk.channels import (
    ABORT,
    BEGIN_CHECKPOINT,
    BEGIN_SAGA,
    BEGIN_TXN,
    COMMIT,
    GET_TXN,
    REQUEST_ROLLBACK,
    CoordinatorChannels,
    Rpc,
)
from participant_sdk.errors import (
    ConcordError,
    NotFound,
    OutcomeUnknown,
    TransactionAborted,
)
from participant_sdk.results import (
    RoundResult,
    SagaResult,
    SagaStep,
    TxnStatus,
    payload_bytes,
    saga_result_from_wire,
    txn_status_from_wire,
)
from participant_sdk.transaction import Transaction

__all__ = ["ConcordClient", "Transaction"]

log = logging.getLogger(__name__)

SAGA_WAIT_CALL_S = 55.0  # one waiting BeginSaga call (the server waits at most 60 s)
TRACED_TXNS_MAX = 10_000  # open transaction spans one client keeps (tracing on only)
APPLIED_POLL_INITIAL_S = 0.01  # applied(): first wait between two GetTxn calls
APPLIED_POLL_MAX_S = 0.1
UNSETTLED_COMMITS_MAX = 10_000  # unknown commits whose begins this client remembers
RoundRequest = TypeVar(
    "RoundRequest", coordinator_pb2.RequestRollbackRequest, coordinator_pb2.BeginCheckpointRequest
)


@dataclass(frozen=True)
class _Committed:
    decision: Decision
    results: dict[str, bytes]


class ConcordClient:
    """asyncio client. Create and use it inside one event loop.

    ``tls``: this initiator's certificate (``Transport.from_dir(dir, Role.CLIENT,
    name)``); by default taken from the environment (``CONCORD_TLS_DIR``, the one
    client certificate there, or ``CONCORD_TLS_CA``/``CERT``/``KEY``)."""

    def __init__(
        self,
        coordinators: Sequence[str],
        *,
        tls: Transport | None = None,
        attempts_max: int = 6,
        call_timeout_s: float = 10.0,
    ) -> None:
        transport = Transport.resolve(tls, Role.CLIENT, "", "this client")
        self._channels = CoordinatorChannels(
            coordinators,
            transport=transport,
            attempts_max=attempts_max,
            call_timeout_s=call_timeout_s,
        )
        # txn id -> its open "concord.transaction" span (begin .. decision); tracing only.
        self._txn_spans: collections.OrderedDict[str, Any] = collections.OrderedDict()
        # txn id -> the begin a commit carried whose outcome was not learned: until the
        # cluster applies that begin, only this client can settle the id (``outcome``).
        self._unsettled: collections.OrderedDict[str, coordinator_pb2.BeginTxnRequest] = (
            collections.OrderedDict()
        )
        tracing.enable_from_env("concord-agent")

    async def __aenter__(self) -> ConcordClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channels.close()

    # ------------------------------------------------------------ transactions

    async def begin(
        self,
        participants: Sequence[str] = (),
        *,
        timeout_s: float = 30.0,
        session_id: str = "",
        txn_id: str | None = None,
        wait: bool = True,
    ) -> Transaction:
        """Begin a transaction. ``wait=False`` returns at once and lets BeginTxn travel
        while the caller asks participants to do their work (only the txn id is needed
        for that): ``commit``/``enlist`` wait for it first, and raise what it raised."""
        txn = self._unsent_transaction(participants, timeout_s, session_id, txn_id)
        txn._send_begin()
        if wait:
            await txn.ready()
        return txn

    def _unsent_transaction(
        self, participants: Sequence[str], timeout_s: float, session_id: str, txn_id: str | None
    ) -> Transaction:
        txn_id = txn_id or str(uuid.uuid4())
        request = coordinator_pb2.BeginTxnRequest(
            txn_id=txn_id,
            session_id=session_id,
            participants=list(participants),
            timeout_ms=int(timeout_s * 1000),
        )
        self._start_span(txn_id, request)
        return Transaction(self, txn_id, participants, begin_request=request)

    async def _send_begin(self, txn_id: str, request: coordinator_pb2.BeginTxnRequest) -> None:
        # A retried BeginTxn with the same id is idempotent; an unknown outcome leaves
        # at worst an ACTIVE txn that the cluster times out (presumed abort).
        await self._channels.call(
            BEGIN_TXN, request, round_id=txn_id, trace_parent=self._trace_parent(txn_id)
        )

    async def commit(
        self,
        txn_id: str,
        *,
        timeout_s: float = 30.0,
        begin: coordinator_pb2.BeginTxnRequest | None = None,
    ) -> Decision:
        """Commit and wait for the decision. Returns COMMIT; raises TransactionAborted
        on ABORT, OutcomeUnknown when the decision could not be learned. ``begin``: a
        BeginTxnRequest still in flight, applied with the commit if it is not yet."""
        return (await self._commit(txn_id, timeout_s, begin)).decision

    async def run(
        self,
        actions: Mapping[str, tuple[str, Any]],
        *,
        timeout_s: float = 30.0,
        session_id: str = "",
        txn_id: str | None = None,
        wait_applied: bool = False,
    ) -> dict[str, Any]:
        """A one-shot transaction: ``actions`` maps each participant to ``(action,
        payload)``. They travel inside the commit (one call, one Raft round when the
        leader is not busy); each participant runs its action inside its Prepare, on
        the transaction's branch, and votes. Returns each participant's result on
        COMMIT; raises TransactionAborted on ABORT (a handler that raised votes NO with
        its error as the reason) and OutcomeUnknown as ``commit`` does (resolve with
        ``outcome``)."""
        txn = self._unsent_transaction(list(actions), timeout_s, session_id, txn_id)
        begin = txn.begin_in_flight()
        assert begin is not None  # never sent: it travels with the commit
        begin.actions.extend(
            common_pb2.TxnAction(
                participant_id=participant_id, action=action, payload=json.dumps(payload).encode()
            )
            for participant_id, (action, payload) in actions.items()
        )
        reply = await self._commit(txn.id, timeout_s, begin)
        if wait_applied:
            await self.applied(txn.id, timeout_s=timeout_s)
        return {p: json.loads(r) if r else None for p, r in reply.results.items()}

    async def _commit(
        self, txn_id: str, timeout_s: float, begin: coordinator_pb2.BeginTxnRequest | None
    ) -> _Committed:
        try:
            reply = await self._channels.call(
                COMMIT,
                coordinator_pb2.CommitRequest(txn_id=txn_id, wait_for_decision=True, begin=begin),
                round_id=txn_id,
                timeout_s=timeout_s + self._channels.call_timeout_s,
                unavailable_is_unknown=True,
                trace_parent=self._trace_parent(txn_id),
            )
            decision = decision_from_proto(reply.decision)
            if decision is None:
                raise OutcomeUnknown(txn_id, "not decided within the call")
            if decision is Decision.ABORT:
                raise TransactionAborted(txn_id, await self._abort_reason(txn_id))
        except BaseException as error:
            aborted = Decision.ABORT if isinstance(error, TransactionAborted) else None
            if isinstance(error, OutcomeUnknown) and begin is not None:
                self._unsettled[txn_id] = begin
                while len(self._unsettled) > UNSETTLED_COMMITS_MAX:
                    self._unsettled.popitem(last=False)
            else:
                self._unsettled.pop(txn_id, None)
            self._end_span(txn_id, decision=aborted, error=error)
            raise
        self._unsettled.pop(txn_id, None)
        self._end_span(txn_id, decision=decision)
        return _Committed(decision, dict(reply.results))

    async def abort(self, txn_id: str, reason: str = "") -> Decision | None:
        """Ask to abort; returns the decision that stands (COMMIT if already decided)."""
        try:
            reply = await self._channels.call(
                ABORT,
                coordinator_pb2.AbortRequest(txn_id=txn_id, reason=reason),
                round_id=txn_id,
                trace_parent=self._trace_parent(txn_id),
            )
        except BaseException as error:
            self._end_span(txn_id, error=error)
            raise
        decision = decision_from_proto(reply.decision)
        self._end_span(txn_id, decision=decision, error=f"aborted: {reason}"[:256])
        return decision

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        participants: Sequence[str] = (),
        *,
        timeout_s: float = 30.0,
        session_id: str = "",
        txn_id: str | None = None,
        wait_applied: bool = False,
    ) -> AsyncIterator[Transaction]:
        """A transaction; on a normal exit commit and wait for the decision (raising
        TransactionAborted or OutcomeUnknown); on an exception abort and re-raise.
        The begin travels with the commit (see ``Transaction``). ``wait_applied``:
        after a COMMIT, also wait until every participant has applied it."""
        txn = self._unsent_transaction(participants, timeout_s, session_id, txn_id)
        try:
            yield txn
            begin = txn.begin_in_flight()
        except BaseException as error:
            with contextlib.suppress(BaseException):
                await txn.ready()  # registered first: the abort must find it
            await self._abort_after(txn.id, error)
            raise
        txn.decision = await self.commit(txn.id, timeout_s=timeout_s, begin=begin)
        if wait_applied:
            await self.applied(txn.id, timeout_s=timeout_s)

    # ------------------------------------------------------------ tracing

    def _start_span(self, txn_id: str, request: coordinator_pb2.BeginTxnRequest) -> str:
        """Open the transaction's span (tracing on only); its traceparent, or ""."""
        tracer = tracing.active()
        if tracer is None:
            return ""
        self._end_span(txn_id, error="begun again")
        span = tracer.start(
            "concord.transaction",
            attributes={
                "concord.round_id": txn_id,
                "concord.participants": list(request.participants),
                "concord.session_id": request.session_id,
            },
        )
        self._txn_spans[txn_id] = span
        while len(self._txn_spans) > TRACED_TXNS_MAX:
            _, oldest = self._txn_spans.popitem(last=False)
            tracer.end(oldest, error="never committed or aborted through this client")
        return tracer.traceparent(span)

    def _trace_parent(self, txn_id: str) -> str:
        tracer = tracing.active()
        span = self._txn_spans.get(txn_id)
        return "" if tracer is None or span is None else tracer.traceparent(span)

    def _end_span(
        self,
        txn_id: str,
        *,
        decision: Decision | None = None,
        error: BaseException | str = "",
    ) -> None:
        span = self._txn_spans.pop(txn_id, None)
        tracer = tracing.active()
        if span is None or tracer is None:
            return
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"[:256]
        if decision is Decision.COMMIT:
            error = ""  # (also an abort that came too late: the transaction committed)
        attributes = {"concord.decision": decision.name} if decision is not None else {}
        tracer.end(span, error=error, attributes=attributes)

    async def _abort_after(self, txn_id: str, error: BaseException) -> None:
        reason = f"initiator raised {type(error).__name__}: {error}"[:512]
        try:
            await self.abort(txn_id, reason)
        except NotFound:
            pass  # never begun (its BeginTxn did not land): nothing to abort
        except (ConcordError, asyncio.CancelledError) as abort_error:
            # The cluster times the txn out and aborts it anyway (it was never committed).
            log.warning("abort of %s after %s failed: %s", txn_id, reason, abort_error)

    async def _abort_reason(self, txn_id: str) -> str:
        """Why ``txn_id`` aborted: the participants' vote reasons, then the decision's
        own reason unless it only repeats a NO vote's (a timeout, an abort, a
        participant that is not registered, a presumed abort...)."""
        try:
            reply = await self._channels.call(
                GET_TXN,
                coordinator_pb2.GetTxnRequest(round_id=txn_id),
                round_id=txn_id,
                write=False,
            )
        except ConcordError:
            return ""
        voted = [p for p in reply.participants if p.reason]
        reasons = [f"{p.participant_id}: {p.reason}" for p in voted]
        said_by_a_vote = {f"{p.participant_id} voted no: {p.reason}" for p in voted}
        if reply.decision_reason and reply.decision_reason not in said_by_a_vote:
            reasons.append(reply.decision_reason)
        return "; ".join(reasons)

    # ------------------------------------------------------------ reads

    async def get(self, txn_id: str) -> TxnStatus:
        reply = await self._channels.call(
            GET_TXN, coordinator_pb2.GetTxnRequest(round_id=txn_id), round_id=txn_id, write=False
        )
        return txn_status_from_wire(reply)

    async def applied(self, txn_id: str, *, timeout_s: float = 30.0) -> Decision:
        """Until the transaction is decided and every participant has acknowledged the
        decision, which each does once it is durable there (a committed branch's writes
        are in its state): a read at any participant from then on sees the outcome.
        Returns the decision. ``TimeoutError`` after ``timeout_s``; ``NotFound`` if the
        cluster does not know the id (never, or forgotten after its retention)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        wait_s = APPLIED_POLL_INITIAL_S
        while True:
            status = await self.get(txn_id)
            if status.decision is not None and all(p.acked for p in status.participants):
                return status.decision
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                waiting = [p.participant_id for p in status.participants if not p.acked]
                decided = status.decision.value if status.decision else "none yet"
                raise TimeoutError(
                    f"txn {txn_id} not applied everywhere within {timeout_s} s "
                    f"(decision {decided}, waiting for {waiting})"
                )
            # Acknowledgements reach the log in batches (ack_flush_delay_ms): poll gently.
            await asyncio.sleep(min(wait_s, left))
            wait_s = min(wait_s * 2, APPLIED_POLL_MAX_S)

    async def outcome(self, txn_id: str) -> Decision | None:
        """The decision by id: COMMIT, ABORT, or None while undecided (ask again).
        NotFound when the cluster no longer (or never) knew the id.

        A commit of this client whose begin travelled inside it (``transaction``) and
        whose outcome was unknown may not have reached the log yet, or ever: the
        cluster not knowing the id would not say which. So this client sends that
        commit again, with its begin (both idempotent by id): the cluster either
        answers the decision it already has or decides the transaction now."""
        try:
            return (await self.get(txn_id)).decision
        except NotFound:
            begin = self._unsettled.get(txn_id)
            if begin is None:
                raise
        try:
            return await self.commit(txn_id, timeout_s=begin.timeout_ms / 1000, begin=begin)
        except TransactionAborted:
            return Decision.ABORT
        except OutcomeUnknown:
            return None

    # ------------------------------------------------------------ rounds

    async def request_rollback(
        self,
        *,
        session_id: str,
        participants: Sequence[str],
        checkpoint_id: str,
        reason: str = "",
        timeout_s: float = 30.0,
        round_id: str | None = None,
        wait_for_decision: bool = True,
    ) -> RoundResult:
        """Propose "revert these participants to ``checkpoint_id``": COMMIT = EXECUTE."""
        round_id = round_id or str(uuid.uuid4())
        request = coordinator_pb2.RequestRollbackRequest(
            round_id=round_id,
            session_id=session_id,
            participants=list(participants),
            checkpoint_id=checkpoint_id,
            reason=reason,
            timeout_ms=int(timeout_s * 1000),
            wait_for_decision=wait_for_decision,
        )
        return await self._round(REQUEST_ROLLBACK, request, round_id, timeout_s)

    async def global_checkpoint(
        self,
        *,
        session_id: str,
        participants: Sequence[str],
        checkpoint_id: str | None = None,
        label: str = "",
        timeout_s: float = 30.0,
        round_id: str | None = None,
        wait_for_decision: bool = True,
    ) -> RoundResult:
        """Every participant checkpoints under one id: COMMIT = KEEP, ABORT = DISCARD."""
        round_id = round_id or str(uuid.uuid4())
        request = coordinator_pb2.BeginCheckpointRequest(
            round_id=round_id,
            session_id=session_id,
            participants=list(participants),
            checkpoint_id=checkpoint_id or round_id,
            label=label,
            timeout_ms=int(timeout_s * 1000),
            wait_for_decision=wait_for_decision,
        )
        return await self._round(BEGIN_CHECKPOINT, request, round_id, timeout_s)

    # ------------------------------------------------------------ sagas

    async def run_saga(
        self,
        steps: Sequence[SagaStep],
        *,
        saga_id: str | None = None,
        session_id: str = "",
        step_timeout_s: float = 30.0,
        wait_s: float = 300.0,
    ) -> SagaResult:
        """Run a saga on the cluster: its steps in order; if one fails (or outlives
        ``step_timeout_s``), every step that may have run is compensated in reverse.
        Returns once it is finished, held by an escalated compensation, or ``wait_s``
        has passed (``result.finished`` says which; ``saga(id)`` asks again later).

        BeginSaga is idempotent by content, so a begin whose outcome was unknown is
        simply sent again: the saga runs once either way."""
        saga_id = saga_id or str(uuid.uuid4())
        request = coordinator_pb2.BeginSagaRequest(
            saga_id=saga_id,
            session_id=session_id,
            steps=[
                coordinator_pb2.SagaStep(
                    participant_id=s.participant_id,
                    action=s.action,
                    payload=payload_bytes(s.payload),
                )
                for s in steps
            ],
            step_timeout_ms=int(step_timeout_s * 1000),
            wait=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        unknown_retries = 1
        while True:
            call_s = max(0.1, min(SAGA_WAIT_CALL_S, deadline - loop.time()))
            try:
                reply = await self._channels.call(
                    BEGIN_SAGA, request, round_id=saga_id, timeout_s=call_s + 1.0
                )
            except OutcomeUnknown:
                if unknown_retries == 0:
                    raise
                unknown_retries -= 1
                continue
            result = saga_result_from_wire(reply)
            # While it is open it cannot be forgotten, so asking again cannot restart it.
            if result.finished or result.escalated or loop.time() >= deadline:
                return result

    async def saga(self, saga_id: str) -> SagaResult:
        reply = await self._channels.call(
            GET_TXN, coordinator_pb2.GetTxnRequest(round_id=saga_id), round_id=saga_id, write=False
        )
        return saga_result_from_wire(reply)

    async def _round(
        self,
        rpc: Rpc[RoundRequest, coordinator_pb2.RoundReply],
        request: RoundRequest,
        round_id: str,
        timeout_s: float,
    ) -> RoundResult:
        tracer = tracing.active()  # one span per round, a trace of its own (tracing on only)
        span = (
            None
            if tracer is None
            else tracer.start(f"concord.{rpc.name}", attributes={"concord.round_id": round_id})
        )
        try:
            # The call may wait for the decision: its deadline covers the round's timeout.
            reply = await self._channels.call(
                rpc,
                request,
                round_id=round_id,
                timeout_s=timeout_s + self._channels.call_timeout_s,
                trace_parent="" if tracer is None else tracer.traceparent(span),
            )
        except BaseException as error:
            if tracer is not None:
                tracer.end(span, error=f"{type(error).__name__}: {error}"[:256])
            raise
        decision = decision_from_proto(reply.decision)
        if tracer is not None:
            tracer.end(span, attributes={"concord.decision": decision.name if decision else ""})
        return RoundResult(round_id=reply.round_id, decision=decision)
