"""Operator commands of `concord`: audit export/verify, status, txn actions, cluster
membership and leadership. See docs/operations.md.

Exit codes: 0 done; 1 the command ran and found a problem (a tampered audit chain, an
abort that came too late, a transfer not confirmed); 2 a user mistake (one line on
stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from coordinator.runtime import commands, context
from coordinator.runtime.cli import EXIT_USAGE
from coordinator.runtime.cli import fail as _fail
from coordinator.runtime.cli_tls import add_tls_dir, cli_transport
from coordinator.security.identity import Role

EXIT_PROBLEM = 1
CALL_TIMEOUT_S = 5.0
EXPORT_TIMEOUT_S = 60.0
TRANSFER_CONFIRM_S = 10.0
CATCH_UP_WAIT_S = 30.0  # add-node: how long to wait for the new member to catch up
MEMBER_CHANGE_TIMEOUT_S = 15.0  # > the leader's own wait for the change to apply
STATUS_NODES_MAX = 5
OPERATOR_REASON_BYTES_MAX = 512
CERT_EXPIRY_WARN_DAYS = 30


# ---------------------------------------------------------------------- plumbing


def _addresses(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def _add_coordinators(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument(
        "--coordinators",
        default=context.default_coordinators(),
        help="comma-separated gRPC addresses of cluster nodes (default: CONCORD_COORDINATORS, "
        "else the context `cluster up` wrote, else 127.0.0.1:8001; now %(default)s)",
    )
    add_tls_dir(parser)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


FINAL_CODES = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
)


def _ops_call(
    addresses: list[str], method: str, request: Any
) -> tuple[Any, str, grpc.StatusCode | None]:
    """Ask each node in turn; the first that answers wins (a follower answers
    UNAVAILABLE for leader-only calls). Returns (reply, "", None) or (None, why, code)."""
    from concord.v1 import operations_pb2_grpc

    problems = []
    for address in addresses:
        with cli_transport().channel(address, to=Role.NODE) as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            try:
                return getattr(stub, method)(request, timeout=CALL_TIMEOUT_S), "", None
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                if code in FINAL_CODES:
                    return None, error.details(), code  # type: ignore[attr-defined]
                problems.append(f"{address}: {error.details() or code.name.lower()}")  # type: ignore[attr-defined]
    why = "; ".join(problems) or "no address given"
    return None, f"no coordinator could do it ({why}); check --coordinators", None


# ---------------------------------------------------------------------- audit


def configure_audit(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="print audit records, one JSON object a line")
    verify = sub.add_parser("verify", help="check the hash chain; name the first bad record")
    for action in (export, verify):
        where = action.add_mutually_exclusive_group()
        where.add_argument(
            "--data-dir",
            type=Path,
            help="read a stopped node's or participant's data dir instead of asking a node",
        )
        where.add_argument(
            "--coordinators",
            help="gRPC address(es) of running nodes (default "
            f"{context.default_coordinators()}); export asks the first, verify asks each",
        )
        add_tls_dir(action)
    export.add_argument("--txn", default="", help="only records of this transaction or round")
    export.add_argument(
        "--since", default="", help="only records at or after T (ms since the epoch, or ISO 8601)"
    )
    export.add_argument("--format", default="jsonl", choices=("jsonl",))
    export.add_argument("--limit", type=int, default=0, help="at most N records (0: all)")
    export.add_argument("--no-local", action="store_true", help="leave out a node's local records")


def run_audit(args: argparse.Namespace) -> int:
    try:
        if args.audit_command == "export":
            return _audit_export(args)
        return _audit_verify(args)
    except _UsageError as error:
        return _fail(str(error))


class _UsageError(Exception):
    pass


def parse_since(text: str) -> int:
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise _UsageError(
            f"--since {text!r} is neither ms since the epoch nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def _audit_export(args: argparse.Namespace) -> int:
    since_ms = parse_since(args.since)
    if args.limit < 0:
        raise _UsageError("--limit must not be negative")
    if args.data_dir is not None:
        records = _offline_records(args.data_dir, args.txn, since_ms, not args.no_local)
        for record in itertools.islice(records, args.limit or None):
            print(json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        return 0
    from concord.v1 import operations_pb2, operations_pb2_grpc

    request = operations_pb2.ExportAuditRequest(
        round_id=args.txn, since_ms=since_ms, limit=args.limit, include_local=not args.no_local
    )
    problems = []
    for address in _addresses(args.coordinators or context.default_coordinators()):
        with cli_transport().channel(address, to=Role.NODE) as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            try:
                for record in stub.ExportAudit(request, timeout=EXPORT_TIMEOUT_S):
                    print(record.json)
                return 0
            except grpc.RpcError as error:
                problems.append(f"{address}: {error.code().name.lower()}")  # type: ignore[attr-defined]
    return _fail(f"no coordinator answered ({'; '.join(problems)}); check --coordinators")


def _audit_verify(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        lines, ok = _offline_verify(args.data_dir)
        for line in lines:
            print(line)
        return 0 if ok else EXIT_PROBLEM
    from concord.v1 import operations_pb2

    all_ok = True
    heads: dict[str, tuple[str, str]] = {}
    answered = 0
    for address in _addresses(args.coordinators or context.default_coordinators()):
        reply, why, _ = _ops_call([address], "VerifyAudit", operations_pb2.VerifyAuditRequest())
        if reply is None:
            print(f"{address}: not checked: {why}", file=sys.stderr)
            all_ok = False
            continue
        answered += 1
        for name, verdict in (("log chain", reply.log_chain), ("local", reply.local_chain)):
            print(f"{reply.node_id} {name}: {_describe(verdict)}")
            all_ok &= verdict.ok
        if reply.mismatches:
            print(f"{reply.node_id}: {reply.mismatches} re-derived records differed from disk")
            all_ok = False
        if reply.log_chain.ok and reply.log_chain.head:
            heads[reply.node_id] = (reply.log_chain.head, reply.log_chain.head_hash)
    if not answered:
        return _fail("no coordinator answered; check --coordinators")
    by_position: dict[str, set[str]] = {}
    for position, digest in heads.values():
        by_position.setdefault(position, set()).add(digest)
    for position, digests in by_position.items():
        if len(digests) > 1:
            print(f"nodes disagree on the record at {position}: the chains differ")
            all_ok = False
    return 0 if all_ok else EXIT_PROBLEM


def _describe(verdict: Any) -> str:
    gaps = "".join(f"; gap {g}" for g in verdict.gaps)
    if verdict.ok:
        head = verdict.head or "-"
        return f"ok, {verdict.records} records, head {head} {verdict.head_hash[:16]}{gaps}"
    return f"BAD: first bad record {verdict.first_bad}: {verdict.problem}{gaps}"


# ------------------------------------------------------------- offline data dirs


@contextlib.contextmanager
def _not_running(lock_path: Path) -> Iterator[None]:
    """Refuse a data dir a running process holds: its audit log is being written;
    ask that node over gRPC instead."""
    if not lock_path.exists():
        yield
        return
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _UsageError(
                f"data dir {lock_path.parent} is in use by a running process; stop it, or "
                "use --coordinators to ask a running node"
            ) from None
        yield
    finally:
        os.close(fd)


def _kind_of(data_dir: Path) -> str:
    from coordinator.audit.log import AUDIT_DIR

    if (data_dir / AUDIT_DIR / "data.mdb").exists():
        return "coordinator"
    if (data_dir / "data.mdb").exists():
        return "participant"
    raise _UsageError(
        f"{data_dir} is neither a coordinator data dir (no {AUDIT_DIR}/data.mdb) nor a "
        "participant data dir (no data.mdb)"
    )


def _offline_records(
    data_dir: Path, round_id: str, since_ms: int, local: bool
) -> Iterator[dict[str, Any]]:
    kind = _kind_of(data_dir)
    if kind == "coordinator":
        from coordinator.audit.log import AUDIT_DIR, AuditLog

        with _not_running(data_dir / "LOCK"), AuditLog(data_dir / AUDIT_DIR, readonly=True) as log:
            yield from log.records(round_id=round_id, since_ms=since_ms, local=local)
        return
    with _not_running(data_dir / "concord.lock"):
        rows, _, _ = _participant_audit(data_dir)
        for _, raw in rows:
            record = json.loads(raw)
            if round_id and record.get("round_id") != round_id:
                continue
            if record.get("at_ms", 0) >= since_ms:
                yield record


def _participant_audit(data_dir: Path) -> tuple[list[tuple[bytes, bytes]], Any, Any]:
    from participant_sdk.storage.offline import StoreError, read_audit_offline

    try:
        return read_audit_offline(data_dir)
    except StoreError as error:
        raise _UsageError(str(error)) from None


def _offline_verify(data_dir: Path) -> tuple[list[str], bool]:
    kind = _kind_of(data_dir)
    if kind == "coordinator":
        from coordinator.audit.log import AUDIT_DIR, AuditLog

        with _not_running(data_dir / "LOCK"), AuditLog(data_dir / AUDIT_DIR, readonly=True) as log:
            chain, local = log.verify()
        return [
            f"log chain: {chain.describe()}",
            f"local: {local.describe()}",
        ], chain.ok and local.ok
    from participant_sdk.storage.offline import verify_audit_chain

    with _not_running(data_dir / "concord.lock"):
        rows, anchor, head = _participant_audit(data_dir)
    verdict = verify_audit_chain(rows, anchor, head)
    return [f"participant audit: {verdict.describe()}"], verdict.ok


# ---------------------------------------------------------------------- status


def configure_status(parser: argparse.ArgumentParser) -> None:
    _add_coordinators(parser)


def run_status(args: argparse.Namespace) -> int:
    from concord.v1 import coordinator_pb2, operations_pb2

    cluster, error = commands._call_any(
        args.coordinators, "ClusterStatus", coordinator_pb2.ClusterStatusRequest()
    )
    if cluster is None:
        return _fail(error)
    nodes = []
    for address in _addresses(args.coordinators)[:STATUS_NODES_MAX]:
        reply, _, _ = _ops_call([address], "NodeStatus", operations_pb2.NodeStatusRequest())
        if reply is not None:
            nodes.append(reply)
    if args.json:
        from coordinator.runtime.txn_view import dumps, message_json

        print(dumps({"cluster": message_json(cluster), "nodes": [message_json(n) for n in nodes]}))
        return 0
    print(f"leader {cluster.leader_id or '(none)'}  term {cluster.term}")
    print(
        f"{'NODE':<8} {'ROLE':<9} {'TERM':>5} {'COMMIT':>8} {'APPLIED':>8} {'LAG':>5} "
        f"{'IN-FLIGHT':>9} {'IN-DOUBT':>8} {'UNACKED':>7} {'ESCALATED':>9}"
    )
    for n in nodes:
        role = "leader" if n.node_id == n.leader_id else "follower"
        print(
            f"{n.node_id:<8} {role:<9} {n.term:>5} {n.commit_index:>8} {n.applied_index:>8} "
            f"{n.apply_lag:>5} {n.rounds_inflight:>9} {n.rounds_in_doubt:>8} "
            f"{n.rounds_unacknowledged:>7} {n.rounds_escalated:>9}"
        )
    print("members:")
    for member in cluster.members:
        state = "reachable" if member.reachable else "UNREACHABLE"
        print(f"  {member.node_id:<6} {member.address:<22} {state}")
    print("certificates:")
    now_ms = time.time() * 1000
    for n in nodes:
        if not n.tls_identity:
            print(f"  {n.node_id:<6} none: --insecure (plaintext, no identities)")
            continue
        days = (n.tls_not_after_ms - now_ms) / 86_400_000
        until = datetime.datetime.fromtimestamp(n.tls_not_after_ms / 1000, datetime.UTC)
        note = "EXPIRED" if days < 0 else ("EXPIRES SOON" if days < CERT_EXPIRY_WARN_DAYS else "")
        line = f"  {n.node_id:<6} {n.tls_identity}  until {until:%Y-%m-%d} ({days:.0f} days)"
        print(f"{line} {note}".rstrip())
    return 0


# ---------------------------------------------------------------------- txn


def configure_txn(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="txn_command", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list", help="list transactions and rounds the cluster remembers, newest first"
    )
    _add_coordinators(listing)
    listing.add_argument("--open", action="store_true", help="only rounds not yet done")
    listing.add_argument(
        "--in-doubt",
        action="store_true",
        help="only rounds where a participant voted YES and has not acknowledged a decision",
    )
    listing.add_argument(
        "--limit", type=int, default=100, help="the newest N (default %(default)s; 0: all)"
    )
    listing.add_argument(
        "--watch",
        action="store_true",
        help="then print each change as the cluster applies it, until Ctrl-C "
        "(with --json: only the changes, one JSON object a line)",
    )
    show = sub.add_parser("show", help="show one transaction or round")
    _add_coordinators(show)
    show.add_argument("id", help="its id, or a unique prefix of it")
    abort = sub.add_parser("abort", help="force-abort an undecided transaction (through the log)")
    _add_coordinators(abort, json_flag=False)
    abort.add_argument("id", help="its id, or a unique prefix of it")
    abort.add_argument("--reason", default="", help="why (recorded in the audit log)")
    retry = sub.add_parser(
        "retry", help="resend what an undecided or unacknowledged round waits for, now"
    )
    _add_coordinators(retry, json_flag=False)
    retry.add_argument("id", help="its id, or a unique prefix of it")
    resolve = sub.add_parser(
        "resolve",
        help="settle a saga step whose compensation escalated (after undoing it by hand)",
    )
    _add_coordinators(resolve, json_flag=False)
    resolve.add_argument("id", help="the saga id")
    resolve.add_argument("--step", type=int, required=True, help="the escalated step's index")
    resolve.add_argument("--participant", default="", help="check: the step's participant")
    resolve.add_argument("--note", default="", help="what was done, for the audit log")


def run_txn(args: argparse.Namespace) -> int:
    action = args.txn_command
    if action == "list" and args.in_doubt:
        if args.watch:
            return _fail("--watch follows every round; leave out --in-doubt (or use --open)")
        return _list_in_doubt(args)
    if action in ("list", "show"):
        return commands.run_txn(args)
    if action == "abort":
        return _abort(args)
    if action == "retry":
        return _retry(args)
    return _resolve(args)


def _list_in_doubt(args: argparse.Namespace) -> int:
    from concord.v1 import coordinator_pb2
    from coordinator.runtime import txn_view

    request = coordinator_pb2.ListTxnsRequest(open_only=True, limit=0)
    reply, error = txn_view.call_any(args.coordinators, "ListTxns", request)
    if reply is None:
        return _fail(error)
    rounds = []
    for rnd in txn_view.newest_first(reply.rounds, 0):
        waiting = [p.participant_id for p in rnd.participants if p.voted and p.yes and not p.acked]
        if rnd.phase != "DONE" and waiting:
            rounds.append((rnd, waiting))
    if args.limit > 0:
        rounds = rounds[: args.limit]
    if args.json:
        out = [{**txn_view.round_json(r), "in_doubt_participants": w} for r, w in rounds]
        print(txn_view.dumps(out))
        return 0
    print(f"{txn_view.HEADER}  IN DOUBT")
    for rnd, waiting in rounds:
        print(f"{txn_view.row(rnd)}  {','.join(waiting)}")
    return 0


def _abort(args: argparse.Namespace) -> int:
    from concord.v1 import common_pb2, coordinator_pb2
    from coordinator.audit.derive import OPERATOR_PREFIX

    if len(args.reason.encode()) > OPERATOR_REASON_BYTES_MAX:
        return _fail(f"--reason is longer than {OPERATOR_REASON_BYTES_MAX} bytes")
    reason = f"{OPERATOR_PREFIX} {args.reason or 'aborted by an operator'}"
    txn_id = _resolve_id(args)
    if txn_id is None:
        return EXIT_USAGE
    request = coordinator_pb2.AbortRequest(txn_id=txn_id, reason=reason)
    reply, error = commands._call_any(args.coordinators, "Abort", request)
    if reply is None:
        return _fail(error)
    if reply.decision == common_pb2.DECISION_ABORT:
        print(f"{txn_id}: ABORT")
        return 0
    print(
        f"concord: {txn_id} was already decided {commands._decision(reply.decision)}; "
        "the abort changed nothing",
        file=sys.stderr,
    )
    return EXIT_PROBLEM


def _retry(args: argparse.Namespace) -> int:
    from concord.v1 import operations_pb2

    round_id = _resolve_id(args)
    if round_id is None:
        return EXIT_USAGE
    request = operations_pb2.RetryRoundRequest(round_id=round_id)
    reply, why, _ = _ops_call(_addresses(args.coordinators), "RetryRound", request)
    if reply is None:
        return _fail(why)
    print(f"{reply.round_id}: {reply.phase}; resending now ({reply.retries_reset} retries reset)")
    return 0


def _resolve_id(args: argparse.Namespace) -> str | None:
    """The full id ``args.id`` (an id or a unique prefix) stands for; None after one
    line on stderr when it is ambiguous or the cluster cannot be asked."""
    from coordinator.runtime import txn_view

    try:
        return txn_view.resolve_id(args.coordinators, args.id)
    except txn_view.IdError as error:
        _fail(str(error))
        return None


def _resolve(args: argparse.Namespace) -> int:
    from concord.v1 import operations_pb2

    if args.step < 0:
        return _fail(f"--step must be a step index (0 or more), not {args.step}")
    request = operations_pb2.ResolveEscalationRequest(
        round_id=args.id, participant_id=args.participant, note=args.note, step=args.step
    )
    reply, why, _ = _ops_call(_addresses(args.coordinators), "ResolveEscalation", request)
    if reply is None:
        return _fail(why)
    print(f"{args.id}: step {args.step} resolved; the saga's compensation goes on")
    return 0


# ---------------------------------------------------------------------- cluster


def configure_cluster(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="run a local cluster in the foreground (Ctrl-C stops it)")
    up.add_argument("--nodes", type=int, choices=(1, 3, 5), default=3)
    up.add_argument(
        "--dir", type=Path, default=Path(".concord"), help="where the nodes keep their data"
    )
    up.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, without certificates (development only; TLS is the default)",
    )
    known = context.load()
    default_dir = known.cluster_dir if known is not None else Path(".concord")
    for action, what in (("stop", "stop one node"), ("start", "start a stopped node again")):
        one = sub.add_parser(
            action, help=f"{what} of the local cluster `concord cluster up` runs (for drills)"
        )
        one.add_argument("node_id", metavar="NODE", help="the node's id, e.g. c2")
        one.add_argument(
            "--dir",
            type=Path,
            default=default_dir,
            help="the cluster's dir (default: the context's, else .concord; now %(default)s)",
        )
    transfer = sub.add_parser("transfer-leader", help="hand leadership to another node")
    _add_coordinators(transfer, json_flag=False)
    transfer.add_argument("--to", default="", help="target node id (default: the leader picks)")
    add = sub.add_parser(
        "add-node", help="add a running `concord serve --join` node to the cluster (via the log)"
    )
    remove = sub.add_parser("remove-node", help="remove a member from the cluster (via the log)")
    for change in (add, remove):
        change.add_argument(
            "--coordinators",
            "--to",
            dest="coordinators",
            default=context.default_coordinators(),
            help="gRPC address(es) of any member(s); the leader is found from there "
            "(default %(default)s)",
        )
        change.add_argument("--id", dest="node_id", required=True, help="the node's id")
        add_tls_dir(change)
    add.add_argument("--raft", required=True, help="the new node's Raft address HOST:PORT")
    add.add_argument("--grpc", required=True, help="the new node's gRPC address HOST:PORT")
    unregister = sub.add_parser(
        "unregister-participant",
        help="remove a participant from the cluster's registry (via the log); refused while "
        "a round not yet done names it",
    )
    _add_coordinators(unregister, json_flag=False)
    unregister.add_argument("--id", dest="participant_id", required=True, help="its id")
    unregister.add_argument(
        "--drop-escalations",
        action="store_true",
        help="also forget the escalations it reported (refused otherwise while it has some)",
    )


def run_cluster(args: argparse.Namespace) -> int:
    if args.cluster_command == "up":
        return commands.run_cluster(args)
    if args.cluster_command == "stop":
        return commands.run_node_stop(args.dir, args.node_id)
    if args.cluster_command == "start":
        return commands.run_node_start(args.dir, args.node_id)
    if args.cluster_command == "add-node":
        return _add_node(args)
    if args.cluster_command == "remove-node":
        return _remove_node(args)
    if args.cluster_command == "unregister-participant":
        return _unregister_participant(args)
    return _transfer_leader(args)


def _members_call(address: str, method: str, request: Any, timeout_s: float) -> Any:
    from concord.v1 import membership_pb2_grpc

    with cli_transport().channel(address, to=Role.NODE) as channel:
        stub = membership_pb2_grpc.MembershipServiceStub(channel)
        return getattr(stub, method)(request, timeout=timeout_s)


def _leader_grpc(addresses: list[str]) -> tuple[str | None, str]:
    """(the leader's gRPC address, "") or (None, why), asking each address in turn."""
    from concord.v1 import membership_pb2

    problems = []
    for address in addresses:
        try:
            view = _members_call(
                address, "ListMembers", membership_pb2.ListMembersRequest(), CALL_TIMEOUT_S
            )
        except grpc.RpcError as error:
            problems.append(f"{address}: {error.details() or error.code().name.lower()}")  # type: ignore[attr-defined]
            continue
        where = {m.node_id: m.grpc for m in view.members}
        if view.leader_id in where:
            return where[view.leader_id], ""
        problems.append(f"{address}: no leader known")
    why = "; ".join(problems) or "no address given"
    return None, f"cannot reach the cluster's leader ({why}); check --coordinators"


def _change_members(args: argparse.Namespace, method: str, request: Any) -> tuple[Any, str]:
    """Ask the leader; if leadership moved in between, find it again once."""
    addresses = _addresses(args.coordinators)
    why = ""
    for _ in range(2):
        leader, why = _leader_grpc(addresses)
        if leader is None:
            return None, why
        try:
            return _members_call(leader, method, request, MEMBER_CHANGE_TIMEOUT_S), ""
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            why = error.details() or code.name.lower()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None, "no answer in time: the change may still apply; check concord status"
            if code != grpc.StatusCode.UNAVAILABLE:
                return None, why
    return None, why


def _print_members(reply: Any) -> None:
    print("members: " + " ".join(m.node_id for m in reply.members))
    count = len(reply.members)
    if count % 2 == 0:
        print(
            f"note: {count} members need {count // 2 + 1} for a majority and tolerate "
            f"{(count - 1) // 2} failure(s), like {count - 1}; add or remove one more"
        )


def _add_node(args: argparse.Namespace) -> int:
    from concord.v1 import membership_pb2

    request = membership_pb2.AddMemberRequest(node_id=args.node_id, raft=args.raft, grpc=args.grpc)
    reply, why = _change_members(args, "AddMember", request)
    if reply is None:
        return _fail(why)
    print(f"{args.node_id} added at index {reply.index}")
    _print_members(reply)
    deadline = time.monotonic() + CATCH_UP_WAIT_S
    applied = 0
    while time.monotonic() < deadline:
        try:
            view = _members_call(
                args.grpc, "ListMembers", membership_pb2.ListMembersRequest(), CALL_TIMEOUT_S
            )
            applied = view.applied_index
        except grpc.RpcError:
            pass
        if applied >= reply.index:
            print(f"{args.node_id} caught up (applied index {applied})")
            return 0
        time.sleep(0.2)
    print(
        f"concord: {args.node_id} is a member but has not caught up within "
        f"{CATCH_UP_WAIT_S:.0f}s (applied {applied} of {reply.index}); check its log",
        file=sys.stderr,
    )
    return EXIT_PROBLEM


def _remove_node(args: argparse.Namespace) -> int:
    from concord.v1 import membership_pb2

    request = membership_pb2.RemoveMemberRequest(node_id=args.node_id)
    reply, why = _change_members(args, "RemoveMember", request)
    if reply is None:
        return _fail(why)
    print(f"{args.node_id} removed at index {reply.index}")
    _print_members(reply)
    print(
        f"stop {args.node_id} now: it runs on outside the cluster (members refuse its "
        "connections); do not restart it with its data dir"
    )
    return 0


def _transfer_leader(args: argparse.Namespace) -> int:
    from concord.v1 import coordinator_pb2, operations_pb2

    addresses = _addresses(args.coordinators)
    request = operations_pb2.TransferLeaderRequest(node_id=args.to)
    reply, why, _ = _ops_call(addresses, "TransferLeader", request)
    if reply is None:
        return _fail(why)
    deadline = time.monotonic() + TRANSFER_CONFIRM_S
    while time.monotonic() < deadline:
        status, _ = commands._call_any(
            args.coordinators, "ClusterStatus", coordinator_pb2.ClusterStatusRequest()
        )
        leader = status.leader_id if status is not None else ""
        if leader and leader != reply.from_node and (not args.to or leader == args.to):
            print(f"leader: {reply.from_node} -> {leader} (term {status.term})")
            return 0
        time.sleep(0.1)
    print(
        f"concord: transfer from {reply.from_node} was requested but not confirmed within "
        f"{TRANSFER_CONFIRM_S:.0f}s; check `concord status`",
        file=sys.stderr,
    )
    return EXIT_PROBLEM


def _unregister_participant(args: argparse.Namespace) -> int:
    from concord.v1 import operations_pb2

    request = operations_pb2.UnregisterParticipantRequest(
        participant_id=args.participant_id, drop_escalations=args.drop_escalations
    )
    reply, why, _ = _ops_call(_addresses(args.coordinators), "UnregisterParticipant", request)
    if reply is None:
        return _fail(why)
    print(f"participant {args.participant_id} unregistered at index {reply.index}")
    return 0


# ---------------------------------------------------------------------- backup, restore

BACKUP_TIMEOUT_S = 120.0
RESTORE_MEMBER_SETTINGS = ("node_id", "raft", "grpc", "peers", "data_dir")


def configure_backup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the backup file to write (new)"
    )
    _add_coordinators(parser, json_flag=False)


