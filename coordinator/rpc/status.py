"""How protocol outcomes travel as gRPC status codes, both ways.

A ``ProtocolError`` is the caller's or a peer's problem and keeps its message. Two
outcomes are not errors of the request at all: no reachable leader (UNAVAILABLE: try
another node) and an unknown outcome (UNKNOWN: the write may or may not have been
applied; resolve it by id, never by a blind retry — rule 8).
"""

from __future__ import annotations

import grpc

from coordinator.core.errors import ErrorCode

STATUS_OF: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Participants are busy with a rollback or checkpoint round: retry the request later.
    ErrorCode.BUSY: grpc.StatusCode.ABORTED,
}
ERROR_OF: dict[grpc.StatusCode, ErrorCode] = {status: code for code, status in STATUS_OF.items()}

NO_LEADER = grpc.StatusCode.UNAVAILABLE
OUTCOME_UNKNOWN = grpc.StatusCode.UNKNOWN
OVERLOADED = grpc.StatusCode.RESOURCE_EXHAUSTED
