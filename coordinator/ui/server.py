"""`concord serve --ui HOST:PORT`: a small read-only web dashboard served by the node.

It runs on Python's ``http.server`` in threads of its own (as the Prometheus endpoint
does) and reads the node in-process: replicated state under the state lock
(``node.read``), this node's audit chain, its metrics registry, and, for the other
members, ``NodeStatus`` over gRPC with the node's own identity (a node may ask it).
It answers GET and HEAD only and changes nothing: operator actions (abort, retry,
resolve) stay in the CLI, where the caller is authenticated by a certificate; a
browser user is not, so the dashboard offers none. Whoever reaches the port can read
every page, so bind it to loopback (or a network only operators reach).
"""

from __future__ import annotations

import collections
import http.server
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc

from concord.v1 import operations_pb2, operations_pb2_grpc
from coordinator.security.identity import Role
from coordinator.ui import render
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

Page = tuple[int, str, bytes]  # (HTTP status, content type, body)
HTML = "text/html; charset=utf-8"


class Dashboard:
    def __init__(self, address: str, operations: Any, node: Any) -> None:
        self.address = address
        self.ops = operations  # coordinator.runtime.operations.Operations
        self.node = node  # coordinator.runtime.node.CoordinatorNode
        self.node_id: str = operations.node_id
        self.samples: collections.deque[Sample] = collections.deque(maxlen=SAMPLES_KEPT)
        self._verification: Verification | None = None
        self._verify_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Bind ``address`` (port 0: any free port) and serve; returns the port."""
        host, _, port = self.address.rpartition(":")
        server = http.server.ThreadingHTTPServer((host, int(port)), _handler(self.answer))
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._threads = [
            threading.Thread(target=server.serve_forever, name="ui", daemon=True),
            threading.Thread(target=self._sample_forever, name="ui-samples", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.port

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ routing

    def answer(self, target: str) -> Page:
        """The response to a GET of ``target`` (path and query)."""
        parsed = urllib.parse.urlsplit(target)
        path = parsed.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        now_ms = int(time.time() * 1000)
        part = path.startswith("/part/")
        route = path.removeprefix("/part") if part else path
        try:
            if path == "/static/style.css":
                return 200, "text/css; charset=utf-8", STYLE.encode()
            if path == "/static/live.js":
                return 200, "text/javascript; charset=utf-8", LIVE_JS.encode()
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
                    render.round_part(detail, now_ms) if part else render.round_page(detail, now_ms)
                )
            elif route == "/participants":
                rows = self.node.read(participants_of)
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
                return 404, HTML, render.error_page(self.node_id, 404, f"no page {path}").encode()
        except FilterError as error:
            return 400, HTML, render.error_page(self.node_id, 400, str(error)).encode()
        return 200, HTML, text.encode()

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
        return [r for r in self.ops.audit.records(local=True) if "seq" in r]

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


def _handler(answer: Callable[[str], Page]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "concord-ui"

        def do_GET(self) -> None:
            self._respond(body=True)

        def do_HEAD(self) -> None:
            self._respond(body=False)

        def _respond(self, *, body: bool) -> None:
            try:
                status, content_type, data = answer(self.path)
            except Exception:
                log.exception("dashboard: %s failed", self.path)
                status, content_type, data = 500, "text/plain", b"internal error; see the log"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            )
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard: " + format, *args)

    return Handler
