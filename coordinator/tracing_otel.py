"""The OpenTelemetry side of coordinator/tracing.py: imported only when tracing is on.

A ``Tracer`` is the whole interface the product uses: ``start`` a span (under a
``traceparent`` string, or the caller's current context), read its ``traceparent``,
``end`` it. None of its methods raise: tracing must never break a transaction, so a
failure is logged once at WARNING and the call does nothing (``start`` then returns
None, which ``end`` and ``traceparent`` accept).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

SHUTDOWN_TIMEOUT_MS = 3_000  # a stopping process waits at most this long for its spans
OTLP_TIMEOUT_S = 5.0  # one export attempt to a collector
_TRACEPARENT = "traceparent"


def _never_raises(default: Any = None) -> Callable[[F], F]:
    """Tracing failures are logged (once per method) and swallowed."""

    def wrap(method: F) -> F:
        warned = False

        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            nonlocal warned
            try:
                return method(*args, **kwargs)
            except Exception:
                if not warned:
                    warned = True
                    log.warning("tracing: %s failed; ignored", method.__name__, exc_info=True)
                return default

        return guarded  # type: ignore[return-value]

    return wrap


class Tracer:
    def __init__(self, provider: Any, *, owned: bool) -> None:
        self._provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer("concord")
        self._propagator = TraceContextTextMapPropagator()

    @_never_raises()
    def start(
        self, name: str, *, parent: str = "", attributes: Mapping[str, Any] | None = None
    ) -> Any:
        """A started span: a child of ``parent`` (a traceparent) if given and valid,
        else of the caller's current context (an application span, if any)."""
        context = self._propagator.extract({_TRACEPARENT: parent}) if parent else None
        return self._tracer.start_span(name, context=context, attributes=attributes)

    @_never_raises(default="")
    def traceparent(self, span: Any) -> str:
        if span is None:
            return ""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get(_TRACEPARENT, "")

    @_never_raises()
    def end(
        self, span: Any, *, error: str = "", attributes: Mapping[str, Any] | None = None
    ) -> None:
        if span is None:
            return
        if attributes:
            span.set_attributes(dict(attributes))
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    @_never_raises(default=False)
    def flush(self, timeout_ms: int = SHUTDOWN_TIMEOUT_MS) -> bool:
        flushed: bool = self._provider.force_flush(timeout_ms)
        return flushed

    @_never_raises()
    def shutdown(self) -> None:
        if self._owned:
            self._provider.force_flush(SHUTDOWN_TIMEOUT_MS)
            self._provider.shutdown()


def build(
    service_name: str,
    *,
    otlp_endpoint: str | None,
    console: bool,
    jsonl_path: str | os.PathLike[str] | None,
    exporters: Sequence[SpanExporter],
    tracer_provider: Any,
    resource_attributes: Mapping[str, str],
) -> Tracer:
    if tracer_provider is not None:
        return Tracer(tracer_provider, owned=False)
    resource = Resource.create({"service.name": service_name, **resource_attributes})
    provider = TracerProvider(resource=resource)
    chosen: list[SpanExporter] = list(exporters)
    if otlp_endpoint is not None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # "": the endpoint from OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT (default localhost:4317)
        chosen.append(OTLPSpanExporter(endpoint=otlp_endpoint or None, timeout=OTLP_TIMEOUT_S))
    if console:
        chosen.append(ConsoleSpanExporter())
    if jsonl_path:
        chosen.append(JsonLinesExporter(jsonl_path))
    for exporter in chosen:
        # Exports run on the processor's own thread: a slow or dead collector never
        # holds up the event loop or the raft thread; a full queue drops spans.
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return Tracer(provider, owned=True)


class JsonLinesExporter(SpanExporter):
    """Every span as one JSON object per line, appended to ``path``.

    One ``write`` on an ``O_APPEND`` descriptor per batch, so several processes can
    share one file without interleaving lines (Linux, local file systems)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_record(s), sort_keys=True) + "\n" for s in spans)
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data.encode())
                finally:
                    os.close(fd)
        except OSError as error:
            log.warning("tracing: cannot append spans to %s: %s", self.path, error)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context else "",
        "span_id": f"{context.span_id:016x}" if context else "",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else "",
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description or "",
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        "service": resource.get("service.name", ""),
        "instance": resource.get("service.instance.id", ""),
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
