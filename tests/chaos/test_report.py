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
