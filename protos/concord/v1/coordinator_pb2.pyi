from concord.v1 import common_pb2 as _common_pb2
from concord.v1 import participant_pb2 as _participant_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginTxnRequest(_message.Message):
    __slots__ = ("txn_id", "session_id", "participants", "timeout_ms", "actions")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    session_id: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    actions: _containers.RepeatedCompositeFieldContainer[_common_pb2.TxnAction]
    def __init__(self, txn_id: _Optional[str] = ..., session_id: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ..., actions: _Optional[_Iterable[_Union[_common_pb2.TxnAction, _Mapping]]] = ...) -> None: ...

class BeginTxnReply(_message.Message):
    __slots__ = ("txn_id",)
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    def __init__(self, txn_id: _Optional[str] = ...) -> None: ...

class EnlistRequest(_message.Message):
    __slots__ = ("txn_id", "participant_id")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    participant_id: str
    def __init__(self, txn_id: _Optional[str] = ..., participant_id: _Optional[str] = ...) -> None: ...

class EnlistReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("txn_id", "wait_for_decision", "begin")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_DECISION_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    wait_for_decision: bool
    begin: BeginTxnRequest
    def __init__(self, txn_id: _Optional[str] = ..., wait_for_decision: _Optional[bool] = ..., begin: _Optional[_Union[BeginTxnRequest, _Mapping]] = ...) -> None: ...

