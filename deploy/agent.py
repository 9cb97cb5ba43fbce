"""An example agent for Concord's deployment files (deploy/), and the initiator that
moves amounts between such agents.

``serve`` runs one participant that keeps integer counters. It offers one transaction
action, ``add`` (``{"key": K, "amount": N}``): N is added to counter K when the
transaction commits, and the agent votes NO if a counter would go below zero.
``move`` runs one transaction that asks each named agent to add its amount, and says
whether it committed::

    python deploy/agent.py serve --id agent1 --data-dir /var/lib/agent \\
        --listen 0.0.0.0:9000 --advertise agent1:9000
    python deploy/agent.py serve --id laptop --data-dir ~/agent --outbound
    python deploy/agent.py move agent1:coins:100
    python deploy/agent.py move agent1:coins:-30 agent2:coins:30

Both find the cluster as the `concord` command line does: ``--coordinators``, else
``CONCORD_COORDINATORS``, else the context `concord cluster up` wrote. Their
certificates come from ``CONCORD_TLS_DIR`` (a directory made by `concord certs init`):
the agent takes the participant certificate of its id, the initiator a client
certificate; without one they speak plaintext, which only an ``insecure`` cluster
accepts. With ``--outbound`` the agent serves nothing and opens no port: it attaches to
the cluster's leader itself (behind NAT, in a serverless job, on a laptop). Bad
arguments end in one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coordinator.runtime import context
from participant_sdk import (
    Branch,
    ConcordClient,
    ConcordError,
    OutcomeUnknown,
    Participant,
    ParticipantOptions,
    TransactionAborted,
    TxnActions,
)

log = logging.getLogger("agent")
EXIT_USAGE = 2


def add(branch: Branch, request: Mapping[str, Any]) -> None:
    """The action ``add``: counter ``key`` grows by ``amount`` at commit, never below 0."""
    key, amount = request.get("key"), request.get("amount")
    if not isinstance(key, str) or not isinstance(amount, int) or isinstance(amount, bool):
        raise ValueError(f"add needs a key (text) and an amount (whole number): {request!r}")
    branch.add(key, amount, min=0)


async def serve(args: argparse.Namespace) -> None:
    if args.outbound and args.advertise:
        raise UsageError(
            "agent.py serve: --advertise has no use with --outbound (nothing is served)"
        )
    actions = TxnActions()
    actions.add("add", add)
    options = (
        ParticipantOptions(connect="outbound")
        if args.outbound
        else ParticipantOptions(listen=args.listen, advertise=args.advertise)
    )
    participant = Participant(
        args.id, args.data_dir, _coordinators(args), actions=actions, options=options
    )
    await participant.start()
    await participant.wait_registered(timeout_s=60)
    where = "attached to the leader" if args.outbound else f"serving on {args.listen}"
    log.info("agent %s registered, %s", args.id, where)
    if args.ready_file:
        args.ready_file.write_text(f"{participant.port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await participant.stop()


async def move(args: argparse.Namespace) -> int:
    parts = [_part(text) for text in args.parts]
    async with ConcordClient(_coordinators(args)) as client:
        try:
            async with client.transaction(wait_applied=True) as txn:
                for agent, key, amount in parts:
                    await txn.call(agent, "add", {"key": key, "amount": amount})
        except TransactionAborted as aborted:
            print(f"aborted: {aborted.reason}")
            return 1
        except OutcomeUnknown as unknown:
            print(
                f"{unknown}; or run `concord txn show {unknown.txn_id}`",
                file=sys.stderr,
            )
            return 1
        except ConcordError as error:
            print(f"not done: {error}", file=sys.stderr)
            return 1
    print("committed: " + ", ".join(f"{a} {k} {n:+d}" for a, k, n in parts))
    return 0


def _part(text: str) -> tuple[str, str, int]:
    agent, _, rest = text.partition(":")
    key, _, amount = rest.partition(":")
    try:
        return agent, key, int(amount)
    except ValueError:
        raise UsageError(f"{text!r} is not AGENT:KEY:AMOUNT (e.g. agent1:coins:-30)") from None


def _coordinators(args: argparse.Namespace) -> list[str]:
    text = args.coordinators or context.default_coordinators()
    return [a.strip() for a in text.split(",") if a.strip()]


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agent.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help in (("serve", "run one agent"), ("move", "one transaction across agents")):
        sub = commands.add_parser(name, help=help)
        sub.add_argument(
            "--coordinators",
            metavar="GRPC,...",
            help="the cluster's gRPC addresses (env CONCORD_COORDINATORS)",
        )
    serve_parser = commands.choices["serve"]
    serve_parser.add_argument("--id", required=True, help="the agent's participant id")
    serve_parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    serve_parser.add_argument(
        "--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="where it serves"
    )
    serve_parser.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="where the coordinators reach it (needed when --listen is on all interfaces)",
    )
    serve_parser.add_argument(
        "--outbound",
        action="store_true",
        help="serve nothing: attach to the leader (no --listen or --advertise)",
    )
    serve_parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="FILE",
        help="written with its port (0 with --outbound) once registered",
    )
    commands.choices["move"].add_argument(
        "parts", nargs="+", metavar="AGENT:KEY:AMOUNT", help="what each agent adds"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        with contextlib.suppress(KeyboardInterrupt):
            if args.command == "serve":
                asyncio.run(serve(args))
                return 0
            return asyncio.run(move(args))
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
