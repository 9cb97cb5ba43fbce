"""What the parts of a chaos run share, so that none of them imports run.py, which
builds them: the run's ``RunConfig``, its ``History`` file, the HTTP call to a
participant agent's read-only view, the shapes of a transaction's work (``Work``,
``OneShot``), and ``Harness``, the runner as its workloads
(bank.py) and its nemesis (nemesis.py) use it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from participant_sdk import ConcordClient, Transaction
from simulations.tier2.cluster import ChaosCluster

HTTP_TIMEOUT_S = 2.0

# The agents' part of an interactive transaction: given the open transaction, they
# do it through action calls (``txn.call``); returns fields for the outcome event.
Work = Callable[[Transaction], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class OneShot:
    """The same work as a one-shot transaction (``client.run``): each participant's
    action, run inside its Prepare, and what to record from the results (txn id,
    participant -> result) once the transaction is known committed."""

    actions: dict[str, tuple[str, Any]]
    on_results: Callable[[str, dict[str, Any]], None]


@dataclass
class RunConfig:
    out: Path
    workload: str = "bank"
    nemeses: tuple[str, ...] = ("kill", "partition")
    time_s: float = 120.0
    nodes: int = 3
    participants: int = 4
    clients: int = 4
    seed: int = 0
    accounts: int = 10  # bank: accounts per participant
    hot_keys: int = 4  # bank: transfers pick among this many accounts 80 % of the time
    insecure: bool = False  # plaintext gRPC everywhere (default: mutual TLS, as deployed)


class History:
    def __init__(self, path: Path) -> None:
        self.start = time.monotonic()
        self.file = path.open("w")
        self.counts = {"ok": 0, "fail": 0, "info": 0, "invoke": 0}
        self.faults = 0
        self.current_fault = ""

    def now(self) -> float:
        return round(time.monotonic() - self.start, 4)

    def add(self, event: dict[str, Any]) -> None:
        event = {"t": self.now(), **event}
        if event["type"] in self.counts:
            self.counts[event["type"]] += 1
        self.file.write(json.dumps(event) + "\n")

    def close(self) -> None:
        self.file.close()


class HttpError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {str(body)[:200]}")
        self.status = status
        self.body = body


async def http(port: int, path: str, body: Any = None, timeout_s: float = HTTP_TIMEOUT_S) -> Any:
    """A minimal HTTP/1.0 call to a participant's control endpoint."""

    async def call() -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            method = "POST" if body is not None else "GET"
            writer.write(
                f"{method} {path} HTTP/1.0\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            try:
                detail = json.loads(payload)
            except ValueError:
                detail = {"error": payload[:200].decode(errors="replace")}
            raise HttpError(status, detail if isinstance(detail, dict) else {"error": detail})
        return json.loads(payload)

    if not port:
        raise RuntimeError("participant not ready")
    async with asyncio.timeout(timeout_s):
        return await call()


# ---------------------------------------------------------------------- workloads


class Harness(Protocol):
    """The runner (run.py ``Runner``) as the workloads and the nemesis see it."""

    config: RunConfig
    cluster: ChaosCluster
    history: History
    leader: str | None

    async def one_txn(
        self,
        client: ConcordClient,
        process: int | str,
        node: str,
        txn: str,
        f: str,
        participants: list[str],
        value: Any,
        work: Work,
        one_shot: OneShot | None = None,
        **extra: Any,
    ) -> str: ...

    async def resolve(self, txn: str) -> str | None: ...

    async def in_doubt_everywhere(self) -> set[str] | None: ...

    async def restart_agent(self, pid: str) -> None: ...
