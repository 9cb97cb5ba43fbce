"""Golden scripts for the coordinator core, in the style of etcd-io/raft's testdata.

Every file in ``testdata/coordinator/`` is a story told in protocol words: entries are
applied to one ``CoordinatorState`` in order, and ``expect`` lines say what must be
true afterwards. The interpreter is strict so the scripts stay honest: an entry that
was rejected or that only noted something ("ignored") must be followed by an
``expect-error`` / ``expect-ignored`` line that names it, or the script fails.

Commands (``at=MS`` is the proposer's ``now_ms``; it defaults to the replicated clock)::

    limits NAME=VALUE ...            first command only: the replicated limits
    begin TXN participants=a,b timeout=MS [session=S] [owner=O] [at=MS]
    enlist TXN PARTICIPANT [at=MS]
    commit TXN [at=MS]
    round ID kind=rollback|checkpoint participants=a,b checkpoint=CP timeout=MS
          [label=L] [session=S] [owner=O] [at=MS]
    vote ROUND PARTICIPANT yes|no [reason=R] [at=MS]     one RecordVotes entry
    votes ROUND:PARTICIPANT:yes|no ... [at=MS]            a batch in one entry
    ack ROUND PARTICIPANT [at=MS]                        one RecordAcks entry
    acks ROUND:PARTICIPANT ... [at=MS]
    abort ROUND [reason=R] [at=MS]
    timeout ROUND [at=MS]
    presume-abort ROUND [at=MS]
    saga ID steps=PARTICIPANT:ACTION,... step-timeout=MS [session=S] [owner=O] [at=MS]
    step SAGA INDEX PARTICIPANT done|failed|compensated|escalated [reason=R] [result=R]
                                                         one RecordStepReports entry
    resolve SAGA INDEX [note=N] [at=MS]
    register PARTICIPANT [endpoint=E] [at=MS]
    unregister PARTICIPANT [drop-escalations] [at=MS]
    escalations PARTICIPANT [ROUND:KEY ...] [at=MS]      a participant's whole set
    drive [at=MS]                    one pass of the leader: poll its outbox (the real
                                     cluster's: participants reached through their
                                     registered endpoints) at MS, apply every entry it
                                     proposes, in order

Expectations::

    expect ROUND PHASE [DECISION] [reason=R] [participants=a,b]
    expect ROUND forgotten             the round is no longer remembered
    expect-error CODE [TEXT]           the last entry was rejected (TEXT: part of the message)
    expect-ignored TEXT                the last entry noted TEXT and changed nothing for it
    expect-steps SAGA STATUS,...        every step's status, in order
    expect-escalations ROUND [PARTICIPANT:KEY ...]   what ``escalations_of`` answers
    expect-inflight N [owner=O]        rounds not yet done (in all, or begun by O)
    expect-registered [PARTICIPANT ...]  who is registered, sorted
    expect-clock MS
    expect-sent [ROUND:PARTICIPANT:MESSAGE ...]   what the last drive sent (MESSAGE:
                                     prepare, decide, ...; nothing listed: nothing sent)

DECISION may be the generic COMMIT/ABORT or the kind's own word (EXECUTE/REJECT for
rollback, KEEP/DISCARD for checkpoint rounds, COMPLETED/COMPENSATED for sagas).
``#`` starts a comment, except on the ``expect-error`` / ``expect-ignored`` lines,
whose TEXT is taken verbatim. Votes and
acks always travel in a batch entry, so a bad one is a note, not an error.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
from coordinator.core.limits import Limits
from coordinator.core.messages import ToParticipant
from coordinator.core.outbox import Outbox
from coordinator.core.state import TRANSITIONS, Applied, CoordinatorState, Event, Phase
from coordinator.core.types import Decision, Kind, StepOutcome, decision_name

TESTDATA = Path(__file__).parent / "testdata" / "coordinator"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))

Transition = tuple[Phase | None, Event]


class RecordingState(CoordinatorState):
    """A CoordinatorState that remembers every transition it took, for coverage."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.transitions_taken: set[Transition] = set()

    def _next(self, phase: Phase | None, event: Event, round_id: str) -> Phase | None:  # type: ignore[override]
        after = CoordinatorState._next(phase, event, round_id)
        self.transitions_taken.add((phase, event))
        return after

    def _first_phase(self, event: Event) -> Phase:  # type: ignore[override]
        phase = CoordinatorState._first_phase(event)
        self.transitions_taken.add((None, event))
        return phase


