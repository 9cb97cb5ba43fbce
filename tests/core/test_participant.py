"""Golden scripts for the participant core (testdata/participant/*.txt).

A script drives one ``ParticipantCore`` with local calls and coordinator messages and
checks every ``Step`` it returns. Each Step is "made durable" on a fake disk before
its reply counts as sent, as the real caller must do (rule 1), and the interpreter
checks on every step, whatever the script says:

- the core's memory equals the disk once the step is durable (records and term);
- a YES vote is on disk when it is sent; an ack is sent only once the decision is;
- a refused (fenced) message persists nothing, does nothing and changes no record;
- a violation (a decision that contradicts what is durable) does nothing.

Strict like the coordinator scripts: every non-empty part of a Step (persist, actions,
reply, violation) must be checked by an ``expect-*`` line before the next command.

Commands (``at=MS`` is the participant's own clock; it defaults to the last one)::

    participant ID [retention=MS]          first command only
    begin TXN                              the agent starts work on a branch
    abort-alone TXN [reason=R] [at=MS]
    prepare ROUND [kind=txn|rollback|checkpoint] [checkpoint=CP] [label=L] [term=N]
            [vote=yes|no] [reason=R] [at=MS]     vote/reason: the agent's own answer
    decide ROUND DECISION [kind=...] [term=N] [at=MS]   DECISION: COMMIT, ABORT,
            EXECUTE, REJECT, KEEP or DISCARD (the word implies the kind)
    expire [at=MS]
    crash                                  restart from the disk: ACTIVE work is lost

Expectations (``none`` for an empty part)::

    expect-persist ITEM, ITEM ...   term=N | KIND ID STATE yes|no | forget ID
    expect-actions ITEM, ITEM ...   hold|apply|discard TXN | take|drop|restore CP
    expect-reply vote yes | vote no [(REASON)] | ack | refused [(REASON)]
    expect-violation TEXT           part of the violation message
    expect-error BranchClosed|MustAsk
    expect ID STATE | ID active | ID none
    expect-in-doubt ID,ID | none
    expect-term N
    expect-asked yes|no             was the agent's vote function called
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from coordinator.core.messages import AckReply, Decide, Prepare, Refused, VoteReply
from coordinator.core.types import DECISION_NAMES, Decision, Kind
from participant_sdk.core import (
    BranchClosed,
    ForgetRecord,
    LocalState,
    MustAsk,
    ParticipantCore,
    RoundRecord,
    Step,
    TermRecord,
)

TESTDATA = Path(__file__).parent / "testdata" / "participant"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))

# DECISION word -> (kind, decision); COMMIT and ABORT mean a transaction.
DECISION_WORDS: dict[str, tuple[Kind, Decision]] = {
    word: pair for pair, word in DECISION_NAMES.items() if pair[0] is not Kind.TXN
} | {"COMMIT": (Kind.TXN, Decision.COMMIT), "ABORT": (Kind.TXN, Decision.ABORT)}

LOCAL_ERRORS: dict[str, type[Exception]] = {"BranchClosed": BranchClosed, "MustAsk": MustAsk}
VERBATIM = frozenset({"expect-reply", "expect-violation", "expect-persist", "expect-actions"})


class ScriptError(AssertionError):
    pass


# ---------------------------------------------------------------------- rendering


def render_persist(item: Any) -> str:
    match item:
        case TermRecord():
            return f"term={item.term}"
        case ForgetRecord():
            return f"forget {item.round_id}"
        case RoundRecord():
            vote = "yes" if item.voted_yes else "no"
            return f"{item.kind.value.lower()} {item.round_id} {item.state.value} {vote}"
    raise ScriptError(f"cannot render {item!r}")


def render_action(action: Any) -> str:
    # HoldBranch(txn_id=t1) -> "hold t1", TakeCheckpoint(checkpoint_id=cp1, ...) -> "take cp1"
    verb = re.sub(r"(Branch|Checkpoint)$", "", type(action).__name__).lower()
    return f"{verb} {getattr(action, fields(action)[0].name)}"


def render_reply(reply: Any) -> str:
    match reply:
        case None:
            return "none"
        case VoteReply():
            return f"vote {'yes' if reply.yes else 'no'}" + (
                f" ({reply.reason})" if reply.reason else ""
            )
        case AckReply():
            return "ack"
        case Refused():
            return f"refused ({reply.reason})"
    raise ScriptError(f"cannot render {reply!r}")


def render_list(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


# ---------------------------------------------------------------------- the fake disk


@dataclass
class Disk:
    """What survives a crash: records and the highest term, written one Step at a time."""

    records: dict[str, RoundRecord] = field(default_factory=dict)
    term: int = 0

    def write(self, step: Step) -> None:
        for item in step.persist:
            match item:
                case TermRecord():
                    assert item.term > self.term, f"term goes back: {self.term} -> {item.term}"
                    self.term = item.term
                case RoundRecord():
                    self.records[item.round_id] = item
                case ForgetRecord():
                    assert item.round_id in self.records, f"forget of unknown {item.round_id}"
                    assert self.records[item.round_id].state is not LocalState.PREPARED
                    del self.records[item.round_id]


def check_step_rules(
    step: Step, core: ParticipantCore, disk: Disk, before: dict[str, RoundRecord], round_id: str
) -> None:
    """The rules every Step keeps, checked after ``step`` was written to ``disk``."""
    assert core.records == disk.records, "memory and disk disagree about the records"
    assert core.term_seen == disk.term, "memory and disk disagree about the term"
    match step.reply:
        case VoteReply(yes=True):
            durable = disk.records.get(round_id)
            assert durable is not None and durable.voted_yes, "YES sent before it was durable"
        case VoteReply(yes=False):
            durable = disk.records.get(round_id)
            assert durable is not None and durable.state is LocalState.ABORTED
        case AckReply():
            durable = disk.records.get(round_id)
            assert durable is None or durable.state is not LocalState.PREPARED, (
                "ack sent while the round is still undecided on disk"
            )
        case Refused():
            assert not step.actions, "a refused message must not act"
            assert all(isinstance(p, TermRecord) for p in step.persist)
            assert core.records == before, "a refused message changed a record"
    if step.violation:
        assert not step.actions, "a violation must not act"


# ---------------------------------------------------------------------- the interpreter


@dataclass
class Command:
    line_no: int
    text: str
    name: str
    args: list[str]
    options: dict[str, str]
    verbatim: str = ""

    def take(self, key: str, default: str) -> str:
        return self.options.pop(key, default)

    def arg(self, index: int) -> str:
        if index >= len(self.args):
            raise ScriptError(f"{self.name} needs at least {index + 1} arguments")
        return self.args[index]


def parse(text: str) -> list[Command]:
    commands = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        name, _, rest = line.strip().partition(" ")
        if name in VERBATIM:
            commands.append(Command(line_no, line.strip(), name, [], {}, rest.strip()))
            continue
        words = shlex.split(line, comments=True)
        if not words:
            continue
        args = [w for w in words[1:] if "=" not in w]
        options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        commands.append(Command(line_no, line.strip(), words[0], args, options))
    return commands


@dataclass
class ScriptRun:
    core: ParticipantCore = field(default_factory=lambda: ParticipantCore("p1"))
    disk: Disk = field(default_factory=Disk)
    now_ms: int = 0
    unchecked: dict[str, str] = field(default_factory=dict)
    last_parts: dict[str, str] = field(default_factory=dict)
    unchecked_error: str = ""
    asked: bool = False
    started: bool = False

    def run(self, text: str, source: str = "<script>") -> None:
        for command in parse(text):
            try:
                self._execute(command)
                if command.options:
                    raise ScriptError(f"unknown options {sorted(command.options)}")
            except (ScriptError, AssertionError) as failure:
                raise ScriptError(
                    f"{source}:{command.line_no}: {command.text}\n  {failure}"
                ) from None
        try:
            self._require_checked()
        except ScriptError as failure:
            raise ScriptError(f"{source}: at the end\n  {failure}") from None

    def _execute(self, command: Command) -> None:
        action = ACTIONS.get(command.name)
        if action is not None:
            self._require_checked()
            if "at" in command.options:
                self.now_ms = int(command.take("at", ""))
            action(self, command)
            self.started = True
            return
        check = EXPECTATIONS.get(command.name)
        if check is None:
            raise ScriptError(f"unknown command {command.name!r}")
        check(self, command)

    def _require_checked(self) -> None:
        if self.unchecked_error:
            raise ScriptError(f"unexpected {self.unchecked_error}")
        if self.unchecked:
            raise ScriptError(f"unchecked step parts {self.unchecked}")

    def _take_step(self, step: Step, round_id: str, before: dict[str, RoundRecord]) -> None:
        self.disk.write(step)
        check_step_rules(step, self.core, self.disk, before, round_id)
        parts = {
            "persist": render_list([render_persist(p) for p in step.persist]),
            "actions": render_list([render_action(a) for a in step.actions]),
            "reply": render_reply(step.reply),
            "violation": step.violation or "none",
        }
        self.unchecked = {part: text for part, text in parts.items() if text != "none"}
        self.last_parts = parts

    # ------------------------------------------------------------------ actions

    def participant(self, command: Command) -> None:
        if self.started:
            raise ScriptError("participant must be the first command")
        retention = int(command.take("retention", "300000"))
        self.core = ParticipantCore(command.arg(0), record_retention_ms=retention)

    def begin(self, command: Command) -> None:
        self._local(lambda: self.core.begin_branch(command.arg(0)))

    def abort_alone(self, command: Command) -> None:
        reason = command.take("reason", "gave up")
        before = dict(self.core.records)
        step = self._local(lambda: self.core.abort_alone(command.arg(0), self.now_ms, reason))
        if step is not None:
            self._take_step(step, command.arg(0), before)

    def _local(self, call: Callable[[], Step | None]) -> Step | None:
        before = (dict(self.core.records), set(self.core.active))
        try:
            return call()
        except (BranchClosed, MustAsk) as error:
            assert (self.core.records, self.core.active) == before, "a refused call changed state"
            self.unchecked_error = type(error).__name__
            return None

    def prepare(self, command: Command) -> None:
        answer = command.take("vote", "yes") == "yes"
        reason = command.take("reason", "")
        message = Prepare(
            round_id=command.arg(0),
            kind=Kind[command.take("kind", "txn").upper()],
            participant_id=self.core.participant_id,
            session_id="s1",
            checkpoint_id=command.take("checkpoint", ""),
            label=command.take("label", ""),
            term=int(command.take("term", str(self.core.term_seen))),
        )
        self.asked = False

        def agent_vote(prepare: Prepare) -> tuple[bool, str]:
            assert prepare == message
            self.asked = True
            return answer, reason

        before = dict(self.core.records)
        self._take_step(
            self.core.on_prepare(message, self.now_ms, agent_vote), message.round_id, before
        )

    def decide(self, command: Command) -> None:
        word = command.arg(1)
        kind, decision = DECISION_WORDS[word]
        message = Decide(
            round_id=command.arg(0),
            kind=Kind[command.take("kind", kind.value).upper()],
            participant_id=self.core.participant_id,
            decision=decision,
            term=int(command.take("term", str(self.core.term_seen))),
        )
        before = dict(self.core.records)
        self._take_step(self.core.on_decide(message, self.now_ms), message.round_id, before)

    def expire(self, command: Command) -> None:
        self._take_step(self.core.expire(self.now_ms), "", dict(self.core.records))

    def crash(self, command: Command) -> None:
        self.core = ParticipantCore.recover(
            self.core.participant_id,
            list(self.disk.records.values()),
            self.disk.term,
            record_retention_ms=self.core.record_retention_ms,
        )

    # ------------------------------------------------------------------ expectations

    def _expect_part(self, part: str, command: Command) -> None:
        actual = self.last_parts[part]
        wanted = command.verbatim
        # A reply may be checked without its reason: "vote no" matches "vote no (...)".
        matches = actual == wanted or (part == "reply" and actual.startswith(wanted + " ("))
        if part == "violation":
            matches = wanted in actual if wanted != "none" else actual == "none"
        assert matches, f"{part} is {actual!r}, expected {wanted!r}"
        self.unchecked.pop(part, None)

    def expect_error(self, command: Command) -> None:
        assert self.unchecked_error == command.arg(0), (
            f"error was {self.unchecked_error or 'none'}, expected {command.arg(0)}"
        )
        assert command.arg(0) in LOCAL_ERRORS
        self.unchecked_error = ""

    def expect_record(self, command: Command) -> None:
        round_id, wanted = command.arg(0), command.arg(1)
        record = self.core.records.get(round_id)
        if wanted == "active":
            assert record is None and round_id in self.core.active, f"{round_id} is not active"
        elif wanted == "none":
            assert record is None and round_id not in self.core.active, f"{round_id}: {record}"
        else:
            assert record is not None, f"no record of {round_id}"
            assert record.state.value == wanted, f"{round_id} is {record.state.value}"

    def expect_in_doubt(self, command: Command) -> None:
        actual = render_list(sorted(r.round_id for r in self.core.in_doubt()))
        wanted = command.arg(0)
        assert actual == wanted, f"in doubt: {actual}, expected {wanted}"

    def expect_term(self, command: Command) -> None:
        assert self.core.term_seen == int(command.arg(0)), f"term seen {self.core.term_seen}"

    def expect_asked(self, command: Command) -> None:
        assert self.asked == (command.arg(0) == "yes"), f"agent asked: {self.asked}"


ACTIONS: dict[str, Callable[[ScriptRun, Command], None]] = {
    "participant": ScriptRun.participant,
    "begin": ScriptRun.begin,
    "abort-alone": ScriptRun.abort_alone,
    "prepare": ScriptRun.prepare,
    "decide": ScriptRun.decide,
    "expire": ScriptRun.expire,
    "crash": ScriptRun.crash,
}

EXPECTATIONS: dict[str, Callable[[ScriptRun, Command], None]] = {
    "expect-persist": lambda run, c: run._expect_part("persist", c),
    "expect-actions": lambda run, c: run._expect_part("actions", c),
    "expect-reply": lambda run, c: run._expect_part("reply", c),
    "expect-violation": lambda run, c: run._expect_part("violation", c),
    "expect-error": ScriptRun.expect_error,
    "expect": ScriptRun.expect_record,
    "expect-in-doubt": ScriptRun.expect_in_doubt,
    "expect-term": ScriptRun.expect_term,
    "expect-asked": ScriptRun.expect_asked,
}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_script(path: Path) -> None:
    ScriptRun().run(path.read_text(), source=str(path.relative_to(Path(__file__).parent)))


def test_scripts_exist() -> None:
    assert len(SCRIPTS) >= 8


def test_the_interpreter_refuses_an_unchecked_persist() -> None:
    with pytest.raises(ScriptError, match="unchecked step parts"):
        ScriptRun().run("begin t1\nprepare t1 term=1\nexpect-reply vote yes\nexpire")


def test_the_interpreter_refuses_an_unchecked_local_error() -> None:
    with pytest.raises(ScriptError, match="unexpected BranchClosed"):
        ScriptRun().run(
            "abort-alone t1\nexpect-persist txn t1 ABORTED no\nexpect-actions discard t1\nbegin t1"
        )
