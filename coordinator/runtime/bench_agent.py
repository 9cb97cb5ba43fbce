"""Processes that `concord bench` starts (never used outside the benchmark).

    python -m coordinator.runtime.bench_agent participant --id p1 --data-dir D
        --coordinators A,B,C --ready-file F
    python -m coordinator.runtime.bench_agent echo --ready-file F

``participant``: a real ``Participant`` (LMDB data dir, sync on) that votes YES, plus a
second tiny gRPC server with one generic unary method, ``/concord.bench.Work/Stage``,
whose request is raw bytes ``txn_id \\n key \\n value``: it stages the write in the
participant's branch and answers ``b""``. That is how the benchmark's initiator hands
each participant its work for a transaction: one unary call, no protobuf, no HTTP.

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

from coordinator.runtime.readyfile import write_ready_file

WORK_SERVICE = "concord.bench.Work"
WORK_METHOD = f"/{WORK_SERVICE}/Stage"


def _server(handler: Any) -> grpc.aio.Server:
    server = grpc.aio.server()
    # No (de)serializers: requests and replies are the raw bytes on the wire.
    method = grpc.unary_unary_rpc_method_handler(handler)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(WORK_SERVICE, {"Stage": method}),)
    )
    return server


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_participant(args: argparse.Namespace) -> None:
    from participant_sdk import BranchClosed, Participant

    participant = Participant(
        args.id,
        args.data_dir,
        args.coordinators.split(","),
        tick_interval_s=0.5,
        in_doubt_ask_after_s=0.5,
    )

    async def stage(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        txn_id, key, value = request.split(b"\n", 2)
        try:
            participant.begin(txn_id.decode()).put(key.decode(), value)
        except BranchClosed as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return b""

    await participant.start()
    await participant.wait_registered(timeout_s=30)
    try:
        await _serve_until_signalled(stage, args.ready_file)
    finally:
        await participant.stop()


async def run_echo(args: argparse.Namespace) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    await _serve_until_signalled(echo, args.ready_file)


async def _serve_until_signalled(handler: Any, ready_file: Any) -> None:
    """Serve ``handler`` on a free port, announce it in ``ready_file``, stop on a signal."""
    server = _server(handler)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_ready_file(ready_file, {"port": port})
    try:
        await _until_signalled()
    finally:
        await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench_agent")
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
