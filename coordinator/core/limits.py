"""Named limits of the coordinator core, and the rules every field is checked by.

Every queue, size and retry in the protocol has a bound here, with its unit last in
the name. The limits are part of the replicated configuration: every replica must
apply entries with the same limits, or their states could diverge.

The rules (``check_id``, ``check_text``, ``check_bytes``, ``check_range``) are the one
place that says what a field may hold. They run twice with the same limits: at the
edge, in the gRPC servicers, before anything is proposed (coordinator/core/validate.py,
coordinator/rpc/edge.py), and when an entry is applied, as the last line of
defence. A refusal is a ``ProtocolError`` with one line that names the field and the
limit, never the value itself (it may be megabytes, or hold terminal escapes).

Ids (round, transaction, session, participant, checkpoint ids, saga actions,
endpoints) are 1..``id_bytes_max`` UTF-8 bytes of printable characters: no control
characters (C0, DEL, C1: NUL included), no invisible format characters (zero-width,
bidirectional overrides and isolates, byte order mark), no line or paragraph
separators and no spaces other than U+0020, no surrogates. The set is written out
here instead of asking Python's Unicode tables (``str.isprintable``), whose version
changes with the interpreter: replicas must agree on every id whatever Python they
run. A participant refuses ids that are empty, longer than 128 bytes or hold NUL
(participant_sdk/store.py ``StoreLimits.check_id``): an id the coordinator accepts is
one every participant can store, so a decision can always be made durable there.

Text (reasons, labels, notes, details) is bounded by its own limit and holds no
control characters except tab, line feed and carriage return.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.core.errors import ErrorCode, ProtocolError

# Messages in one stream message between the leader and a participant, of every kind
# (Prepare, Decide, ExecuteStep, CompensateStep): a bound both ends know without any
# configuration (rule 10). The leader splits what it has due; a participant refuses
# a bigger batch.
BATCH_ITEMS_MAX = 4096
# A transaction action call (coordinator.proto, CallRequest): its action's name, and
# its payload or result (JSON), checked by the leader and by the participant.
ACTION_NAME_BYTES_MAX = 128
CALL_PAYLOAD_BYTES_MAX = 1 << 20


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    participants_per_round_max: int = 16
    rounds_inflight_max: int = 10_000
    # Rounds one caller (a TLS identity; without TLS, a peer address) may have in
    # flight: no single caller can take the whole cluster's rounds_inflight_max.
    rounds_inflight_per_caller_max: int = 5_000
    participants_registered_max: int = 10_000
    # Participants refuse longer ids (participant_sdk/store.py): keep this at or below.
    id_bytes_max: int = 128
    label_bytes_max: int = 256
    reason_bytes_max: int = 1024
    # Who began a round (set by the node from the caller, never by the caller).
    owner_bytes_max: int = 256
    timeout_ms_min: int = 10
    timeout_ms_max: int = 600_000
    # A finished round is remembered this long after its last acknowledgement, so
    # duplicate messages and client status queries still find it.
    retention_ms: int = 60_000
    # Retries of Prepare/Decide/Timeout back off exponentially between these bounds.
    retry_backoff_initial_ms: int = 50
    retry_backoff_max_ms: int = 2_000
    # Votes or acknowledgements folded into one replicated entry.
    entry_batch_max: int = 256
    # Acknowledgements wait this long on the leader to share an entry: they only
    # finish rounds (nobody waits on them), and each entry costs every node a sync.
    ack_flush_delay_ms: int = 50
    # Sagas: steps in one saga, and the bytes of a step's payload or result.
    saga_steps_max: int = 64
    step_payload_bytes_max: int = 65_536
    # Escalated effects a participant can report (beyond: refused, the operator must
    # clear some first).
    escalations_per_participant_max: int = 100

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"limit {name} must be positive, got {value}")
        if self.timeout_ms_min > self.timeout_ms_max:
            raise ValueError("timeout_ms_min must not exceed timeout_ms_max")
        if self.retry_backoff_initial_ms > self.retry_backoff_max_ms:
            raise ValueError("retry_backoff_initial_ms must not exceed retry_backoff_max_ms")

    def bound(self, name: str) -> int:
        """The limit called ``name`` (for rules that name the limit they apply)."""
        if name not in _LIMIT_NAMES:
            raise KeyError(f"no limit {name!r}")
        value: int = getattr(self, name)
        return value


_LIMIT_NAMES = frozenset(Limits.__slots__)

# ---------------------------------------------------------------------- characters

# Invisible format characters that can hide or reorder what a terminal shows.
_FORMAT = frozenset(
    {0x00AD, 0x061C, 0x180E, 0xFEFF, 0xFFF9, 0xFFFA, 0xFFFB}
    | set(range(0x200B, 0x2010))  # zero-width space, joiners, LRM, RLM
    | set(range(0x202A, 0x202F))  # bidirectional embeddings and overrides
    | set(range(0x2060, 0x2065))  # word joiner, invisible operators
    | set(range(0x2066, 0x206A))  # bidirectional isolates
    | set(range(0x206A, 0x2070))  # deprecated format characters
)
# Spaces other than U+0020 (an id that looks like another one).
_SPACES = frozenset({0x00A0, 0x1680, 0x202F, 0x205F, 0x3000} | set(range(0x2000, 0x200B)))
_SEPARATORS = frozenset({0x2028, 0x2029})
_TEXT_CONTROLS_ALLOWED = frozenset({0x09, 0x0A, 0x0D})  # tab, line feed, carriage return


def _control(code: int) -> bool:
    return code < 0x20 or 0x7F <= code <= 0x9F


def _id_character_problem(code: int) -> str | None:
    if _control(code):
        return "a control character"
    if code in _FORMAT:
        return "an invisible format character"
    if code in _SPACES or code in _SEPARATORS:
        return "a space or separator other than U+0020"
    if 0xD800 <= code <= 0xDFFF:
        return "a surrogate"
    if code in (0xFFFE, 0xFFFF):
        return "a noncharacter"
    return None


def _text_character_problem(code: int) -> str | None:
    if _control(code) and code not in _TEXT_CONTROLS_ALLOWED:
        return "a control character"
    if 0xD800 <= code <= 0xDFFF:
        return "a surrogate"
    return None


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_ARGUMENT, message)


def _utf8_size(name: str, value: str) -> int:
    try:
        return len(value.encode())
    except UnicodeEncodeError as error:
        code = ord(value[error.start])
        raise _invalid(
            f"{name} holds a surrogate (U+{code:04X}) at position {error.start}; it cannot be UTF-8"
        ) from None


def _check_size(name: str, size: int, limits: Limits, limit_name: str) -> None:
    limit = limits.bound(limit_name)
    if size > limit:
        raise _invalid(f"{name} is {size} bytes; the limit is {limit} ({limit_name})")


# ---------------------------------------------------------------------- rules


def check_id(
    limits: Limits,
    name: str,
    value: str,
    *,
    allow_empty: bool = False,
    limit_name: str = "id_bytes_max",
) -> None:
    """An id: 1..``id_bytes_max`` bytes (0 with ``allow_empty``), printable (module doc)."""
    if not isinstance(value, str):
        raise _invalid(f"{name} must be text, not {type(value).__name__}")
    if not value:
        if allow_empty:
            return
        raise _invalid(f"{name} must not be empty")
    # Size first: a huge value is refused without being scanned.
    if len(value) > limits.bound(limit_name):
        _check_size(name, len(value), limits, limit_name)
    if value.isascii():  # one byte a character: its length is its size
        if value.isprintable():
            return  # U+0020..U+007E only (stable across Python versions): the usual id
    else:
        _check_size(name, _utf8_size(name, value), limits, limit_name)
    for position, character in enumerate(value):
        problem = _id_character_problem(ord(character))
        if problem is not None:
            raise _invalid(
                f"{name} holds {problem} (U+{ord(character):04X}) at position {position}; "
                "ids must be printable"
            )


def check_text(limits: Limits, name: str, value: str, limit_name: str) -> None:
    """Free text: at most ``limit_name`` bytes; no control character but tab and
    newlines."""
    if not isinstance(value, str):
        raise _invalid(f"{name} must be text, not {type(value).__name__}")
    if len(value) > limits.bound(limit_name):
        _check_size(name, len(value), limits, limit_name)
    _check_size(name, _utf8_size(name, value), limits, limit_name)
    if value.isascii() and value.isprintable():
        return  # U+0020..U+007E only: nothing to look at character by character
    for position, character in enumerate(value):
        problem = _text_character_problem(ord(character))
        if problem is not None:
            raise _invalid(
                f"{name} holds {problem} (U+{ord(character):04X}) at position {position}; "
                "text may hold tab and newlines, no other control characters"
            )


def check_text_size(limits: Limits, name: str, value: str, limit_name: str) -> None:
    """Text whose characters are someone else's to choose (a participant's vote
    reason, cleaned by the leader's link before it is proposed): the size only."""
    if len(value) > limits.bound(limit_name):
        _check_size(name, len(value), limits, limit_name)
    _check_size(name, _utf8_size(name, value), limits, limit_name)


