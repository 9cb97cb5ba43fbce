"""The rules every field is checked by (coordinator/core/limits.py, validate.py), table
driven: each field, each limit, each character class. The same entry is then applied
to a fresh state: the edge (``check_entry``) and the apply path refuse it with the same
error, so the two can never disagree."""

from __future__ import annotations

import copyreg
import dataclasses
import io
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.entries import (
    Abort,
    Ack,
    BeginRound,
    BeginSaga,
    BeginTxn,
    Enlist,
    Entry,
    EscalationNote,
    PresumeAbort,
    RecordAcks,
    RecordEscalations,
    RecordStepReports,
    RecordVotes,
    RegisterParticipant,
    RequestCommit,
    ResolveStep,
    SagaStepSpec,
    StepReport,
    Timeout,
    UnregisterParticipant,
    Vote,
)
from coordinator.core.errors import ErrorCode, ProtocolError
from coordinator.core.limits import Limits, check_id, check_text, clean_text
from coordinator.core.messages import TxnAction
from coordinator.core.state import CoordinatorState, Round
from coordinator.core.types import Kind, StepOutcome
from coordinator.core.validate import check_entry
from participant_sdk.checkpoints import CheckpointLimits
from participant_sdk.store import StoreLimitError, StoreLimits

LIMITS = Limits()
INVALID, EXHAUSTED = ErrorCode.INVALID_ARGUMENT, ErrorCode.RESOURCE_EXHAUSTED
LONG_ID = "x" * (LIMITS.id_bytes_max + 1)

# Characters an id must not hold, by class (limits.py says why each).
REFUSED_IN_IDS = {
    "nul": "\x00",
    "c0 control": "\x1b",
    "tab": "\t",
    "newline": "\n",
    "del": "\x7f",
    "c1 control": "\x85",
    "zero-width space": "\u200b",
    "zero-width joiner": "\u200d",
    "right-to-left mark": "\u200f",
    "bidi override": "\u202e",
    "bidi isolate": "\u2066",
    "byte order mark": "\ufeff",
    "soft hyphen": "\u00ad",
    "no-break space": "\u00a0",
    "em space": "\u2003",
    "ideographic space": "\u3000",
    "line separator": "\u2028",
    "paragraph separator": "\u2029",
    "surrogate": "\ud800",
    "noncharacter": "\uffff",
}
ACCEPTED_IDS = ["t1", "order 42", "bücher-ü", "日本語", "a/b:c@d#e", "😀", "x" * 128]
# Text (reasons, labels, notes, details) may hold these, and no other control.
ACCEPTED_IN_TEXT = ["line one\nline two", "a\tb", "windows\r\n", "‮ bidi is text", ""]
REFUSED_IN_TEXT = {"nul": "\x00", "escape": "\x1b[2J", "del": "\x7f", "c1": "\x9b"}


def begin(**changes: Any) -> BeginTxn:
    base = BeginTxn(txn_id="t1", session_id="s", participants=("a",), timeout_ms=1000, now_ms=1)
    return dataclasses.replace(base, **changes)


def round_(**changes: Any) -> BeginRound:
    base = BeginRound(
        round_id="r1",
        kind=Kind.ROLLBACK,
        session_id="",
        participants=("a",),
        checkpoint_id="cp1",
        label="why",
        timeout_ms=1000,
        now_ms=1,
    )
    return dataclasses.replace(base, **changes)


def saga(**changes: Any) -> BeginSaga:
    base = BeginSaga(
        saga_id="s1",
        session_id="",
        steps=(SagaStepSpec(participant_id="a", action="book", payload=b"{}"),),
        step_timeout_ms=1000,
        now_ms=1,
    )
    return dataclasses.replace(base, **changes)


def step(**changes: Any) -> SagaStepSpec:
    return dataclasses.replace(SagaStepSpec(participant_id="a", action="book"), **changes)


def escalations(*notes: EscalationNote, participant: str = "a") -> RecordEscalations:
    return RecordEscalations(participant_id=participant, escalations=notes, now_ms=1)


def note(**changes: Any) -> EscalationNote:
    return dataclasses.replace(EscalationNote(round_id="t1", key="k", detail="d"), **changes)