class ScriptError(AssertionError):
    pass


@dataclass
class Command:
    line_no: int
    text: str
    name: str
    args: list[str]
    options: dict[str, str]

    def take(self, key: str, default: str | None = None) -> str:
        if key in self.options:
            return self.options.pop(key)
        if default is None:
            raise ScriptError(f"{self.name} needs {key}=")
        return default

    def arg(self, index: int) -> str:
        if index >= len(self.args):
            raise ScriptError(f"{self.name} needs at least {index + 1} arguments")
        return self.args[index]


# Commands whose argument is free text, taken verbatim (quotes, "=" and all).
VERBATIM = frozenset({"expect-error", "expect-ignored"})


def parse(text: str) -> list[Command]:
    commands = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        name, _, rest = line.strip().partition(" ")
        if name in VERBATIM:
            commands.append(Command(line_no, line.strip(), name, rest.strip().split(" ", 1), {}))
            continue
        words = shlex.split(line, comments=True)
        if not words:
            continue
        args = [w for w in words[1:] if "=" not in w]
        options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        commands.append(Command(line_no, line.strip(), words[0], args, options))
    return commands


def _names(value: str) -> tuple[str, ...]:
    return tuple(name for name in value.split(",") if name)


def _yes_no(word: str) -> bool:
    if word not in ("yes", "no"):
        raise ScriptError(f"expected yes or no, got {word!r}")
    return word == "yes"


