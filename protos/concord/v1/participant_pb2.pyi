from concord.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prepare(_message.Message):
    __slots__ = ("round_id", "kind", "participant_id", "session_id", "checkpoint_id", "label", "term", "action", "payload")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    kind: _common_pb2.Kind
    participant_id: str
    session_id: str
    checkpoint_id: str
    label: str
    term: int
    action: str
    payload: bytes
    def __init__(self, round_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., participant_id: _Optional[str] = ..., session_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., label: _Optional[str] = ..., term: _Optional[int] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Decide(_message.Message):
    __slots__ = ("round_id", "kind", "participant_id", "decision", "checkpoint_id", "term")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    kind: _common_pb2.Kind
    participant_id: str
    decision: _common_pb2.Decision
    checkpoint_id: str
    term: int
    def __init__(self, round_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., participant_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, str]] = ..., checkpoint_id: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class VoteReply(_message.Message):
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

class AckReply(_message.Message):
    __slots__ = ("round_id", "participant_id")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participant_id: str
    def __init__(self, round_id: _Optional[str] = ..., participant_id: _Optional[str] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("round_id", "participant_id", "term_seen", "reason")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_SEEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participant_id: str
    term_seen: int
    reason: str
    def __init__(self, round_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., term_seen: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ExecuteStep(_message.Message):
    __slots__ = ("round_id", "step", "participant_id", "action", "payload", "term")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    step: int
    participant_id: str
    action: str
    payload: bytes
    term: int
    def __init__(self, round_id: _Optional[str] = ..., step: _Optional[int] = ..., participant_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ..., term: _Optional[int] = ...) -> None: ...

class CompensateStep(_message.Message):
    __slots__ = ("round_id", "step", "participant_id", "action", "payload", "result", "term")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    step: int
    participant_id: str
    action: str
    payload: bytes
    result: bytes
    term: int
    def __init__(self, round_id: _Optional[str] = ..., step: _Optional[int] = ..., participant_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ..., result: _Optional[bytes] = ..., term: _Optional[int] = ...) -> None: ...

class StepReply(_message.Message):
    __slots__ = ("round_id", "step", "participant_id", "outcome", "reason", "result")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    step: int
    participant_id: str
    outcome: _common_pb2.StepOutcome
    reason: str
    result: bytes
    def __init__(self, round_id: _Optional[str] = ..., step: _Optional[int] = ..., participant_id: _Optional[str] = ..., outcome: _Optional[_Union[_common_pb2.StepOutcome, str]] = ..., reason: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class CoordinatorBatch(_message.Message):
    __slots__ = ("term", "prepares", "decides", "executes", "compensates", "trace_parents")
    class TraceParentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TERM_FIELD_NUMBER: _ClassVar[int]
    PREPARES_FIELD_NUMBER: _ClassVar[int]
    DECIDES_FIELD_NUMBER: _ClassVar[int]
    EXECUTES_FIELD_NUMBER: _ClassVar[int]
    COMPENSATES_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    term: int
    prepares: _containers.RepeatedCompositeFieldContainer[Prepare]
    decides: _containers.RepeatedCompositeFieldContainer[Decide]
    executes: _containers.RepeatedCompositeFieldContainer[ExecuteStep]
    compensates: _containers.RepeatedCompositeFieldContainer[CompensateStep]
    trace_parents: _containers.ScalarMap[str, str]
    def __init__(self, term: _Optional[int] = ..., prepares: _Optional[_Iterable[_Union[Prepare, _Mapping]]] = ..., decides: _Optional[_Iterable[_Union[Decide, _Mapping]]] = ..., executes: _Optional[_Iterable[_Union[ExecuteStep, _Mapping]]] = ..., compensates: _Optional[_Iterable[_Union[CompensateStep, _Mapping]]] = ..., trace_parents: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ParticipantBatch(_message.Message):
    __slots__ = ("votes", "acks", "refused", "steps")
    VOTES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    votes: _containers.RepeatedCompositeFieldContainer[VoteReply]
    acks: _containers.RepeatedCompositeFieldContainer[AckReply]
    refused: _containers.RepeatedCompositeFieldContainer[Refused]
    steps: _containers.RepeatedCompositeFieldContainer[StepReply]
    def __init__(self, votes: _Optional[_Iterable[_Union[VoteReply, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[AckReply, _Mapping]]] = ..., refused: _Optional[_Iterable[_Union[Refused, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[StepReply, _Mapping]]] = ...) -> None: ...

class CallAction(_message.Message):
    __slots__ = ("txn_id", "participant_id", "call_id", "action", "payload", "term", "calls_before")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CALLS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    participant_id: str
    call_id: str
    action: str
    payload: bytes
    term: int
    calls_before: int
    def __init__(self, txn_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., call_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ..., term: _Optional[int] = ..., calls_before: _Optional[int] = ...) -> None: ...

class CallResult(_message.Message):
    __slots__ = ("result", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    error: str
    def __init__(self, result: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("term",)
    TERM_FIELD_NUMBER: _ClassVar[int]
    term: int
    def __init__(self, term: _Optional[int] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("participant_id", "term_seen")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_SEEN_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    term_seen: int
    def __init__(self, participant_id: _Optional[str] = ..., term_seen: _Optional[int] = ...) -> None: ...
