from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportAuditRequest(_message.Message):
    __slots__ = ("round_id", "since_ms", "limit", "include_local")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOCAL_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    since_ms: int
    limit: int
    include_local: bool
    def __init__(self, round_id: _Optional[str] = ..., since_ms: _Optional[int] = ..., limit: _Optional[int] = ..., include_local: _Optional[bool] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChainVerdict(_message.Message):
    __slots__ = ("ok", "records", "first_bad", "problem", "head", "head_hash", "gaps")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    first_bad: str
    problem: str
    head: str
    head_hash: str
    gaps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: _Optional[bool] = ..., records: _Optional[int] = ..., first_bad: _Optional[str] = ..., problem: _Optional[str] = ..., head: _Optional[str] = ..., head_hash: _Optional[str] = ..., gaps: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyAuditReply(_message.Message):
    __slots__ = ("node_id", "log_chain", "local_chain", "mismatches")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_CHAIN_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CHAIN_FIELD_NUMBER: _ClassVar[int]
    MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    log_chain: ChainVerdict
    local_chain: ChainVerdict
    mismatches: int
    def __init__(self, node_id: _Optional[str] = ..., log_chain: _Optional[_Union[ChainVerdict, _Mapping]] = ..., local_chain: _Optional[_Union[ChainVerdict, _Mapping]] = ..., mismatches: _Optional[int] = ...) -> None: ...

class NodeStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatusReply(_message.Message):
    __slots__ = ("node_id", "leader_id", "term", "commit_index", "applied_index", "apply_lag", "rounds_inflight", "rounds_in_doubt", "rounds_unacknowledged", "audit_head", "audit_head_hash", "proposals_overloaded", "rounds_escalated", "tls_identity", "tls_not_after_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLY_LAG_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_IN_DOUBT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_UNACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_OVERLOADED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_ESCALATED_FIELD_NUMBER: _ClassVar[int]
    TLS_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TLS_NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    leader_id: str
    term: int
    commit_index: int
    applied_index: int
    apply_lag: int
    rounds_inflight: int
    rounds_in_doubt: int
    rounds_unacknowledged: int
    audit_head: str
    audit_head_hash: str
    proposals_overloaded: int
    rounds_escalated: int
    tls_identity: str
    tls_not_after_ms: int
    def __init__(self, node_id: _Optional[str] = ..., leader_id: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., apply_lag: _Optional[int] = ..., rounds_inflight: _Optional[int] = ..., rounds_in_doubt: _Optional[int] = ..., rounds_unacknowledged: _Optional[int] = ..., audit_head: _Optional[str] = ..., audit_head_hash: _Optional[str] = ..., proposals_overloaded: _Optional[int] = ..., rounds_escalated: _Optional[int] = ..., tls_identity: _Optional[str] = ..., tls_not_after_ms: _Optional[int] = ...) -> None: ...

class RetryRoundRequest(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    def __init__(self, round_id: _Optional[str] = ...) -> None: ...

class RetryRoundReply(_message.Message):
    __slots__ = ("round_id", "phase", "retries_reset")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RETRIES_RESET_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: str
    retries_reset: int
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[str] = ..., retries_reset: _Optional[int] = ...) -> None: ...

class TransferLeaderRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class TransferLeaderReply(_message.Message):
    __slots__ = ("from_node", "to_node")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    to_node: str
    def __init__(self, from_node: _Optional[str] = ..., to_node: _Optional[str] = ...) -> None: ...

class ResolveEscalationRequest(_message.Message):
    __slots__ = ("round_id", "participant_id", "note", "step")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participant_id: str
    note: str
    step: int
    def __init__(self, round_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., note: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class ResolveEscalationReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterParticipantRequest(_message.Message):
    __slots__ = ("participant_id", "drop_escalations")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DROP_ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    drop_escalations: bool
    def __init__(self, participant_id: _Optional[str] = ..., drop_escalations: _Optional[bool] = ...) -> None: ...

class UnregisterParticipantReply(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
