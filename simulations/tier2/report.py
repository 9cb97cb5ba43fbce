"""DIR/results.json and DIR/report.html for a chaos run (re-rendered by `concord chaos
report DIR` from DIR/history.jsonl). Plots: matplotlib, Agg backend, embedded as PNG.

The page opens with a header a person reads (``header``: the verdict, the run, the
operation counts, liveness, the outcomes, then one line per checker), and one figure
whose three panels share the time axis: latency, throughput, and the fault timeline,
one bar per fault with its label, in as many lanes as it takes for no two labels or
bars to overlap (``lanes``). The same faults are shaded on the two plots above.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.tier2 import checkers

NO_PLOT = "the report has no plot: matplotlib is not installed (pip install 'concord-txn[chaos]')"

FIGURE_WIDTH_IN = 11.0
PLOT_AXES_FRACTION = 0.86  # of the figure's width, once laid out (left labels, margins)
LABEL_FONT_PT = 7.0
CHAR_WIDTH_EM = 0.62  # a character of the label font, at most on average, in ems
LANE_GAP_CHARS = 1.5  # room kept after a label before the next one in its lane
TARGETS_CHARS_MAX = 24


# ---------------------------------------------------------------------- header


@dataclass(frozen=True, slots=True)
class CheckerLine:
    name: str
    ok: bool
    violations: int
    examples: tuple[str, ...]

    def text(self) -> str:
        if self.ok:
            return f"ok    {self.name}"
        return f"FAIL  {self.name}: {_plural(self.violations, 'violation')}"


@dataclass(frozen=True, slots=True)
class Header:
    verdict: str  # VALID or INVALID
    lines: tuple[str, ...]  # the run, operations, liveness, outcomes, faults
    checkers: tuple[CheckerLine, ...]

    def text(self) -> str:
        """The header as plain text: what the page shows, line by line."""
        return "\n".join(
            [self.verdict, *self.lines, "checkers:", *(f"  {c.text()}" for c in self.checkers)]
        )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _seconds(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + " s"


def header(results: dict[str, Any], config: dict[str, Any]) -> Header:
    named = results["checkers"]
    failed = [name for name, r in named.items() if not r["valid"]]
    if results["valid"]:
        verdict = f"VALID: all {len(named)} checkers passed"
    else:
        verdict = f"INVALID: {len(failed)} of {len(named)} checkers failed ({', '.join(failed)})"
    lines = []
    if config:
        run = [
            f"{config.get('workload', '?')} workload",
            f"{config['time_s']:g} s" if "time_s" in config else "",
            _plural(config["nodes"], "node") if "nodes" in config else "",
            _plural(config["participants"], "participant") if "participants" in config else "",
            _plural(config["clients"], "client") if "clients" in config else "",
            f"seed {config['seed']}" if "seed" in config else "",
            ("plaintext (--insecure)" if config.get("insecure") else "TLS")
            if "insecure" in config
            else "",
        ]
        nemeses = ", ".join(config.get("nemeses", [])) or "none"
        lines.append(f"run: {', '.join(w for w in run if w)}; nemeses: {nemeses}")
    c = results["counts"]
    lines.append(
        f"operations: {c.get('invoke', 0)} invoked; {c.get('ok', 0)} ok, "
        f"{c.get('fail', 0)} failed, {c.get('info', 0)} with an unknown outcome"
    )
    lines.append(f"liveness: {_liveness(results.get('liveness'))}")
    summary = results.get("summary", {})
    for kind, counts in summary.items():
        if isinstance(counts, dict):
            lines.append(f"{kind or 'other'}: {_outcomes(counts)}")
    if "in_doubt_max" in summary:
        lines.append(f"in doubt at one participant at once: at most {summary['in_doubt_max']}")
    if "initial_total" in summary:
        same = "conserved" if summary["initial_total"] == summary["final_total"] else "CHANGED"
        lines.append(f"bank total: {summary['initial_total']} -> {summary['final_total']} ({same})")
    faults = results.get("faults", [])
    kinds = Counter(f["kind"] for f in faults)
    lines.append(
        f"faults: {len(faults)}"
        + (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})" if faults else "")
    )
    return Header(
        verdict=verdict,
        lines=tuple(lines),
        checkers=tuple(
            CheckerLine(name, r["valid"], r["violations"], tuple(r["examples"]))
            for name, r in named.items()
        ),
    )


def _liveness(event: dict[str, Any] | None) -> str:
    if not event:
        return "no check ran"
    if event.get("settled_s") is None:
        in_doubt = ", ".join(event.get("in_doubt", [])[:5])
        return f"still in doubt {_seconds(event['bound_s'])} after the heal: {in_doubt}"
    return (
        f"nothing in doubt {_seconds(event['settled_s'])} after the heal "
        f"(bound {_seconds(event['bound_s'])})"
    )


def _outcomes(counts: dict[str, int]) -> str:
    """``{"committed": 9, "aborted_funds": 2}`` -> ``9 committed, 2 aborted (funds)``."""
    words = []
    for key, count in counts.items():
        state, _, why = key.partition("_")
        words.append(f"{count} {state} ({why})" if why else f"{count} {state}")
    return ", ".join(words) or "none"


# ---------------------------------------------------------------------- fault lanes


def fault_label(fault: dict[str, Any]) -> str:
    targets = ", ".join(fault.get("targets", []))
    if len(targets) > TARGETS_CHARS_MAX:
        targets = targets[: TARGETS_CHARS_MAX - 1] + "…"
    return f"#{fault['id']} {fault['kind']}" + (f" {targets}" if targets else "")


def lanes(spans: Sequence[tuple[float, float]], gap: float = 0.0) -> list[int]:
    """A lane for each ``(start, end)`` span, in the order given: the lowest lane whose
    last span ends (plus ``gap``) at or before this one starts. No two spans of one lane
    overlap, and spans are never moved in time."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1]))
    ends: list[float] = []  # per lane: where its last span ends
    chosen = [0] * len(spans)
    for i in order:
        start, end = spans[i]
        lane = next((n for n, last in enumerate(ends) if last + gap <= start), len(ends))
        if lane == len(ends):
            ends.append(end)
        else:
            ends[lane] = end
        chosen[i] = lane
    return chosen


