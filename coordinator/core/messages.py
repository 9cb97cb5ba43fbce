"""Messages between the coordinator's leader and participants.

The core's outbox produces ``Prepare`` and ``Decide`` (and, for sagas, ``ExecuteStep``
and ``CompensateStep``); participants answer with ``VoteReply``, ``AckReply``,
``StepReply`` or ``Refused``. Every message names its round and kind so
that repeating one changes nothing (rule 5), and the sender stamps its Raft term on
it (``term``) so participants can fence off an older leader (rule 6).

Wire form: ``concord.v1`` in protos/concord/v1/participant.proto.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.core.types import Decision, Kind, StepOutcome


@dataclass(frozen=True, kw_only=True, slots=True)
class TxnAction:
    """One participant's part of a one-shot transaction: its handler ``action`` run on
    ``payload`` (JSON) inside the Prepare, before it votes."""

    participant_id: str
    action: str
    payload: bytes = b""


@dataclass(frozen=True, kw_only=True, slots=True)
class Prepare:
    """Phase one: ask ``participant_id`` for its durable vote on the round."""

    round_id: str
    kind: Kind
    participant_id: str
    session_id: str
    checkpoint_id: str = ""
    label: str = ""
    term: int = 0
    # One-shot transaction: run this action on ``payload`` (JSON) first, then vote.
    action: str = ""
    payload: bytes = b""


@dataclass(frozen=True, kw_only=True, slots=True)
class Decide:
    """Phase two: the applied decision, until the participant acknowledges it."""

    round_id: str
    kind: Kind
    participant_id: str
    decision: Decision
    checkpoint_id: str = ""
    term: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class VoteReply:
    round_id: str
    participant_id: str
    yes: bool
    reason: str = ""
    result: bytes = b""  # the result of the Prepare's action, when it carried one


@dataclass(frozen=True, kw_only=True, slots=True)
class AckReply:
    round_id: str
    participant_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Refused:
    """The participant did not act: the sender's term is older than one it has seen
    (fencing), or the message conflicts with what it durably knows."""

    round_id: str
    participant_id: str
    term_seen: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecuteStep:
    """Saga: run step ``step`` (its action, once in effect), resent until reported."""

    round_id: str
    step: int
    participant_id: str
    action: str
    payload: bytes = b""
    term: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class CompensateStep:
    """Saga: undo step ``step`` if it ran here, and remember that it must never run."""

    round_id: str
    step: int
    participant_id: str
    action: str
    payload: bytes = b""
    result: bytes = b""  # what the step returned, if the coordinator heard it
    term: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class StepReply:
    round_id: str
    step: int
    participant_id: str
    outcome: StepOutcome
    reason: str = ""
    result: bytes = b""


ToParticipant = Prepare | Decide | ExecuteStep | CompensateStep
FromParticipant = VoteReply | AckReply | Refused | StepReply
