"""`concord checkpoint` and `concord rollback`: coordinated rounds across agents.

    concord checkpoint SESSION --participants flight,hotel,payment [--id CP] [--label L]
    concord rollback SESSION --to CP --participants flight,hotel,payment --reason "..."

A global checkpoint round asks every participant to checkpoint under one id (a
consistent cut: the cluster holds back commits of the same participants meanwhile); a
rollback round asks each to vote on reverting to that checkpoint and, if all say yes,
to do it. The command waits for the decision and prints it with every participant's
vote and reason: a participant that cannot revert says why. Exit code 0 when the round
was kept/executed, 1 when it was discarded/rejected or undecided, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from coordinator.core.types import Decision, Kind, decision_name
from coordinator.runtime import context
from coordinator.runtime.cli import fail
from coordinator.runtime.cli_tls import add_tls_dir, cli_transport

ROUND_TIMEOUT_S = 30.0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", help="the session (group of agents) the round is for")
    parser.add_argument(
        "--participants", required=True, help="comma-separated participant ids of the session"
    )
    parser.add_argument(
        "--coordinators",
        default=context.default_coordinators(),
        help="comma-separated gRPC addresses of cluster nodes (default: CONCORD_COORDINATORS, "
        "else the context `cluster up` wrote, else 127.0.0.1:8001; now %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=ROUND_TIMEOUT_S, help="seconds to wait")
    add_tls_dir(parser)


def configure_checkpoint(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--id", dest="checkpoint_id", help="the checkpoint id (default: new)")
    parser.add_argument("--label", default="", help="a label kept with the checkpoint")


def configure_rollback(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--to", dest="checkpoint_id", required=True, help="checkpoint id")
    parser.add_argument("--reason", required=True, help="why; shown to every participant")


def run_checkpoint(args: argparse.Namespace) -> int:
    return _run(args, Kind.CHECKPOINT)


def run_rollback(args: argparse.Namespace) -> int:
    return _run(args, Kind.ROLLBACK)


def _run(args: argparse.Namespace, kind: Kind) -> int:
    participants = [p.strip() for p in args.participants.split(",") if p.strip()]
    if not participants:
        return fail("--participants lists no participant")
    try:
        decision, status = asyncio.run(_round(args, kind, participants))
    except Exception as error:  # ConcordError and friends: say it in one line
        return fail(f"{type(error).__name__}: {error}")
    what = "checkpoint" if kind is Kind.CHECKPOINT else "rollback"
    if decision is None:
        print(f"{what} {status.round_id}: not decided within {args.timeout:g}s; "
              f"see `concord txn show {status.round_id}`")  # fmt: skip
        return 1
    target = args.checkpoint_id or status.round_id
    print(f"{what} {status.round_id} of session {args.session} to {target}: "
          f"{decision_name(kind, decision)}")  # fmt: skip
    for p in status.participants:
        vote = ("yes" if p.yes else f"no: {p.reason}") if p.voted else "no vote"
        print(f"  {p.participant_id:<24} {vote}")
    return 0 if decision is Decision.COMMIT else 1


async def _round(args: argparse.Namespace, kind: Kind, participants: list[str]) -> tuple[Any, Any]:
    from participant_sdk import ConcordClient

    addresses = [a.strip() for a in args.coordinators.split(",") if a.strip()]
    round_id = f"{kind.value.lower()}-{uuid.uuid4().hex[:12]}"
    async with ConcordClient(addresses, tls=cli_transport()) as client:
        if kind is Kind.CHECKPOINT:
            result = await client.global_checkpoint(
                session_id=args.session,
                participants=participants,
                checkpoint_id=args.checkpoint_id or round_id,
                label=args.label,
                timeout_s=args.timeout,
                round_id=round_id,
            )
        else:
            result = await client.request_rollback(
                session_id=args.session,
                participants=participants,
                checkpoint_id=args.checkpoint_id,
                reason=args.reason,
                timeout_s=args.timeout,
                round_id=round_id,
            )
        status = await client.get(result.round_id)
    return result.decision, status
