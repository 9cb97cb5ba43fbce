"""The runnable examples the docs point at actually run.

The travel example (README's main job) is run as the user runs it, in its own process:
checked by what it prints and, independently, by the state it leaves: the outside
world's ledgers (each charge refunded at most once, and exactly once when its trip
aborted or was rolled back; saga legs undone in reverse), the agents' effect logs,
and that no process it started outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples import sdk_quickstart
from examples.travel import world
from participant_sdk import EffectStatus, effects_dir, escalations
from participant_sdk.effects import LmdbEffectBacking
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 180


def test_sdk_quickstart(tmp_path: Path) -> None:
    lines = asyncio.run(sdk_quickstart.main(tmp_path))
    assert lines[:3] == [
        "alice: seat 12A booked",
        "bob: seat 12A is taken; nothing happened anywhere",
        "carol: aborted everywhere (payments: bound: 'balance/carol' would go below min=0 "
        "(50 committed, 0 in doubt, -120 here))",
    ]
    assert lines[3] == "seats: [('seat/12A', b'alice')]"
    assert lines[4] == (
        "balances: [('balance/alice', b'380'), ('balance/bob', b'500'), ('balance/carol', b'50')]"
    )


def _travel(*args: str, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "examples.travel.run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


@contextlib.contextmanager
def _stopped_at_the_end(process: subprocess.Popen[str]) -> Iterator[None]:
    """If the test fails while the example runs, stop it as a user would (Ctrl-C, which
    stops everything it started), and kill its process group (``new_session``) if that
    does not end it in time: a failed test leaves no process behind."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()