@dataclass
class ScriptRun:
    """Runs one script; keeps what the last entry did until the script has checked it."""

    state: RecordingState = field(default_factory=lambda: RecordingState(Limits()))
    unchecked_error: ProtocolError | None = None
    unchecked_notes: list[str] = field(default_factory=list)
    entries_applied: int = 0
    outbox: Outbox | None = None  # the leader's, created by the first drive
    last_sends: tuple[ToParticipant, ...] | None = None

    def run(self, text: str, source: str = "<script>") -> None:
        commands = parse(text)
        for command in commands:
            try:
                self._execute(command)
            except (ScriptError, AssertionError) as failure:
                raise ScriptError(
                    f"{source}:{command.line_no}: {command.text}\n  {failure}"
                ) from None
        try:
            self._require_checked()
        except ScriptError as failure:
            raise ScriptError(f"{source}: at the end\n  {failure}") from None

    # ------------------------------------------------------------------ dispatch

    def _execute(self, command: Command) -> None:
        if command.name == "limits":
            if self.entries_applied:
                raise ScriptError("limits must come before the first entry")
            values = {key: int(value) for key, value in command.options.items()}
            command.options.clear()
            self.state = RecordingState(Limits(**values))
            return
        build = ENTRY_BUILDERS.get(command.name)
        check = EXPECTATIONS.get(command.name)
        if command.name == "drive":
            self._require_checked()
            self._drive(int(command.take("at", str(self.state.clock_ms))))
            self._refuse_leftovers(command)
        elif build is not None:
            self._require_checked()
            now_ms = int(command.take("at", str(self.state.clock_ms)))
            entry = build(command, now_ms)
            self._refuse_leftovers(command)
            self._record(self.state.apply(entry))
        elif check is not None:
            check(self, command)
            self._refuse_leftovers(command)
        else:
            raise ScriptError(f"unknown command {command.name!r}")

    def _drive(self, now_ms: int) -> None:
        if self.outbox is None:
            self.outbox = Outbox(self.state.limits, registry=True)
        due = self.outbox.poll(self.state, now_ms, term=1)
        self.last_sends = due.sends
        error: ProtocolError | None = None
        notes: list[str] = []
        for entry in due.proposals:
            applied = self.state.apply(entry)
            self.entries_applied += 1
            error = error or applied.error
            notes.extend(applied.ignored)
        self.unchecked_error, self.unchecked_notes = error, notes

    def _record(self, applied: Applied) -> None:
        self.entries_applied += 1
        self.unchecked_error = applied.error
        self.unchecked_notes = list(applied.ignored)

    def _require_checked(self) -> None:
        if self.unchecked_error is not None:
            raise ScriptError(f"unexpected error {self.unchecked_error}")
        if self.unchecked_notes:
            raise ScriptError(f"unexpected ignored notes {self.unchecked_notes}")

    @staticmethod
    def _refuse_leftovers(command: Command) -> None:
        if command.options:
            raise ScriptError(f"unknown options {sorted(command.options)}")

    # ------------------------------------------------------------------ expectations

    def expect_round(self, command: Command) -> None:
        round_id, what = command.arg(0), command.arg(1)
        rnd = self.state.get(round_id)
        if what == "forgotten":
            assert rnd is None, f"{round_id} is still remembered: {rnd.phase.value if rnd else ''}"
            return
        assert rnd is not None, f"no round {round_id!r}"
        assert rnd.phase.value == what, f"{round_id} is {rnd.phase.value}, expected {what}"
        if len(command.args) > 2:
            assert rnd.decision is not None, f"{round_id} is undecided"
            wanted = command.arg(2)
            actual = (
                rnd.decision.value
                if wanted in Decision.__members__
                else decision_name(rnd.kind, rnd.decision)
            )
            assert actual == wanted, f"{round_id} decided {actual}, expected {wanted}"
        elif rnd.phase in (Phase.ACTIVE, Phase.WAITING, Phase.VOTING):
            assert rnd.decision is None, f"undecided {round_id} has decision {rnd.decision}"
        if "reason" in command.options:
            reason = command.take("reason")
            assert rnd.decision_reason == reason, f"reason is {rnd.decision_reason!r}"
        if "participants" in command.options:
            participants = list(_names(command.take("participants")))
            assert rnd.participants == participants, f"participants are {rnd.participants}"

    def expect_error(self, command: Command) -> None:
        error = self.unchecked_error
        assert error is not None, "the last entry was not rejected"
        code = command.arg(0)
        assert error.code is ErrorCode[code], f"error is {error}, expected {code}"
        for fragment in command.args[1:]:
            assert fragment in error.message, f"{error.message!r} does not mention {fragment!r}"
        self.unchecked_error = None

    def expect_ignored(self, command: Command) -> None:
        fragment = command.arg(0)
        for note in self.unchecked_notes:
            if fragment in note:
                self.unchecked_notes.remove(note)
                return
        raise ScriptError(f"no ignored note mentions {fragment!r}: {self.unchecked_notes}")

    def expect_steps(self, command: Command) -> None:
        rnd = self.state.get(command.arg(0))
        assert rnd is not None, f"no saga {command.arg(0)!r}"
        statuses = ",".join(step.status.value for step in rnd.steps)
        assert statuses == command.arg(1), f"steps are {statuses}"

    def expect_escalations(self, command: Command) -> None:
        found = [f"{p}:{n.key}" for p, n in self.state.escalations_of(command.arg(0))]
        assert found == command.args[1:], f"escalations are {found}"

    def expect_inflight(self, command: Command) -> None:
        if "owner" in command.options:
            owner = command.take("owner")
            inflight = self.state.rounds_inflight_of(owner)
            assert inflight == int(command.arg(0)), f"{inflight} rounds in flight for {owner}"
            return
        inflight = self.state.rounds_inflight()
        assert inflight == int(command.arg(0)), f"{inflight} rounds in flight"

    def expect_registered(self, command: Command) -> None:
        registered = sorted(self.state.endpoints)
        assert registered == command.args, f"registered: {registered}"

    def expect_sent(self, command: Command) -> None:
        if self.last_sends is None:
            raise ScriptError("expect-sent needs a drive before it")
        sent = [
            f"{m.round_id}:{m.participant_id}:{type(m).__name__.lower()}" for m in self.last_sends
        ]
        assert sent == command.args, f"sent {sent}"

    def expect_clock(self, command: Command) -> None:
        clock_ms = self.state.clock_ms
        assert clock_ms == int(command.arg(0)), f"replicated clock is {clock_ms}"


# ---------------------------------------------------------------------- entry builders


def _begin(c: Command, now_ms: int) -> Entry:
    return BeginTxn(
        txn_id=c.arg(0),
        session_id=c.take("session", ""),
        participants=_names(c.take("participants")),
        timeout_ms=int(c.take("timeout")),
        now_ms=now_ms,
        owner=c.take("owner", ""),
    )