def votes(*items: Vote) -> RecordVotes:
    return RecordVotes(votes=items, now_ms=1)


def vote(**changes: Any) -> Vote:
    return dataclasses.replace(Vote(round_id="t1", participant_id="a", yes=True), **changes)


def register(participant: str = "a", endpoint: str = "127.0.0.1:7000") -> RegisterParticipant:
    return RegisterParticipant(participant_id=participant, endpoint=endpoint, now_ms=1)


# (case id, entry, code, fragments the one-line message must hold)
REFUSED: list[tuple[str, Entry, ErrorCode, tuple[str, ...]]] = [
    # ids: empty, too long (in bytes), and the limit named
    ("txn_id empty", begin(txn_id=""), INVALID, ("txn_id must not be empty",)),
    ("txn_id long", begin(txn_id=LONG_ID), INVALID, ("txn_id is 129 bytes", "id_bytes_max")),
    ("txn_id bytes", begin(txn_id="é" * 65), INVALID, ("txn_id is 130 bytes", "128")),
    ("txn_id 3.9 MB", begin(txn_id="x" * 3_900_000), INVALID, ("txn_id is 3900000 bytes",)),
    ("session_id long", begin(session_id=LONG_ID), INVALID, ("session_id is 129",)),
    ("session_id control", begin(session_id="s\x07"), INVALID, ("session_id", "U+0007")),
    ("owner long", begin(owner="o" * 257), INVALID, ("owner is 257 bytes", "owner_bytes_max")),
    # participants: count, each id, repeats
    (
        "participants count",
        begin(participants=tuple(f"p{i}" for i in range(17))),
        EXHAUSTED,
        ("17 participants", "participants_per_round_max=16"),
    ),
    ("participant empty", begin(participants=("a", "")), INVALID, ("participant_id must not",)),
    ("participant long", begin(participants=(LONG_ID,)), INVALID, ("participant_id is 129",)),
    ("participant NUL", begin(participants=("p\x00",)), INVALID, ("participant_id", "U+0000")),
    ("participants twice", begin(participants=("a", "a")), INVALID, ("listed twice",)),
    # timeouts
    ("timeout low", begin(timeout_ms=9), INVALID, ("timeout_ms=9 is outside", "timeout_ms_min")),
    ("timeout high", begin(timeout_ms=2**64 - 1), INVALID, ("timeout_ms=", "timeout_ms_max")),
    # enlist, commit, abort, presumed abort
    (
        "enlist participant",
        Enlist(txn_id="t1", participant_id="\u202e", now_ms=1),
        INVALID,
        ("participant_id", "U+202E"),
    ),
    ("commit txn_id", RequestCommit(txn_id="t\n", now_ms=1), INVALID, ("txn_id", "U+000A")),
    (
        "abort reason long",
        Abort(round_id="t1", reason="r" * 1025, now_ms=1),
        INVALID,
        ("reason is 1025 bytes", "reason_bytes_max"),
    ),
    (
        "abort reason escape",
        Abort(round_id="t1", reason="\x1b[2J", now_ms=1),
        INVALID,
        ("reason", "U+001B", "control"),
    ),
    ("abort round_id", Abort(round_id="", reason="", now_ms=1), INVALID, ("round_id must not",)),
    ("presume round_id", PresumeAbort(round_id=LONG_ID, now_ms=1), INVALID, ("round_id is 129",)),
    # rollback and checkpoint rounds
    ("round kind", round_(kind=Kind.TXN), INVALID, ("rollback or checkpoint",)),
    ("round checkpoint", round_(checkpoint_id=""), INVALID, ("checkpoint_id must not",)),
    ("round checkpoint bidi", round_(checkpoint_id="cp\u2066"), INVALID, ("checkpoint_id",)),
    ("round label", round_(label="l" * 257), INVALID, ("label is 257", "label_bytes_max")),
    ("round label control", round_(label="\x00"), INVALID, ("label", "U+0000")),
    ("round no participants", round_(participants=()), INVALID, ("at least one participant",)),
    ("round timeout", round_(timeout_ms=0), INVALID, ("timeout_ms=0",)),
    # sagas
    ("saga id", saga(saga_id="s\u2028"), INVALID, ("saga_id", "U+2028")),
    ("saga no steps", saga(steps=()), INVALID, ("at least one step",)),
    (
        "saga steps count",
        saga(steps=(step(),) * 65),
        EXHAUSTED,
        ("65 steps", "saga_steps_max=64"),
    ),
    ("saga action empty", saga(steps=(step(action=""),)), INVALID, ("action must not",)),
    ("saga action control", saga(steps=(step(action="a\x1b"),)), INVALID, ("action", "U+001B")),
    (
        "saga payload",
        saga(steps=(step(payload=b"x" * 65_537),)),
        INVALID,
        ("payload is 65537 bytes", "step_payload_bytes_max"),
    ),
    ("saga timeout", saga(step_timeout_ms=600_001), INVALID, ("step_timeout_ms=600001",)),
    # one-shot actions
    (
        "action for a stranger",
        begin(txn_id="t9", actions=(TxnAction(participant_id="z", action="x"),)),
        INVALID,
        ("action for 'z'", "not a participant"),
    ),
    (
        "two actions for one",
        begin(
            txn_id="t9",
            actions=(
                TxnAction(participant_id="a", action="x"),
                TxnAction(participant_id="a", action="y"),
            ),
        ),
        INVALID,
        ("two actions for 'a'",),
    ),
    (
        "action empty",
        begin(txn_id="t9", actions=(TxnAction(participant_id="a", action=""),)),
        INVALID,
        ("action must not be empty",),
    ),
    (
        "action payload",
        begin(
            txn_id="t9", actions=(TxnAction(participant_id="a", action="x", payload=b"x" * 65_537),)
        ),
        INVALID,
        ("action payload is 65537 bytes", "step_payload_bytes_max"),
    ),
    # the registry
    ("endpoint empty", register(endpoint=""), INVALID, ("endpoint must not be empty",)),
    ("endpoint long", register(endpoint="h" * 129), INVALID, ("endpoint is 129", "id_bytes_max")),
    ("endpoint control", register(endpoint="h:1\r\n"), INVALID, ("endpoint", "U+000D")),
    ("endpoint space", register(endpoint="h 1:2"), INVALID, ("endpoint holds a space",)),
    ("register id", register(participant="\ufeffa"), INVALID, ("participant_id", "U+FEFF")),
    (
        "unregister id",
        UnregisterParticipant(participant_id="\x00", drop_escalations=False, now_ms=1),
        INVALID,
        ("participant_id", "U+0000"),
    ),
    # operator notes and escalations
    (
        "resolve note",
        ResolveStep(saga_id="s1", step=0, note="n" * 1025, now_ms=1),
        INVALID,
        ("note is 1025 bytes", "reason_bytes_max"),
    ),
    (
        "escalations count",
        escalations(*(note(key=f"k{i}") for i in range(101))),
        EXHAUSTED,
        ("101 escalations", "escalations_per_participant_max=100"),
    ),
    ("escalation key", escalations(note(key="k\x00")), INVALID, ("escalation key", "U+0000")),
    ("escalation detail", escalations(note(detail="\x1b")), INVALID, ("escalation detail",)),
    (
        "escalation detail long",
        escalations(note(detail="d" * 1025)),
        INVALID,
        ("escalation detail is 1025", "reason_bytes_max"),
    ),
]
# Batches of replies: at the edge the whole batch is refused; when applied, the item
# is a note (one bad reply costs the others nothing), so these are checked apart.
REFUSED_BATCHES: list[tuple[str, Entry, ErrorCode, tuple[str, ...]]] = [
    (
        "action result",
        votes(vote(result=b"x" * 65_537)),
        INVALID,
        ("action result is 65537 bytes", "step_payload_bytes_max"),
    ),
    (
        "votes batch",
        votes(*(vote(participant_id=f"p{i}") for i in range(257))),
        INVALID,
        ("257 votes", "entry_batch_max=256"),
    ),
    (
        "vote reason long",
        votes(vote(reason="r" * 1025)),
        INVALID,
        ("reason is 1025", "reason_bytes_max"),
    ),
    ("ack id", RecordAcks(acks=(Ack(round_id="", participant_id="a"),), now_ms=1), INVALID, ()),
    (
        "step report result",
        RecordStepReports(
            reports=(
                StepReport(
                    saga_id="s1",
                    step=0,
                    participant_id="a",
                    outcome=StepOutcome.DONE,
                    result=b"x" * 65_537,
                ),
            ),
            now_ms=1,
        ),
        INVALID,
        ("result is 65537 bytes", "step_payload_bytes_max"),
    ),
]


