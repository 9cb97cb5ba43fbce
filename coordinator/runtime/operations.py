"""What a node runs for operators, next to the protocol: the audit log, metrics, the
leader watch, and ``OperationsService`` (protos/concord/v1/operations.proto).

``Operations.on_apply`` wraps the node's apply callback: on the raft thread, in log
order, it derives and chains audit records (coordinator/audit/log.py), counts decisions
for the metrics, then calls the node's own callback. The wrapper waits (bounded) until
``attach`` hands it the replicated state machine, because pysyncobj may re-apply
entries before the ``ReplicatedCoordinator`` constructor has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from concord.v1 import operations_pb2, operations_pb2_grpc
from coordinator.audit.chain import Verdict
from coordinator.audit.log import AUDIT_ATTACH_WAIT_S, AUDIT_DIR, AUDIT_RECORDS_MAX, AuditLog
from coordinator.core.entries import Entry
from coordinator.core.limits import Limits
from coordinator.core.state import Applied, CoordinatorState, SagaStep
from coordinator.core.types import Kind
from coordinator.replication import backup
from coordinator.replication.node import ProposeStatus, ReplicatedCoordinator, ReplicationError
from coordinator.rpc.edge import admit, resolve_entry, unregister_entry
from coordinator.rpc.status import STATUS_OF
from coordinator.runtime.metrics import CoordinatorMetrics, round_counts
from coordinator.security.authz import current_caller

log = logging.getLogger(__name__)

LEADER_WATCH_MS = 100  # how often a node looks for a leader change to record
EXPORT_RECORDS_MAX = 100_000  # records in one ExportAudit call
TRANSFER_WAIT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class OperationsOptions:
    metrics: str | None = None  # HOST:PORT for /metrics; None: no endpoint
    audit_records_max: int = AUDIT_RECORDS_MAX


class Operations:
    def __init__(self, node_id: str, data_dir: Path, options: OperationsOptions) -> None:
        self.node_id = node_id
        self.options = options
        self.audit = AuditLog(
            Path(data_dir) / AUDIT_DIR, node_id=node_id, records_max=options.audit_records_max
        )
        self.metrics = CoordinatorMetrics()
        self.metrics.watch(self._gauges)
        self.metrics_port = 0
        self.replicated: ReplicatedCoordinator | None = None
        self._attached = threading.Event()
        self._watch_task: asyncio.Task[None] | None = None

    def wrap(
        self, downstream: Callable[[int, Entry, Applied], None]
    ) -> Callable[[int, Entry, Applied], None]:
        def on_apply(index: int, entry: Entry, applied: Applied) -> None:
            if not self._attached.wait(AUDIT_ATTACH_WAIT_S):
                log.critical("audit: never attached; entry %d not audited", index)
            else:
                try:
                    self.audit.on_apply(index, entry, applied)
                except Exception:
                    log.critical("audit of entry %d failed", index, exc_info=True)
                assert self.replicated is not None
                try:
                    self.metrics.on_apply(entry, applied, self.replicated.read)
                except Exception:
                    log.exception("metrics of entry %d failed", index)
            downstream(index, entry, applied)

        return on_apply

    def attach(self, replicated: ReplicatedCoordinator) -> None:
        self.replicated = replicated
        self.audit.memo.attach(replicated.snapshot_carrier)
        self._attached.set()

    def start(self) -> None:
        """On the event loop, once the node runs: metrics endpoint and leader watch."""
        if self.options.metrics:
            self.metrics_port = self.metrics.serve(self.options.metrics)
            log.info("metrics on http://%s/metrics", self.options.metrics)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_leader())

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        self.metrics.close()

    def close_audit(self) -> None:
        """After replication closed: nothing applies any more."""
        self.audit.close()

    async def _watch_leader(self) -> None:
        seen: tuple[str | None, int] | None = None
        while True:
            replicated = self.replicated
            if replicated is not None:
                now = (replicated.leader_id(), replicated.term())
                if now != seen and now[0] is not None:
                    if seen is not None or now[0] == self.node_id:
                        before = None if seen is None else seen[0]
                        detail = {"leader": now[0], "term": now[1], "previous": before}
                        self.audit.note_local("leader_changed", detail)
                        log.warning("leader is now %s (term %d)", now[0], now[1])
                    seen = now
            await asyncio.sleep(LEADER_WATCH_MS / 1000)

    def _gauges(self) -> dict[str, float]:
        replicated = self.replicated
        if replicated is None:
            return {}
        status = replicated.status()
        inflight, doubt, unacked, escalated = replicated.read(round_counts)
        return {
            "concord_is_leader": float(status.leader_id == status.node_id),
            "concord_term": status.term,
            "concord_raft_commit_index": status.commit_index,
            "concord_raft_applied_index": status.applied_index,
            "concord_raft_apply_lag": max(0, status.commit_index - status.applied_index),
            "concord_rounds_inflight": inflight,
            "concord_rounds_in_doubt": doubt,
            "concord_rounds_unacknowledged": unacked,
            "concord_rounds_escalated": escalated,
            "concord_proposals_overloaded": replicated.proposals_overloaded,
            "concord_audit_mismatches": self.audit.mismatches,
            "concord_audit_write_failures": self.audit.failures,
        }


def verdict_proto(verdict: Verdict) -> Any:
    return operations_pb2.ChainVerdict(
        ok=verdict.ok,
        records=verdict.records,
        first_bad=verdict.first_bad or "",
        problem=verdict.problem,
        head=verdict.head or "",
        head_hash=verdict.head_hash,
        gaps=[
            f"after {g.after or 'the start'} resuming at {g.position}: {g.reason}"
            for g in verdict.gaps
        ],
    )


SERVICE = "/concord.v1.OperationsService/"


class OperationsServicer(operations_pb2_grpc.OperationsServiceServicer):
    """Every request is checked first (coordinator/rpc/edge.py), before anything is
    read, audited or proposed."""

    def __init__(self, operations: Operations, node: Any) -> None:
        self.ops = operations
        self.node = node  # CoordinatorNode

    def _limits(self) -> Limits:
        limits: Limits = self.node.read(lambda s: s.limits)
        return limits

    async def ExportAudit(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await admit(context, SERVICE + "ExportAudit", request, self._limits())
        limit = min(request.limit or EXPORT_RECORDS_MAX, EXPORT_RECORDS_MAX)

        def read() -> list[dict[str, Any]]:
            records = self.ops.audit.records(
                round_id=request.round_id,
                since_ms=request.since_ms,
                local=request.include_local,
            )
            return list(itertools.islice(records, limit))

        for record in await asyncio.to_thread(read):
            yield operations_pb2.AuditRecord(
                json=json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            )

    async def VerifyAudit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "VerifyAudit", request, self._limits())
        chain, local = await asyncio.to_thread(self.ops.audit.verify)
        return operations_pb2.VerifyAuditReply(
            node_id=self.ops.node_id,
            log_chain=verdict_proto(chain),
            local_chain=verdict_proto(local),
            mismatches=self.ops.audit.mismatches,
        )

    async def NodeStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "NodeStatus", request, self._limits())
        replicated = self.node.replicated
        status = replicated.status()
        inflight, doubt, unacked, escalated = self.node.read(round_counts)
        head = self.ops.audit.head()
        return operations_pb2.NodeStatusReply(
            node_id=status.node_id,
            leader_id=status.leader_id or "",
            term=status.term,
            commit_index=status.commit_index,
            applied_index=status.applied_index,
            apply_lag=max(0, status.commit_index - status.applied_index),
            rounds_inflight=inflight,
            rounds_in_doubt=doubt,
            rounds_unacknowledged=unacked,
            rounds_escalated=escalated,
            audit_head=head.position or "",
            audit_head_hash=head.hash,
            proposals_overloaded=replicated.proposals_overloaded,
            tls_identity=self.node.transport.identity.uri if self.node.transport.identity else "",
            tls_not_after_ms=self.node.transport.not_after_ms,
        )

    async def RetryRound(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "RetryRound", request, self._limits())
        phase = self.node.read(
            lambda s: None if s.get(request.round_id) is None else s.get(request.round_id).phase
        )
        if phase is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no round {request.round_id!r}")
        reset = self.node.retry_now(request.round_id)
        if reset is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._not_leader())
        self.ops.audit.note_local(
            "operator_retry", {"phase": phase.value, "retries_reset": reset}, request.round_id
        )
        return operations_pb2.RetryRoundReply(
            round_id=request.round_id, phase=phase.value, retries_reset=reset
        )

    async def TransferLeader(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "TransferLeader", request, self._limits())
        replicated = self.node.replicated
        if not replicated.is_leader():
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._not_leader())
        target = request.node_id or None
        if target == self.ops.node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{target} already leads")
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[bool] = loop.create_future()

        def answer(ok: bool) -> None:
            loop.call_soon_threadsafe(lambda: sent.done() or sent.set_result(ok))

        try:
            replicated.transfer_leadership(target, answer)
        except ReplicationError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            async with asyncio.timeout(TRANSFER_WAIT_S):
                ok = await sent
        except TimeoutError:
            ok = False
        if not ok:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "transfer refused: the target is not a connected, fully caught-up follower "
                "(or this node stopped leading); retry in a moment",
            )
        self.ops.audit.note_local("operator_transfer_leader", {"to": target or "(auto)"})
        return operations_pb2.TransferLeaderReply(from_node=self.ops.node_id, to_node=target or "")

    async def ResolveEscalation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Settle a saga step whose compensation escalated, through the log."""
        await admit(context, SERVICE + "ResolveEscalation", request, self._limits())
        if not self.node.replicated.is_leader():
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._not_leader())
        step = self.node.read(lambda s: _saga_step(s, request.round_id, request.step))
        if isinstance(step, str):
            await context.abort(grpc.StatusCode.NOT_FOUND, step)
        if request.participant_id and request.participant_id != step.participant_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"step {request.step} of {request.round_id!r} runs at {step.participant_id!r}, "
                f"not {request.participant_id!r}",
            )
        entry = resolve_entry(request, self.node.now_ms())
        result = await self.node.submit(entry, RESOLVE_WAIT_S)
        if result.status is not ProposeStatus.APPLIED or result.applied is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the resolution was not applied ({result.status.value}); check with "
                f"`concord txn show {request.round_id}` and retry if it is still escalated",
            )
        if result.applied.error is not None:
            error = result.applied.error
            await context.abort(STATUS_OF[error.code], error.message)
        return operations_pb2.ResolveEscalationReply()

    async def UnregisterParticipant(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Remove a participant from the registry, through the log (the core refuses
        while a round not yet done names it, or while it has open escalations unless
        they are dropped too)."""
        await admit(context, SERVICE + "UnregisterParticipant", request, self._limits())
        if not self.node.replicated.is_leader():
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._not_leader())
        entry = unregister_entry(request, self.node.now_ms())
        refusal = self.node.read(lambda s: s.admission_error(entry))
        if refusal is not None:  # refused before it costs a log entry and an audit record
            await context.abort(STATUS_OF[refusal.code], refusal.message)
        result = await self.node.submit(entry, RESOLVE_WAIT_S)
        if result.status is ProposeStatus.UNKNOWN:
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                f"unregistering {request.participant_id!r} may or may not have applied; "
                "run the command again: it answers NOT_FOUND once it has",
            )
        if result.status is not ProposeStatus.APPLIED or result.applied is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"unregistering {request.participant_id!r} was not applied "
                f"({result.status.value}); retry",
            )
        if result.applied.error is not None:
            error = result.applied.error
            await context.abort(STATUS_OF[error.code], error.message)
        caller = current_caller()
        detail: dict[str, Any] = {
            "participant": request.participant_id,
            "drop_escalations": request.drop_escalations,
            "index": result.index,
        }
        if caller is not None:
            detail["by"] = caller.uri
        self.ops.audit.note_local("operator_unregister_participant", detail)
        return operations_pb2.UnregisterParticipantReply(index=result.index)

    async def Backup(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Leader only: a backup file of the applied state, taken on the raft thread
        (coordinator/replication/backup.py), streamed in chunks."""
        await admit(context, SERVICE + "Backup", request, self._limits())
        replicated = self.node.replicated
        if not replicated.leader_ready():
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._not_leader())
        try:
            taken = await asyncio.to_thread(backup.capture, replicated)
        except backup.BackupError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        data = backup.encode(taken)
        detail: dict[str, Any] = {"applied_index": taken.applied_index, "bytes": len(data)}
        caller = current_caller()
        if caller is not None:
            detail["by"] = caller.uri
        self.ops.audit.note_local("operator_backup", detail)
        for start in range(0, len(data), BACKUP_CHUNK_BYTES):
            yield operations_pb2.BackupChunk(data=data[start : start + BACKUP_CHUNK_BYTES])

    def _not_leader(self) -> str:
        leader = self.node.replicated.leader_id()
        return (
            f"{self.ops.node_id} is not the leader (leader: {leader or 'unknown'}); ask the leader"
        )


RESOLVE_WAIT_S = 5.0
BACKUP_CHUNK_BYTES = 1 << 20


def _saga_step(state: CoordinatorState, saga_id: str, index: int) -> SagaStep | str:
    """The step, or why there is none."""
    rnd = state.get(saga_id)
    if rnd is None:
        return f"no round {saga_id!r} (never begun, or forgotten)"
    if rnd.kind is not Kind.SAGA:
        return (
            f"{saga_id!r} is a {rnd.kind.value.lower()} round: only saga compensations "
            "escalate to the cluster (a transaction's are the participant's own: "
            "`concord effects escalations --data-dir DIR`)"
        )
    if not 0 <= index < len(rnd.steps):
        return f"saga {saga_id!r} has steps 0..{len(rnd.steps) - 1}, not {index}"
    return rnd.steps[index]
