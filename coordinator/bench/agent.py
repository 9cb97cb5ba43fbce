"""Processes that `concord bench` starts (never used outside the benchmark).

    python -m coordinator.bench.agent participant --id p1 --data-dir D
        --coordinators A,B,C --ready-file F
    python -m coordinator.bench.agent echo --ready-file F

``participant``: a real ``Participant`` (LMDB data dir, sync on) that votes YES unless
its branch's isolation check says NO, plus a second tiny gRPC server with generic
unary methods on raw bytes (no protobuf, no HTTP). That is how the benchmark's
initiator hands each participant its work for a transaction, one unary call each:

- ``/concord.bench.Work/Stage``, ``txn_id \\n key \\n value``: writes a fresh key
  (one per transaction: nothing is read, nothing can be lost);
- ``/concord.bench.Work/Update``, ``txn_id \\n rmw|add \\n key,key``: adds 1 to each
  counter, either read-modify-write *through the branch* (``branch.get`` records the
  version read, so a concurrent increment makes this branch vote NO at Prepare
  instead of overwriting it: no lost update) or ``branch.add(key, 1)`` (nothing read;
  its bound is checked at Prepare);
- ``/concord.bench.Work/Read``, ``key,key``: the committed values, comma-separated
  (the benchmark checks its counters with it once every decision is applied).

``echo``: a trivial gRPC server with the same kind of method answering its request:
the raw gRPC unary ceiling of this machine.

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

from participant_sdk import write_ready_file

WORK_SERVICE = "concord.bench.Work"
WORK_METHOD = f"/{WORK_SERVICE}/Stage"
UPDATE_METHOD = f"/{WORK_SERVICE}/Update"
READ_METHOD = f"/{WORK_SERVICE}/Read"
COUNTER_MAX = 10**12  # the bound every add() is checked against at Prepare


def _server(handlers: dict[str, Any]) -> grpc.aio.Server:
    server = grpc.aio.server()
    # No (de)serializers: requests and replies are the raw bytes on the wire.
    methods = {name: grpc.unary_unary_rpc_method_handler(h) for name, h in handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(WORK_SERVICE, methods),))
    return server


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_participant(args: argparse.Namespace) -> None:
    from participant_sdk import BranchClosed, Participant, ParticipantOptions

    participant = Participant(
        args.id,
        args.data_dir,
        args.coordinators.split(","),
        options=ParticipantOptions(tick_interval_s=0.5, in_doubt_ask_after_s=0.5),
    )

    async def stage(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        txn_id, key, value = request.split(b"\n", 2)
        try:
            participant.begin(txn_id.decode()).put(key.decode(), value)
        except BranchClosed as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return b""

    async def update(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        txn_id, how, keys = request.decode().split("\n", 2)
        if how not in ("rmw", "add"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown update {how!r}")
        try:
            branch = participant.begin(txn_id)
            for key in keys.split(","):
                if how == "add":
                    branch.add(key, 1, max=COUNTER_MAX)
                else:
                    # Read through the branch, never from participant.state: the read
                    # is checked at Prepare, so a lost update becomes a NO vote.
                    value = int(branch.get(key) or b"0")
                    branch.put(key, str(value + 1).encode())
        except BranchClosed as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return b""

    async def read(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        values = (participant.state.get(key) or b"0" for key in request.decode().split(","))
        return b",".join(values)

    await participant.start()
    await participant.wait_registered(timeout_s=30)
    try:
        handlers = {"Stage": stage, "Update": update, "Read": read}
        await _serve_until_signalled(handlers, args.ready_file)
    finally:
        await participant.stop()


async def run_echo(args: argparse.Namespace) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    await _serve_until_signalled({"Stage": echo}, args.ready_file)


async def _serve_until_signalled(handlers: dict[str, Any], ready_file: Any) -> None:
    """Serve ``handlers`` on a free port, announce it in ``ready_file``, stop on a signal."""
    server = _server(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_ready_file(ready_file, {"port": port})
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