def _refused(entry: Entry) -> ProtocolError:
    with pytest.raises(ProtocolError) as raised:
        check_entry(LIMITS, entry)
    return raised.value


@pytest.mark.parametrize(("case", "entry", "code", "fragments"), REFUSED, ids=lambda v: v)
def test_refused_with_one_line_naming_the_field_and_the_limit(
    case: str, entry: Entry, code: ErrorCode, fragments: tuple[str, ...]
) -> None:
    error = _refused(entry)
    assert error.code is code, error
    for fragment in fragments:
        assert fragment in error.message, f"{case}: {error.message!r} lacks {fragment!r}"
    assert "\n" not in error.message
    assert len(error.message) < 200  # never the value itself


@pytest.mark.parametrize(("case", "entry", "code", "fragments"), REFUSED, ids=lambda v: v)
def test_the_apply_path_refuses_exactly_as_the_edge(
    case: str, entry: Entry, code: ErrorCode, fragments: tuple[str, ...]
) -> None:
    state = CoordinatorState(LIMITS)
    for participant in ("a",):
        state.apply(register(participant))
    state.apply(begin(txn_id="t1"))
    state.apply(saga(saga_id="s1"))
    assert state.apply(entry).error == _refused(entry)


@pytest.mark.parametrize(("case", "entry", "code", "fragments"), REFUSED_BATCHES, ids=lambda v: v)
def test_a_batch_of_replies_is_checked_item_by_item(
    case: str, entry: Entry, code: ErrorCode, fragments: tuple[str, ...]
) -> None:
    error = _refused(entry)
    assert error.code is code
    for fragment in fragments:
        assert fragment in error.message


