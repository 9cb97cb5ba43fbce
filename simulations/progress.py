"""Progress of a long `concord sim` run, on stderr (stdout keeps only the results).

On a terminal one line is rewritten in place (seeds done, violations so far, ETA);
otherwise (a CI log, a file) a plain line every ``LINE_EVERY_S`` seconds, so a log
shows the run is alive without filling up. The clock and the stream are parameters:
the tests drive both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

LINE_EVERY_S = 10.0  # not a terminal: one line this often
REDRAW_EVERY_S = 0.2  # a terminal: redraw at most this often


def eta_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Progress:
    """``update(done, violations)`` after each seed; ``close()`` at the end."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = clock()
        self._last = self.started
        self._drawn = False

    def line(self, done: int, violations: int) -> str:
        elapsed = self.clock() - self.started
        text = f"seeds {done}/{self.total}  violations {violations}"
        if 0 < done < self.total and elapsed > 0:
            text += f"  ETA {eta_text(elapsed / done * (self.total - done))}"
        return text

    def update(self, done: int, violations: int) -> None:
        now = self.clock()
        every = REDRAW_EVERY_S if self.tty else LINE_EVERY_S
        if now - self._last < every:
            return
        self._last = now
        if self.tty:
            self.stream.write(f"\r\x1b[K{self.line(done, violations)}")
            self._drawn = True
        else:
            self.stream.write(f"{self.line(done, violations)}\n")
        self.stream.flush()

    def close(self) -> None:
        """Wipe the terminal's progress line (the summary line follows on stdout)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
