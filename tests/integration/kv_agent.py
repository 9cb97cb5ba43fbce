"""A participant process for integration tests: a key-value agent on the real SDK.

The test drives it through the cluster, as any initiator does: its transaction action
``stage`` (``txn.call("p1", "stage", {"key", "value", "vote": "yes"|"no",
"vote_delay_s"})``) stages a write on the transaction's branch, and the agent's vote on
that transaction follows "vote" after "vote_delay_s" seconds, at Prepare (so a test can
hold a vote while it kills a node). The test only *looks* at the agent directly, over a
local read-only HTTP endpoint: GET / answers {"state": {...}, "in_doubt": [...],
"term_seen": N}. It writes {"http": PORT, "grpc": PORT} to --ready-file once
registered with the cluster (its gRPC port is 0 with ``--connect=outbound``: it serves
nothing and attaches to the leader).

Saga actions (``put``/``unput``) act on an "outside world": an append-only, fsynced
JSONL ledger (``--world``) of effects keyed by the step's idempotency key. How they
misbehave is read from ``--saga-mode`` (a JSON file the test writes) at each call:
``{"fail": [step keys], "crash_after_effect": [step keys], "block_s": {key: s},
"compensation_fails": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from participant_sdk import (
    Branch,
    Participant,
    ParticipantOptions,
    SagaActions,
    StateView,
    StepContext,
    TxnActions,
    write_ready_file,
)


class KvAgent:
    def __init__(self) -> None:
        self.votes: dict[str, tuple[bool, float]] = {}
        self.participant: Participant | None = None
        self.actions = TxnActions()
        self.actions.add("stage", self.stage)

    def stage(self, branch: Branch, request: Mapping[str, Any]) -> None:
        """A write on the transaction's branch, and how to vote on it at Prepare."""
        self.votes[branch.txn_id] = (
            request.get("vote", "yes") == "yes",
            float(request.get("vote_delay_s", 0)),
        )
        branch.put(request["key"], request["value"].encode())

    def validate(
        self, txn_id: str, writes: Mapping[str, bytes | None], state: StateView
    ) -> tuple[bool, str]:
        yes, delay_s = self.votes.get(txn_id, (True, 0.0))
        if delay_s:
            time.sleep(delay_s)
        return (True, "") if yes else (False, "told to vote no")


def serve_http(agent: KvAgent) -> ThreadingHTTPServer:
    """The read-only view tests check the agent's state with."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            participant = agent.participant
            assert participant is not None
            body = {
                "state": {k: v.decode() for k, v in participant.state.items()},
                "in_doubt": participant.in_doubt(),
                "term_seen": participant.term_seen,
            }
            self._reply(200, body)

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


class World:
    """The outside world a saga step changes: effects survive the agent's crashes."""

    def __init__(self, ledger: Path, mode_file: Path) -> None:
        self.ledger = ledger
        self.mode_file = mode_file
        self._lock = threading.Lock()

    def mode(self) -> dict[str, Any]:
        return json.loads(self.mode_file.read_text()) if self.mode_file.exists() else {}

    def entries(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines() if line]

    def append(self, op: str, key: str) -> None:
        with self.ledger.open("a") as ledger:
            ledger.write(json.dumps({"op": op, "key": key, "t": time.time()}) + "\n")
            ledger.flush()
            os.fsync(ledger.fileno())

    def put(self, step: StepContext) -> bytes:
        key, mode = step.idempotency_key, self.mode()
        time.sleep(float(mode.get("block_s", {}).get(key, 0)))  # slow work, not a sync
        if key in mode.get("fail", []):
            raise RuntimeError(f"{key}: refused by the outside world")
        with self._lock:
            ops = [(e["op"], e["key"]) for e in self.entries()]
            if ("do", key) not in ops:  # idempotent on the step's key
                self.append("do", key)
            if key in mode.get("crash_after_effect", []) and ("crash", key) not in ops:
                self.append("crash", key)
                os._exit(17)  # the effect happened; the agent dies before reporting it
        return f"done:{key}".encode()

    def unput(self, step: StepContext) -> None:
        key = step.idempotency_key
        if self.mode().get("compensation_fails"):
            raise RuntimeError(f"{key}: the refund API is down")
        with self._lock:
            ops = [(e["op"], e["key"]) for e in self.entries()]
            if ("do", key) in ops and ("undo", key) not in ops:
                self.append("undo", key)


async def main_async(args: argparse.Namespace) -> None:
    agent = KvAgent()
    world = World(args.world, args.saga_mode)
    actions = SagaActions(compensation_attempts_max=3, compensation_backoff_initial_s=0.02)
    actions.add("put", world.put, world.unput)
    participant = Participant(
        args.id,
        args.data_dir,
        args.coordinators.split(","),
        validate=agent.validate,
        actions=agent.actions,
        saga_actions=actions,
        options=ParticipantOptions(
            connect=args.connect, tick_interval_s=0.2, in_doubt_ask_after_s=0.2
        ),
    )
    agent.participant = participant
    await participant.start()
    await participant.wait_registered(timeout_s=30)
    if args.connect == "outbound":  # ready once the leader can reach it
        await participant.wait_attached(timeout_s=30)
    http = serve_http(agent)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    write_ready_file(args.ready_file, {"http": http.server_address[1], "grpc": participant.port})
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    http.shutdown()
    await participant.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--coordinators", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--saga-mode", type=Path, required=True)
    parser.add_argument("--connect", choices=("inbound", "outbound"), default="inbound")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.id} %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