@pytest.mark.parametrize("character", list(REFUSED_IN_IDS.values()), ids=list(REFUSED_IN_IDS))
@pytest.mark.parametrize("where", ["start", "middle", "end", "alone"])
def test_each_character_class_is_refused_in_ids_wherever_it_is(character: str, where: str) -> None:
    value = {"start": character + "ab", "middle": "a" + character + "b", "end": "ab" + character}
    with pytest.raises(ProtocolError) as raised:
        check_id(LIMITS, "txn_id", value.get(where, character))
    assert raised.value.code is INVALID
    assert f"U+{ord(character):04X}" in raised.value.message
    assert raised.value.message.startswith("txn_id ")


@pytest.mark.parametrize("value", ACCEPTED_IDS)
def test_printable_ids_are_accepted_and_a_participant_can_store_them(value: str) -> None:
    check_id(LIMITS, "txn_id", value)
    check_entry(LIMITS, begin(txn_id=value, participants=(value,), session_id=value))
    StoreLimits().check_id("txn id", value)


@pytest.mark.parametrize("value", ACCEPTED_IN_TEXT)
def test_text_may_hold_tab_and_newlines(value: str) -> None:
    check_text(LIMITS, "reason", value, "reason_bytes_max")
    check_entry(LIMITS, Abort(round_id="t1", reason=value, now_ms=1))


@pytest.mark.parametrize("value", list(REFUSED_IN_TEXT.values()), ids=list(REFUSED_IN_TEXT))
def test_text_holds_no_other_control_character(value: str) -> None:
    with pytest.raises(ProtocolError, match="reason holds a control character"):
        check_text(LIMITS, "reason", value, "reason_bytes_max")


def test_a_vote_reason_is_bounded_by_size_only_when_applied() -> None:
    """A participant chose it: the leader's link cleans it (``clean_text``) before it
    is proposed; a log written before that still applies as it did."""
    check_entry(LIMITS, votes(vote(reason="\x1b[31mred\x1b[0m")))


