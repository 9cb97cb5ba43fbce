"""Errors of the participant SDK and the client API.

Server errors arrive as gRPC status codes and map to one class each, carrying the
server's message. ``OutcomeUnknown`` is not a failure (rule 8): the write may or may
not have been applied; resolve it by id (``ConcordClient.outcome``), never by retrying
the write blindly.
"""

from __future__ import annotations

from participant_sdk.isolation import LockConflict
from participant_sdk.steps import BranchClosed, MustAsk
from participant_sdk.store import StoreError, StoreLimitError

__all__ = [
    "ActionFailed",
    "AlreadyExists",
    "BranchClosed",
    "Busy",
    "ConcordError",
    "FailedPrecondition",
    "InvalidArgument",
    "LockConflict",
    "MustAsk",
    "NotACoordinator",
    "NotFound",
    "OutcomeUnknown",
    "ParticipantStopped",
    "PermissionDenied",
    "ResourceExhausted",
    "StoreError",
    "StoreLimitError",
    "TransactionAborted",
    "Unavailable",
]


class ConcordError(Exception):
    """An answer from the cluster, or the lack of one, that the caller must handle."""


class InvalidArgument(ConcordError):
    """The request is malformed or exceeds a named limit (INVALID_ARGUMENT)."""


class NotFound(ConcordError):
    """The cluster does not know this id (NOT_FOUND)."""


class AlreadyExists(ConcordError):
    """The id is taken, for example by a presumed-abort tombstone (ALREADY_EXISTS)."""


class FailedPrecondition(ConcordError):
    """The round is not in a phase that allows this call (FAILED_PRECONDITION)."""


class PermissionDenied(ConcordError):
    """This caller may not do this to this round, e.g. another client's transaction
    (PERMISSION_DENIED)."""


class ResourceExhausted(ConcordError):
    """A cluster limit is reached, such as rounds in flight (RESOURCE_EXHAUSTED)."""


class Busy(ConcordError):
    """The participants are in a rollback or checkpoint round: retry later (ABORTED)."""


class Unavailable(ConcordError):
    """No node reachable through the configured addresses could serve the call; nothing
    was written by this call (every attempt failed before a leader took it)."""


class NotACoordinator(Unavailable):
    """The address is not a Concord coordinator's gRPC address, or one this client
    cannot talk to (TLS against plaintext, a certificate of another cluster): the
    message names the address and the likely mistake. Nothing was written."""


class TransactionAborted(ConcordError):
    def __init__(self, txn_id: str, reason: str = "") -> None:
        super().__init__(f"transaction {txn_id} aborted" + (f": {reason}" if reason else ""))
        self.txn_id = txn_id
        self.reason = reason


class ActionFailed(ConcordError):
    """A transaction action failed at its participant: the handler raised, or the
    action is not declared there. Its branch votes NO: the transaction can only
    abort."""

    def __init__(self, txn_id: str, participant_id: str, action: str, reason: str) -> None:
        super().__init__(f"{participant_id}.{action} in transaction {txn_id}: {reason}")
        self.txn_id = txn_id
        self.participant_id = participant_id
        self.action = action
        self.reason = reason


class OutcomeUnknown(ConcordError):
    """The write may or may not have been applied. Resolve with ``outcome(txn_id)``."""

    def __init__(self, txn_id: str, detail: str = "") -> None:
        message = f"outcome of {txn_id} is unknown; resolve it with outcome({txn_id!r})"
        super().__init__(message + (f" ({detail})" if detail else ""))
        self.txn_id = txn_id
        self.detail = detail


class ParticipantStopped(ConcordError):
    """The participant is not running: never started, stopped, or stopped itself after
    a failed durable write (memory was ahead of disk)."""
