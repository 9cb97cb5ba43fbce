"""`concord serve`, and what coordinator/runtime/operator_commands.py builds on:
`cluster up`, `txn list/show`, and calling whichever node answers.

Each user mistake (bad flag, used port, unreachable cluster, wrong or missing secret,
corrupt data dir) ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from concord.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from coordinator.replication.node import ReplicationError
from coordinator.runtime import config as node_config
from coordinator.runtime import context
from coordinator.runtime.cli import fail as _fail
from coordinator.runtime.cli_tls import cli_transport
from coordinator.runtime.local_cluster import ClusterError, LocalCluster
from coordinator.security.identity import Role

CALL_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------- serve


def configure_serve(parser: argparse.ArgumentParser) -> None:
    node_config.add_arguments(parser)  # every setting (coordinator/runtime/config.py)


def run_serve(args: argparse.Namespace) -> int:
    from coordinator import tracing
    from coordinator.runtime.logfmt import configure_logging
    from coordinator.runtime.operations import OperationsOptions
    from coordinator.runtime.serve import serve

    try:
        config = node_config.load(args)
    except node_config.ConfigError as error:
        return _fail(str(error))
    configure_logging(config.log_level, config.log_format)
    for name in node_config.unknown_variables():
        logging.getLogger(__name__).warning("%s is no setting of concord serve: ignored", name)
    try:
        options = OperationsOptions(
            metrics=config.metrics, audit_records_max=config.audit_records_max
        )
        trace = argparse.Namespace(
            trace_otlp=config.trace_otlp,
            trace_console=config.trace_console,
            trace_file=str(config.trace_file) if config.trace_file else None,
        )
        try:
            tracing.enable_from_args(trace, "concord-coordinator", config.node_id, os.environ)
        except ImportError as error:
            raise node_config.ConfigError(str(error)) from None
        asyncio.run(serve(config, options))
    except (node_config.ConfigError, ReplicationError) as error:
        return _fail(str(error))
    finally:
        tracing.disable()  # flush what is left (bounded wait)
    return 0


# ---------------------------------------------------------------------- config check


def configure_config(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a node's config file (with the CONCORD_* environment, as serve reads "
        "them) and print the settings it gives",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the TOML file (serve --config)")


def run_config(args: argparse.Namespace) -> int:
    """`concord config check FILE`: what `concord serve --config FILE` would run with
    (the CONCORD_* environment included), each setting with where it came from, or the
    one line saying what is wrong. The secret is never printed."""
    try:
        settings = node_config.effective(argparse.Namespace(config=args.file))
        config = node_config.load_effective(settings)
    except node_config.ConfigError as error:
        return _fail(str(error))
    print(f"{args.file}: valid")
    for setting in node_config.SETTINGS:
        source = settings.sources.get(setting.name)
        if setting.secret and source is None and "secret_file" in settings.values:
            print(f"  # {setting.name}: read from secret_file (not shown)")
        elif source is None:
            print(f"  # {setting.name}: not set")
        elif setting.secret:
            print(f"  # {setting.name}: set ({source}; not shown)")
        else:
            value = settings.values[setting.name]
            shown = list(value) if isinstance(value, tuple) else value
            shown = str(shown) if isinstance(shown, Path) else shown
            print(f"  {setting.name} = {json.dumps(shown)}  # {source}")
    identity = config.tls.identity
    print(f"  # tls: {'insecure (plaintext)' if identity is None else identity}")
    for name in node_config.unknown_variables():
        print(f"  # {name}: no such setting, ignored")
    return 0


# ---------------------------------------------------------------------- cluster up


UP_WAIT_S = 60.0  # the longest `cluster up` waits for a leader
UP_LOCK = "cluster-up.lock"  # held by the `cluster up` that runs DIR's nodes
START_SUFFIX = ".start"  # DIR/<node>.start: `cluster start NODE` asks `cluster up`
PID_SUFFIX = ".pid"  # DIR/<node>.pid: the node's process, while `cluster up` runs it


def run_cluster(args: argparse.Namespace) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    lock = (args.dir / UP_LOCK).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        return _fail(f"{args.dir} is in use by another `concord cluster up` (PID {holder})")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    try:
        return _run_cluster(args)
    finally:
        lock.close()


def _run_cluster(args: argparse.Namespace) -> int:
    try:
        cluster = LocalCluster(args.dir, args.nodes, insecure=args.insecure, ui=True)
    except ClusterError as error:
        return _fail(str(error))
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster.start()
        leader = ""
        deadline = time.monotonic() + UP_WAIT_S
        while not leader:
            failed = [node_id for node_id, node in cluster.nodes.items() if not node.alive]
            if failed:
                node = cluster.nodes[failed[0]]
                return _fail(
                    f"node {failed[0]} exited at start ({_returncode(node.process)}): "
                    f"{_last_line(node.log_path)} (log: {node.log_path})"
                )
            try:
                leader = cluster.leader(timeout_s=0.5)
            except ClusterError:
                if time.monotonic() > deadline:
                    raise
        _write_pids(cluster, args.dir)
        print(f"cluster of {args.nodes} up; data under {args.dir}/, logs in {args.dir}/<node>.log")
        for address in cluster.addresses:
            mark = "  (leader)" if address.node_id == leader else ""
            print(f"  {address.node_id}  gRPC {address.grpc}  Raft {address.raft}{mark}")
        urls = cluster.ui_urls
        others = " ".join(urls.values())
        print(f"dashboard: {urls[leader]} (every node serves one: {others}); operators log in "
              f"with the token in {cluster.ui_token_path(leader)}")  # fmt: skip
        print(f"coordinators: {','.join(cluster.grpc_addresses)}")
        tls_dir = None if cluster.insecure else cluster.tls_dir
        written = context.write(cluster.grpc_addresses, tls_dir, Path(args.dir))
        print(f"context: {written} (`concord status` and the other commands dial this cluster)")
        if cluster.insecure:
            print("--insecure: plaintext, no identities: anyone who reaches a port may do anything")
        else:
            print(
                f"TLS: certificates in {cluster.tls_dir}/ (operator 'admin', client 'app'; "
                f"the CLI finds them through the context); more with "
                f"`concord certs issue {cluster.tls_dir} --participant ID`"
            )
        print("Ctrl-C stops every node; `concord cluster stop|start NODE` one of them")
        sys.stdout.flush()
        down: set[str] = set()
        while not stopping:
            for node_id, node in cluster.nodes.items():
                request = args.dir / f"{node_id}{START_SUFFIX}"
                if request.exists():
                    request.unlink()
                    if not node.alive:
                        cluster.start_node(node_id)
                        down.discard(node_id)
                        _write_pids(cluster, args.dir)
                        print(f"node {node_id} started again", flush=True)
                if not node.alive and node_id not in down:
                    down.add(node_id)
                    (args.dir / f"{node_id}{PID_SUFFIX}").unlink(missing_ok=True)
                    print(
                        f"node {node_id} exited ({_returncode(node.process)}); the others go "
                        f"on; `concord cluster start {node_id}` starts it again "
                        f"(log: {node.log_path})",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(0.2)
    except ClusterError as error:
        return _fail(str(error))
    finally:
        cluster.stop()
        for node_id in cluster.nodes:
            (args.dir / f"{node_id}{PID_SUFFIX}").unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("cluster stopped")
    return 0


def _write_pids(cluster: LocalCluster, directory: Path) -> None:
    for node_id, node in cluster.nodes.items():
        if node.alive and node.process is not None:
            (directory / f"{node_id}{PID_SUFFIX}").write_text(f"{node.process.pid}\n")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "nothing logged"


def run_node_stop(directory: Path, node_id: str, timeout_s: float = 30.0) -> int:
    """`concord cluster stop NODE`: SIGTERM the node `cluster up` runs, by its PID."""
    pid_file = directory / f"{node_id}{PID_SUFFIX}"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return _fail(
            f"no running node {node_id!r} under {directory} (no {pid_file.name}: is "
            "`concord cluster up` running there, and is the node up?)"
        )
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return _fail(f"node {node_id!r} (PID {pid}) is not running")
    deadline = time.monotonic() + timeout_s
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # `cluster up` notices the exit and removes the PID file
    if pid_file.exists():
        return _fail(f"node {node_id!r} (PID {pid}) did not stop within {timeout_s:.0f} s")
    print(f"node {node_id} stopped")
    return 0


def run_node_start(directory: Path, node_id: str, timeout_s: float = 30.0) -> int:
    """`concord cluster start NODE`: ask the `cluster up` running DIR to start it."""
    if not (directory / UP_LOCK).exists() or not _locked(directory / UP_LOCK):
        return _fail(f"no `concord cluster up` runs under {directory}")
    if not (directory / f"{node_id}.log").exists():
        return _fail(f"no node {node_id!r} under {directory}")
    pid_file = directory / f"{node_id}{PID_SUFFIX}"
    if pid_file.exists():
        return _fail(f"node {node_id!r} is running (PID {pid_file.read_text().strip()})")
    (directory / f"{node_id}{START_SUFFIX}").touch()
    deadline = time.monotonic() + timeout_s
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not pid_file.exists():
        return _fail(f"node {node_id!r} did not start within {timeout_s:.0f} s")
    print(f"node {node_id} started (PID {pid_file.read_text().strip()})")
    return 0


def _locked(path: Path) -> bool:
    """Whether a process holds the lock on ``path``."""
    with path.open("a+") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


# ---------------------------------------------------------------------- status, txn


def run_txn(args: argparse.Namespace) -> int:
    """`txn list` (newest first; --watch follows changes) and `txn show` (an id or a
    unique prefix of one); coordinator/runtime/txn_view.py says how they read."""
    from coordinator.runtime import txn_view

    if args.txn_command == "list":
        # The cluster lists rounds in the order they began: ask for all it lists.
        request: Any = coordinator_pb2.ListTxnsRequest(open_only=args.open, limit=0)
        reply, error = txn_view.call_any(args.coordinators, "ListTxns", request)
        if reply is None:
            return _fail(error)
        rounds = txn_view.newest_first(reply.rounds, max(0, args.limit))
        watching = getattr(args, "watch", False)
        if not (watching and args.json):  # --watch --json: only the changes, a line each
            txn_view.print_rounds(rounds, as_json=args.json)
        if watching:
            sys.stdout.flush()
            return txn_view.watch(args.coordinators, as_json=args.json, open_only=args.open)
        return 0
    try:
        round_id = txn_view.resolve_id(args.coordinators, args.id)
    except txn_view.IdError as error:
        return _fail(str(error))
    reply, error = txn_view.call_any(
        args.coordinators, "GetTxn", coordinator_pb2.GetTxnRequest(round_id=round_id)
    )
    if reply is None:
        return _fail(error)
    if args.json:
        print(txn_view.dumps(txn_view.round_json(reply)))
        return 0
    decision = txn_view.decision_word(reply.kind, reply.decision)
    if reply.phase == "FORGOTTEN":
        print(f"{reply.round_id}  (finished and forgotten by the cluster)")
    else:
        print(f"{reply.round_id}  {_kind(reply.kind)}  {reply.phase}  {decision}")
        if txn_view.begun_ms(reply):
            print(f"  begun: {txn_view.time_text(txn_view.begun_ms(reply))} UTC")
    if reply.decision_reason:
        print(f"  reason: {reply.decision_reason}")
    for escalation in reply.escalations:
        print(
            f"  ESCALATED effect {escalation.key} at {escalation.participant_id}: "
            f"{escalation.detail}   <- undo it by hand, then resolve it in the agent "
            "(EffectLog.resolve)"
        )
    if reply.kind == common_pb2.KIND_SAGA:
        for index, step in enumerate(reply.steps):
            attention = (
                "   <- needs an operator: `concord txn resolve`"
                if (step.status == "ESCALATED")
                else ""
            )
            why = f" ({step.reason})" if step.reason else ""
            print(
                f"  step {index:<3} {step.participant_id:<20} {step.action:<20} "
                f"{step.status}{why}{attention}"
            )
        return 0
    for p in reply.participants:
        vote = ("YES" if p.yes else f"NO ({p.reason})") if p.voted else "-"
        print(
            f"  {p.participant_id:<24} vote {vote:<20} "
            f"{'acknowledged' if p.acked else 'not acknowledged'}"
        )
    return 0


def _returncode(process: Any) -> str:
    return "?" if process is None else str(process.returncode)


def _kind(kind: int) -> str:
    return common_pb2.Kind.Name(kind).removeprefix("KIND_")


def _decision_word(kind: int, decision: int) -> str:
    """EXECUTE/REJECT, KEEP/DISCARD, COMPLETED/COMPENSATED: how the kind reads it."""
    from coordinator.core.types import decision_name
    from coordinator.protomap import DECISION, KIND

    return decision_name(KIND.from_wire(kind), DECISION.from_wire(decision))


def _decision(decision: int) -> str:
    return (
        "-"
        if decision == common_pb2.DECISION_UNSPECIFIED
        else common_pb2.Decision.Name(decision).removeprefix("DECISION_")
    )


def _call_any(coordinators: str, method: str, request: Any) -> tuple[Any, str]:
    """Ask each node in turn; the first answer wins. Returns (reply, "") or (None, why)."""
    problems = []
    for address in [a.strip() for a in coordinators.split(",") if a.strip()]:
        with cli_transport().channel(address, to=Role.NODE) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            try:
                return getattr(stub, method)(request, timeout=CALL_TIMEOUT_S), ""
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    return None, error.details()  # type: ignore[attr-defined]
                problems.append(f"{address}: {code.name.lower()}")
    return (
        None,
        f"no coordinator answered ({'; '.join(problems) or 'no address given'}); "
        "check --coordinators",
    )