def _round(c: Command, now_ms: int) -> Entry:
    return BeginRound(
        round_id=c.arg(0),
        kind=Kind[c.take("kind").upper()],
        session_id=c.take("session", ""),
        participants=_names(c.take("participants")),
        checkpoint_id=c.take("checkpoint"),
        label=c.take("label", ""),
        timeout_ms=int(c.take("timeout")),
        now_ms=now_ms,
        owner=c.take("owner", ""),
    )


def _vote(c: Command, now_ms: int) -> Entry:
    vote = Vote(
        round_id=c.arg(0),
        participant_id=c.arg(1),
        yes=_yes_no(c.arg(2)),
        reason=c.take("reason", ""),
    )
    return RecordVotes(votes=(vote,), now_ms=now_ms)


def _votes(c: Command, now_ms: int) -> Entry:
    votes = []
    for word in c.args:
        round_id, participant_id, answer = word.split(":")
        votes.append(Vote(round_id=round_id, participant_id=participant_id, yes=_yes_no(answer)))
    return RecordVotes(votes=tuple(votes), now_ms=now_ms)


def _ack(c: Command, now_ms: int) -> Entry:
    return RecordAcks(acks=(Ack(round_id=c.arg(0), participant_id=c.arg(1)),), now_ms=now_ms)


def _acks(c: Command, now_ms: int) -> Entry:
    acks = []
    for word in c.args:
        round_id, participant_id = word.split(":")
        acks.append(Ack(round_id=round_id, participant_id=participant_id))
    return RecordAcks(acks=tuple(acks), now_ms=now_ms)


def _saga(c: Command, now_ms: int) -> Entry:
    steps = []
    for word in _names(c.take("steps")):
        participant_id, action = word.split(":")
        steps.append(SagaStepSpec(participant_id=participant_id, action=action))
    return BeginSaga(
        saga_id=c.arg(0),
        session_id=c.take("session", ""),
        steps=tuple(steps),
        step_timeout_ms=int(c.take("step-timeout")),
        now_ms=now_ms,
        owner=c.take("owner", ""),
    )


def _step(c: Command, now_ms: int) -> Entry:
    report = StepReport(
        saga_id=c.arg(0),
        step=int(c.arg(1)),
        participant_id=c.arg(2),
        outcome=StepOutcome[c.arg(3).upper()],
        reason=c.take("reason", ""),
        result=c.take("result", "").encode(),
    )
    return RecordStepReports(reports=(report,), now_ms=now_ms)


def _unregister(c: Command, now_ms: int) -> Entry:
    flags = c.args[1:]
    if flags not in ([], ["drop-escalations"]):
        raise ScriptError(f"unregister takes only drop-escalations, not {flags}")
    return UnregisterParticipant(
        participant_id=c.arg(0), drop_escalations=bool(flags), now_ms=now_ms
    )


ENTRY_BUILDERS: dict[str, Callable[[Command, int], Entry]] = {
    "begin": _begin,
    "enlist": lambda c, now: Enlist(txn_id=c.arg(0), participant_id=c.arg(1), now_ms=now),
    "commit": lambda c, now: RequestCommit(txn_id=c.arg(0), now_ms=now),
    "round": _round,
    "vote": _vote,
    "votes": _votes,
    "ack": _ack,
    "acks": _acks,
    "abort": lambda c, now: Abort(round_id=c.arg(0), reason=c.take("reason", ""), now_ms=now),
    "timeout": lambda c, now: Timeout(round_id=c.arg(0), now_ms=now),
    "presume-abort": lambda c, now: PresumeAbort(round_id=c.arg(0), now_ms=now),
    "saga": _saga,
    "register": lambda c, now: RegisterParticipant(
        participant_id=c.arg(0), endpoint=c.take("endpoint", "127.0.0.1:1"), now_ms=now
    ),
    "escalations": lambda c, now: RecordEscalations(
        participant_id=c.arg(0),
        escalations=tuple(
            EscalationNote(round_id=w.split(":")[0], key=w.split(":")[1], detail="gave up")
            for w in c.args[1:]
        ),
        now_ms=now,
    ),
    "unregister": _unregister,
    "step": _step,
    "resolve": lambda c, now: ResolveStep(
        saga_id=c.arg(0), step=int(c.arg(1)), note=c.take("note", ""), now_ms=now
    ),
}

