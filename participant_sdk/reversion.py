"""State reversion: restore a checkpoint atomically, release what was acquired after
it, compensate what was done after it, and bind replay to it.

Theory of operation
-------------------
``Reverter`` ties an agent's ``CheckpointStore``, its ``Resources`` (handles acquired
in this process), its ``EffectLog`` and its ``Replay`` to one *generation*: the
checkpoint generation of the store's head. Everything acquired or done while the
head is generation G is tagged G.

``restore(id)`` of a checkpoint of generation T:

1. ``CheckpointStore.restore``: one durable write appends the target's state as the
   new head. A process killed before it returns comes back with the old head, after
   it with the restored one: never a mix.
2. cleanup hooks of resources tagged T or later run, newest first (a failing hook is
   logged and reported, the others still run);
3. ``EffectLog.on_restore(T)``: effects called at or after T are compensated, newest
   first, exactly once in effect (see effects.py);
4. the replay recorder is bound to T, so the re-run draws the same random numbers;
   recorded tool outputs are kept (``keep_recordings``) or taken from T.

Steps 2-4 follow a durable step 1. Resources live only in this process (a crash
releases them with it); step 3 is redone by ``recover()`` after a restart: the head
record says which generation was restored, and ``on_restore`` is idempotent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from participant_sdk.checkpoints import Checkpoint, CheckpointInfo, CheckpointStore
from participant_sdk.effects import EffectLog
from participant_sdk.replay import Replay

__all__ = ["AgentRollback", "Resource", "Resources", "RestoreResult", "Reverter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Resource:
    token: int
    name: str
    generation: int
    release: Callable[[], Any]


class Resources:
    """Handles acquired in this process (connections, files, locks), each with the
    hook that releases it, tagged with the generation current at acquisition."""

    def __init__(self, resources_max: int = 10_000) -> None:
        self.resources_max = resources_max
        self.generation = 0
        self._held: dict[int, Resource] = {}
        self._next = 1
        self._lock = threading.Lock()

    def acquire(self, name: str, release: Callable[[], Any]) -> int:
        """Register a handle just acquired; returns a token for ``released``."""
        with self._lock:
            if len(self._held) >= self.resources_max:
                raise ValueError(
                    f"{len(self._held)} resources held = resources_max={self.resources_max}: "
                    "release some (released(token)) before acquiring more"
                )
            token = self._next
            self._next += 1
            self._held[token] = Resource(
                token=token, name=name, generation=self.generation, release=release
            )
            return token

    def released(self, token: int) -> None:
        """The agent released it itself: forget it (its hook will not run)."""
        with self._lock:
            self._held.pop(token, None)

    def held(self) -> list[Resource]:
        with self._lock:
            return sorted(self._held.values(), key=lambda r: r.token)

    def release_from(self, generation: int) -> list[tuple[str, str]]:
        """Run the hooks of resources tagged ``generation`` or later, newest first.
        Returns (name, error) for each hook that raised."""
        with self._lock:
            doomed = sorted(
                (r for r in self._held.values() if r.generation >= generation),
                key=lambda r: -r.token,
            )
            for r in doomed:
                del self._held[r.token]
        failures = []
        for r in doomed:
            try:
                r.release()
            except Exception as error:
                log.exception("cleanup hook of %s raised", r.name)
                failures.append((r.name, f"{type(error).__name__}: {error}"))
        return failures


@dataclass(frozen=True, kw_only=True, slots=True)
class RestoreResult:
    checkpoint: Checkpoint  # the new head (the restored state)
    restored_generation: int
    cleanup_failures: tuple[tuple[str, str], ...]


class Reverter:
    def __init__(
        self,
        checkpoints: CheckpointStore,
        *,
        resources: Resources | None = None,
        effects: EffectLog | None = None,
        replay: Replay | None = None,
    ) -> None:
        self.checkpoints = checkpoints
        self.resources = resources or Resources()
        self.effects = effects
        self.replay = replay
        self._bind(checkpoints.generation)

    @property
    def generation(self) -> int:
        return self.checkpoints.generation

    def _bind(self, generation: int) -> None:
        self.resources.generation = generation
        if self.effects is not None:
            self.effects.generation = generation
        if self.replay is not None:
            self.replay.bind(generation)

    def save(self, state: Mapping[str, Any], **options: Any) -> CheckpointInfo:
        """``CheckpointStore.save`` with the replay recorder; moves the generation."""
        info = self.checkpoints.save(state, replay=self.replay, **options)
        self._bind(info.generation)
        return info

    def restore(self, checkpoint_id: str, *, keep_recordings: bool = True) -> RestoreResult:
        target = self.checkpoints.info(checkpoint_id).generation
        head = self.checkpoints.restore(checkpoint_id)  # durable: the point of no return
        failures = self.resources.release_from(target)
        if self.effects is not None:
            self.effects.on_restore(target)
        if self.replay is not None:
            restored = head.replay
            if restored is not None and not keep_recordings:
                self.replay = restored
            elif restored is not None:
                self.replay.merge_recordings(restored)
        self._bind(head.info.generation)
        if self.replay is not None:
            # The re-run draws what the first run drew after ``target``.
            self.replay.bind(target)
        return RestoreResult(
            checkpoint=head, restored_generation=target, cleanup_failures=tuple(failures)
        )

    def recover(self) -> Checkpoint | None:
        """After a restart: the head's state; finish the compensations of a restore
        (or a decision) that a crash interrupted."""
        head = self.checkpoints.latest()
        if head is None:
            return None
        if self.effects is not None:
            restored = head.info.metadata.get("restored_generation")
            if head.info.restored_from and isinstance(restored, int):
                # Effects called since the restore (tagged with its generation) stand.
                self.effects.on_restore(restored, until=head.info.generation)
            self.effects.recover()
        self._bind(head.info.generation)
        if self.replay is not None and head.replay is not None:
            self.replay.merge_recordings(head.replay)
        return head


# The agent's answer after a restore and its compensations: (ok, what was checked).
Verify = Callable[[RestoreResult], tuple[bool, str]]


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentRollback:
    """Binds an agent's own state to the cluster's coordinated rounds (``Participant(
    rollback=...)``):

    - a global checkpoint round that this participant votes YES on first saves
      ``capture()`` in ``reverter``'s CheckpointStore under the round's checkpoint id
      (durable before the YES is); DISCARD drops it again;
    - a rollback round votes NO unless that checkpoint is here; on EXECUTE,
      ``reverter.restore`` puts the agent back (state, cleanup hooks, compensations of
      every effect after it, newest first), then ``restored(result)`` lets the agent
      reload, then ``verify(result)`` checks the outside world. A failed verification
      is reported (audit event, log, ``Participant.attention()``), never hidden.

    ``capture`` runs on a participant worker thread: it must be safe to call there."""

    reverter: Reverter
    capture: Callable[[], Mapping[str, Any]]
    restored: Callable[[RestoreResult], None] | None = None
    verify: Verify | None = None
