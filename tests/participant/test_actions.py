"""ActionRunner against a real in-memory Participant (started, with no cluster: its
branches work without one): a call runs once per id, a raising handler aborts the branch, a
later call finds the branch the earlier ones built or fails, never an empty one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from participant_sdk import Branch, LocalState, Participant, TxnActions
from participant_sdk.actions import ActionRunner


class Counter:
    def __init__(self) -> None:
        self.runs = 0
        self.actions = TxnActions()
        self.actions.add("put", self.put)
        self.actions.add("boom", self.boom)
        self.actions.add("seen", lambda branch, _: sorted(branch.writes))

    def put(self, branch: Branch, payload: dict[str, Any]) -> int:
        self.runs += 1
        branch.put(payload["key"], b"v")
        return self.runs

    def boom(self, branch: Branch, payload: Any) -> None:
        raise RuntimeError("the API said no")


@pytest.fixture
def setup() -> Iterator[tuple[Counter, Participant, ActionRunner]]:
    counter = Counter()
    participant = Participant("p1", None, [], actions=counter.actions)
    participant.start_in_thread()
    try:
        yield counter, participant, participant._actions
    finally:
        participant.stop_in_thread()


def _payload(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_a_call_runs_once_per_id_and_later_calls_continue_the_branch(
    setup: tuple[Counter, Participant, ActionRunner],
) -> None:
    counter, _, runner = setup
    first = runner.run("t1", "c1", "put", _payload({"key": "a"}), calls_before=0)
    again = runner.run("t1", "c1", "put", _payload({"key": "a"}), calls_before=0)
    assert first == again == (b"1", "") and counter.runs == 1
    assert runner.run("t1", "c2", "put", _payload({"key": "b"}), calls_before=1) == (b"2", "")
    seen, error = runner.run("t1", "c3", "seen", b"", calls_before=2)
    assert (json.loads(seen), error) == (["a", "b"], "")


def test_a_handler_that_raises_aborts_the_branch_with_its_error(
    setup: tuple[Counter, Participant, ActionRunner],
) -> None:
    _, participant, runner = setup
    runner.run("t1", "c1", "put", _payload({"key": "a"}), calls_before=0)
    result, error = runner.run("t1", "c2", "boom", b"null", calls_before=1)
    assert result == b"" and error == "boom raised RuntimeError: the API said no"
    record = participant.record("t1")
    assert record is not None and record.state is LocalState.ABORTED
    assert record.reason == error
    # The branch is gone: a later call fails rather than start an empty one.
    _, later = runner.run("t1", "c3", "put", _payload({"key": "c"}), calls_before=2)
    assert "not open here" in later


def test_a_later_call_without_its_branch_fails_instead_of_starting_an_empty_one(
    setup: tuple[Counter, Participant, ActionRunner],
) -> None:
    counter, _, runner = setup
    # As after a restart: the earlier call's branch is not open here.
    _, error = runner.run("t9", "c2", "put", _payload({"key": "b"}), calls_before=1)
    assert "not open here" in error and "lost in a restart" in error
    assert counter.runs == 0


@pytest.mark.parametrize(
    ("action", "payload", "expected"),
    [
        ("nope", b"{}", "no action 'nope' here (offered: boom, put, seen)"),
        ("put", b"{not json", "payload is not JSON"),
        ("seen", b"", ""),
    ],
)
def test_bad_calls_fail_with_a_reason_and_doom_the_branch(
    setup: tuple[Counter, Participant, ActionRunner], action: str, payload: bytes, expected: str
) -> None:
    _, participant, runner = setup
    _, error = runner.run("t1", "c1", action, payload, calls_before=0)
    assert error.startswith(expected)
    record = participant.record("t1")
    assert (record is not None and record.state is LocalState.ABORTED) == bool(expected)


def test_a_result_that_is_not_json_fails_the_call(
    setup: tuple[Counter, Participant, ActionRunner],
) -> None:
    _, participant, runner = setup
    participant._actions.actions.add("obj", lambda branch, _: object())
    _, error = runner.run("t1", "c1", "obj", b"", calls_before=0)
    assert "obj raised TypeError" in error


def test_a_retry_while_the_first_run_is_still_going_waits_for_it(
    setup: tuple[Counter, Participant, ActionRunner],
) -> None:
    _, participant, runner = setup
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def slow(branch: Branch, _: Any) -> int:
        runs.append(1)
        started.set()
        assert release.wait(10)
        return len(runs)

    participant._actions.actions.add("slow", slow)
    answers: list[tuple[bytes, str]] = []
    first = threading.Thread(target=lambda: answers.append(runner.run("t1", "c1", "slow", b"", 0)))
    first.start()
    assert started.wait(10)
    retry = threading.Thread(target=lambda: answers.append(runner.run("t1", "c1", "slow", b"", 0)))
    retry.start()
    release.set()
    first.join(10)
    retry.join(10)
    assert answers == [(b"1", ""), (b"1", "")] and runs == [1]


def test_action_names_are_checked() -> None:
    actions = TxnActions()
    actions.add("a", lambda branch, payload: None)
    with pytest.raises(ValueError, match="declared twice"):
        actions.add("a", lambda branch, payload: None)
    with pytest.raises(ValueError, match=r"1\.\.128 bytes"):
        actions.add("", lambda branch, payload: None)
