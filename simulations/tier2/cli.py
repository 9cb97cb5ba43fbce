"""`concord chaos run ...` and `concord chaos report DIR`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from coordinator.runtime.cli import fail


def configure_chaos(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="chaos_command", metavar="SUBCOMMAND", required=True, parser_class=type(parser)
    )
    run = sub.add_parser("run", help="run a workload under faults and check the history")
    run.add_argument("--workload", default="bank", help="bank or booking")
    run.add_argument(
        "--nemesis",
        default="kill,partition",
        help="comma-separated: kill, pause, kill-participant, partition, delay, power (data "
        "dirs on LazyFS, lost unsynced writes); or all",
    )
    run.add_argument("--time", type=float, default=120.0, help="seconds of workload")
    run.add_argument("--nodes", type=int, default=3, help="coordinator nodes: 3 or 5")
    run.add_argument("--participants", type=int, default=4)
    run.add_argument("--clients", type=int, default=4, help="concurrent client workers")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--accounts", type=int, default=10, help="bank: accounts per participant (default 10)"
    )
    run.add_argument(
        "--hot-keys",
        type=int,
        default=4,
        help="bank: transfers pick among this many accounts per participant 80%% of the "
        "time (default 4)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC on every link (default: mutual TLS, a development CA made for "
        "the run in OUT/cluster/tls, every process and client with its own certificate)",
    )
    run.add_argument("--out", type=Path, required=True, help="output directory")
    report = sub.add_parser("report", help="re-check DIR/history.jsonl and re-render the report")
    report.add_argument("dir", type=Path)


def _usage(message: str) -> int:
    return fail(message, prog="concord chaos")


def run_chaos(args: argparse.Namespace) -> int:
    if args.chaos_command == "report":
        from simulations.tier2.report import rerender

        if not (args.dir / "history.jsonl").exists():
            return _usage(f"{args.dir} holds no history.jsonl")
        results = rerender(args.dir)
        print(_summary(results, args.dir))
        return 0 if results["valid"] else 1
    from simulations.tier2.harness import RunConfig
    from simulations.tier2.nemesis import parse_nemeses
    from simulations.tier2.run import WORKLOADS, run

    try:
        nemeses = parse_nemeses(args.nemesis)
    except ValueError as error:
        return _usage(str(error))
    if "power" in nemeses:
        from simulations.tier2.lazyfs import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            return _usage(f"--nemesis power: {reason}")
    if args.workload not in WORKLOADS:
        return _usage(f"unknown workload {args.workload!r}; choose bank or booking")
    if args.nodes not in (3, 5):
        return _usage(f"--nodes is 3 or 5, not {args.nodes}")
    minimum = 2 if args.workload == "bank" else 3
    if not minimum <= args.participants <= 16:
        return _usage(f"--participants is {minimum}..16 for {args.workload}")
    if args.time < 10 or args.clients < 1:
        return _usage("--time is at least 10 and --clients at least 1")
    if not 1 <= args.hot_keys <= args.accounts <= 1000:
        return _usage("--accounts is 1..1000 and --hot-keys 1..--accounts")
    if args.out.exists() and any(args.out.iterdir()):
        return _usage(f"{args.out} is not empty; choose a new --out directory")
    config = RunConfig(
        out=args.out,
        workload=args.workload,
        nemeses=nemeses,
        time_s=args.time,
        nodes=args.nodes,
        participants=args.participants,
        clients=args.clients,
        seed=args.seed,
        accounts=args.accounts,
        hot_keys=args.hot_keys,
        insecure=args.insecure,
    )
    try:
        results = run(config)
    except (RuntimeError, OSError) as error:
        print(f"concord chaos: the run could not go on: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM
        print("concord chaos: interrupted; every process was stopped", file=sys.stderr)
        return 130
    print(_summary(results, args.out))
    return 0 if results["valid"] else 1


def _summary(results: dict, out: Path) -> str:  # type: ignore[type-arg]
    bad = [name for name, r in results["checkers"].items() if not r["valid"]]
    c = results["counts"]
    line = (
        f"{'valid' if results['valid'] else 'INVALID'}: ok {c['ok']} fail {c['fail']} "
        f"info {c['info']}; faults {len(results['faults'])}"
        + (f"; failed checkers: {', '.join(bad)}" if bad else "")
        + f"; report {out / 'report.html'}"
    )
    s = results.get("summary", {})
    if "initial_total" in s:
        t, r = s.get("transfer", {}), s.get("read", {})
        unknown = {k[len("unknown_") :]: v for k, v in t.items() if k.startswith("unknown_")}
        unknown_text = (
            f"{sum(unknown.values())} ({', '.join(f'{k} {v}' for k, v in sorted(unknown.items()))})"
            if unknown
            else "0"
        )
        line += (
            f"\nbank: transfers committed {t.get('committed', 0)}, aborted by conflict "
            f"{t.get('aborted_conflict', 0)}, for funds {t.get('aborted_funds', 0)}, "
            f"otherwise {t.get('aborted_other', 0)}, unknown {unknown_text}; read-only "
            f"committed {r.get('committed', 0)} of {sum(r.values())}; in doubt at most "
            f"{s['in_doubt_max']}; total {s['initial_total']} -> {s['final_total']}"
        )
    return line