def _stopped_pids(out: str) -> list[int]:
    match = re.search(r"Stopped the \d+ processes it started, each by its PID: ([\d ]+)", out)
    assert match, out
    return [int(pid) for pid in match.group(1).split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ops_by_key(entries: list[dict[str, object]]) -> dict[str, list[str]]:
    ops: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        ops[str(entry["key"])].append(str(entry["op"]))
    return dict(ops)


@pytest.fixture(scope="module")
def travel_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One full run of the travel example, shared by the checks below. With --keep, as
    a user who wants to look at the dashboard: it stays up, the dashboard it names
    lists the trips, and Ctrl-C then stops it as usual."""
    root = tmp_path_factory.mktemp("travel") / "example"
    process = _travel(f"--dir={root}", "--keep", new_session=True)
    assert process.stdout is not None
    kept: list[str] = []
    with _stopped_at_the_end(process):
        for line in process.stdout:  # bounded: the example prints this line or exits
            kept.append(line)
            if line.startswith("--keep: "):
                url = line.split("Dashboard: ")[1].split()[0]
                with urllib.request.urlopen(url + "rounds", timeout=10) as response:
                    page = response.read().decode()
                assert "trip-alice" in page, page
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    out = "".join(kept) + out
    assert any(line.startswith("--keep: ") for line in kept), out
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    assert "Traceback" not in out + err, err
    assert "CHECK FAILED" not in out, out
    return out, root


def test_travel_trips_commit_or_abort_everywhere_and_aborted_charges_are_refunded(
    travel_run: tuple[str, Path],
) -> None:
    out, root = travel_run
    assert out.count("(all-or-nothing holds)") == 4, out
    assert "-> ABORTED (payment: insufficient funds" in out
    assert "-> ABORTED (flight: not enough seats" in out
    assert "charged alice 100, then refunded 100" in out
    assert "SIGKILL the leader" in out
    trip4 = out.split("Trip 4:")[1].split("\n")
    trip4_committed = any(line.strip().startswith("-> COMMITTED") for line in trip4[:4])

    bank = world.read(root / "world" / "bank.jsonl")
    trips = _ops_by_key([e for e in bank if str(e["key"]).startswith("trip-")])
    amounts = {str(e["key"]): e["amount"] for e in bank if e["op"] == "charge"}
    by_amount = {(key.split("-")[1], amounts[key]): ops for key, ops in trips.items()}
    assert ("bob", 500) not in by_amount  # payment voted NO: never charged
    assert by_amount[("alice", 400)] == ["charge"]
    assert by_amount[("alice", 100)] == ["charge", "refund"]  # flight voted NO
    assert by_amount[("alice", 200)] == (["charge"] if trip4_committed else ["charge", "refund"])


def test_travel_guardrail_rolls_back_every_agent_and_refunds_the_charge_once(
    travel_run: tuple[str, Path],
) -> None:
    out, root = travel_run
    assert "global checkpoint 'carol-lisbon-planned' of flight, hotel, payment: KEEP" in out
    assert "guardrail fired: price 1950 above budget 1000" in out
    assert "the policy says ROLLBACK to 'carol-lisbon-planned'" in out
    assert "EXECUTE (votes: flight YES, hotel YES, payment YES)" in out
    assert "flight: plan back to FL500 economy (450); verified" in out
    assert "hotel: plan back to RIVER standard (300); verified" in out
    assert re.search(r"payment: refunded 1950 \(trip-carol-\w+/charge\); verified", out), out
    assert "FL500 seats 9, RIVER rooms 4, carol's balance 3000" in out

    bank = world.read(root / "world" / "bank.jsonl")
    carol = {str(e["key"]): e["amount"] for e in bank if e.get("customer") == "carol"}
    ops = _ops_by_key([e for e in bank if str(e["key"]) in carol])
    assert sorted((carol[key], tuple(o)) for key, o in ops.items()) == [
        (750, ("charge",)),  # booked again from the restored plans: kept
        (1950, ("charge", "refund")),  # made after the checkpoint: refunded by the rollback
    ]
    # The payment agent's effect log agrees with the bank.
    backing = LmdbEffectBacking(effects_dir(root / "payment"), readonly=True)
    try:
        effects = {e.key: e for e in backing.load()}
    finally:
        backing.close()
    for key, amount in carol.items():
        expected = EffectStatus.COMPENSATED if amount == 1950 else EffectStatus.DONE
        assert effects[key].status is expected, effects[key]


def test_travel_sagas_complete_or_undo_their_legs_in_reverse(
    travel_run: tuple[str, Path],
) -> None:
    out, root = travel_run
    assert "-> COMPLETED" in out
    assert (
        "-> COMPENSATED: step 2 (book_flight at flight) failed: SoldOut: FL201 is sold out" in out
    )
    ledgers = [
        world.read(root / "world" / f"{name}.jsonl") for name in ("airline", "hotels", "bank")
    ]
    entries = sorted((e for ledger in ledgers for e in ledger), key=lambda e: float(e["t"]))
    sagas = [e for e in entries if str(e["key"]).startswith("saga-")]
    alice = _ops_by_key([e for e in sagas if str(e["key"]).startswith("saga-alice-")])
    dave = _ops_by_key([e for e in sagas if str(e["key"]).startswith("saga-dave-")])
    assert sorted((k[-1], o) for k, o in alice.items()) == [
        ("0", ["book"]), ("1", ["book"]), ("2", ["book"]), ("3", ["charge"]),
    ]  # fmt: skip
    # The sold-out leg and the payment after it never happened; the two before, undone once.
    assert sorted((k[-1], o) for k, o in dave.items()) == [
        ("0", ["book", "cancel"]), ("1", ["book", "cancel"]),
    ]  # fmt: skip
    undone = [str(e["key"])[-1] for e in sagas if e["op"] == "cancel" and "dave" in str(e["key"])]
    assert undone == ["1", "0"]  # reverse order


def test_travel_leaves_no_escalation_and_no_process_behind(travel_run: tuple[str, Path]) -> None:
    out, root = travel_run
    for role in ("flight", "hotel", "payment"):
        assert escalations(root / role) == []
    bank = _ops_by_key(world.read(root / "world" / "bank.jsonl"))
    assert all(ops in (["charge"], ["charge", "refund"]) for ops in bank.values()), bank
    pids = _stopped_pids(out)
    assert len(pids) == 6
    assert not [pid for pid in pids if _alive(pid)]


def test_travel_stops_everything_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # Ctrl-C in a terminal reaches the whole foreground process group: do the same.
    process = _travel(f"--dir={tmp_path / 'example'}", new_session=True)
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with _stopped_at_the_end(process):
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if not line or line.startswith("Trip 1:"):
                break
        assert seen[-1].startswith("Trip 1:"), "".join(seen)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    out = "".join(seen) + out
    assert process.returncode == 130, f"{out}\n{err}"
    assert "Interrupted: stopping everything the example started" in out
    assert "Traceback" not in out + err, err
    assert not [pid for pid in _stopped_pids(out) if _alive(pid)]
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing of its process group is left


def test_travel_refuses_to_wipe_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    process = _travel(f"--dir={tmp_path}")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2, f"{out}\n{err}"
    assert "refusing to wipe" in err and "Traceback" not in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"
