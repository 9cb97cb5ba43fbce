"""The edge on a real node (port 0): every bad request of every service is refused
with one line naming the field and the limit, before anything reaches the Raft log or
the audit log; random bytes answer INVALID_ARGUMENT without a traceback; one caller
cannot take the whole cluster's room for rounds in flight."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from concord.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
)
from coordinator.core.limits import Limits
from coordinator.rpc.edge import REQUEST_CHECKS, SERVICES
from tests.rpc.serving import serving

WAIT_S = 60.0
C, M, OPS = coordinator_pb2, membership_pb2, operations_pb2
BAD, FULL = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
LONG = "x" * 129


def _stub(service: str, channel: grpc.aio.Channel) -> Any:
    stubs = {
        "CoordinatorService": coordinator_pb2_grpc.CoordinatorServiceStub,
        "MembershipService": membership_pb2_grpc.MembershipServiceStub,
        "OperationsService": operations_pb2_grpc.OperationsServiceStub,
    }
    return stubs[service](channel)


def saga_steps(count: int, payload: bytes = b"") -> list[Any]:
    return [C.SagaStep(participant_id="p1", action="book", payload=payload)] * count


# (service, method, request, status, fragments of the one-line answer)
CASES: list[tuple[str, str, Any, grpc.StatusCode, tuple[str, ...]]] = [
    ("CoordinatorService", "BeginTxn", C.BeginTxnRequest(txn_id="t\x00", participants=["p1"]),
     BAD, ("txn_id holds a control character (U+0000) at position 1",)),
    ("CoordinatorService", "BeginTxn", C.BeginTxnRequest(txn_id="x" * 3_900_000),
     BAD, ("txn_id is 3900000 bytes; the limit is 128 (id_bytes_max)",)),
    ("CoordinatorService", "BeginTxn",
     C.BeginTxnRequest(txn_id="t1", participants=[f"p{i}" for i in range(17)]),
     FULL, ("17 participants", "participants_per_round_max=16")),
    ("CoordinatorService", "BeginTxn", C.BeginTxnRequest(txn_id="t1", timeout_ms=2**64 - 1),
     BAD, ("timeout_ms=18446744073709551615 is outside", "timeout_ms_max")),
    ("CoordinatorService", "BeginTxn", C.BeginTxnRequest(txn_id="t1", session_id="\x1b[2J"),
     BAD, ("session_id holds a control character",)),
    ("CoordinatorService", "Enlist", C.EnlistRequest(txn_id="t1", participant_id="p\u202e1"),
     BAD, ("participant_id holds an invisible format character (U+202E)",)),
    ("CoordinatorService", "Commit",
     C.CommitRequest(txn_id="t1", begin=C.BeginTxnRequest(txn_id="t2")),
     BAD, ("begin.txn_id must be the txn_id",)),
    ("CoordinatorService", "Commit",
     C.CommitRequest(txn_id="t1", begin=C.BeginTxnRequest(txn_id="t1", participants=["\x00"])),
     BAD, ("participant_id holds a control character",)),
    ("CoordinatorService", "Commit", C.CommitRequest(txn_id="t\n1"), BAD, ("txn_id",)),
    ("CoordinatorService", "Abort", C.AbortRequest(txn_id="t1", reason="\x1b]0;pwned\x07"),
     BAD, ("reason holds a control character (U+001B)",)),
    ("CoordinatorService", "Abort", C.AbortRequest(txn_id="t1", reason="r" * 1025),
     BAD, ("reason is 1025 bytes; the limit is 1024 (reason_bytes_max)",)),
    ("CoordinatorService", "RequestRollback",
     C.RequestRollbackRequest(round_id="r1", participants=["p1"], checkpoint_id="cp",
                              reason="l" * 257),
     BAD, ("label is 257 bytes", "label_bytes_max")),
    ("CoordinatorService", "RequestRollback",
     C.RequestRollbackRequest(round_id="r1", participants=["p1"]),
     BAD, ("checkpoint_id must not be empty",)),
    ("CoordinatorService", "BeginCheckpoint",
     C.BeginCheckpointRequest(round_id="r1", checkpoint_id="cp"),
     BAD, ("a round needs at least one participant",)),
    ("CoordinatorService", "BeginSaga", C.BeginSagaRequest(saga_id="s1", steps=saga_steps(65)),
     FULL, ("65 steps", "saga_steps_max=64")),
    ("CoordinatorService", "BeginSaga",
     C.BeginSagaRequest(saga_id="s1", steps=saga_steps(1, b"x" * 65_537)),
     BAD, ("payload is 65537 bytes", "step_payload_bytes_max")),
    ("CoordinatorService", "ReportEscalations",
     C.ReportEscalationsRequest(participant_id="p1",
                                escalations=[C.Escalation(round_id="t1", key="k", detail="\x00")]),
     BAD, ("escalation detail holds a control character",)),
    ("CoordinatorService", "RegisterParticipant",
     C.RegisterParticipantRequest(participant_id="p1", endpoint="evil host:1"),
     BAD, ("endpoint holds a space",)),
    ("CoordinatorService", "RegisterParticipant",
     C.RegisterParticipantRequest(participant_id="p\x00", endpoint="127.0.0.1:1"),
     BAD, ("participant_id holds a control character",)),
    ("CoordinatorService", "QueryOutcome", C.QueryOutcomeRequest(round_id="t\x00"),
     BAD, ("round_id holds a control character",)),
    ("CoordinatorService", "QueryOutcome", C.QueryOutcomeRequest(round_id=LONG),
     BAD, ("round_id is 129 bytes",)),
    ("CoordinatorService", "GetTxn", C.GetTxnRequest(round_id=""), BAD, ("round_id must not",)),
    ("CoordinatorService", "CheckSecret", C.CheckSecretRequest(nonce=b"short"),
     BAD, ("16-byte nonce",)),
    ("CoordinatorService", "CheckSecret", C.CheckSecretRequest(nonce=b"n" * 16, mac=b"m" * 65),
     BAD, ("mac is 65 bytes",)),
    ("MembershipService", "AddMember",
     M.AddMemberRequest(node_id="n\x002", raft="127.0.0.1:7002", grpc="127.0.0.1:8002"),
     BAD, ("node_id holds a control character",)),
    ("MembershipService", "AddMember",
     M.AddMemberRequest(node_id="n2", raft="nohost", grpc="127.0.0.1:8002"),
     BAD, ("raft is not HOST:PORT",)),
    ("MembershipService", "RemoveMember", M.RemoveMemberRequest(node_id=LONG),
     BAD, ("node_id is 129 bytes",)),
    ("OperationsService", "RetryRound", OPS.RetryRoundRequest(round_id="\u2028"),
     BAD, ("round_id holds a space or separator",)),
    ("OperationsService", "TransferLeader", OPS.TransferLeaderRequest(node_id="n\x7f"),
     BAD, ("node_id holds a control character (U+007F)",)),
    ("OperationsService", "ResolveEscalation",
     OPS.ResolveEscalationRequest(round_id="s1", note="n" * 1024),
     BAD, ("note is 1034 bytes; the limit is 1024",)),
    ("OperationsService", "UnregisterParticipant",
     OPS.UnregisterParticipantRequest(participant_id=""), BAD, ("participant_id must not",)),
]  # fmt: skip
STREAMING_CASES: list[tuple[str, str, Any, grpc.StatusCode, tuple[str, ...]]] = [
    ("CoordinatorService", "WatchTxns", C.WatchTxnsRequest(round_id="t\x00"),
     BAD, ("round_id holds a control character",)),
    ("OperationsService", "ExportAudit", OPS.ExportAuditRequest(round_id=LONG),
     BAD, ("round_id is 129 bytes",)),
]  # fmt: skip


def _case_id(case: tuple[Any, ...]) -> str:
    return f"{case[1]}:{case[4][0][:30]}"


def test_every_method_of_every_service_has_request_rules() -> None:
    methods = {f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods}
    assert set(REQUEST_CHECKS) == methods


def test_bad_requests_are_refused_at_the_edge_before_the_log(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as served:
            index, audit = served.commit_index(), served.audit_records()
            async with grpc.aio.insecure_channel(served.address) as channel:
                for service, method, request, code, fragments in CASES:
                    with pytest.raises(grpc.aio.AioRpcError) as raised:
                        await getattr(_stub(service, channel), method)(request, timeout=10)
                    where = f"{method}: {raised.value.details()!r}"
                    assert raised.value.code() == code, where
                    for fragment in fragments:
                        assert fragment in (raised.value.details() or ""), where
                    assert "\n" not in (raised.value.details() or "")
                for service, method, request, code, fragments in STREAMING_CASES:
                    call = getattr(_stub(service, channel), method)(request, timeout=10)
                    with pytest.raises(grpc.aio.AioRpcError) as raised:
                        async for _ in call:
                            pass
                    assert raised.value.code() == code, method
                    for fragment in fragments:
                        assert fragment in (raised.value.details() or ""), method
            # Nothing reached the Raft log, and nothing the audit log.
            assert served.commit_index() == index
            assert served.audit_records() == audit

    asyncio.run(asyncio.wait_for(body(), WAIT_S))


def test_the_refusals_name_what_the_unit_table_names() -> None:
    """Every case above is refused by the same rules without a server (edge.py)."""
    from coordinator.core.errors import ProtocolError
    from coordinator.rpc.edge import check_request

    for service, method, request, _, fragments in CASES + STREAMING_CASES:
        with pytest.raises(ProtocolError) as raised:
            check_request(f"/concord.v1.{service}/{method}", request, Limits())
        assert fragments[0] in raised.value.message, method


# Undecodable as any message: a truncated varint, wire type 7, a truncated length,
# field number 0. (Bytes that only parse as unknown fields are a valid empty message.)
UNDECODABLE = (b"\xff\xff\xff\xff", b"\x07", b"\x0a\xff", bytes(range(256)))


def test_random_bytes_answer_invalid_argument_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    calls = 0

    async def body() -> None:
        nonlocal calls
        async with serving(tmp_path) as served:
            index = served.commit_index()
            async with grpc.aio.insecure_channel(served.address) as channel:
                for service in SERVICES:
                    for method in service.methods:
                        path = f"/{service.full_name}/{method.name}"
                        streaming = method.server_streaming
                        for data in UNDECODABLE:
                            calls += 1
                            if streaming:
                                stream = channel.unary_stream(path)(data, timeout=10)
                                with pytest.raises(grpc.aio.AioRpcError) as raised:
                                    async for _ in stream:
                                        pass
                            else:
                                with pytest.raises(grpc.aio.AioRpcError) as raised:
                                    await channel.unary_unary(path)(data, timeout=10)
                            assert raised.value.code() == BAD, (path, data)
                            details = raised.value.details() or ""
                            assert f"is not a valid {method.input_type.full_name}" in details
                            assert path in details and "\n" not in details
                # A string that is not UTF-8 does not decode either.
                begin = "/concord.v1.CoordinatorService/BeginTxn"
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await channel.unary_unary(begin)(b"\x0a\x02\xc3\x28", timeout=10)
                assert raised.value.code() == BAD
                assert "bad UTF-8" in (raised.value.details() or "")
                calls += 1
            assert served.undecodable.refused == calls
            assert served.commit_index() == index

    asyncio.run(asyncio.wait_for(body(), WAIT_S))
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_one_caller_cannot_take_every_round_in_flight(tmp_path: Path) -> None:
    limits = Limits(rounds_inflight_max=10, rounds_inflight_per_caller_max=2)
    # One connection each: without TLS the caller is the peer address.
    own = (("grpc.use_local_subchannel_pool", 1),)

    async def body() -> None:
        async with (
            serving(tmp_path, limits) as served,
            grpc.aio.insecure_channel(served.address, options=own) as first,
            grpc.aio.insecure_channel(served.address, options=own) as second,
        ):
            greedy = coordinator_pb2_grpc.CoordinatorServiceStub(first)
            other = coordinator_pb2_grpc.CoordinatorServiceStub(second)
            # No participants: an abort makes such a round done at once.
            for txn in ("g1", "g2"):
                await greedy.BeginTxn(C.BeginTxnRequest(txn_id=txn))
            index = served.commit_index()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await greedy.BeginTxn(C.BeginTxnRequest(txn_id="g3"))
            assert raised.value.code() == FULL
            assert "has 2 rounds in flight" in (raised.value.details() or "")
            assert "rounds_inflight_per_caller_max=2" in (raised.value.details() or "")
            # A commit that carries its begin is refused before any Prepare, too.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await greedy.Commit(
                    C.CommitRequest(txn_id="g3", begin=C.BeginTxnRequest(txn_id="g3"))
                )
            assert raised.value.code() == FULL
            assert served.commit_index() == index  # refused before the log
            # A retried begin of a round it has is still a no-op, not a refusal.
            await greedy.BeginTxn(C.BeginTxnRequest(txn_id="g1"))
            # Somebody else still has room.
            await other.BeginTxn(C.BeginTxnRequest(txn_id="o1"))
            # Room again once one of its rounds is done.
            await greedy.Abort(C.AbortRequest(txn_id="g1"))
            await greedy.BeginTxn(C.BeginTxnRequest(txn_id="g3"))
            inflight = served.node.read(lambda s: s.rounds_inflight())
            assert inflight == 3  # g2, g3, o1

    asyncio.run(asyncio.wait_for(body(), WAIT_S))