EXPECTATIONS: dict[str, Callable[[ScriptRun, Command], None]] = {
    "expect": ScriptRun.expect_round,
    "expect-error": ScriptRun.expect_error,
    "expect-ignored": ScriptRun.expect_ignored,
    "expect-steps": ScriptRun.expect_steps,
    "expect-escalations": ScriptRun.expect_escalations,
    "expect-inflight": ScriptRun.expect_inflight,
    "expect-registered": ScriptRun.expect_registered,
    "expect-clock": ScriptRun.expect_clock,
    "expect-sent": ScriptRun.expect_sent,
}


def run_script(path: Path) -> ScriptRun:
    run = ScriptRun()
    run.run(path.read_text(), source=str(path.relative_to(Path(__file__).parent)))
    return run


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_script(path: Path) -> None:
    run_script(path)


def test_scripts_exist() -> None:
    # A glob that finds nothing would make the parametrized test vanish silently.
    assert len(SCRIPTS) >= 10


def test_the_interpreter_refuses_an_unchecked_error() -> None:
    with pytest.raises(ScriptError, match="unexpected error"):
        ScriptRun().run("commit nope at=1\nexpect-inflight 0\ncommit nope at=2")


def test_the_interpreter_refuses_an_unchecked_note_at_the_end() -> None:
    with pytest.raises(ScriptError, match="unexpected ignored notes"):
        ScriptRun().run("timeout nope at=1")


def test_the_interpreter_refuses_a_misspelt_option() -> None:
    with pytest.raises(ScriptError, match="unknown options"):
        ScriptRun().run("begin t1 participants=a timeout=100 at=0 sesion=s")


# ------------------------------------------------------------- the transition table

PHASES_BEFORE: list[Phase | None] = [None, *Phase]
ALL_PAIRS: list[Transition] = [(phase, event) for phase in PHASES_BEFORE for event in Event]
FORBIDDEN = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


def _pair_id(pair: Transition) -> str:
    phase, event = pair
    return f"{phase.value if phase else 'none'}-{event.value}"


@pytest.mark.parametrize("pair", FORBIDDEN, ids=_pair_id)
def test_a_move_missing_from_the_table_is_a_protocol_error(pair: Transition) -> None:
    phase, event = pair
    with pytest.raises(ProtocolError) as raised:
        CoordinatorState._next(phase, event, "r1")
    assert raised.value.code is ErrorCode.FAILED_PRECONDITION
    assert "'r1'" in raised.value.message


@pytest.mark.parametrize("pair", list(TRANSITIONS), ids=_pair_id)
def test_a_move_in_the_table_goes_where_the_table_says(pair: Transition) -> None:
    phase, event = pair
    assert CoordinatorState._next(phase, event, "r1") is TRANSITIONS[pair]


def test_every_move_in_the_table_is_taken_by_some_script() -> None:
    taken: set[Transition] = set()
    for path in SCRIPTS:
        taken |= run_script(path).state.transitions_taken
    never_taken = sorted(_pair_id(pair) for pair in set(TRANSITIONS) - taken)
    assert not never_taken, f"no script takes {never_taken}"
    # The recorder sees only legal moves, so it can never see more than the table.
    assert taken <= set(TRANSITIONS)


def test_the_table_shape() -> None:
    # Only DECIDED rounds can finish, only finished rounds are forgotten, and every
    # move into DECIDED comes with exactly one decision event.
    assert {before for (before, _), after in TRANSITIONS.items() if after is Phase.DONE} == {
        Phase.DECIDED
    }
    assert {pair for pair, after in TRANSITIONS.items() if after is None} == {
        (Phase.DONE, Event.FORGET)
    }
    deciding = {event for (before, event), after in TRANSITIONS.items() if after is Phase.DECIDED}
    deciding -= {Event.ACK, Event.ESCALATE}  # DECIDED -> DECIDED: no new decision
    assert deciding == {Event.LAST_VOTE_YES, Event.VOTE_NO, Event.ABORT, Event.TIMEOUT}
    assert not [
        pair
        for pair in TRANSITIONS
        if pair[0] in (Phase.DECIDED, Phase.DONE) and pair[1] in deciding
    ], "a decided round must not be decided again"
