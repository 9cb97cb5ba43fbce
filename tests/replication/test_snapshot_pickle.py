"""Snapshot format 2: a ``Round`` pickles as one flat tuple (``Round.__reduce__``) and
comes back with every field equal, in any pickle protocol; a format-1 state (pickle's
own form for slotted dataclasses, protocol 2, as pysyncobj wrote it) still loads."""

from __future__ import annotations

import copyreg
import dataclasses
import io
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.entries import Ack, BeginTxn, RecordAcks, RecordVotes, RequestCommit, Vote
from coordinator.core.messages import TxnAction
from coordinator.core.state import CoordinatorState, Phase, Round, SagaStep, StepStatus
from coordinator.core.types import Decision, Kind

# Round.__reduce__ and _round_from_fields name every field in this order: a field added
# to Round without them would be lost in snapshots (and needs a new snapshot format).
ROUND_FIELDS = (
    "round_id",
    "kind",
    "session_id",
    "participants",
    "checkpoint_id",
    "label",
    "timeout_ms",
    "begun_ms",
    "phase",
    "deadline_ms",
    "decision",
    "decision_reason",
    "decided_ms",
    "done_ms",
    "votes",
    "acks",
    "steps",
    "compensate_from",
    "owner",
    "actions",
)

text = st.text(max_size=12)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
blobs = st.binary(max_size=16)
votes = st.dictionaries(
    text,
    st.builds(
        Vote, round_id=text, participant_id=text, yes=st.booleans(), reason=text, result=blobs
    ),
    max_size=4,
)
steps = st.lists(
    st.builds(
        SagaStep,
        participant_id=text,
        action=text,
        payload=blobs,
        status=st.sampled_from(StepStatus),
        result=blobs,
        reason=text,
    ),
    max_size=3,
)
actions = st.dictionaries(
    text, st.builds(TxnAction, participant_id=text, action=text, payload=blobs), max_size=3
)
rounds = st.builds(
    Round,
    round_id=text,
    kind=st.sampled_from(Kind),
    session_id=text,
    participants=st.lists(text, max_size=4),
    checkpoint_id=text,
    label=text,
    timeout_ms=ints,
    begun_ms=ints,
    phase=st.sampled_from(Phase),
    deadline_ms=ints,
    decision=st.none() | st.sampled_from(Decision),
    decision_reason=text,
    decided_ms=st.none() | ints,
    done_ms=st.none() | ints,
    votes=votes,
    acks=st.sets(text, max_size=4),
    steps=steps,
    compensate_from=ints,
    owner=text,
    actions=actions,
)


def test_the_pickle_names_every_field_of_a_round() -> None:
    assert tuple(f.name for f in dataclasses.fields(Round)) == ROUND_FIELDS
    rnd = Round("r", Kind.TXN, "s", [], "", "", 1, 2, Phase.ACTIVE, 3)
    _, fields = rnd.__reduce__()
    assert len(fields) == len(ROUND_FIELDS)


@settings(max_examples=200, deadline=None)
@given(rounds, st.sampled_from([2, 5]))
def test_a_round_round_trips_every_field(rnd: Round, protocol: int) -> None:
    back = pickle.loads(pickle.dumps(rnd, protocol))
    assert back == rnd
    for name in ROUND_FIELDS:
        assert type(getattr(back, name)) is type(getattr(rnd, name)), name
    assert all(type(v) is Vote for v in back.votes.values())
    assert all(type(a) is TxnAction for a in back.actions.values())


@settings(max_examples=50, deadline=None)
@given(st.lists(rounds, max_size=5, unique_by=lambda r: r.round_id))
def test_a_state_of_random_rounds_round_trips(many: list[Round]) -> None:
    state = CoordinatorState()
    state.rounds = {r.round_id: r for r in many}
    state._open = {r.round_id: r for r in many if r.phase is not Phase.DONE}
    back = pickle.loads(pickle.dumps(state, 5))
    assert back.rounds == state.rounds
    # Shared objects stay shared: the open rounds are the same objects as in rounds.
    assert all(back._open[k] is back.rounds[k] for k in back._open)


def _format_1(rnd: Round) -> tuple[Any, ...]:
    """How pickle wrote a Round before Round.__reduce__ (snapshot format 1)."""
    slots = {name: getattr(rnd, name) for name in ROUND_FIELDS if hasattr(rnd, name)}
    return copyreg.__newobj__, (Round,), (None, slots)  # type: ignore[attr-defined]


def _state() -> CoordinatorState:
    state = CoordinatorState()
    for i in range(20):
        txn = f"t{i}"
        for entry in (
            BeginTxn(txn_id=txn, session_id="s", participants=("a", "b"), timeout_ms=900, now_ms=1),
            RequestCommit(txn_id=txn, now_ms=2),
            RecordVotes(
                votes=tuple(
                    Vote(round_id=txn, participant_id=p, yes=i % 3 != 0, reason="no" * (i % 3 == 0))
                    for p in ("a", "b")
                ),
                now_ms=3,
            ),
            RecordAcks(acks=(Ack(round_id=txn, participant_id="a"),), now_ms=4),
        ):
            assert state.apply(entry).error is None
    return state


def test_a_format_1_state_still_loads() -> None:
    state = _state()
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, 2)
    pickler.dispatch_table = {Round: _format_1}  # type: ignore[assignment]
    pickler.dump(state)
    old = buffer.getvalue()
    assert b"_round_from_fields" not in old
    back = pickle.loads(old)
    assert back.rounds == state.rounds
    assert back.rounds["t1"].votes["a"] == Vote(round_id="t1", participant_id="a", yes=True)
    assert back.rounds_inflight() == state.rounds_inflight()
    new = pickle.dumps(back, 5)
    assert b"_round_from_fields" in new
    assert pickle.loads(new).rounds == state.rounds


def test_the_snapshot_bench_runs() -> None:
    """scripts/bench_snapshot.py (docs/performance.md, "Snapshots"), on a small state."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_snapshot.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", "200", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "'rounds': 200" in done.stdout and "snapshot format 2" in done.stdout, done.stdout
