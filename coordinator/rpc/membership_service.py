"""MembershipService (protos/concord/v1/membership.proto): list the members, and add or
remove one through the Raft log on the leader (coordinator/replication/membership.py
says what makes a change safe).

Before it proposes an addition the leader checks, over gRPC, that the new node already
runs: it answers with the expected node id, knows the current members (so it votes with
the right majority from its first message) and holds the cluster secret, which it must
prove itself for that node id (coordinator/security/secret.py: an answer "yes, I hold
it" is not believed). With TLS the new node must also present a node certificate of
this cluster, and only an operator may ask for a change (authz.POLICY). An addition
whose node is not running would make the cluster wait for a member that is not there.

Every request is checked first (coordinator/rpc/edge.py: ids printable and bounded,
addresses HOST:PORT), before any probe, log entry or audit record.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from concord.v1 import membership_pb2, membership_pb2_grpc
from coordinator.core.limits import Limits
from coordinator.replication.membership import MembershipRefused, check_add
from coordinator.replication.node import (
    ChangeResult,
    ChangeStatus,
    NodeAddress,
    ReplicatedCoordinator,
)
from coordinator.rpc.edge import admit
from coordinator.security.authz import current_caller
from coordinator.security.identity import Role
from coordinator.security.transport import Transport

log = logging.getLogger(__name__)

SERVICE = "/concord.v1.MembershipService/"
CHANGE_WAIT_S = 10.0  # a change that has not applied by then is reported UNKNOWN
PROBE_TIMEOUT_S = 2.0

# Did the node at this gRPC address prove it holds our secret, as this node id?
# True/False, None: no answer.
SecretProbe = Callable[[str, str], Awaitable[bool | None]]
# Record an operator action in this node's local audit chain.
Note = Callable[[str, dict[str, Any]], None]


def members_proto(replicated: ReplicatedCoordinator) -> list[Any]:
    reachable = {m.node_id: m.reachable for m in replicated.status().members}
    return [
        membership_pb2.Member(
            node_id=m.node_id, raft=m.raft, grpc=m.grpc, reachable=reachable.get(m.node_id, False)
        )
        for m in replicated.members()
    ]


def _valid_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


class MembershipServicer(membership_pb2_grpc.MembershipServiceServicer):
    def __init__(
        self,
        replicated: ReplicatedCoordinator,
        secret_probe: SecretProbe,
        note: Note,
        transport: Transport | None = None,
    ) -> None:
        self.replicated = replicated
        self._secret_probe = secret_probe
        self._note = note
        self._transport = transport or Transport.insecure()

    async def ListMembers(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "ListMembers", request, self._limits())
        status = self.replicated.status()
        return membership_pb2.ListMembersReply(
            node_id=status.node_id,
            leader_id=status.leader_id or "",
            term=status.term,
            applied_index=status.applied_index,
            members=members_proto(self.replicated),
        )

    async def AddMember(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "AddMember", request, self._limits())
        await self._leader_only(context)
        for flag, address in (("--raft", request.raft), ("--grpc", request.grpc)):
            if not _valid_address(address):
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{flag} {address!r} is not HOST:PORT (e.g. 127.0.0.1:7004)",
                )
        new = NodeAddress(node_id=request.node_id, raft=request.raft, grpc=request.grpc)
        try:
            check_add(self.replicated.members(), new)
        except MembershipRefused as error:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(error))
        await self._probe_new_node(new, context)
        result = await self.replicated.change_members_async(add=new, timeout_s=CHANGE_WAIT_S)
        await self._check(result, f"adding {new.node_id}", context)
        self._note(
            "operator_add_node",
            {"node": new.node_id, "raft": new.raft, "grpc": new.grpc, **_by()},
        )
        return membership_pb2.MemberChangeReply(
            index=result.index, members=members_proto(self.replicated)
        )

    async def RemoveMember(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, SERVICE + "RemoveMember", request, self._limits())
        await self._leader_only(context)
        if request.node_id not in {m.node_id for m in self.replicated.members()}:
            known = sorted(m.node_id for m in self.replicated.members())
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"unknown node id {request.node_id!r}; members are {known}",
            )
        result = await self.replicated.change_members_async(
            remove=request.node_id, timeout_s=CHANGE_WAIT_S
        )
        await self._check(result, f"removing {request.node_id}", context)
        self._note("operator_remove_node", {"node": request.node_id, **_by()})
        return membership_pb2.MemberChangeReply(
            index=result.index, members=members_proto(self.replicated)
        )

    # ------------------------------------------------------------------ plumbing

    def _limits(self) -> Limits:
        return self.replicated.read(lambda s: s.limits)

    async def _leader_only(self, context: grpc.aio.ServicerContext) -> None:
        if self.replicated.is_leader():
            return
        leader = self.replicated.leader_id()
        where = self.replicated.grpc_directory.get(leader, "") if leader else ""
        await _abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            f"{self.replicated.status().node_id} is not the leader (leader: "
            f"{leader or 'unknown'}{' at ' + where if where else ''}); ask the leader",
        )

    async def _probe_new_node(self, new: NodeAddress, context: grpc.aio.ServicerContext) -> None:
        start_it = (
            f"start it first: concord serve --node-id {new.node_id} --raft {new.raft} "
            f"--grpc {new.grpc} --data-dir DIR --join MEMBER_GRPC"
        )
        try:
            async with self._transport.aio_channel(new.grpc, to=Role.NODE) as channel:
                stub = membership_pb2_grpc.MembershipServiceStub(channel)
                view = await stub.ListMembers(
                    membership_pb2.ListMembersRequest(), timeout=PROBE_TIMEOUT_S
                )
        except grpc.aio.AioRpcError:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{new.node_id} does not answer at {new.grpc}; {start_it}",
            )
        if view.node_id != new.node_id:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the node at {new.grpc} is {view.node_id!r}, not {new.node_id!r}",
            )
        theirs = {(m.node_id, m.raft) for m in view.members}
        ours = {(m.node_id, m.raft) for m in (*self.replicated.members(), new)}
        if theirs != ours:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{new.node_id} knows members {sorted(n for n, _ in theirs)} at other addresses "
                f"than the cluster's {sorted(n for n, _ in ours)}; stop it, empty its data dir "
                f"and start it again with --join",
            )
        if await self._secret_probe(new.grpc, new.node_id) is not True:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{new.node_id} at {new.grpc} does not hold the cluster secret; start it with "
                f"the same --secret (or CONCORD_SECRET) as the members",
            )

    async def _check(
        self, result: ChangeResult, what: str, context: grpc.aio.ServicerContext
    ) -> None:
        if result.status is ChangeStatus.APPLIED:
            log.warning("%s: applied at index %d", what, result.index)
            return
        if result.status is ChangeStatus.REFUSED:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, result.message)
        if result.status is ChangeStatus.NOT_LEADER:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"{what}: {result.message}; retry")
        await _abort(
            context,
            grpc.StatusCode.UNKNOWN,
            f"{what}: outcome unknown ({result.message}); check `concord status` before retrying",
        )


def _by() -> dict[str, str]:
    """Who asked, for the audit (with TLS: the operator's identity)."""
    caller = current_caller()
    return {"by": caller.uri} if caller is not None else {}


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")
