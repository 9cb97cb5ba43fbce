from concord.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginTxn(_message.Message):
    __slots__ = ("txn_id", "session_id", "participants", "timeout_ms", "now_ms", "owner", "actions")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    session_id: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    now_ms: int
    owner: str
    actions: _containers.RepeatedCompositeFieldContainer[_common_pb2.TxnAction]
    def __init__(self, txn_id: _Optional[str] = ..., session_id: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ..., now_ms: _Optional[int] = ..., owner: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[_common_pb2.TxnAction, _Mapping]]] = ...) -> None: ...

class Enlist(_message.Message):
    __slots__ = ("txn_id", "participant_id", "now_ms")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    participant_id: str
    now_ms: int
    def __init__(self, txn_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., now_ms: _Optional[int] = ...) -> None: ...

class RequestCommit(_message.Message):
    __slots__ = ("txn_id", "now_ms")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    now_ms: int
    def __init__(self, txn_id: _Optional[str] = ..., now_ms: _Optional[int] = ...) -> None: ...

class BeginRound(_message.Message):
    __slots__ = ("round_id", "kind", "session_id", "participants", "checkpoint_id", "label", "timeout_ms", "now_ms", "owner")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    kind: _common_pb2.Kind
    session_id: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    checkpoint_id: str
    label: str
    timeout_ms: int
    now_ms: int
    owner: str
    def __init__(self, round_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., session_id: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., checkpoint_id: _Optional[str] = ..., label: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., now_ms: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("round_id", "participant_id", "yes", "reason", "result")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    YES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participant_id: str
    yes: bool
    reason: str
    result: bytes
    def __init__(self, round_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., yes: _Optional[bool] = ..., reason: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class RecordVotes(_message.Message):
    __slots__ = ("votes", "now_ms")
    VOTES_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    now_ms: int
    def __init__(self, votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., now_ms: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("round_id", "participant_id")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participant_id: str
    def __init__(self, round_id: _Optional[str] = ..., participant_id: _Optional[str] = ...) -> None: ...

class RecordAcks(_message.Message):
    __slots__ = ("acks", "now_ms")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[Ack]
    now_ms: int
    def __init__(self, acks: _Optional[_Iterable[_Union[Ack, _Mapping]]] = ..., now_ms: _Optional[int] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("round_id", "reason", "now_ms")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    reason: str
    now_ms: int
    def __init__(self, round_id: _Optional[str] = ..., reason: _Optional[str] = ..., now_ms: _Optional[int] = ...) -> None: ...

class Timeout(_message.Message):
    __slots__ = ("round_id", "now_ms")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    now_ms: int
    def __init__(self, round_id: _Optional[str] = ..., now_ms: _Optional[int] = ...) -> None: ...

class PresumeAbort(_message.Message):
    __slots__ = ("round_id", "now_ms")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    now_ms: int
    def __init__(self, round_id: _Optional[str] = ..., now_ms: _Optional[int] = ...) -> None: ...

class RegisterParticipant(_message.Message):
    __slots__ = ("participant_id", "endpoint", "now_ms")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    endpoint: str
    now_ms: int
    def __init__(self, participant_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., now_ms: _Optional[int] = ...) -> None: ...

class UnregisterParticipant(_message.Message):
    __slots__ = ("participant_id", "drop_escalations", "now_ms")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DROP_ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    drop_escalations: bool
    now_ms: int
    def __init__(self, participant_id: _Optional[str] = ..., drop_escalations: _Optional[bool] = ..., now_ms: _Optional[int] = ...) -> None: ...

class SagaStepSpec(_message.Message):
    __slots__ = ("participant_id", "action", "payload")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    action: str
    payload: bytes
    def __init__(self, participant_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class BeginSaga(_message.Message):
    __slots__ = ("saga_id", "session_id", "steps", "step_timeout_ms", "now_ms", "owner")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    session_id: str
    steps: _containers.RepeatedCompositeFieldContainer[SagaStepSpec]
    step_timeout_ms: int
    now_ms: int
    owner: str
    def __init__(self, saga_id: _Optional[str] = ..., session_id: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[SagaStepSpec, _Mapping]]] = ..., step_timeout_ms: _Optional[int] = ..., now_ms: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class StepReport(_message.Message):
    __slots__ = ("saga_id", "step", "participant_id", "outcome", "reason", "result")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    step: int
    participant_id: str
    outcome: _common_pb2.StepOutcome
    reason: str
    result: bytes
    def __init__(self, saga_id: _Optional[str] = ..., step: _Optional[int] = ..., participant_id: _Optional[str] = ..., outcome: _Optional[_Union[_common_pb2.StepOutcome, str]] = ..., reason: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class RecordStepReports(_message.Message):
    __slots__ = ("reports", "now_ms")
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[StepReport]
    now_ms: int
    def __init__(self, reports: _Optional[_Iterable[_Union[StepReport, _Mapping]]] = ..., now_ms: _Optional[int] = ...) -> None: ...

class ResolveStep(_message.Message):
    __slots__ = ("saga_id", "step", "note", "now_ms")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    step: int
    note: str
    now_ms: int
    def __init__(self, saga_id: _Optional[str] = ..., step: _Optional[int] = ..., note: _Optional[str] = ..., now_ms: _Optional[int] = ...) -> None: ...

class EscalationNote(_message.Message):
    __slots__ = ("round_id", "key", "detail")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    key: str
    detail: str
    def __init__(self, round_id: _Optional[str] = ..., key: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RecordEscalations(_message.Message):
    __slots__ = ("participant_id", "escalations", "now_ms")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    escalations: _containers.RepeatedCompositeFieldContainer[EscalationNote]
    now_ms: int
    def __init__(self, participant_id: _Optional[str] = ..., escalations: _Optional[_Iterable[_Union[EscalationNote, _Mapping]]] = ..., now_ms: _Optional[int] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("schema_version", "begin_txn", "enlist", "request_commit", "begin_round", "record_votes", "record_acks", "abort", "timeout", "presume_abort", "register_participant", "begin_saga", "record_step_reports", "resolve_step", "record_escalations", "unregister_participant")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    BEGIN_TXN_FIELD_NUMBER: _ClassVar[int]
    ENLIST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COMMIT_FIELD_NUMBER: _ClassVar[int]
    BEGIN_ROUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_VOTES_FIELD_NUMBER: _ClassVar[int]
    RECORD_ACKS_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PRESUME_ABORT_FIELD_NUMBER: _ClassVar[int]
    REGISTER_PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    BEGIN_SAGA_FIELD_NUMBER: _ClassVar[int]
    RECORD_STEP_REPORTS_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_STEP_FIELD_NUMBER: _ClassVar[int]
    RECORD_ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    UNREGISTER_PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    begin_txn: BeginTxn
    enlist: Enlist
    request_commit: RequestCommit
    begin_round: BeginRound
    record_votes: RecordVotes
    record_acks: RecordAcks
    abort: Abort
    timeout: Timeout
    presume_abort: PresumeAbort
    register_participant: RegisterParticipant
    begin_saga: BeginSaga
    record_step_reports: RecordStepReports
    resolve_step: ResolveStep
    record_escalations: RecordEscalations
    unregister_participant: UnregisterParticipant
    def __init__(self, schema_version: _Optional[int] = ..., begin_txn: _Optional[_Union[BeginTxn, _Mapping]] = ..., enlist: _Optional[_Union[Enlist, _Mapping]] = ..., request_commit: _Optional[_Union[RequestCommit, _Mapping]] = ..., begin_round: _Optional[_Union[BeginRound, _Mapping]] = ..., record_votes: _Optional[_Union[RecordVotes, _Mapping]] = ..., record_acks: _Optional[_Union[RecordAcks, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., timeout: _Optional[_Union[Timeout, _Mapping]] = ..., presume_abort: _Optional[_Union[PresumeAbort, _Mapping]] = ..., register_participant: _Optional[_Union[RegisterParticipant, _Mapping]] = ..., begin_saga: _Optional[_Union[BeginSaga, _Mapping]] = ..., record_step_reports: _Optional[_Union[RecordStepReports, _Mapping]] = ..., resolve_step: _Optional[_Union[ResolveStep, _Mapping]] = ..., record_escalations: _Optional[_Union[RecordEscalations, _Mapping]] = ..., unregister_participant: _Optional[_Union[UnregisterParticipant, _Mapping]] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ...) -> None: ...
