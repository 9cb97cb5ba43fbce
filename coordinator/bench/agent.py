"""Processes that `concord bench` starts (never used outside the benchmark).

    python -m coordinator.bench.agent participant --id p1 --data-dir D
        --coordinators A,B,C --ready-file F
    python -m coordinator.bench.agent echo --ready-file F

``participant``: a real ``Participant`` (LMDB data dir, sync on) that votes YES unless
its branch's isolation check says NO. The benchmark's initiator hands it its work for
a transaction as a transaction action, through the cluster (``txn.call``: client ->
leader -> participant, over the participant's own mutual-TLS link); it listens to
nothing but its cluster. Its actions:

- ``stage`` ``{"key", "value"}``: writes a fresh key (one per transaction: nothing is
  read, nothing can be lost);
- ``update`` ``{"how": "rmw"|"add", "keys": [...]}``: adds 1 to each counter, either
  read-modify-write *through the branch* (``branch.get`` records the version read, so
  a concurrent increment makes this branch vote NO at Prepare instead of overwriting
  it: no lost update) or ``branch.add(key, 1)`` (nothing read; its bound is checked at
  Prepare);
- ``read`` ``[key, ...]``: the committed values, as integers (the benchmark checks its
  counters with it once every decision is applied).

``echo``: a trivial gRPC server with one generic unary method on raw bytes (no
protobuf) answering its request: the raw gRPC unary ceiling of this machine.

Both write ``{"port": N}`` to the ready file once serving (the participant: once the
cluster has accepted its registration), and stop on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import grpc

from participant_sdk import Branch, TxnActions, write_ready_file

ECHO_SERVICE = "concord.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
COUNTER_MAX = 10**12  # the bound every add() is checked against at Prepare


def bench_actions() -> TxnActions:
    """What the benchmark's initiator asks of a participant (``txn.call``)."""
    actions = TxnActions()

    @actions.action("stage")
    def stage(branch: Branch, work: dict[str, str]) -> None:
        branch.put(work["key"], work["value"].encode())

    @actions.action("update")
    def update(branch: Branch, work: dict[str, Any]) -> None:
        how = work["how"]
        if how not in ("rmw", "add"):
            raise ValueError(f"unknown update {how!r}")
        for key in work["keys"]:
            if how == "add":
                branch.add(key, 1, max=COUNTER_MAX)
            else:
                # Read through the branch, never from participant.state: the read is
                # checked at Prepare, so a lost update becomes a NO vote.
                value = int(branch.get(key) or b"0")
                branch.put(key, str(value + 1).encode())

    @actions.action("read")
    def read(branch: Branch, keys: list[str]) -> list[int]:
        return [int(branch.get(key) or b"0") for key in keys]

    return actions


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_participant(args: argparse.Namespace) -> None:
    from participant_sdk import Participant, ParticipantOptions

    participant = Participant(
        args.id,
        args.data_dir,
        args.coordinators.split(","),
        actions=bench_actions(),
        options=ParticipantOptions(tick_interval_s=0.5, in_doubt_ask_after_s=0.5),
    )
    await participant.start()
    await participant.wait_registered(timeout_s=30)
    try:
        write_ready_file(args.ready_file, {"port": participant.port})
        await _until_signalled()
    finally:
        await participant.stop()


async def run_echo(args: argparse.Namespace) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    server = grpc.aio.server()
    # No (de)serializers: requests and replies are the raw bytes on the wire.
    methods = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_ready_file(args.ready_file, {"port": port})
    try:
        await _until_signalled()
    finally:
        await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="coordinator.bench.agent")
    sub = parser.add_subparsers(dest="role", required=True)
    participant = sub.add_parser("participant")
    participant.add_argument("--id", required=True)
    participant.add_argument("--data-dir", type=Path, required=True)
    participant.add_argument("--coordinators", required=True)
    participant.add_argument("--ready-file", type=Path, required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(run_participant(args) if args.role == "participant" else run_echo(args))


if __name__ == "__main__":
    main()
