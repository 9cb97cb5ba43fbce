"""Errors of the coordinator core.

Two kinds, never mixed:
- ``ProtocolError``: the caller or a peer asked for something the protocol does not
  allow (an unknown transaction, a vote from a stranger, an oversized id). It is a
  deterministic answer: every replica rejects the same entry the same way, and the
  RPC layer maps ``code`` to a gRPC status.
- ``InvariantError``: the core found its own state impossible. That is our bug; it is
  raised, never caught and never turned into a reply.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    # The participants are busy with a rollback or checkpoint round: retry later.
    BUSY = "BUSY"


class ProtocolError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ProtocolError)
            and self.code == other.code
            and self.message == other.message
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class InvariantError(AssertionError):
    """Our own bug: the state broke a rule that the code is meant to keep."""