def test_the_coordinator_never_accepts_an_id_a_participant_refuses() -> None:
    store, checkpoints = StoreLimits(), CheckpointLimits()
    assert store.id_bytes_max >= LIMITS.id_bytes_max
    assert checkpoints.id_bytes_max >= LIMITS.id_bytes_max
    assert checkpoints.label_bytes_max >= LIMITS.label_bytes_max


@given(st.text(max_size=140))
def test_what_the_coordinator_accepts_every_participant_can_store(value: str) -> None:
    try:
        check_id(LIMITS, "txn_id", value)
    except ProtocolError:
        return
    try:
        StoreLimits().check_id("txn id", value)
    except StoreLimitError as error:  # pragma: no cover - the failure this guards
        raise AssertionError(f"coordinator accepted {value!r}; a participant: {error}") from None


@pytest.mark.parametrize(
    ("value", "limit", "cleaned"),
    [
        ("plain", 10, "plain"),
        ("a\x1b[2Jb", 20, "a\\x1b[2Jb"),
        ("nul\x00", 20, "nul\\x00"),
        ("keep\ttab\nand newline", 30, "keep\ttab\nand newline"),
        ("x" * 50, 10, "x" * 10),
        ("é" * 10, 5, "éé"),  # cut at a character boundary
        ("\x00" * 10, 8, "\\x00\\x00"),
    ],
)
def test_clean_text_escapes_and_cuts(value: str, limit: int, cleaned: str) -> None:
    result = clean_text(value, limit)
    assert result == cleaned
    check_text(Limits(reason_bytes_max=limit), "reason", result, "reason_bytes_max")


VALID: list[Entry] = [
    begin(),
    Enlist(txn_id="t1", participant_id="b", now_ms=1),
    RequestCommit(txn_id="t1", now_ms=1),
    round_(),
    votes(vote(reason="conflict: 'stock' changed since read")),
    RecordAcks(acks=(Ack(round_id="t1", participant_id="a"),), now_ms=1),
    Abort(round_id="t1", reason="operator: wrong price\n(see ticket 7)", now_ms=1),
    Timeout(round_id="t1", now_ms=1),
    PresumeAbort(round_id="t1", now_ms=1),
    register(),
    UnregisterParticipant(participant_id="a", drop_escalations=True, now_ms=1),
    saga(),
    RecordStepReports(
        reports=(StepReport(saga_id="s1", step=0, participant_id="a", outcome=StepOutcome.DONE),),
        now_ms=1,
    ),
    ResolveStep(saga_id="s1", step=0, note="refunded by hand", now_ms=1),
    escalations(note(round_id="")),
]


@pytest.mark.parametrize("entry", VALID, ids=lambda e: type(e).__name__)
def test_a_valid_entry_of_each_type_passes(entry: Entry) -> None:
    check_entry(LIMITS, entry)


def test_every_entry_type_has_a_valid_sample() -> None:
    assert {type(e) for e in VALID} == set(Entry.__args__)  # type: ignore[attr-defined]


def test_a_snapshot_from_before_owners_loads_with_every_round_nobodys() -> None:
    """pysyncobj pickles the state: rounds written before ``owner`` existed load
    without it, and the per-caller counts are rebuilt from what is open."""
    state = CoordinatorState(LIMITS)
    assert state.apply(begin(txn_id="old")).error is None
    assert state.apply(begin(txn_id="mine", owner="client/app")).error is None
    old = state.rounds["old"]
    delattr(old, "owner")  # as unpickled from a snapshot of the earlier version
    del state.__dict__["_open_by_owner"]
    # Pickled as snapshot format 1 wrote rounds (pickle's own form of their slots).
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, 2)
    pickler.dispatch_table = {  # type: ignore[assignment]
        Round: lambda rnd: (
            copyreg.__newobj__,  # type: ignore[attr-defined]
            (Round,),
            (None, {n: getattr(rnd, n) for n in Round.__slots__ if hasattr(rnd, n)}),
        )
    }
    pickler.dump(state)
    loaded = pickle.loads(buffer.getvalue())
    assert loaded.rounds["old"].owner == ""
    assert loaded.rounds_inflight_of("client/app") == 1
    assert loaded.apply(begin(txn_id="more", owner="client/app")).error is None
    assert loaded.rounds_inflight_of("client/app") == 2
