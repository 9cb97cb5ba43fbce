from concord.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prepare(_message.Message):
    __slots__ = ("round_id", "kind", "participant_id", "session_id", "checkpoint_id", "label", "term")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    kind: _common_pb2.Kind
    participant_id: str
    session_id: str
    checkpoint_id: str
    label: str
    term: int
    def __init__(self, round_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.Kind, str]] = ..., participant_id: _Optional[str] = ..., session_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., label: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("round_id", "participant_id", "yes", "reason")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    YES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participant_id: str
    yes: bool
    reason: str
    def __init__(self, round_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., yes: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

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

class CoordinatorBatch(_message.Message):
    __slots__ = ("term", "prepares", "decides")
    TERM_FIELD_NUMBER: _ClassVar[int]
    PREPARES_FIELD_NUMBER: _ClassVar[int]
    DECIDES_FIELD_NUMBER: _ClassVar[int]
    term: int
    prepares: _containers.RepeatedCompositeFieldContainer[Prepare]
    decides: _containers.RepeatedCompositeFieldContainer[Decide]
    def __init__(self, term: _Optional[int] = ..., prepares: _Optional[_Iterable[_Union[Prepare, _Mapping]]] = ..., decides: _Optional[_Iterable[_Union[Decide, _Mapping]]] = ...) -> None: ...

class ParticipantBatch(_message.Message):
    __slots__ = ("votes", "acks", "refused")
    VOTES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    votes: _containers.RepeatedCompositeFieldContainer[VoteReply]
    acks: _containers.RepeatedCompositeFieldContainer[AckReply]
    refused: _containers.RepeatedCompositeFieldContainer[Refused]
    def __init__(self, votes: _Optional[_Iterable[_Union[VoteReply, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[AckReply, _Mapping]]] = ..., refused: _Optional[_Iterable[_Union[Refused, _Mapping]]] = ...) -> None: ...

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
