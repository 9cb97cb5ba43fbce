"""Deterministic replay: recorded random seeds and recorded tool/LLM outputs.

Theory of operation
-------------------
An agent that re-runs from a checkpoint follows the same path only if what it draws
from chance and what it gets from the outside are the same. A ``Replay`` holds both:

- ``random()``: a ``random.Random`` seeded from (seed, generation). The generation is
  the checkpoint the recorder was last bound to (``bind``): a run that restores
  checkpoint G is bound to G again and draws the same numbers as the first run did
  after G.
- ``record(kind, key, fn)``: the first call runs ``fn`` and records its output under
  (kind, key); later calls (a replay) return the recorded output without calling.
  ``forget`` drops a recording where the agent wants a fresh answer this time.

The recorder is saved with a checkpoint (``CheckpointStore.save(..., replay=r)``,
under a reserved state key) and comes back with it (``Checkpoint.replay``). It is
plain data: JSON in, JSON out.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["REPLAY_KEY", "Replay", "ReplayLimitError"]

REPLAY_KEY = "__concord_replay__"
T = TypeVar("T")


class ReplayLimitError(ValueError):
    """``recordings_max`` reached: forget old recordings or raise the limit."""


class Replay:
    def __init__(
        self,
        seed: int,
        *,
        generation: int = 0,
        recordings: dict[str, Any] | None = None,
        recordings_max: int = 10_000,
    ) -> None:
        self.seed = seed
        self.generation = generation
        self.recordings_max = recordings_max
        self._recordings: dict[str, Any] = dict(recordings or {})
        self._random: random.Random | None = None
        self.replayed = 0  # outputs served from a recording since construction

    # -------------------------------------------------------------- chance

    def bind(self, generation: int) -> None:
        """Start the random stream of checkpoint ``generation`` (after a save or a
        restore of it)."""
        self.generation = generation
        self._random = None

    def random(self) -> random.Random:
        """The stream of the bound generation: the same numbers on every re-run."""
        if self._random is None:
            digest = hashlib.sha256(f"{self.seed}/{self.generation}".encode()).digest()
            self._random = random.Random(int.from_bytes(digest[:8], "big"))
        return self._random

    # -------------------------------------------------------------- outputs

    def record(self, kind: str, key: str, fn: Callable[[], T]) -> T:
        """``fn()``'s output, recorded on the first call and returned from the
        recording afterwards. The output must be JSON-serialisable."""
        name = f"{kind}\x00{key}"
        if name in self._recordings:
            self.replayed += 1
            return self._recordings[name]  # type: ignore[no-any-return]
        if len(self._recordings) >= self.recordings_max:
            raise ReplayLimitError(
                f"{len(self._recordings)} recordings = recordings_max={self.recordings_max}"
            )
        output = fn()
        json.dumps(output)  # refuse now what could not be saved with a checkpoint
        self._recordings[name] = output
        return output

    def recorded(self, kind: str, key: str) -> bool:
        return f"{kind}\x00{key}" in self._recordings

    def forget(self, kind: str, key: str | None = None) -> None:
        """Drop one recording, or every recording of ``kind``."""
        if key is not None:
            self._recordings.pop(f"{kind}\x00{key}", None)
            return
        for name in [n for n in self._recordings if n.split("\x00", 1)[0] == kind]:
            del self._recordings[name]

    # -------------------------------------------------------------- data

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "generation": self.generation,
            "recordings": dict(self._recordings),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Replay:
        return cls(data["seed"], generation=data["generation"], recordings=data["recordings"])

    def merge_recordings(self, other: Replay) -> None:
        """Take ``other``'s recordings where this one has none (keep a failed run's
        outputs when re-running from an earlier checkpoint)."""
        for name, value in other._recordings.items():
            self._recordings.setdefault(name, value)
