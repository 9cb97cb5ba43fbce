from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_TXN: _ClassVar[Kind]
    KIND_ROLLBACK: _ClassVar[Kind]
    KIND_CHECKPOINT: _ClassVar[Kind]
    KIND_SAGA: _ClassVar[Kind]

class StepOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_OUTCOME_UNSPECIFIED: _ClassVar[StepOutcome]
    STEP_OUTCOME_RUNNING: _ClassVar[StepOutcome]
    STEP_OUTCOME_DONE: _ClassVar[StepOutcome]
    STEP_OUTCOME_FAILED: _ClassVar[StepOutcome]
    STEP_OUTCOME_COMPENSATED: _ClassVar[StepOutcome]
    STEP_OUTCOME_ESCALATED: _ClassVar[StepOutcome]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_COMMIT: _ClassVar[Decision]
    DECISION_ABORT: _ClassVar[Decision]
KIND_UNSPECIFIED: Kind
KIND_TXN: Kind
KIND_ROLLBACK: Kind
KIND_CHECKPOINT: Kind
KIND_SAGA: Kind
STEP_OUTCOME_UNSPECIFIED: StepOutcome
STEP_OUTCOME_RUNNING: StepOutcome
STEP_OUTCOME_DONE: StepOutcome
STEP_OUTCOME_FAILED: StepOutcome
STEP_OUTCOME_COMPENSATED: StepOutcome
STEP_OUTCOME_ESCALATED: StepOutcome
DECISION_UNSPECIFIED: Decision
DECISION_COMMIT: Decision
DECISION_ABORT: Decision

class TxnAction(_message.Message):
    __slots__ = ("participant_id", "action", "payload")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    action: str
    payload: bytes
    def __init__(self, participant_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...
