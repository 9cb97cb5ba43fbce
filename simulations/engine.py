"""A deterministic discrete-event loop: simulated time, one seeded random source.

Everything in a tier-1 run happens through ``Loop.at``/``Loop.after``; ties are broken
by scheduling order, so a (seed, code) pair replays exactly. Nothing here reads the
wall clock, and no code in a run may iterate a ``set`` of strings where order matters
(string hashing differs between processes).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any


class Loop:
    def __init__(self, seed: int) -> None:
        self.now_ms = 0
        self.rng = random.Random(seed)
        self._queue: list[tuple[int, int, Callable[[], Any]]] = []
        self._seq = 0
        self.events_run = 0

    # ``at`` and ``after`` run for every message and timer of a run (a few thousand
    # per simulated second): kept to a comparison and a push, nothing else.

    def at(self, time_ms: int, fn: Callable[[], Any]) -> None:
        now_ms = self.now_ms
        self._seq += 1
        _heappush(self._queue, (time_ms if time_ms > now_ms else now_ms, self._seq, fn))

    def after(self, delay_ms: int, fn: Callable[[], Any]) -> None:
        now_ms = self.now_ms
        self._seq += 1
        _heappush(self._queue, (now_ms + delay_ms if delay_ms > 0 else now_ms, self._seq, fn))

    def every(self, period_ms: int, fn: Callable[[], Any], *, until_ms: int) -> None:
        """Call ``fn`` every ``period_ms`` until ``until_ms``."""

        def tick() -> None:
            fn()
            if self.now_ms + period_ms <= until_ms:
                self.after(period_ms, tick)

        self.after(period_ms, tick)

    def run_until(self, end_ms: int) -> None:
        queue, pop = self._queue, _heappop
        ran = 0
        try:
            while queue and queue[0][0] <= end_ms:
                time_ms, _, fn = pop(queue)
                self.now_ms = time_ms
                ran += 1
                fn()
        finally:
            self.events_run += ran
        self.now_ms = max(self.now_ms, end_ms)


_heappush = heapq.heappush
_heappop = heapq.heappop