def run_backup(args: argparse.Namespace) -> int:
    """`concord backup --out FILE`: the leader's applied state as of one index, its
    members and the audit chain's head (coordinator/replication/backup.py)."""
    from concord.v1 import operations_pb2, operations_pb2_grpc
    from coordinator.replication.backup import BackupError, decode

    out: Path = args.out
    if out.exists():
        return _fail(f"{out} exists; remove it or choose another --out")
    if not out.parent.is_dir():
        return _fail(f"{out.parent} is no directory; create it first")
    addresses = _addresses(args.coordinators)
    leader, _ = _leader_grpc(addresses)
    candidates = ([leader] if leader else []) + [a for a in addresses if a != leader]
    problems = []
    for address in candidates:
        with cli_transport().channel(address, to=Role.NODE) as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            try:
                chunks = stub.Backup(operations_pb2.BackupRequest(), timeout=BACKUP_TIMEOUT_S)
                data = b"".join(chunk.data for chunk in chunks)
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                problems.append(f"{address}: {error.details() or code.name.lower()}")  # type: ignore[attr-defined]
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    break
                continue
        try:
            taken = decode(data, f"the backup from {address}")
        except BackupError as error:
            return _fail(str(error))
        partial = out.with_name(f".{out.name}.partial")
        try:
            with partial.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            partial.rename(out)
        except OSError as error:
            partial.unlink(missing_ok=True)
            return _fail(f"cannot write {out} ({error.strerror})")
        head = taken.audit_head[0] if taken.audit_head else "-"
        print(
            f"backup of applied index {taken.applied_index} (term {taken.applied_term}) from "
            f"{taken.taken_by}: members {' '.join(m.node_id for m in taken.members)}, audit "
            f"head {head}; {len(data)} bytes written to {out}"
        )
        return 0
    why = "; ".join(problems) or "no address given"
    return _fail(f"no leader gave a backup ({why}); check --coordinators")


