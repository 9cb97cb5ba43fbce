"""A participant process for chaos runs: the real SDK on LMDB, driven over local HTTP.

- POST /stage {"txn_id", "writes": {key: value}, "vote": "yes"|"no"}: stage writes in
  this participant's branch of ``txn_id``; its vote follows "vote" (and is NO when a key
  is already taken by another value, or reserved by another branch that voted YES and
  is not decided yet: the booking workload's seats).
- GET /: {"state", "in_doubt", "term_seen", "violations", "pid"}.
- POST /records {"ids": [...]}: {id: {"state", "voted_yes"} | null}.

It listens for gRPC on --listen and registers --advertise (the harness's proxy in front
of it). It writes {"http": PORT} to --ready-file once registered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from coordinator.runtime.readyfile import write_ready_file
from participant_sdk import BranchClosed, Participant, StateView

RECORD_RETENTION_MS = 3_600_000  # longer than any run: the checkers read every record


class Agent:
    def __init__(self) -> None:
        self.no_votes: set[str] = set()
        # key -> txn id that voted YES writing it (released once that txn is decided)
        self.reserved: dict[str, str] = {}
        self.reserved_lock = threading.Lock()
        self.participant: Participant | None = None

    def validate(
        self, txn_id: str, writes: Mapping[str, bytes | None], state: StateView
    ) -> tuple[bool, str]:
        if txn_id in self.no_votes:
            return False, "told to vote no"
        with self.reserved_lock:
            for key, value in writes.items():
                current = state.get(key)
                if current is not None and current != value:
                    return False, f"{key} already taken"
                holder = self.reserved.get(key)
                if holder is not None and holder != txn_id:
                    return False, f"{key} reserved by {holder}"
            for key in writes:
                self.reserved[key] = txn_id
        return True, ""

    def release_decided(self) -> None:
        """Free the reservations of decided (or unknown) branches."""
        participant = self.participant
        if participant is None or not participant.running:
            return
        with self.reserved_lock:
            holders = set(self.reserved.values())
        decided = set()
        for txn_id in holders:
            record = participant.record(txn_id)
            if record is None or record.state.value != "PREPARED":
                decided.add(txn_id)
        with self.reserved_lock:
            for key, holder in list(self.reserved.items()):
                if holder in decided:
                    del self.reserved[key]


def serve_http(agent: Agent) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            participant = agent.participant
            assert participant is not None
            self._reply(
                200,
                {
                    "state": {k: v.decode() for k, v in participant.state.items()},
                    "in_doubt": participant.in_doubt(),
                    "term_seen": participant.term_seen,
                    "violations": participant.violations,
                    "pid": os.getpid(),
                },
            )

        def do_POST(self) -> None:
            participant = agent.participant
            assert participant is not None
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path == "/records":
                records = {}
                for txn_id in body["ids"]:
                    record = participant.record(txn_id)
                    records[txn_id] = (
                        None
                        if record is None
                        else {"state": record.state.value, "voted_yes": record.voted_yes}
                    )
                self._reply(200, records)
                return
            txn_id = body["txn_id"]
            if body.get("vote", "yes") != "yes":
                agent.no_votes.add(txn_id)
            try:
                branch = participant.begin(txn_id)
                for key, value in body["writes"].items():
                    branch.put(key, value.encode())
            except BranchClosed as error:
                self._reply(409, {"error": str(error)})
                return
            self._reply(200, {"ok": True})

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


async def main_async(args: argparse.Namespace) -> None:
    agent = Agent()
    participant = Participant(
        args.id,
        args.data_dir,
        args.coordinators.split(","),
        listen=args.listen,
        advertise=args.advertise,
        validate=agent.validate,
        record_retention_ms=RECORD_RETENTION_MS,
        tick_interval_s=0.2,
        in_doubt_ask_after_s=0.5,
        query_backoff_max_s=0.5,
        call_timeout_s=2.0,
    )
    agent.participant = participant
    await participant.start()
    await participant.wait_registered(timeout_s=60)
    http = serve_http(agent)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    write_ready_file(args.ready_file, {"http": http.server_address[1]})
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    while not stop.is_set():
        await asyncio.to_thread(agent.release_decided)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    http.shutdown()
    await participant.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--coordinators", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--advertise", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.id} %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
