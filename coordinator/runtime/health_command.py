"""`concord health`: does this coordinator node serve? Asked through gRPC health
checking (grpc.health.v1), as a container health check or a readiness probe asks.

It takes the node's own settings: every `concord serve` flag, ``CONCORD_*`` variable
and ``--config`` file (coordinator/runtime/config.py), so in a container or a pod
`concord health`, run with the environment the node runs with, checks that node. It
dials the node's gRPC address with the node's own certificate (or in plaintext for an
``insecure`` node); an address on all interfaces (``0.0.0.0``, ``::``) is asked on the
loopback. Exit 0: SERVING; 1: not serving or not answering (one line says which);
2: the settings are wrong (one line).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from concord.v1 import coordinator_pb2
from coordinator.runtime import config as node_config
from coordinator.runtime.cli import fail
from coordinator.security.identity import Role

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
TIMEOUT_S = 3.0
EXIT_UNHEALTHY = 1
ALL_INTERFACES = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


def configure_health(parser: argparse.ArgumentParser) -> None:
    node_config.add_arguments(parser)
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=TIMEOUT_S,
        metavar="S",
        help="how long to wait for the answer (default %(default)s)",
    )


def run_health(args: argparse.Namespace) -> int:
    try:
        config = node_config.load(args)
    except node_config.ConfigError as error:
        return fail(str(error))
    if args.timeout_s <= 0:
        return fail("--timeout-s must be positive")
    host, _, port = config.grpc.rpartition(":")
    address = f"{ALL_INTERFACES.get(host, host)}:{port}"
    with config.tls.channel(address, to=Role.NODE) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=args.timeout_s
            )
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "error"
            print(f"concord health: {config.node_id} at {address}: {code}", file=sys.stderr)
            return EXIT_UNHEALTHY
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"concord health: {config.node_id} at {address}: {status}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(f"{config.node_id} at {address}: {status}")
    return 0
