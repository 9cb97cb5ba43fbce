"""Optional OpenTelemetry tracing: one trace per transaction, from the initiator through
the coordinator to every participant (docs/operations.md, "Tracing").

Theory of operation
-------------------
Off unless turned on, and then free: this module imports nothing from OpenTelemetry,
``active()`` is None, and every hook in the product is one ``if tracer is None`` away
from doing nothing. Turning it on (``enable``, ``enable_from_env``, or the ``concord
serve --trace-*`` flags through ``enable_from_args``) imports
``coordinator.tracing_otel`` (opentelemetry-api and -sdk: the ``tracing`` extra) and
installs one process-wide ``Tracer``.

The context travels as a W3C ``traceparent`` string:

- initiator -> coordinator: gRPC metadata ``traceparent`` on the transaction's calls
  (BeginTxn, Enlist, Commit, Abort); a follower that forwards a call passes on the
  context of its own span;
- the leader keeps, per round, the context of the request that began or committed it
  (``coordinator/rpc/traces.py``: leader-local and bounded, so a new leader knows
  a round's trace only once a client call about it reaches it, e.g. a retried Commit);
- leader -> participant: ``CoordinatorBatch.trace_parents`` (round id -> the leader's
  prepare or decide span for that participant), because messages travel batched on one
  stream per participant and metadata exists only per stream.

Tracing never changes what the protocol does: a ``Tracer`` catches its own errors
(logged once at WARNING), spans are exported off the caller's thread by a batch
processor, and an exporter that fails loses spans, nothing else.

Configuration, in every process that traces (coordinator node, agent, initiator):

- ``OTEL_TRACES_EXPORTER``: ``otlp`` and/or ``console`` (comma-separated); unset or
  ``none``: off (unlike the OpenTelemetry default, unset means off here). ``otlp``
  reads the standard ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``.
- ``CONCORD_TRACE_FILE=PATH``: also append every span as one JSON line to PATH (local
  use, tests; several processes may share one file).
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: as usual.
- ``concord serve --trace-otlp ENDPOINT --trace-console --trace-file PATH``: the same,
  as flags (they add to what the environment asks for).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coordinator.tracing_otel import Tracer

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"  # gRPC metadata key (W3C Trace Context)
ENV_EXPORTER = "OTEL_TRACES_EXPORTER"
ENV_FILE = "CONCORD_TRACE_FILE"
EXPORTERS = ("otlp", "console")
INSTALL_HINT = "tracing needs the optional packages: pip install 'concord-txn[tracing]'"

_active: Tracer | None = None
_env_checked = False


def active() -> Tracer | None:
    """The process's tracer, or None when tracing is off (the default)."""
    return _active


def enable(
    service_name: str,
    *,
    otlp_endpoint: str | None = None,
    console: bool = False,
    jsonl_path: str | os.PathLike[str] | None = None,
    exporters: Sequence[Any] = (),
    tracer_provider: Any = None,
    resource_attributes: Mapping[str, str] | None = None,
) -> Tracer:
    """Turn tracing on for this process (replacing an earlier tracer).

    Spans go to an OTLP collector (``otlp_endpoint``, gRPC, e.g.
    ``http://127.0.0.1:4317``), stdout (``console``), a JSON-lines file
    (``jsonl_path``) and any OpenTelemetry ``SpanExporter`` in ``exporters`` (tests use
    an in-memory one). With ``tracer_provider`` (the application's own), spans go
    where that provider sends them and the exporter arguments are ignored.
    ``OTEL_SERVICE_NAME`` overrides ``service_name``. Raises ImportError when the
    ``tracing`` extra is not installed."""
    global _active
    try:
        from coordinator import tracing_otel
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from None
    tracer = tracing_otel.build(
        os.environ.get("OTEL_SERVICE_NAME") or service_name,
        otlp_endpoint=otlp_endpoint,
        console=console,
        jsonl_path=jsonl_path,
        exporters=exporters,
        tracer_provider=tracer_provider,
        resource_attributes=resource_attributes or {},
    )
    previous, _active = _active, tracer
    if previous is not None:
        previous.shutdown()
    return tracer


def disable() -> None:
    """Flush and stop the tracer (if any); tracing is off afterwards."""
    global _active, _env_checked
    tracer, _active = _active, None
    _env_checked = False
    if tracer is not None:
        tracer.shutdown()


def enable_from_env(
    service_name: str,
    environ: Mapping[str, str] = os.environ,
    resource_attributes: Mapping[str, str] | None = None,
) -> Tracer | None:
    """Turn tracing on if the environment asks for it (see the module docstring).
    Called by the SDK (``ConcordClient``, ``Participant`` start): once per process, a
    no-op if tracing is already on. When the environment asks for tracing but the
    packages are missing, log a WARNING and run without it."""
    global _env_checked
    if _active is not None or _env_checked:
        return _active
    _env_checked = True
    wanted, path = exporters_from_env(environ)
    if not wanted and not path:
        return None
    try:
        return enable(
            service_name,
            otlp_endpoint="" if "otlp" in wanted else None,
            console="console" in wanted,
            jsonl_path=path,
            resource_attributes=resource_attributes,
        )
    except ImportError as error:
        log.warning("%s=%s / %s asked for tracing: %s; running without it",
                    ENV_EXPORTER, environ.get(ENV_EXPORTER, ""), ENV_FILE, error)  # fmt: skip
        return None


def exporters_from_env(environ: Mapping[str, str]) -> tuple[set[str], str | None]:
    """(exporter names from OTEL_TRACES_EXPORTER, the CONCORD_TRACE_FILE path)."""
    names = {n.strip().lower() for n in environ.get(ENV_EXPORTER, "").split(",") if n.strip()}
    names.discard("none")
    unknown = names - set(EXPORTERS)
    if unknown:
        log.warning("%s: ignoring %s (known: %s)", ENV_EXPORTER, sorted(unknown), EXPORTERS)
    return names & set(EXPORTERS), environ.get(ENV_FILE) or None


# ---------------------------------------------------------------------- concord serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace-otlp",
        metavar="ENDPOINT",
        help="export OpenTelemetry spans to this OTLP/gRPC collector, e.g. "
        "http://127.0.0.1:4317 (needs the tracing extra)",
    )
    parser.add_argument(
        "--trace-console", action="store_true", help="print OpenTelemetry spans on stdout"
    )
    parser.add_argument(
        "--trace-file", metavar="PATH", help="append OpenTelemetry spans to PATH as JSON lines"
    )


def enable_from_args(
    args: argparse.Namespace, service_name: str, instance_id: str, environ: Mapping[str, str]
) -> Tracer | None:
    """``concord serve``: flags plus the environment. Raises ImportError (with the
    install hint) when tracing is asked for and the extra is missing."""
    wanted, path = exporters_from_env(environ)
    otlp = getattr(args, "trace_otlp", None) or ("" if "otlp" in wanted else None)
    console = bool(getattr(args, "trace_console", False)) or "console" in wanted
    path = getattr(args, "trace_file", None) or path
    if otlp is None and not console and not path:
        return None
    return enable(
        service_name,
        otlp_endpoint=otlp,
        console=console,
        jsonl_path=path,
        resource_attributes={"service.instance.id": instance_id},
    )


# ---------------------------------------------------------------------- helpers


def traceparent_in(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The ``traceparent`` of a call's invocation metadata, or ""."""
    for key, value in metadata or ():
        if key == TRACEPARENT:
            return value if isinstance(value, str) else ""
    return ""


def call_metadata(trace_parent: str) -> tuple[tuple[str, str], ...] | None:
    return ((TRACEPARENT, trace_parent),) if trace_parent else None
