"""`concord sim` progress: seeds done, violations so far and an ETA on a terminal
(one line rewritten in place), a plain line every 10 s otherwise; stdout keeps only
the results. The clock is a fake one: nothing here waits."""

from __future__ import annotations

import io

import pytest

from coordinator.runtime.cli import main
from simulations import progress
from simulations.progress import Progress, eta_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_text() -> None:
    assert [eta_text(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_not_a_terminal_prints_a_line_every_10_s() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(2000, out, clock, tty=False)
    for done in range(1, 41):  # 40 seeds in 5 s: no line yet
        clock.now += 0.125
        bar.update(done, 0)
    assert out.getvalue() == ""
    for done in range(41, 81):  # 10 s: one line
        clock.now += 0.125
        bar.update(done, 3)
    assert out.getvalue() == "seeds 80/2000  violations 3  ETA 4m00s\n"
    bar.close()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_a_terminal_rewrites_one_line_with_an_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(10, out, clock, tty=True)
    clock.now += 1.0
    bar.update(1, 0)
    clock.now += 1.0
    bar.update(2, 1)
    assert out.getvalue() == (
        "\r\x1b[Kseeds 1/10  violations 0  ETA 9s\r\x1b[Kseeds 2/10  violations 1  ETA 8s"
    )
    bar.close()  # wiped: the summary line follows on a clean line
    assert out.getvalue().endswith("\r\x1b[K")


def test_the_command_reports_progress_on_stderr_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    assert main(["sim", "--seeds", "3", "--jobs", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("seeds: 3  violations: 0  "), out
    assert err.splitlines() == [
        "seeds 1/3  violations 0  ETA " + err.splitlines()[0].split("ETA ")[1],
        "seeds 2/3  violations 0  ETA " + err.splitlines()[1].split("ETA ")[1],
        "seeds 3/3  violations 0",
    ], err
    assert main(["sim", "--seeds", "3", "--jobs", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
