"""`concord serve --ui HOST:PORT`: a small read-only web dashboard served by the node.

It runs on Python's ``http.server`` in threads of its own (as the Prometheus endpoint
does) and reads the node in-process: replicated state under the state lock
(``node.read``), this node's audit chain, its metrics registry, and, for the other
members, ``NodeStatus`` over gRPC with the node's own identity (a node may ask it).
Every page is read-only for everyone who reaches the port, so bind it to loopback (or
a network only operators reach). An operator, who proves it with the token the node
writes into its data dir (coordinator/ui/operators.py), may also abort a round or
have it retried now, each behind a confirmation and recorded in this node's local
audit chain (``operator_abort``, ``operator_retry``; the abort itself is a log entry
whose reason starts ``operator:``, as from `concord txn abort`). Actions run on the
leader: a follower's dashboard says which node leads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.server
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from concord.v1 import operations_pb2, operations_pb2_grpc
from coordinator.audit.derive import OPERATOR_PREFIX
from coordinator.core.entries import Abort, ResolveStep
from coordinator.core.errors import ProtocolError
from coordinator.core.leader import ProposeStatus
from coordinator.core.types import Decision, decision_name
from coordinator.core.validate import check_entry
from coordinator.security.identity import Role
from coordinator.ui import render
from coordinator.ui.operators import (
    Operators,
    Session,
    form_token_ok,
    same_origin,
    set_cookie,
)
from coordinator.ui.static import LIVE_JS, STYLE
from coordinator.ui.views import (
    AuditView,
    ClusterView,
    FilterError,
    NodeView,
    RoundFilter,
    Sample,
    ThroughputView,
    Verification,
    detail_of,
    intervals_of,
    participants_of,
    rounds_of,
    term_changes_of,
)

log = logging.getLogger(__name__)

PEER_STATUS_TIMEOUT_S = 1.0
SAMPLE_EVERY_S = 5.0
SAMPLES_KEPT = 121  # ten minutes
VERIFY_AT_MOST_EVERY_S = 60.0
ROUND_RECORDS_MAX = 500
LOCAL_RECORDS_S = 10.0
ACTIONS = ("abort", "retry", "resolve")
ACT_WAIT_S = 10.0
FORM_BYTES_MAX = 8192
# /changes: how long a page's request waits for a round change before it is answered
# unchanged (and asks again); at most this many wait at once (each holds a thread).
CHANGES_WAIT_S = 25.0
CHANGE_WAITERS_MAX = 32
CHANGES_RETRY_S = 0.5
LOOPBACK = ("127.0.0.1", "localhost", "::1")

HTML = "text/html; charset=utf-8"


class Dashboard:
    def __init__(
        self, address: str, operations: Any, node: Any, data_dir: Path | None = None
    ) -> None:
        """``data_dir``: where the operator token goes (coordinator/ui/operators.py);
        None: no operator actions, every page read-only for everyone."""
        self.address = address
        self.operators = Operators(data_dir) if data_dir is not None else None
        self.allowed_hosts: frozenset[str] = frozenset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ops = operations  # coordinator.runtime.operations.Operations
        self.node = node  # coordinator.runtime.node.CoordinatorNode
        self.node_id: str = operations.node_id
        self.samples: collections.deque[Sample] = collections.deque(maxlen=SAMPLES_KEPT)
        self._verification: Verification | None = None
        self._verify_lock = threading.Lock()
        self._local: tuple[float, list[dict[str, Any]]] | None = None
        self._local_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0
        # The last applied index that changed a round, from the node's change feed (the
        # one WatchTxns serves); pages wait on it (/changes) to refresh at once.
        self._changed = threading.Condition()
        self._changed_index = 0
        self._change_waiters = 0
        self._follow_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Bind ``address`` (port 0: any free port) and serve; returns the port."""
        host, _, port = self.address.rpartition(":")
        server = http.server.ThreadingHTTPServer((host, int(port)), _handler(self.handle))
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self.allowed_hosts = _hosts(host, self.port)
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        if self._loop is not None:
            self._follow_task = self._loop.create_task(self._follow_changes(), name="ui-changes")
        self._threads = [
            threading.Thread(target=server.serve_forever, name="ui", daemon=True),
            threading.Thread(target=self._sample_forever, name="ui-samples", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.port

    def close(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._follow_task is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                self._loop.call_soon_threadsafe(self._follow_task.cancel)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)

    async def _follow_changes(self) -> None:
        """Every round change this node applies (``CoordinatorNode.watch``, the feed of
        WatchTxns) moves ``_changed_index`` and wakes the pages waiting on it."""
        while not self._stop.is_set():
            try:
                async for change in self.node.watch(""):
                    with self._changed:
                        self._changed_index = change.index
                        self._changed.notify_all()
            except OverflowError:  # fell behind, or the node has all the watchers it takes
                await asyncio.sleep(CHANGES_RETRY_S)

    def _wait_change(self, after: int) -> int:
        """The index of the latest round change, once it differs from ``after`` (at
        once when it does), or after ``CHANGES_WAIT_S`` (unchanged)."""
        with self._changed:
            if self._change_waiters >= CHANGE_WAITERS_MAX:
                return self._changed_index  # the page falls back on its periodic refresh
            self._change_waiters += 1
            try:
                self._changed.wait_for(
                    lambda: self._changed_index != after or self._stop.is_set(), CHANGES_WAIT_S
                )
                return self._changed_index
            finally:
                self._change_waiters -= 1

    # ------------------------------------------------------------------ routing

    def handle(self, request: Request) -> Reply:
        if not same_origin(request.header("host"), request.header("origin"), self.allowed_hosts):
            return self._error(403, "this dashboard answers only at its own address")
        parsed = urllib.parse.urlsplit(request.target)
        path = parsed.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        session = self.operators.session(request.header("cookie")) if self.operators else None
        if path == "/login":
            return self._login(request, query)
        if request.method == "POST" or path.endswith(tuple(f"/{a}" for a in ACTIONS)):
            return self._action(request, path, query, session)
        if request.method != "GET":
            return self._error(405, f"{request.method} is not answered here")
        try:
            return self._read(path, query, session is not None)
        except FilterError as error:
            return self._error(400, str(error))

    def _read(self, path: str, query: dict[str, str], operator: bool) -> Reply:
        now_ms = int(time.time() * 1000)
        part = path.startswith("/part/")
        route = path.removeprefix("/part") if part else path
        if path == "/static/style.css":
            return Reply(200, "text/css; charset=utf-8", STYLE.encode())
        if path == "/static/live.js":
            return Reply(200, "text/javascript; charset=utf-8", LIVE_JS.encode())
        if path == "/changes":
            try:
                after = int(query.get("after", "-1"))
            except ValueError:
                return self._error(400, "after must be an applied index (an integer)")
            return Reply(200, "text/plain; charset=utf-8", str(self._wait_change(after)).encode())
        if route in ("/", "/cluster"):
            view = self.cluster_view()
            text = render.cluster_part(view) if part else render.cluster_page(view)
        elif route == "/rounds":
            flt = RoundFilter.parse(query)
            rows, matched = self.node.read(lambda s: rounds_of(s, flt, now_ms))
            text = (
                render.rounds_part(rows, matched, now_ms)
                if part
                else render.rounds_page(self.node_id, flt, rows, matched, now_ms)
            )
        elif route.startswith("/round/"):
            round_id = urllib.parse.unquote(route.removeprefix("/round/"))
            records = self._round_records(round_id)
            detail = self.node.read(lambda s: detail_of(s, round_id, self.node_id, records))
            text = (
                render.round_part(detail, now_ms, actions=operator)
                if part
                else render.round_page(detail, now_ms, actions=operator)
            )
        elif route == "/participants":
            streams = self.node.links.connected() if self.node.replicated.is_leader() else None
            rows = self.node.read(lambda s: participants_of(s, streams))
            text = (
                render.participants_part(rows, now_ms)
                if part
                else render.participants_page(self.node_id, rows, now_ms)
            )
        elif route == "/audit" and not part:
            text = render.audit_page(self.audit_view())
        elif route == "/throughput":
            rates = ThroughputView(node_id=self.node_id, intervals=intervals_of(self.samples))
            text = render.throughput_part(rates) if part else render.throughput_page(rates)
        else:
            return self._error(404, f"no page {path}")
        if not part:
            text = render.who(text, operator=operator, can_log_in=self.operators is not None)
        return Reply(200, HTML, text.encode())

    def _error(self, status: int, message: str) -> Reply:
        return Reply(status, HTML, render.error_page(self.node_id, status, message).encode())

    # ------------------------------------------------------------------ operators

    def _login(self, request: Request, query: dict[str, str]) -> Reply:
        if self.operators is None:
            return self._error(404, "operator actions are off on this node")
        token = query.get("token", "")
        if request.method == "POST":
            token = request.form().get("token", "")
        elif request.method != "GET":
            return self._error(405, f"{request.method} is not answered here")
        if not token:
            page = render.login_page(self.node_id, str(self.operators.token_path))
            return Reply(200, HTML, page.encode())
        session = self.operators.login(token)
        if session is None:
            log.warning("dashboard: a login with a wrong token was refused")
            return self._error(403, "wrong token")
        self.ops.audit.note_local("operator_login", {"via": "dashboard"})
        return Reply(303, HTML, b"", (("Location", "/"), ("Set-Cookie", set_cookie(session))))

    def _action(
        self, request: Request, path: str, query: dict[str, str], session: Session | None
    ) -> Reply:
        """GET /round/ID/abort|retry|resolve: the confirmation; POST: the action itself."""
        if self.operators is None:
            return self._error(404, "operator actions are off on this node")
        if session is None:
            return self._error(403, "operators only: log in first (/login)")
        head, _, action = path.rpartition("/")
        if not head.startswith("/round/") or action not in ACTIONS:
            return self._error(404, f"no action {path}")
        round_id = urllib.parse.unquote(head.removeprefix("/round/"))
        if request.method == "GET":
            step = _step(query.get("step", "")) if action == "resolve" else 0
            if step is None:
                return self._error(400, "step: the index of the escalated step, 0 or more")
            page = render.confirm_page(
                self.node_id, round_id, action, session.form_token, step=step
            )
            return Reply(200, HTML, render.who(page, operator=True, can_log_in=True).encode())
        form = request.form()
        if not form_token_ok(session, form.get("form_token", "")):
            return self._error(403, "the form is stale or not this dashboard's; open it again")
        step = _step(form.get("step", "0"))
        if step is None:
            return self._error(400, "step: the index of the escalated step, 0 or more")
        ok, message = self.act(action, round_id, form.get("reason", "").strip(), step)
        page = render.result_page(self.node_id, round_id, message, ok=ok)
        page = render.who(page, operator=True, can_log_in=True)
        return Reply(200 if ok else 409, HTML, page.encode())

    def act(self, action: str, round_id: str, reason: str = "", step: int = 0) -> tuple[bool, str]:
        """Run an operator action on the node's event loop; (done?, what happened).
        ``reason``: the abort's reason, or the note of a resolved step."""
        if self._loop is None:
            return False, "the node's event loop is not known"
        future = asyncio.run_coroutine_threadsafe(
            self._act(action, round_id, reason, step), self._loop
        )
        try:
            return future.result(timeout=ACT_WAIT_S)
        except TimeoutError:
            future.cancel()
            return False, f"no answer within {ACT_WAIT_S:g}s; look at the round again"

    async def _act(self, action: str, round_id: str, reason: str, step: int) -> tuple[bool, str]:
        replicated = self.node.replicated
        if not replicated.is_leader():
            leader = replicated.leader_id() or "unknown"
            return False, f"{self.node_id} is not the leader (leader: {leader}): act there"
        rnd = self.node.read(lambda s: s.get(round_id))
        if rnd is None:
            return False, f"no round {round_id!r} (never begun, or finished and forgotten)"
        kind = rnd.kind
        by = {"by": "dashboard"}
        if action == "retry":
            phase = rnd.phase.value
            reset = self.node.retry_now(round_id)
            if reset is None:
                return False, f"{self.node_id} stopped leading; act on the leader"
            detail = {"phase": phase, "retries_reset": reset, **by}
            self.ops.audit.note_local("operator_retry", detail, round_id)
            return True, f"{round_id}: {phase}; resending now ({reset} retries reset)"
        if action == "resolve":
            return await self._resolve(round_id, step, reason)
        entry = Abort(
            round_id=round_id,
            reason=f"{OPERATOR_PREFIX} {reason or 'aborted by an operator'}",
            now_ms=self.node.now_ms(),
        )
        try:
            check_entry(self.node.read(lambda s: s.limits), entry)
        except ProtocolError as error:
            return False, error.message
        answer = await self.node.write(entry)
        if answer.refused is not None:
            return False, answer.refused.message
        result = answer.outcome()
        if result.status is not ProposeStatus.APPLIED or result.applied is None:
            return False, f"the abort was not applied ({result.status.value}); look again"
        if result.applied.error is not None:
            return False, result.applied.error.message
        self.ops.audit.note_local("operator_abort", {"reason": reason, **by}, round_id)
        if answer.decision is None or answer.decision is Decision.ABORT:
            return True, f"{round_id}: {decision_name(kind, Decision.ABORT)}"
        name = decision_name(kind, answer.decision)
        return False, f"{round_id} was already decided {name}; the abort changed nothing"

    async def _resolve(self, saga_id: str, step: int, note: str) -> tuple[bool, str]:
        """Settle an escalated saga step by hand, as `concord txn resolve` does."""
        entry = ResolveStep(
            saga_id=saga_id,
            step=step,
            note=f"{OPERATOR_PREFIX} {note}".strip(),
            now_ms=self.node.now_ms(),
        )
        try:
            check_entry(self.node.read(lambda s: s.limits), entry)
        except ProtocolError as error:
            return False, error.message
        result = await self.node.submit(entry, ACT_WAIT_S / 2)
        if result.status is not ProposeStatus.APPLIED or result.applied is None:
            return False, f"the resolution was not applied ({result.status.value}); look again"
        if result.applied.error is not None:
            return False, result.applied.error.message
        detail = {"step": step, "note": note, "by": "dashboard"}
        self.ops.audit.note_local("operator_resolve", detail, saga_id)
        return True, f"{saga_id}: step {step} resolved; the saga's compensation goes on"

    # ------------------------------------------------------------------ reading

    def cluster_view(self) -> ClusterView:
        """This node's Raft status, and every member's ``NodeStatus`` (this node's too,
        so each row is read the same way)."""
        status = self.node.replicated.status()
        return ClusterView(
            node_id=self.node_id,
            leader_id=status.leader_id or "",
            term=status.term,
            commit_index=status.commit_index,
            applied_index=status.applied_index,
            nodes=tuple(self._member_view(m.node_id, m.grpc, m.reachable) for m in status.members),
            term_changes=term_changes_of(self._local_records()),
        )

    def _member_view(self, node_id: str, address: str, reachable: bool) -> NodeView:
        try:
            with self.node.transport.channel(address, to=Role.NODE) as channel:
                stub = operations_pb2_grpc.OperationsServiceStub(channel)
                reply = stub.NodeStatus(
                    operations_pb2.NodeStatusRequest(), timeout=PEER_STATUS_TIMEOUT_S
                )
        except grpc.RpcError as error:
            detail = error.details() if hasattr(error, "details") else str(error)
            return NodeView(
                node_id=node_id, grpc=address, reachable=reachable, answered=False,
                problem=f"NodeStatus: {detail}",
            )  # fmt: skip
        return NodeView(
            node_id=node_id,
            grpc=address,
            reachable=reachable,
            answered=True,
            leader_id=reply.leader_id,
            term=reply.term,
            commit_index=reply.commit_index,
            applied_index=reply.applied_index,
            rounds_inflight=reply.rounds_inflight,
            rounds_in_doubt=reply.rounds_in_doubt,
            rounds_escalated=reply.rounds_escalated,
            audit_head=reply.audit_head,
            audit_head_hash=reply.audit_head_hash,
        )

    def audit_view(self) -> AuditView:
        cluster = self.cluster_view()
        return AuditView(node_id=self.node_id, heads=cluster.nodes, verification=self.verify())

    def verify(self) -> Verification:
        """This node's chain, verified at most once a minute (it reads the whole chain)."""
        with self._verify_lock:
            now_ms = int(time.time() * 1000)
            last = self._verification
            if last is not None and now_ms - last.at_ms < VERIFY_AT_MOST_EVERY_S * 1000:
                return last
            chain, local = self.ops.audit.verify()
            self._verification = Verification(
                at_ms=now_ms, ok=chain.ok, records=chain.records, head=chain.head or "",
                problem=chain.problem, local_ok=local.ok, local_records=local.records,
            )  # fmt: skip
            return self._verification

    def _local_records(self) -> list[dict[str, Any]]:
        """This node's local audit records (``seq``-numbered), read at most every
        ``LOCAL_RECORDS_S``: reading them scans the whole chain."""
        with self._local_lock:
            now = time.monotonic()
            if self._local is None or now - self._local[0] > LOCAL_RECORDS_S:
                records = [r for r in self.ops.audit.records(local=True) if "seq" in r]
                self._local = (now, records)
            return self._local[1]

    def _round_records(self, round_id: str) -> list[dict[str, Any]]:
        records = []
        for record in self.ops.audit.records(round_id=round_id, local=True):
            records.append(record)
            if len(records) >= ROUND_RECORDS_MAX:
                break
        return records

    def sample(self) -> Sample:
        """The decision counters and latency sums of this node's metrics, now."""
        decided = latency_sum = latency_count = 0.0
        for family in self.ops.metrics.registry.collect():
            for s in family.samples:
                if s.name == "concord_rounds_decided_total":
                    decided += s.value
                elif s.name == "concord_decision_latency_seconds_sum":
                    latency_sum += s.value
                elif s.name == "concord_decision_latency_seconds_count":
                    latency_count += s.value
        return Sample(
            at_ms=int(time.time() * 1000), decided=decided, latency_sum_s=latency_sum,
            latency_count=latency_count,
        )  # fmt: skip

    def _sample_forever(self) -> None:
        while True:
            try:
                self.samples.append(self.sample())
            except Exception:  # the dashboard must not take the node down
                log.exception("dashboard: sampling the metrics failed")
            if self._stop.wait(SAMPLE_EVERY_S):
                return


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return ""

    def form(self) -> dict[str, str]:
        fields = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))
        return {k: v[-1] for k, v in fields.items()}


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _handler(handle: Callable[[Request], Reply]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "concord-ui"

        def do_GET(self) -> None:
            self._respond(body=True)

        def do_HEAD(self) -> None:
            self._respond(body=False)

        def do_POST(self) -> None:
            self._respond(body=True)

        def _respond(self, *, body: bool) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= FORM_BYTES_MAX:
                reply = Reply(413, "text/plain", b"request body too large")
            else:
                request = Request(
                    method="GET" if self.command == "HEAD" else self.command,
                    target=self.path,
                    headers=tuple(self.headers.items()),
                    body=self.rfile.read(length) if length else b"",
                )
                try:
                    reply = handle(request)
                except Exception:
                    log.exception("dashboard: %s failed", self.path)
                    reply = Reply(500, "text/plain", b"internal error; see the node's log")
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "same-origin")  # no-referrer makes Origin null
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; style-src 'self'; script-src 'self'; "
                "form-action 'self'; frame-ancestors 'none'",
            )
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard: " + format, *args)

    return Handler


def _step(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and len(text) < 6 else None


def _hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` headers this dashboard answers (empty: any, when bound to every
    interface, whose names it cannot know)."""
    if host in ("", "0.0.0.0", "::"):
        return frozenset()
    names = {host, *LOOPBACK} if host in LOOPBACK else {host}
    return frozenset(f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names)
