"""The chaos report without matplotlib (the `chaos` extra not installed): the run says
so in one line and the report says why it has no plot, instead of a silent omission."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from simulations.tier2 import report


def test_without_matplotlib_the_report_says_why_it_has_no_plot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    history: list[dict[str, Any]] = [{"type": "ok", "t": 1.0, "latency_s": 0.01}]
    assert report._plot(history, []) is None
    results = {"valid": True, "counts": {}, "liveness": None, "checkers": {}, "faults": []}
    page = report._html(results, None, {})
    assert "pip install &#x27;concord-txn[chaos]&#x27;" in page
    assert "concord-txn[chaos]" in report.NO_PLOT


# ---------------------------------------------------------------- the header


def _results(valid: bool) -> dict[str, Any]:
    bad = ["t7: committed at p1, aborted at p2", "t9: committed at p1, aborted at p3"]
    return {
        "valid": valid,
        "counts": {"invoke": 20, "ok": 12, "fail": 7, "info": 1},
        "liveness": {"type": "liveness", "bound_s": 20.0, "settled_s": 0.25, "in_doubt": []},
        "checkers": {
            "atomicity": {
                "valid": valid,
                "violations": 0 if valid else 2,
                "examples": [] if valid else bad,
            },
            "liveness": {"valid": True, "violations": 0, "examples": []},
        },
        "faults": [
            {"id": 0, "kind": "kill-leader", "start": 5.0, "end": 8.0, "targets": ["c1"]},
            {"id": 1, "kind": "delay", "start": 9.0, "end": 12.0, "targets": ["all links"]},
            {"id": 2, "kind": "delay", "start": 13.0, "end": 14.0, "targets": ["all links"]},
        ],
        "summary": {
            "transfer": {"aborted_conflict": 3, "committed": 11, "unknown_commit": 1},
            "in_doubt_max": 2,
            "initial_total": 1000,
            "final_total": 1000,
        },
    }


CONFIG = {
    "workload": "bank",
    "nemeses": ["kill", "delay"],
    "time_s": 60.0,
    "nodes": 3,
    "participants": 4,
    "clients": 2,
    "seed": 7,
    "insecure": False,
}


def test_the_header_reads_as_sentences_not_json() -> None:
    assert report.header(_results(True), CONFIG).text() == "\n".join(
        [
            "VALID: all 2 checkers passed",
            "run: bank workload, 60 s, 3 nodes, 4 participants, 2 clients, seed 7, TLS; "
            "nemeses: kill, delay",
            "operations: 20 invoked; 12 ok, 7 failed, 1 with an unknown outcome",
            "liveness: nothing in doubt 0.25 s after the heal (bound 20 s)",
            "transfer: 3 aborted (conflict), 11 committed, 1 unknown (commit)",
            "in doubt at one participant at once: at most 2",
            "bank total: 1000 -> 1000 (conserved)",
            "faults: 3 (delay 2, kill-leader 1)",
            "checkers:",
            "  ok    atomicity",
            "  ok    liveness",
        ]
    )


def test_an_invalid_run_names_its_failed_checkers_first() -> None:
    top = report.header(_results(False), {})
    assert top.verdict == "INVALID: 1 of 2 checkers failed (atomicity)"
    assert top.checkers[0].text() == "FAIL  atomicity: 2 violations"
    assert not any(line.startswith("run:") for line in top.lines)  # no config.json
    page = report._html(_results(False), None, {})
    assert "INVALID: 1 of 2 checkers failed (atomicity)" in page
    assert "t7: committed at p1, aborted at p2" in page
    assert '{"invoke"' not in page and "{&quot;" not in page.split("<details>")[0]


def test_liveness_lines() -> None:
    still = {"bound_s": 20.0, "settled_s": None, "in_doubt": ["t1", "t2"]}
    assert report._liveness(still) == "still in doubt 20 s after the heal: t1, t2"
    assert report._liveness(None) == "no check ran"


# ---------------------------------------------------------------- fault labels


def test_lanes_never_overlap_and_reuse_the_lowest_free_lane() -> None:
    spans = [(0.0, 10.0), (5.0, 8.0), (9.0, 12.0), (10.0, 11.0), (20.0, 30.0)]
    assert report.lanes(spans) == [0, 1, 1, 0, 0]
    assert report.lanes(spans, gap=1.0) == [0, 1, 1, 2, 0]
    assert report.lanes([]) == []


def test_a_label_past_the_end_of_the_axis_ends_there() -> None:
    spans = [(1.0, 2.0, "#0 kill-leader c1"), (98.0, 99.0, "#1 delay all links")]
    first, last = report.place_fault_labels(spans, horizon_s=100.0)
    assert (first.align, first.x, first.lane) == ("left", 1.0, 0)
    assert (last.align, last.x, last.lane) == ("right", 100.0, 0)


def _overlap(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_rendered_fault_labels_do_not_overlap() -> None:
    """Crowded faults (a new one every 2 s, long labels) on the real figure: no two
    labels' drawn boxes overlap, and each lies inside the figure."""
    pytest.importorskip("matplotlib")
    faults = [
        {
            "id": i,
            "kind": ("majority-minority", "kill-participant-after-yes", "delay")[i % 3],
            "start": 2.0 * i,
            "end": 2.0 * i + 1.5,
            "targets": ["c1->c2", "c1->c3", "c2->c1"] if i % 3 == 0 else ["p2"],
        }
        for i in range(30)
    ]
    history = [{"type": "ok", "t": float(t), "latency_s": 0.01} for t in range(61)]
    figure = report._figure(history, faults)
    try:
        renderer = figure.canvas.get_renderer()
        labels = [
            t for t in figure.findobj() if getattr(t, "get_gid", lambda: None)() == "fault-label"
        ]
        assert len(labels) == 30
        boxes = [t.get_window_extent(renderer) for t in labels]
        whole = figure.bbox
        for i, box in enumerate(boxes):
            assert whole.x0 <= box.x0 and box.x1 <= whole.x1, labels[i].get_text()
            for j in range(i):
                assert not _overlap(box, boxes[j]), (labels[i].get_text(), labels[j].get_text())
        # The timeline shares the time axis with the plots above it.
        axes = figure.get_axes()
        assert len({a.get_xlim() for a in axes}) == 1
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)


def test_the_command_lines_summary_has_no_dict_repr() -> None:
    from pathlib import Path

    from simulations.tier2.cli import _summary

    text = _summary(_results(True), Path("run"))
    assert text.splitlines()[0].startswith("valid: ok 12 fail 7 info 1; faults 3")
    assert "unknown 1 (commit 1);" in text and "{" not in text
