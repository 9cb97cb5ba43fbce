"""A simulated network: drop, delay (hence reorder), duplicate, partitions that heal.

A partition is a list of groups; two nodes can talk only if no group separates them
(a node in no group talks to everyone not cut off). One-way cuts block a single
direction. Several partitions and cuts can be in force at once, each healing on its
own. Delivery calls ``deliver(dst, src, payload)`` on the world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from simulations.engine import Loop


@dataclass(slots=True)
class LinkFaults:
    drop_p: float = 0.0
    duplicate_p: float = 0.0
    delay_ms_min: int = 1
    delay_ms_max: int = 5


class Network:
    def __init__(self, loop: Loop, deliver: Callable[[str, str, Any], None]) -> None:
        self.loop = loop
        self.deliver = deliver
        self.faults = LinkFaults()
        self._partitions: dict[int, dict[str, int]] = {}
        self._one_way: dict[int, tuple[str, str]] = {}
        self._cuts = 0
        self.version = 0  # changes whenever a cut starts or heals (for caches of reach)
        self.sent = 0
        self.dropped = 0

    def partition(self, groups: list[list[str]]) -> int:
        """Start a partition; returns its id for ``heal``."""
        self._cuts += 1
        self.version += 1
        self._partitions[self._cuts] = {node: i for i, group in enumerate(groups) for node in group}
        return self._cuts

    def cut_one_way(self, src: str, dst: str) -> int:
        self._cuts += 1
        self.version += 1
        self._one_way[self._cuts] = (src, dst)
        return self._cuts

    def heal(self, cut_id: int) -> None:
        self.version += 1
        self._partitions.pop(cut_id, None)
        self._one_way.pop(cut_id, None)

    def heal_all(self) -> None:
        self.version += 1
        self._partitions.clear()
        self._one_way.clear()

    def connected(self, a: str, b: str) -> bool:
        if not self._partitions and not self._one_way:
            return True
        if (a, b) in self._one_way.values():
            return False
        for group_of in self._partitions.values():
            ga, gb = group_of.get(a), group_of.get(b)
            if ga is not None and gb is not None and ga != gb:
                return False
        return True

    def send(self, src: str, dst: str, payload: Any) -> None:
        self.sent += 1
        rng, faults = self.loop.rng, self.faults
        copies = 2 if rng.random() < faults.duplicate_p else 1
        for _ in range(copies):
            if rng.random() < faults.drop_p:
                self.dropped += 1
                continue
            # randint(a, b) is randrange(a, b + 1): the same draw, one call fewer.
            delay_ms = rng.randrange(faults.delay_ms_min, faults.delay_ms_max + 1)
            # Reachability is judged at delivery: a partition that starts while a
            # message is in flight swallows it, as a real one would.
            self.loop.after(delay_ms, partial(self._arrive, src, dst, payload))

    def _arrive(self, src: str, dst: str, payload: Any) -> None:
        if (not self._partitions and not self._one_way) or self.connected(src, dst):
            self.deliver(dst, src, payload)
        else:
            self.dropped += 1