def seconds_per_char(horizon_s: float) -> float:
    """How many seconds of the time axis one label character takes, at most."""
    axis_in = FIGURE_WIDTH_IN * PLOT_AXES_FRACTION
    char_in = LABEL_FONT_PT * CHAR_WIDTH_EM / 72
    return horizon_s / axis_in * char_in


def fault_spans(
    faults: Sequence[dict[str, Any]], horizon_s: float
) -> list[tuple[float, float, str]]:
    """Each started fault as (start, end, label); a fault not healed ends at the horizon."""
    return [(f["start"], f.get("end", horizon_s), fault_label(f)) for f in faults if "start" in f]


@dataclass(frozen=True, slots=True)
class LabelPlace:
    lane: int
    x: float  # where the label is anchored on the time axis
    align: str  # "left": it starts at x; "right": it ends at x


def place_fault_labels(
    spans: Sequence[tuple[float, float, str]], horizon_s: float
) -> list[LabelPlace]:
    """Where each fault's bar and label go on the timeline. A label is written from its
    fault's start, or, when that would run past the end of the axis, so that it ends
    there; a fault takes its bar and its label, whichever reaches further, and the
    faults are put in lanes (``lanes``) so that none of these overlap."""
    per_char = seconds_per_char(horizon_s)
    extents, places = [], []
    for start, end, label in spans:
        width = len(label) * per_char
        if start + width <= horizon_s:
            extents.append((start, max(end, start + width)))
            places.append(("left", start))
        else:
            extents.append((min(start, horizon_s - width), max(end, horizon_s)))
            places.append(("right", horizon_s))
    lane_of = lanes(extents, gap=LANE_GAP_CHARS * per_char)
    return [LabelPlace(lane, x, align) for lane, (align, x) in zip(lane_of, places, strict=True)]


# ---------------------------------------------------------------------- the figure


