"""Compensable tools: every executed call is one effect keyed by its tool call id; an
abort or a rollback undoes exactly the calls that ran, newest first, once each, also
when the agent crashed mid-compensation; a call retried after a rollback is a new
effect, and the undone one is never compensated twice."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from coordinator.core.types import Decision
from participant_sdk import EffectLog, MemoryCheckpointStore, Reverter
from participant_sdk.effects import Effect, EffectStatus
from participant_sdk.integrations.langgraph import compensable

REPO = Path(__file__).resolve().parents[2]


class Airline:
    """The outside world: bookings by idempotency key, cancellations idempotent."""

    def __init__(self) -> None:
        self.booked: dict[str, str] = {}
        self.cancelled: set[str] = set()
        self.cancel_calls: list[str] = []
        self.crash_on_cancel: str | None = None

    def book(self, flight: str, key: str) -> str:
        self.booked.setdefault(key, flight)
        return f"booked {flight} ({key})"

    def cancel(self, effect: Effect) -> None:
        self.cancel_calls.append(effect.key)
        if effect.key in self.booked:
            self.cancelled.add(effect.key)
        if self.crash_on_cancel == effect.key:
            self.crash_on_cancel = None
            raise Crash(effect.key)


class Crash(BaseException):
    """The agent dies here (a BaseException: nothing in the SDK catches it)."""


def _tools(effects: EffectLog, airline: Airline) -> tuple[Any, Any]:
    @compensable(effects, undo=airline.cancel)
    def book_flight(flight: str, idempotency_key: str = "") -> str:
        """Book a flight."""
        return airline.book(flight, idempotency_key)

    @tool
    def book_hotel(city: str) -> str:
        """Book a hotel (a LangChain tool, wrapped as it is)."""
        return f"hotel in {city}"

    hotel = compensable(effects, undo=lambda effect: airline.cancel_calls.append(effect.key))(
        book_hotel
    )
    return book_flight, hotel


def _call(tool_: Any, call_id: str, **args: Any) -> ToolMessage:
    message = tool_.invoke({"name": tool_.name, "args": args, "id": call_id, "type": "tool_call"})
    assert isinstance(message, ToolMessage)
    return message


def test_a_call_is_an_effect_keyed_by_its_tool_call_id() -> None:
    effects, airline = EffectLog(), Airline()
    flight, hotel = _tools(effects, airline)
    assert set(flight.args) == {"flight"}  # the key is not the model's to fill in
    assert _call(flight, "call-1", flight="LIS-NYC").content == "booked LIS-NYC (call-1)"
    assert _call(hotel, "call-2", city="NYC").content == "hotel in NYC"
    # The same call again (a graph resumed after a crash re-runs the tool node):
    # answered from the log, nothing booked twice.
    assert _call(flight, "call-1", flight="LIS-NYC").content == "booked LIS-NYC (call-1)"
    assert [(e.key, e.name, e.status) for e in effects.effects()] == [
        ("call-1", "book_flight", EffectStatus.DONE),
        ("call-2", "book_hotel", EffectStatus.DONE),
    ]
    assert effects.get("call-1").kwargs == {"flight": "LIS-NYC"}


def test_abort_undoes_the_calls_that_ran_newest_first_once_each() -> None:
    effects, airline = EffectLog(), Airline()
    flight, hotel = _tools(effects, airline)
    with effects.transaction("trip-1"):
        _call(flight, "call-1", flight="LIS-NYC")
        _call(hotel, "call-2", city="NYC")
        _call(flight, "call-3", flight="NYC-LIS")
    effects.on_decision("trip-1", Decision.ABORT)
    effects.on_decision("trip-1", Decision.ABORT)  # heard twice: nothing more
    assert airline.cancel_calls == ["call-3", "call-2", "call-1"]
    assert {e.status for e in effects.effects()} == {EffectStatus.COMPENSATED}


def test_a_retried_call_after_a_rollback_is_not_compensated_twice() -> None:
    effects, airline = EffectLog(), Airline()
    reverter = Reverter(MemoryCheckpointStore(), effects=effects)
    flight, _ = _tools(effects, airline)
    reverter.save({"plan": "book"}, label="planned")
    _call(flight, "call-1", flight="LIS-NYC")
    reverter.restore("cp-1")  # the rollback: call-1 is cancelled
    assert airline.cancel_calls == ["call-1"]

    # The graph resumes from the checkpoint; the (deterministic) model asks for the
    # same tool call again. It runs again, as a new effect.
    retried = _call(flight, "call-1", flight="LIS-NYC")
    assert retried.content == "booked LIS-NYC (call-1#2)"
    assert effects.get("call-1").status is EffectStatus.COMPENSATED
    assert effects.get("call-1#2").status is EffectStatus.DONE

    # A second rollback undoes the retry, and only the retry.
    reverter.restore("cp-1")
    reverter.recover()
    assert airline.cancel_calls == ["call-1", "call-1#2"]
    assert airline.cancelled == {"call-1", "call-1#2"}


def test_a_crash_mid_compensation_is_finished_once_each_on_recover(tmp_path: Path) -> None:
    airline = Airline()
    effects = EffectLog.open(tmp_path)
    flight, hotel = _tools(effects, airline)
    with effects.transaction("trip-2"):
        _call(flight, "call-1", flight="LIS-NYC")
        _call(hotel, "call-2", city="NYC")
        _call(flight, "call-3", flight="NYC-LIS")
    # The airline cancels call-3, then the agent dies before COMPENSATED is durable.
    airline.crash_on_cancel = "call-3"
    with pytest.raises(Crash):
        effects.on_decision("trip-2", Decision.ABORT)
    effects.close()

    # The restarted agent declares its tools again and recovers.
    again = EffectLog.open(tmp_path)
    _tools(again, airline)
    again.recover()
    # call-3's cancellation ran again (at least once, idempotent by key), then the
    # others, newest first; none of them more than that.
    assert airline.cancel_calls == ["call-3", "call-3", "call-2", "call-1"]
    assert airline.cancelled == {"call-1", "call-3"}
    assert {e.status for e in again.effects()} == {EffectStatus.COMPENSATED}
    again.recover()
    assert len(airline.cancel_calls) == 4
    again.close()


def test_bufferable_and_irreversible_tools_wait_for_commit() -> None:
    effects, sent = EffectLog(), []

    @compensable(effects, effect="bufferable")
    def send_itinerary(to: str) -> str:
        """Mail the itinerary."""
        sent.append(to)
        return "sent"

    with effects.transaction("trip-3"):
        held = _call(send_itinerary, "call-9", to="ana@example.com")
    assert held.content == "send_itinerary: held until the transaction commits (effect call-9)"
    assert sent == []
    effects.on_decision("trip-3", Decision.COMMIT)
    assert sent == ["ana@example.com"]


def test_declaration_mistakes_are_one_line_errors() -> None:
    effects = EffectLog()
    with pytest.raises(ValueError, match="needs undo="):
        compensable(effects)
    with pytest.raises(ValueError, match="never undone"):
        compensable(effects, effect="irreversible", undo=lambda effect: None)
    with pytest.raises(ValueError, match="not a valid EffectClass"):
        compensable(effects, effect="reversible", undo=lambda e: None)  # type: ignore[arg-type]


def test_one_call_id_in_two_threads_is_two_effects() -> None:
    """A deterministic model (or a replay) repeats tool call ids across threads: in a
    graph the key is THREAD:CALL_ID, so one thread's call never answers another's."""
    effects, airline = EffectLog(), Airline()
    flight, _ = _tools(effects, airline)
    for thread in ("ana", "bo"):
        config = {"configurable": {"thread_id": thread}}
        call = {"name": "book_flight", "args": {"flight": "LIS-NYC"}, "id": "call-1"}
        flight.invoke({**call, "type": "tool_call"}, config)
    assert sorted(airline.booked) == ["ana:call-1", "bo:call-1"]


def test_async_tools_are_refused_in_one_line() -> None:
    async def book_later(flight: str) -> str:
        """Book later."""
        return flight

    with pytest.raises(ValueError, match="async tools are not supported yet"):
        compensable(EffectLog(), undo=lambda effect: None)(book_later)


def test_a_sigkill_mid_compensation_undoes_each_call_once_in_effect(tmp_path: Path) -> None:
    """A real process, SIGKILLed inside an undo (after the airline cancelled, before
    the log recorded it): the restarted agent finishes, newest first, each booking
    cancelled, only the interrupted undo repeated (idempotent by key)."""
    command = [sys.executable, "-m", "tests.langgraph.tools_child", str(tmp_path), "t:call-2"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (second.returncode, second.stdout) == (0, "finished\n"), second.stderr
    assert (tmp_path / "airline.txt").read_text().splitlines() == [
        "book t:call-1",
        "book t:call-2",
        "book t:call-3",
        "cancel t:call-3",
        "cancel t:call-2",  # then the kill
        "cancel t:call-2",  # the restart finishes it
        "cancel t:call-1",
    ]
    again = EffectLog.open(tmp_path)
    try:
        assert {e.status for e in again.effects()} == {EffectStatus.COMPENSATED}
    finally:
        again.close()