def check_bytes(limits: Limits, name: str, value: bytes, limit_name: str) -> None:
    _check_size(name, len(value), limits, limit_name)


def check_count(
    limits: Limits,
    name: str,
    count: int,
    limit_name: str,
    code: ErrorCode = ErrorCode.RESOURCE_EXHAUSTED,
) -> None:
    limit = limits.bound(limit_name)
    if count > limit:
        raise ProtocolError(code, f"{count} {name} ({limit_name}={limit})")


def check_timeout(limits: Limits, name: str, value: int) -> None:
    low, high = limits.timeout_ms_min, limits.timeout_ms_max
    if not low <= value <= high:
        raise _invalid(
            f"{name}={value} is outside [{low}, {high}] (timeout_ms_min, timeout_ms_max)"
        )


def clean_text(value: str, limit_bytes: int) -> str:
    """``value`` made acceptable as text of at most ``limit_bytes``: control
    characters other than tab and newlines written as ``\\xNN`` / ``\\uNNNN`` escapes,
    then cut at a character boundary. For text a peer chose that must not cost the
    message carrying it (a participant's vote reason)."""
    escaped = "".join(
        character
        if _text_character_problem(ord(character)) is None
        else (f"\\x{ord(character):02x}" if ord(character) <= 0xFF else f"\\u{ord(character):04x}")
        for character in value[: limit_bytes + 1]
    )
    encoded = escaped.encode()
    if len(encoded) <= limit_bytes:
        return escaped
    return encoded[:limit_bytes].decode(errors="ignore")