def _figure(history: list[dict[str, Any]], faults: list[dict[str, Any]]) -> Any:
    """The figure (matplotlib), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    done = [e for e in history if e["type"] in ("ok", "fail", "info")]
    horizon = max([e["t"] for e in done] + [f.get("end", 0) for f in faults] + [1.0])
    spans = fault_spans(faults, horizon)
    places = place_fault_labels(spans, horizon)
    lane_count = max((p.lane for p in places), default=-1) + 1
    figure, (latency, throughput, timeline) = plt.subplots(
        3,
        1,
        figsize=(FIGURE_WIDTH_IN, 6 + 0.22 * max(lane_count, 1)),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 3, 0.35 + 0.3 * max(lane_count, 1)]},
    )
    colors = {"ok": "tab:green", "fail": "tab:orange", "info": "tab:red"}
    for kind, color in colors.items():
        points = [(e["t"], e["latency_s"] * 1000) for e in done if e["type"] == kind]
        if points:
            xs, ys = zip(*points, strict=True)
            latency.scatter(xs, ys, s=4, c=color, label=kind, alpha=0.6)
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    latency.legend(loc="upper right", fontsize=8)
    buckets = int(horizon) + 1
    for kind, color in colors.items():
        counts = [0] * buckets
        for e in done:
            if e["type"] == kind:
                counts[min(int(e["t"]), buckets - 1)] += 1
        throughput.plot(range(buckets), counts, color=color, label=f"{kind}/s", lw=1)
    throughput.set_ylabel("operations / s")
    throughput.legend(loc="upper right", fontsize=8)
    palette = plt.get_cmap("tab10")
    kinds = sorted({label.split(" ")[1] for _, _, label in spans})
    for (start, end, label), place in zip(spans, places, strict=True):
        for axis in (latency, throughput):
            axis.axvspan(start, end, color="grey", alpha=0.2, lw=0)
        shade = palette(kinds.index(label.split(" ")[1]) % 10)
        timeline.barh(place.lane, end - start, left=start, height=0.8, color=shade, alpha=0.35)
        timeline.text(
            place.x,
            place.lane,
            f" {label} " if place.align == "left" else f"{label} ",
            fontsize=LABEL_FONT_PT,
            va="center",
            ha=place.align,
            gid="fault-label",
        )
    timeline.set_ylim(max(lane_count, 1) - 0.5, -0.5)
    timeline.set_yticks([])
    timeline.set_ylabel("faults", rotation=0, ha="right", va="center")
    timeline.set_xlabel("time (s)")
    timeline.set_xlim(0, horizon)
    figure.tight_layout()
    return figure


def _plot(history: list[dict[str, Any]], faults: list[dict[str, Any]]) -> str | None:
    figure = _figure(history, faults)
    if figure is None:
        return None
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------------- the page


def _html(results: dict[str, Any], image: str | None, config: dict[str, Any]) -> str:
    e = html.escape
    top = header(results, config)
    verdict_class = "ok" if results["valid"] else "bad"
    facts = "".join(f"<li>{e(line)}</li>" for line in top.lines)
    checker_rows = "".join(
        f"<tr><td class={'ok' if c.ok else 'bad'}>{'ok' if c.ok else 'FAIL'}</td>"
        f"<td>{e(c.name)}</td><td>{c.violations}</td>"
        f"<td>{'<br>'.join(e(x) for x in c.examples)}</td></tr>"
        for c in top.checkers
    )
    faults = "".join(
        f"<tr><td>{f['id']}</td><td>{e(f['kind'])}</td><td>{f.get('start', '')}</td>"
        f"<td>{f.get('end', '')}</td><td>{e(', '.join(f.get('targets', []))[:200])}</td>"
        f"<td>{f.get('in_doubt_decided_s', '')}</td>"
        f"<td>{'' if f.get('throughput_recovery_s') is None else f['throughput_recovery_s']}"
        "</td></tr>"
        for f in results["faults"]
    )
    plot = (
        f'<img alt="latency, throughput and the fault timeline" '
        f'src="data:image/png;base64,{image}">'
        if image
        else f"<p>({e(NO_PLOT)})</p>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>chaos {top.verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 6px;
font-size:13px;vertical-align:top}}table{{border-collapse:collapse}}.ok{{color:green}}
.bad{{color:red;font-weight:bold}}ul.facts{{padding-left:1.2em;line-height:1.5}}</style>
</head><body>
<h1 class={verdict_class}>{e(top.verdict)}</h1>
<ul class=facts>{facts}</ul>
<h2>Checkers</h2><table><tr><th>result</th><th>checker</th><th>violations</th>
<th>examples</th></tr>{checker_rows}</table>
<h2>Latency, throughput and faults</h2>{plot}
<h2>Fault timeline</h2><table><tr><th>#</th><th>kind</th><th>start s</th><th>end s</th>
<th>targets</th><th>in-doubt decided s</th><th>throughput back to 90% s</th></tr>{faults}
</table>
<details><summary>configuration (JSON)</summary><pre>{e(json.dumps(config, indent=1))}</pre>
</details></body></html>"""


def write(out: Path, results: dict[str, Any]) -> None:
    history = checkers.load(out / "history.jsonl")
    config_path = out / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    image = _plot(history, results["faults"])
    if image is None:
        print(f"concord chaos: {NO_PLOT}", file=sys.stderr)
    (out / "report.html").write_text(_html(results, image, config))


def rerender(out: Path) -> dict[str, Any]:
    results = checkers.check_file(out / "history.jsonl")
    write(out, results)
    return results