class CommitReply(_message.Message):
    __slots__ = ("txn_id", "decision", "results")
    class ResultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    decision: _common_pb2.Decision
    results: _containers.ScalarMap[str, bytes]
    def __init__(self, txn_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., results: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("txn_id", "participant_id", "call_id", "action", "payload", "calls_before")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CALLS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    participant_id: str
    call_id: str
    action: str
    payload: bytes
    calls_before: int
    def __init__(self, txn_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., call_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ..., calls_before: _Optional[int] = ...) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("result", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    error: str
    def __init__(self, result: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("txn_id", "reason")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    reason: str
    def __init__(self, txn_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortReply(_message.Message):
    __slots__ = ("txn_id", "decision")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    decision: _common_pb2.Decision
    def __init__(self, txn_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ...) -> None: ...

class RequestRollbackRequest(_message.Message):
    __slots__ = ("round_id", "session_id", "participants", "checkpoint_id", "reason", "timeout_ms", "wait_for_decision")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_DECISION_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    session_id: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    checkpoint_id: str
    reason: str
    timeout_ms: int
    wait_for_decision: bool
    def __init__(self, round_id: _Optional[str] = ..., session_id: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., checkpoint_id: _Optional[str] = ..., reason: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., wait_for_decision: _Optional[bool] = ...) -> None: ...

class BeginCheckpointRequest(_message.Message):
    __slots__ = ("round_id", "session_id", "participants", "checkpoint_id", "label", "timeout_ms", "wait_for_decision")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_DECISION_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    session_id: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    checkpoint_id: str
    label: str
    timeout_ms: int
    wait_for_decision: bool
    def __init__(self, round_id: _Optional[str] = ..., session_id: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., checkpoint_id: _Optional[str] = ..., label: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., wait_for_decision: _Optional[bool] = ...) -> None: ...

class RoundReply(_message.Message):
    __slots__ = ("round_id", "decision")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    decision: _common_pb2.Decision
    def __init__(self, round_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ...) -> None: ...

class SagaStep(_message.Message):
    __slots__ = ("participant_id", "action", "payload")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    action: str
    payload: bytes
    def __init__(self, participant_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class BeginSagaRequest(_message.Message):
    __slots__ = ("saga_id", "session_id", "steps", "step_timeout_ms", "wait")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    session_id: str
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    step_timeout_ms: int
    wait: bool
    def __init__(self, saga_id: _Optional[str] = ..., session_id: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ..., step_timeout_ms: _Optional[int] = ..., wait: _Optional[bool] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("participant_id", "round_id", "key", "detail")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    round_id: str
    key: str
    detail: str
    def __init__(self, participant_id: _Optional[str] = ..., round_id: _Optional[str] = ..., key: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ReportEscalationsRequest(_message.Message):
    __slots__ = ("participant_id", "escalations")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    escalations: _containers.RepeatedCompositeFieldContainer[Escalation]
    def __init__(self, participant_id: _Optional[str] = ..., escalations: _Optional[_Iterable[_Union[Escalation, _Mapping]]] = ...) -> None: ...

class ReportEscalationsReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTxnRequest(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    def __init__(self, round_id: _Optional[str] = ...) -> None: ...

class ParticipantStatus(_message.Message):
    __slots__ = ("participant_id", "voted", "yes", "reason", "acked", "result")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    VOTED_FIELD_NUMBER: _ClassVar[int]
    YES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    voted: bool
    yes: bool
    reason: str
    acked: bool
    result: bytes
    def __init__(self, participant_id: _Optional[str] = ..., voted: _Optional[bool] = ..., yes: _Optional[bool] = ..., reason: _Optional[str] = ..., acked: _Optional[bool] = ..., result: _Optional[bytes] = ...) -> None: ...

class SagaStepStatus(_message.Message):
    __slots__ = ("participant_id", "action", "status", "reason", "result")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    action: str
    status: str
    reason: str
    result: bytes
    def __init__(self, participant_id: _Optional[str] = ..., action: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class GetTxnReply(_message.Message):
    __slots__ = ("round_id", "kind", "session_id", "phase", "decision", "participants", "deadline_ms", "decision_reason", "steps", "escalations", "begun_ms", "decided_ms")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    BEGUN_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_MS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    kind: _common_pb2.Kind
    session_id: str
    phase: str
    decision: _common_pb2.Decision
    participants: _containers.RepeatedCompositeFieldContainer[ParticipantStatus]
    deadline_ms: int
    decision_reason: str
    steps: _containers.RepeatedCompositeFieldContainer[SagaStepStatus]
    escalations: _containers.RepeatedCompositeFieldContainer[Escalation]
    begun_ms: int
    decided_ms: int
    def __init__(self, round_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., session_id: _Optional[str] = ..., phase: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., participants: _Optional[_Iterable[_Union[ParticipantStatus, _Mapping]]] = ..., deadline_ms: _Optional[int] = ..., decision_reason: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[SagaStepStatus, _Mapping]]] = ..., escalations: _Optional[_Iterable[_Union[Escalation, _Mapping]]] = ..., begun_ms: _Optional[int] = ..., decided_ms: _Optional[int] = ...) -> None: ...

class QueryOutcomeRequest(_message.Message):
    __slots__ = ("round_id", "participant_id")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participant_id: str
    def __init__(self, round_id: _Optional[str] = ..., participant_id: _Optional[str] = ...) -> None: ...

class QueryOutcomeReply(_message.Message):
    __slots__ = ("round_id", "decision")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    decision: _common_pb2.Decision
    def __init__(self, round_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ...) -> None: ...

class RegisterParticipantRequest(_message.Message):
    __slots__ = ("participant_id", "endpoint")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    endpoint: str
    def __init__(self, participant_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class RegisterParticipantReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTxnsRequest(_message.Message):
    __slots__ = ("open_only", "limit")
    OPEN_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    open_only: bool
    limit: int
    def __init__(self, open_only: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTxnsReply(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[GetTxnReply]
    def __init__(self, rounds: _Optional[_Iterable[_Union[GetTxnReply, _Mapping]]] = ...) -> None: ...

class WatchTxnsRequest(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    def __init__(self, round_id: _Optional[str] = ...) -> None: ...

class TxnEvent(_message.Message):
    __slots__ = ("round", "applied_index")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    round: GetTxnReply
    applied_index: int
    def __init__(self, round: _Optional[_Union[GetTxnReply, _Mapping]] = ..., applied_index: _Optional[int] = ...) -> None: ...

class CheckSecretRequest(_message.Message):
    __slots__ = ("nonce", "mac")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    mac: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class CheckSecretReply(_message.Message):
    __slots__ = ("match", "proof", "node_id")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    match: bool
    proof: bytes
    node_id: str
    def __init__(self, match: _Optional[bool] = ..., proof: _Optional[bytes] = ..., node_id: _Optional[str] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterMember(_message.Message):
    __slots__ = ("node_id", "address", "reachable")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    reachable: bool
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., reachable: _Optional[bool] = ...) -> None: ...

class ClusterStatusReply(_message.Message):
    __slots__ = ("node_id", "leader_id", "term", "commit_index", "applied_index", "members", "rounds_inflight")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    leader_id: str
    term: int
    commit_index: int
    applied_index: int
    members: _containers.RepeatedCompositeFieldContainer[ClusterMember]
    rounds_inflight: int
    def __init__(self, node_id: _Optional[str] = ..., leader_id: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., members: _Optional[_Iterable[_Union[ClusterMember, _Mapping]]] = ..., rounds_inflight: _Optional[int] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("participant_id", "batch", "call_result")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CALL_RESULT_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    batch: _participant_pb2.ParticipantBatch
    call_result: AttachCallResult
    def __init__(self, participant_id: _Optional[str] = ..., batch: _Optional[_Union[_participant_pb2.ParticipantBatch, _Mapping]] = ..., call_result: _Optional[_Union[AttachCallResult, _Mapping]] = ...) -> None: ...

class AttachReply(_message.Message):
    __slots__ = ("batch", "call", "heartbeat")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    batch: _participant_pb2.CoordinatorBatch
    call: AttachCall
    heartbeat: bool
    def __init__(self, batch: _Optional[_Union[_participant_pb2.CoordinatorBatch, _Mapping]] = ..., call: _Optional[_Union[AttachCall, _Mapping]] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class AttachCall(_message.Message):
    __slots__ = ("call_number", "action")
    CALL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    call_number: int
    action: _participant_pb2.CallAction
    def __init__(self, call_number: _Optional[int] = ..., action: _Optional[_Union[_participant_pb2.CallAction, _Mapping]] = ...) -> None: ...

class AttachCallResult(_message.Message):
    __slots__ = ("call_number", "result")
    CALL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    call_number: int
    result: _participant_pb2.CallResult
    def __init__(self, call_number: _Optional[int] = ..., result: _Optional[_Union[_participant_pb2.CallResult, _Mapping]] = ...) -> None: ...