def configure_restore(parser: argparse.ArgumentParser) -> None:
    from coordinator.runtime import config as node_config

    parser.add_argument("file", type=Path, metavar="FILE", help="a file `concord backup` wrote")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="take the settings below from this `concord serve` config file (env "
        f"{node_config.CONFIG_ENV})",
    )
    for name in RESTORE_MEMBER_SETTINGS:
        setting = node_config.BY_NAME[name]
        options: dict[str, Any] = {
            "dest": name,
            "default": None,
            "metavar": setting.metavar,
            "help": f"as for concord serve: {setting.help}",
        }
        if name == "peers":
            options["action"] = "append"
        parser.add_argument(setting.flag, **options)


def run_restore(args: argparse.Namespace) -> int:
    """`concord restore FILE --data-dir DIR --node-id ID --raft --grpc --peer ...`: seed
    a new node's empty data dir from a backup; then start it with `concord serve` and
    the same member flags (each node of the new cluster restored from the same file)."""
    from coordinator.replication.backup import BackupError, read_backup, seed_data_dir
    from coordinator.replication.node import NodeAddress
    from coordinator.runtime import config as node_config

    try:
        values = node_config.effective(args).values
        missing = [
            node_config.BY_NAME[n].flag
            for n in ("node_id", "raft", "grpc", "data_dir")
            if n not in values
        ]
        if missing:
            raise node_config.ConfigError(f"missing {', '.join(missing)}")
        if values.get("join") and not values.get("peers"):
            raise node_config.ConfigError(
                "restore seeds a member of a new cluster: list its members with --peer "
                "(or peers in --config), not join"
            )
        node_id = str(values["node_id"])
        me = NodeAddress(node_id=node_id, raft=values["raft"], grpc=values["grpc"])
        others = node_config._others(node_id, me.raft, me.grpc, values.get("peers", ()))
        members = (me, *others)
        node_config.check_new_cluster_size(
            node_config.NodeConfig(
                node_id=node_id,
                raft=me.raft,
                grpc=me.grpc,
                data_dir=values["data_dir"],
                secret="",
                peers=others,
            )
        )
        backup = read_backup(args.file)
        seed_data_dir(backup, values["data_dir"], node_id, members)
    except (node_config.ConfigError, BackupError) as error:
        return _fail(str(error))
    print(
        f"{values['data_dir']}: node {node_id} of members "
        f"{' '.join(sorted(m.node_id for m in members))}, starting from applied index "
        f"{backup.applied_index} of the backup taken by {backup.taken_by}; start it with "
        "concord serve and the same member flags"
    )
    return 0
