"""One travel agent as its own process: flight, hotel or payment.

Each agent embeds a Concord ``Participant`` with its own LMDB data directory. Its
state is a few counters (seats left, rooms left, account balances). An initiator asks
it to do its part of a booking under a transaction id through a small local HTTP
endpoint (the agent's "tool"); the agent stages the change on a branch, and votes on
it when the coordinator asks: NO if a counter would go below zero.

    python -m examples.travel.agent --role flight --data-dir DIR --coordinators A,B,C \
        --ready-file FILE

The agent writes ``{"port": P, "http": H}`` to the ready file once it is registered
with the cluster, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from participant_sdk import BranchClosed, Participant, StateView

log = logging.getLogger("agent")

# What each role keeps, and the counter a booking request decrements.
INITIAL_STATE: dict[str, dict[str, int]] = {
    "flight": {"seats:FL100": 3},
    "hotel": {"rooms:GRAND": 2},
    "payment": {"balance:alice": 1_000, "balance:bob": 300},
}


def _counter_key(role: str, request: Mapping[str, Any]) -> str:
    if role == "flight":
        return f"seats:{request['flight']}"
    if role == "hotel":
        return f"rooms:{request['hotel']}"
    return f"balance:{request['customer']}"


def _amount(role: str, request: Mapping[str, Any]) -> int:
    return int(request["price"] if role == "payment" else request.get("count", 1))


class TravelAgent:
    def __init__(self, role: str, participant: Participant) -> None:
        self.role = role
        self.participant = participant
        self.slow_votes: set[str] = set()

    def validate(
        self, txn_id: str, writes: Mapping[str, bytes | None], state: StateView
    ) -> tuple[bool, str]:
        """The vote: every counter this branch writes must stay at zero or above."""
        if txn_id in self.slow_votes:
            time.sleep(1.0)  # the example kills the leader while this vote is under way
        for key, value in writes.items():
            if key.startswith("seeded:") or value is None:
                continue
            left = int(value)
            if left < 0:
                what = {
                    "flight": "not enough seats",
                    "hotel": "no room",
                    "payment": "insufficient funds",
                }[self.role]
                return False, f"{what} ({key} would be {left})"
        return True, ""

    def stage(self, txn_id: str, request: Mapping[str, Any]) -> None:
        key = _counter_key(self.role, request)
        current = int(self.participant.state.get(key, b"0") or b"0")
        branch = self.participant.begin(txn_id)
        branch.put(key, str(current - _amount(self.role, request)).encode())
        if request.get("slow_vote"):
            self.slow_votes.add(txn_id)

    def seed(self, txn_id: str) -> None:
        if self.participant.state.get(f"seeded:{self.role}") is not None:
            return
        branch = self.participant.begin(txn_id)
        for key, value in INITIAL_STATE[self.role].items():
            branch.put(key, str(value).encode())
        branch.put(f"seeded:{self.role}", b"1")

    def snapshot(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.participant.state.items() if not k.startswith("seeded:")}


def _http_server(agent: TravelAgent) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(
                200,
                {
                    "role": agent.role,
                    "state": agent.snapshot(),
                    "in_doubt": agent.participant.in_doubt(),
                },
            )

        def do_POST(self) -> None:
            try:
                body = json.loads(
                    self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"
                )
                if self.path == "/seed":
                    agent.seed(body["txn_id"])
                else:
                    agent.stage(body["txn_id"], body)
            except BranchClosed as error:
                self._reply(409, {"error": str(error)})
            except (KeyError, ValueError) as error:
                self._reply(400, {"error": f"bad request: {error}"})
            else:
                self._reply(200, {"ok": True})

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


async def run(role: str, data_dir: Path, coordinators: list[str], ready_file: Path) -> None:
    agent_box: list[TravelAgent] = []
    participant = Participant(
        role, data_dir, coordinators, validate=lambda t, w, s: agent_box[0].validate(t, w, s)
    )
    agent = TravelAgent(role, participant)
    agent_box.append(agent)
    await participant.start()
    await participant.wait_registered(timeout_s=30)
    http = _http_server(agent)
    threading.Thread(target=http.serve_forever, name="http", daemon=True).start()
    ready_file.write_text(json.dumps({"port": participant.port, "http": http.server_address[1]}))
    log.info(
        "%s agent ready: participant port %d, http %d",
        role,
        participant.port,
        http.server_address[1],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    http.shutdown()
    await participant.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=sorted(INITIAL_STATE), required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--coordinators", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.role} %(levelname)s %(message)s"
    )
    asyncio.run(run(args.role, args.data_dir, args.coordinators.split(","), args.ready_file))


if __name__ == "__main__":
    main()
