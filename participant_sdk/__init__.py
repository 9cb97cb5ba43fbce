"""Concord participant SDK: the agent side of transactions, checkpoints and rollback.

Agent side (a participant)::

    p = Participant("seats", "/var/lib/seats", ["127.0.0.1:7001"], validate=seats_left)
    await p.start()                      # or p.start_in_thread()
    branch = p.begin(txn_id)
    branch.put("seat/12A", b"alice")     # applied only if the txn commits

Initiator side::

    async with ConcordClient(["127.0.0.1:7001"]) as client:
        async with client.transaction(participants=["seats", "payments"]) as txn:
            ...

See docs/sdk.md.
"""

from participant_sdk.client import (
    ConcordClient,
    RoundResult,
    SagaResult,
    SagaStep,
    SagaStepStatus,
    SyncConcordClient,
    SyncTransaction,
    Transaction,
    TxnStatus,
)
from participant_sdk.errors import (
    AlreadyExists,
    BranchClosed,
    Busy,
    ConcordError,
    FailedPrecondition,
    InvalidArgument,
    LockConflict,
    MustAsk,
    NotFound,
    OutcomeUnknown,
    ParticipantStopped,
    ResourceExhausted,
    StoreError,
    StoreLimitError,
    TransactionAborted,
    Unavailable,
)
from participant_sdk.isolation import Add, Version
from participant_sdk.participant import Branch, Participant, StateView, Validate
from participant_sdk.saga import SagaActions, StepContext, StepOutcomeUnknown
from participant_sdk.store import StoreLimits, Writes

__all__ = [
    "Add",
    "AlreadyExists",
    "Branch",
    "BranchClosed",
    "Busy",
    "ConcordClient",
    "ConcordError",
    "FailedPrecondition",
    "InvalidArgument",
    "LockConflict",
    "MustAsk",
    "NotFound",
    "OutcomeUnknown",
    "Participant",
    "ParticipantStopped",
    "ResourceExhausted",
    "RoundResult",
    "SagaActions",
    "SagaResult",
    "SagaStep",
    "SagaStepStatus",
    "StateView",
    "StepContext",
    "StepOutcomeUnknown",
    "StoreError",
    "StoreLimitError",
    "StoreLimits",
    "SyncConcordClient",
    "SyncTransaction",
    "Transaction",
    "TransactionAborted",
    "TxnStatus",
    "Unavailable",
    "Validate",
    "Version",
    "Writes",
]
