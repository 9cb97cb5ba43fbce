"""The optional parts a Participant composes are wired and recovered by the
participant itself: no hook is written by hand, and ``start()`` finishes what a crash
left undone. ``async with`` starts and stops a participant."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from participant_fakes import eventually, run

from coordinator.core.messages import Decide, Prepare, VoteReply
from participant_sdk import (
    AgentRollback,
    Decision,
    Effect,
    EffectLog,
    EffectStatus,
    Kind,
    MemoryCheckpointStore,
    Participant,
    ParticipantOptions,
    ParticipantStopped,
    RestoreResult,
    Reverter,
)


def _charging_log(refunds: list[str]) -> tuple[EffectLog, Callable[..., Any]]:
    effects = EffectLog()

    def refund(effect: Effect) -> None:
        refunds.append(effect.key)

    @effects.compensable(compensate=refund, name="charge")
    def charge(amount: int, *, idempotency_key: str) -> int:
        return amount

    return effects, charge


def test_async_with_starts_and_stops_the_participant() -> None:
    async def body() -> None:
        async with Participant("p1", None) as p:
            assert p.running and p.port > 0
            p.begin("t1").put("k", b"v")
        assert not p.running
        with pytest.raises(ParticipantStopped):
            p.begin("t2")

    run(body())


def test_an_abort_compensates_the_effects_of_its_transaction_without_a_hook() -> None:
    refunds: list[str] = []
    effects, charge = _charging_log(refunds)
    seen: list[tuple[str, Decision]] = []

    async def body() -> None:
        async with Participant(
            "p1", None, effects=effects, on_decided=lambda *d: seen.append(d)
        ) as p:
            p.begin("t1")
            with effects.transaction("t1"):
                charge(10, idempotency_key="t1/charge")
            p.abort_alone("t1", "changed its mind")

    run(body())
    assert refunds == ["t1/charge"]
    assert effects.get("t1/charge").status is EffectStatus.COMPENSATED
    assert seen == [("t1", Decision.ABORT)]  # the agent's own hook still hears it


def test_start_applies_a_decision_the_effect_log_never_heard(tmp_path: Path) -> None:
    """The abort is durable at the participant, but the process ran without the log
    wired in (as a crash right after the durable write would leave it): the next start
    with ``effects=`` compensates the charge."""
    refunds: list[str] = []
    effects, charge = _charging_log(refunds)

    async def body() -> None:
        async with Participant("p1", tmp_path / "p1") as before:
            before.begin("t1")
            with effects.transaction("t1"):
                charge(10, idempotency_key="t1/charge")
            before.abort_alone("t1")
        assert refunds == []
        async with Participant("p1", tmp_path / "p1", effects=effects):
            assert refunds == ["t1/charge"]

    run(body())


def test_a_start_that_cannot_listen_leaves_the_data_dir_free(tmp_path: Path) -> None:
    async def body() -> None:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            options = ParticipantOptions(listen=f"127.0.0.1:{port}")
            p = Participant("p1", tmp_path / "p1", options=options)
            with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
                await p.start()
            assert not p.running
        async with Participant("p1", tmp_path / "p1") as again:  # store closed, lock free
            assert again.running

    run(body())


def test_a_rollback_whose_agent_restore_failed_is_restored_by_the_next_start(
    tmp_path: Path,
) -> None:
    """The rollback's EXECUTE is durable, the agent's restore raised (kept pending);
    the next ``start()`` runs it again, with no call from the agent."""
    reverter = Reverter(MemoryCheckpointStore())
    plan = {"step": "planned"}
    reloaded: list[Any] = []

    def reload_fails(result: RestoreResult) -> None:
        raise ConnectionError("the planner's cache is down")

    def rollback(restored: Callable[[RestoreResult], None]) -> AgentRollback:
        return AgentRollback(reverter=reverter, capture=lambda: dict(plan), restored=restored)

    def round_messages(kind: Kind, round_id: str) -> tuple[Prepare, Decide]:
        fields = {"round_id": round_id, "kind": kind, "participant_id": "p1"}
        return (
            Prepare(**fields, session_id="s", checkpoint_id="cp1", term=1),  # type: ignore[arg-type]
            Decide(**fields, decision=Decision.COMMIT, checkpoint_id="cp1", term=1),  # type: ignore[arg-type]
        )

    async def body() -> None:
        async with Participant("p1", tmp_path / "p1", rollback=rollback(reload_fails)) as p:
            for kind, round_id in ((Kind.CHECKPOINT, "keep"), (Kind.ROLLBACK, "back")):
                prepare, decide = round_messages(kind, round_id)
                [vote] = await asyncio.to_thread(p.handle_messages, [prepare])
                assert isinstance(vote, VoteReply) and vote.yes, vote
                if kind is Kind.CHECKPOINT:
                    plan["step"] = "booked"  # what the rollback goes back from
                await asyncio.to_thread(p.handle_messages, [decide])
            await eventually(lambda: bool(p.attention()))
            assert "agent restore failed" in p.attention()[0]
        async with Participant("p1", tmp_path / "p1", rollback=rollback(reloaded.append)):
            await eventually(lambda: bool(reloaded))
        assert reloaded[0].checkpoint.state == {"step": "planned"}

    run(body())
