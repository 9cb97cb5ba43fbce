"""The optional parts a ``Participant`` composes: sagas, agent rollback and effects.

Each part is given to the participant as the object the agent already builds
(``SagaActions``, ``AgentRollback``, ``EffectLog``) and wrapped here in a
``Capability``: the participant calls the same hooks on each, so none needs wiring by
hand, and each is recovered by ``start()``:

- ``start``: after the store is open and the core rebuilt, before serving. Sagas
  start their workers; agent rollback finishes what a crash cut short (``Reverter.
  recover``, then the restores still pending); effects apply decisions made durable
  just before a crash (``EffectLog.resume``) and finish their compensations.
- ``vote``: an extra say on checkpoint and rollback rounds (agent rollback only).
- ``after_durable``: an action of a durable Step (run a saga step, restore or drop a
  checkpoint).
- ``decided``: a transaction's decision is durable here (effects: ``on_decision``).
  Runs under the participant's lock.
- ``attention``: what needs an operator; ``stop``: before the store closes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.core.limits import clean_text
from coordinator.core.messages import Prepare
from coordinator.core.types import Decision, Kind
from participant_sdk.checkpoints import CheckpointError
from participant_sdk.core import (
    DropCheckpoint,
    ParticipantCore,
    RestoreCheckpoint,
    RunCompensation,
    RunStep,
    Step,
)
from participant_sdk.effects import EffectLog
from participant_sdk.reversion import AgentRollback
from participant_sdk.saga import SagaActions, SagaRunner
from participant_sdk.store import ParticipantStore

__all__ = ["AgentRestorer", "Capability", "Effects", "Escalation", "Host", "Sagas"]

log = logging.getLogger(__name__)

ESCALATIONS_REPORTED_MAX = 100  # the cluster's escalations_per_participant_max
ESCALATION_DETAIL_BYTES_MAX = 1024  # the cluster's reason_bytes_max


@dataclass(frozen=True, slots=True)
class Host:
    """What the participant offers its capabilities."""

    participant_id: str
    store: Callable[[], ParticipantStore | None]
    # The decision of a transaction as recorded here (None: undecided or unknown).
    decision_of: Callable[[str], Decision | None]
    # Make a saga step's result durable: a Step made from the running core and clock.
    finish_saga_work: Callable[[Callable[[ParticipantCore, int], Step]], None]


# (txn id, effect key, detail) of an effect whose compensation escalated.
Escalation = tuple[str, str, str]


class Capability:
    """An optional part of a participant; every hook does nothing unless overridden."""

    def start(self, host: Host) -> None:
        pass

    def vote(self, prepare: Prepare) -> tuple[bool, str] | None:
        """(yes, reason) on a round, or None: no objection."""
        return None

    def after_durable(self, action: object) -> None:
        pass

    def decided(self, txn_id: str, decision: Decision) -> None:
        pass

    def attention(self) -> list[str]:
        return []

    def escalations(self) -> tuple[Escalation, ...]:
        return ()

    def stop(self) -> None:
        pass


class Sagas(Capability):
    """Runs the saga actions this agent offers (saga.py) on worker threads. Always
    present: without actions, a step the cluster asks for fails, naming the action."""

    def __init__(self, actions: SagaActions | None) -> None:
        self.actions = actions
        self._runner: SagaRunner | None = None

    def start(self, host: Host) -> None:
        self._runner = SagaRunner(self.actions, host.participant_id, host.finish_saga_work)

    def after_durable(self, action: object) -> None:
        if isinstance(action, RunStep | RunCompensation) and self._runner is not None:
            self._runner.submit(action)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()  # unfinished steps stay durable: they run again on restart


class AgentRestorer(Capability):
    """The agent's own state in coordinated checkpoints and rollbacks (reversion.py).
    Always present: without an ``AgentRollback`` a rollback restores the store's state
    only, and says so in the store."""

    def __init__(self, binding: AgentRollback | None) -> None:
        self.binding = binding
        self._host: Host | None = None
        self._lock = threading.Lock()
        self._attention: list[str] = []  # failed verifications and restores

    def start(self, host: Host) -> None:
        self._host = host
        if self.binding is not None:
            self.binding.reverter.recover()  # compensations a crash cut short
        store = host.store()
        if store is not None:
            for checkpoint_id in store.agent_restores_pending():
                self._restore_later(checkpoint_id)  # a rollback a crash cut short

    def vote(self, prepare: Prepare) -> tuple[bool, str] | None:
        if self.binding is None:
            return None
        checkpoints = self.binding.reverter.checkpoints
        if prepare.kind is Kind.ROLLBACK:
            try:
                checkpoints.info(prepare.checkpoint_id)
            except CheckpointError as error:
                return False, f"agent checkpoint {prepare.checkpoint_id!r}: {error}"
        elif prepare.kind is Kind.CHECKPOINT and not self._saved_for(prepare):
            # Durable before the YES is (the vote's write comes after this returns).
            try:
                self.binding.reverter.save(
                    self.binding.capture(),
                    checkpoint_id=prepare.checkpoint_id,
                    label=prepare.label or prepare.checkpoint_id,
                    metadata={"round_id": prepare.round_id, "session_id": prepare.session_id},
                )
            except Exception as error:
                log.exception("agent checkpoint %r failed: voting NO", prepare.checkpoint_id)
                return False, f"agent checkpoint failed: {type(error).__name__}: {error}"
        return None

    def _saved_for(self, prepare: Prepare) -> bool:
        """Saved for this very round already (a crash came between the save and the
        YES vote's write, and the Prepare was sent again)."""
        assert self.binding is not None
        try:
            info = self.binding.reverter.checkpoints.info(prepare.checkpoint_id)
        except CheckpointError:
            return False
        return info.metadata.get("round_id") == prepare.round_id

    def after_durable(self, action: object) -> None:
        if isinstance(action, RestoreCheckpoint):
            self._restore_later(action.checkpoint_id)
        elif isinstance(action, DropCheckpoint) and self.binding is not None:
            with contextlib.suppress(CheckpointError):
                self.binding.reverter.checkpoints.drop(action.checkpoint_id)

    def attention(self) -> list[str]:
        with self._lock:
            return list(self._attention)

    def _restore_later(self, checkpoint_id: str) -> None:
        """After a durable EXECUTE (or at start, for one a crash cut short): restore
        the agent off the caller's thread: compensations may be slow. The store's
        marker is cleared only once it is done."""
        assert self._host is not None
        thread = threading.Thread(
            target=self._restore,
            args=(checkpoint_id,),
            name=f"restore-{self._host.participant_id}",
            daemon=True,
        )
        thread.start()

    def _restore(self, checkpoint_id: str) -> None:
        assert self._host is not None
        store, binding = self._host.store(), self.binding
        if store is None:
            return
        if binding is None:
            store.agent_restore_done(checkpoint_id, "store state only (no AgentRollback)")
            return
        try:
            result = binding.reverter.restore(checkpoint_id)
            if binding.restored is not None:
                binding.restored(result)
        except Exception as error:  # kept pending: the next start tries again
            log.exception("agent restore of %r failed; retried at the next start", checkpoint_id)
            self._report(store, checkpoint_id, f"agent restore failed: {error}")
            return
        detail = f"generation {result.restored_generation}"
        if result.cleanup_failures:
            detail += f"; cleanup failures: {list(result.cleanup_failures)}"
        if binding.verify is not None:
            try:
                ok, what = binding.verify(result)
            except Exception as error:
                ok, what = False, f"verify raised {type(error).__name__}: {error}"
            if not ok:
                self._report(store, checkpoint_id, f"verification failed: {what}")
            detail += f"; verified: {ok} {what}".rstrip()
        store.agent_restore_done(checkpoint_id, detail)

    def _report(self, store: ParticipantStore, checkpoint_id: str, what: str) -> None:
        assert self._host is not None
        log.error(
            "participant %s: %s (checkpoint %r)", self._host.participant_id, what, checkpoint_id
        )
        with self._lock:
            self._attention.append(f"{checkpoint_id}: {what}")
        with contextlib.suppress(Exception):
            store.audit_event("verification_failed", what[:1000], checkpoint_id)


class Effects(Capability):
    """The agent's effect log: a transaction's decision is applied to its effects (an
    ABORT compensates them), and its escalated compensations are reported to the
    cluster (``concord txn show`` names them) and listed by ``attention()``."""

    def __init__(self, effects: EffectLog) -> None:
        self.effects = effects

    def start(self, host: Host) -> None:
        # A decision made durable just before a crash may not have reached the log.
        self.effects.resume(host.decision_of)

    def decided(self, txn_id: str, decision: Decision) -> None:
        self.effects.on_decision(txn_id, decision)

    def escalations(self) -> tuple[Escalation, ...]:
        # The detail is the tool's error text: cleaned to what the cluster accepts (no
        # control characters, reason_bytes_max), or the report would be refused whole.
        return tuple(
            (e.txn_id, e.key, clean_text(e.error, ESCALATION_DETAIL_BYTES_MAX))
            for e in sorted(self.effects.escalations(), key=lambda e: e.seq)
        )[:ESCALATIONS_REPORTED_MAX]

    def attention(self) -> list[str]:
        return [f"{txn}: effect {key} escalated: {why}" for txn, key, why in self.escalations()]
