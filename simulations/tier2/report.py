"""DIR/results.json and DIR/report.html for a chaos run (re-rendered by `concord chaos
report DIR` from DIR/history.jsonl). Plots: matplotlib, Agg backend, embedded as PNG."""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from pathlib import Path
from typing import Any

from simulations.tier2 import checkers

NO_PLOT = "the report has no plot: matplotlib is not installed (pip install 'concord-txn[chaos]')"


def _plot(history: list[dict[str, Any]], faults: list[dict[str, Any]]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    done = [e for e in history if e["type"] in ("ok", "fail", "info")]
    horizon = max([e["t"] for e in done] + [1.0])
    figure, (latency, throughput) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
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
    throughput.set_xlabel("time (s)")
    throughput.legend(loc="upper right", fontsize=8)
    for fault in faults:
        if "start" not in fault:
            continue
        end = fault.get("end", horizon)
        for axis in (latency, throughput):
            axis.axvspan(fault["start"], end, color="grey", alpha=0.2)
        throughput.text(fault["start"], 0, fault["kind"], rotation=90, fontsize=6, va="bottom")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _html(results: dict[str, Any], image: str | None, config: dict[str, Any]) -> str:
    e = html.escape
    verdict = "VALID" if results["valid"] else "INVALID"
    rows = "".join(
        f"<tr><td>{e(name)}</td><td class={'ok' if r['valid'] else 'bad'}>"
        f"{'ok' if r['valid'] else 'FAIL'}</td><td>{r['violations']}</td>"
        f"<td>{'<br>'.join(e(x) for x in r['examples'])}</td></tr>"
        for name, r in results["checkers"].items()
    )
    faults = "".join(
        f"<tr><td>{f['id']}</td><td>{e(f['kind'])}</td><td>{f.get('start', '')}</td>"
        f"<td>{f.get('end', '')}</td><td>{e(', '.join(f.get('targets', []))[:200])}</td>"
        f"<td>{f.get('in_doubt_decided_s', '')}</td><td>{f.get('throughput_recovery_s')}</td></tr>"
        for f in results["faults"]
    )
    plot = (
        f'<img alt="latency and throughput" src="data:image/png;base64,{image}">'
        if image
        else f"<p>({e(NO_PLOT)})</p>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>chaos {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 6px;
font-size:13px;vertical-align:top}}table{{border-collapse:collapse}}.ok{{color:green}}
.bad{{color:red;font-weight:bold}}</style></head><body>
<h1>Chaos run: <span class={"ok" if results["valid"] else "bad"}>{verdict}</span></h1>
<p>{e(json.dumps(config))}</p>
<p>operations: {e(json.dumps(results["counts"]))};
liveness: {e(json.dumps(results["liveness"]))}</p>
<p>outcomes: {e(json.dumps(results.get("summary", {})))}</p>
<h2>Latency and throughput (faults shaded)</h2>{plot}
<h2>Checkers</h2><table><tr><th>checker</th><th>result</th><th>violations</th>
<th>examples</th></tr>{rows}</table>
<h2>Fault timeline</h2><table><tr><th>#</th><th>kind</th><th>start s</th><th>end s</th>
<th>targets</th><th>in-doubt decided s</th><th>throughput back to 90% s</th></tr>{faults}
</table></body></html>"""


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
