"""Checkpoint policy: what kind of record a checkpoint store writes and what it keeps
(``CheckpointPolicy``), and when an agent checkpoints (``When``, ``should_checkpoint``,
``Checkpointer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from participant_sdk.storage.checkpoint_format import CheckpointInfo

__all__ = ["CheckpointPolicy", "Checkpointer", "Saves", "When", "should_checkpoint"]


class Saves(Protocol):
    """What a ``Checkpointer`` checkpoints into (a ``CheckpointStore``)."""

    def save(
        self,
        state: Mapping[str, Any],
        *,
        label: str = "",
        metadata: Mapping[str, Any] | None = None,
        txn_id: str = "",
    ) -> CheckpointInfo: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointPolicy:
    """What kind of record to write and what to keep."""

    full_every_n: int = 16  # a full record at least every n saves
    delta_fraction_max: float = 0.5  # a delta bigger than this share of the full is written full
    keep_last_n: int = 32
    keep_labelled: bool = True  # labelled checkpoints survive keep_last_n (not drop/end_txn)

    def __post_init__(self) -> None:
        if self.full_every_n < 1 or self.keep_last_n < 1:
            raise ValueError("full_every_n and keep_last_n must be at least 1")
        if not 0.0 < self.delta_fraction_max <= 1.0:
            raise ValueError("delta_fraction_max must be in (0, 1]")


class When(Enum):
    """Moments a ``Checkpointer`` can checkpoint at."""

    STEP = "step"
    TOOL_CALL = "tool_call"
    MUTATIONS = "mutations"  # every ``every_n_mutations`` mutations
    MANUAL = "manual"  # only explicit ``checkpoint()`` calls (always allowed)


def should_checkpoint(
    when: frozenset[When], event: When, mutations_since: int, every_n_mutations: int
) -> bool:
    """Pure: does ``event`` call for a checkpoint under policy ``when``?"""
    if event is When.MANUAL:
        return True
    if event is When.MUTATIONS:
        return When.MUTATIONS in when and mutations_since >= every_n_mutations
    return event in when


class Checkpointer:
    """Applies a 'when' policy: call ``step``, ``tool_call`` or ``mutated`` at those
    moments with the current state; it saves when the policy says so."""

    def __init__(
        self,
        store: Saves,
        when: frozenset[When] = frozenset({When.STEP}),
        *,
        every_n_mutations: int = 100,
        txn_id: str = "",
    ) -> None:
        if every_n_mutations < 1:
            raise ValueError("every_n_mutations must be at least 1")
        self.store = store
        self.when = when
        self.every_n_mutations = every_n_mutations
        self.txn_id = txn_id
        self._mutations = 0

    def _maybe(self, event: When, state: Mapping[str, Any], label: str) -> CheckpointInfo | None:
        if not should_checkpoint(self.when, event, self._mutations, self.every_n_mutations):
            return None
        self._mutations = 0
        return self.store.save(
            state, label=label, metadata={"when": event.value}, txn_id=self.txn_id
        )

    def step(self, state: Mapping[str, Any], label: str = "") -> CheckpointInfo | None:
        return self._maybe(When.STEP, state, label)

    def tool_call(self, state: Mapping[str, Any], label: str = "") -> CheckpointInfo | None:
        return self._maybe(When.TOOL_CALL, state, label)

    def mutated(self, state: Mapping[str, Any], count: int = 1) -> CheckpointInfo | None:
        self._mutations += count
        return self._maybe(When.MUTATIONS, state, "")

    def checkpoint(self, state: Mapping[str, Any], label: str = "") -> CheckpointInfo:
        info = self._maybe(When.MANUAL, state, label)
        assert info is not None
        return info
