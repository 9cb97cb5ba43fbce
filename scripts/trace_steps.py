#!/usr/bin/env python3
"""Where a transaction's time goes, from a JSON-lines span file.

    .venv/bin/python scripts/trace_steps.py TRACE.jsonl [--shapes 2]

Reads the spans that every process appended to one file (``concord bench
--trace-file``, ``concord serve --trace-file``, ``CONCORD_TRACE_FILE`` in agents and
clients: docs/operations.md, "Tracing"). Processes on one machine share one clock, so
the spans of a trace line up. Traces are grouped by their shape (which spans they hold:
one-shot and interactive transactions differ); for the most common shapes, each span's
median start and end, in ms from the start of the trace's root span, and its median
duration. A span name seen twice in a trace (one per participant) is numbered by start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple


class Span(NamedTuple):
    name: str  # "<service> <span name>"
    start_ns: int
    end_ns: int
    is_root: bool


def read_spans(path: Path) -> dict[str, list[Span]]:
    """The spans of each trace id, checked once as they are read."""
    traces: dict[str, list[Span]] = defaultdict(list)
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                span = Span(
                    f"{raw['service']} {raw['name']}",
                    int(raw["start_ns"]),
                    int(raw["end_ns"]),
                    not raw.get("parent_span_id"),
                )
                traces[raw["trace_id"]].append(span)
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"trace_steps: {path}:{number} is not a span line") from None
    return traces


def steps(spans: list[Span]) -> dict[str, tuple[float, float]]:
    """label -> (start ms, end ms) from the trace's root span."""
    spans = sorted(spans, key=lambda s: s.start_ns)
    origin = next((s for s in spans if s.is_root), spans[0]).start_ns
    seen: Counter[str] = Counter()
    labelled = {}
    for span in spans:
        seen[span.name] += 1
        label = span.name if seen[span.name] == 1 else f"{span.name} #{seen[span.name]}"
        labelled[label] = ((span.start_ns - origin) / 1e6, (span.end_ns - origin) / 1e6)
    return labelled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace_file", type=Path)
    parser.add_argument("--shapes", type=int, default=2, help="how many shapes to show")
    args = parser.parse_args()
    if not args.trace_file.is_file():
        parser.error(f"{args.trace_file}: no such file")
    by_shape: dict[frozenset[str], list[dict[str, tuple[float, float]]]] = defaultdict(list)
    for spans in read_spans(args.trace_file).values():
        labelled = steps(spans)
        by_shape[frozenset(labelled)].append(labelled)
    if not by_shape:
        print(f"trace_steps: {args.trace_file} holds no spans", file=sys.stderr)
        return 1
    shapes = sorted(by_shape.items(), key=lambda item: -len(item[1]))[: args.shapes]
    for shape, traces in shapes:
        print(f"{len(traces)} traces of {len(shape)} spans")
        print(f"  {'start ms':>9} {'end ms':>9} {'took ms':>9}  span")
        rows = []
        for label in shape:
            times = [trace[label] for trace in traces]
            rows.append(
                (
                    statistics.median(s for s, _ in times),
                    statistics.median(e for _, e in times),
                    statistics.median(e - s for s, e in times),
                    label,
                )
            )
        for start, end, took_ms, label in sorted(rows):
            print(f"  {start:9.2f} {end:9.2f} {took_ms:9.2f}  {label}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
