"""A just-elected leader answers reads only once it has applied what earlier terms
committed (chaos found one answering GetTxn NOT_FOUND for a round its predecessor had
begun). The servicer's side: it asks the node (``wait_reads_ready``) before it reads,
here a fake node whose catching-up the test controls. The leader's side is
tests/core/test_leader.py; the simulator checks reads against what clients were told.)"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from concord.v1 import coordinator_pb2
from coordinator.core.limits import Limits
from coordinator.rpc.coordinator_service import CoordinatorServicer


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Replicated:
    def __init__(self, ready_after_polls: int) -> None:
        self.polls_left = ready_after_polls

    def is_leader(self) -> bool:
        return True

    def leader_ready(self) -> bool:
        self.polls_left -= 1
        return self.polls_left < 0


class Node:
    def __init__(self, replicated: Replicated) -> None:
        self.replicated = replicated
        self.traces = None
        self.reads = 0

    async def wait_reads_ready(self, timeout_s: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.replicated.leader_ready():
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0)
        return True

    def read(self, fn: Any) -> Any:
        self.reads += 1

        class State:
            limits = Limits()

            def get(self, round_id: str) -> None:
                return None

            def escalations_of(self, round_id: str) -> list[Any]:
                return []

        return fn(State())


def get(node: Node) -> str:
    servicer = CoordinatorServicer(node, {})  # type: ignore[arg-type]

    async def call() -> str:
        try:
            await servicer.GetTxn(coordinator_pb2.GetTxnRequest(round_id="t1"), Context())  # type: ignore[arg-type]
        except Aborted as aborted:
            return str(aborted)
        return "answered"

    return asyncio.run(call())


def test_a_read_waits_until_the_new_leader_caught_up() -> None:
    node = Node(Replicated(ready_after_polls=5))
    # caught up after a few polls: answered from current state (here: not found)
    assert get(node) == "NOT_FOUND: no round 't1' (never begun, or forgotten)"


def test_a_leader_that_does_not_catch_up_in_time_says_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coordinator.rpc import coordinator_service

    monkeypatch.setattr(coordinator_service, "LEADER_CATCH_UP_WAIT_S", 0.01)
    node = Node(Replicated(ready_after_polls=10**9))
    assert get(node) == (
        "UNAVAILABLE: the leader was just elected and is still applying the log; retry"
    )
