"""The outbox skips polls that would find nothing (coordinator/core/outbox.py): nothing
applied and no reply since the last walk over the rounds, nothing due yet, or only the
same acks still waiting to share an entry. A skipped poll must answer exactly what a
walk would have, and leave the outbox as a walk would: checked here against an outbox
that walks on every poll, over seeded random runs of begins, replies (repeats too),
proposals applied or lost, and time."""

from __future__ import annotations

import random

import pytest

from coordinator.core.entries import BeginRound, BeginTxn, RequestCommit
from coordinator.core.limits import Limits
from coordinator.core.messages import AckReply, Decide, Prepare, VoteReply
from coordinator.core.outbox import Due, Outbox
from coordinator.core.state import CoordinatorState
from coordinator.core.types import Kind

LIMITS = Limits(
    ack_flush_delay_ms=50, retry_backoff_initial_ms=20, retry_backoff_max_ms=200, entry_batch_max=3
)
PARTICIPANTS = ("a", "b", "c")
TERM = 3
STEPS = 400


class WalksEveryPoll(Outbox):
    """Forgets what the last poll saw, so every poll walks the rounds."""

    def poll(self, state: CoordinatorState, now_ms: int, term: int) -> Due:
        self._polled = None
        return super().poll(state, now_ms, term)


def _begin(state: CoordinatorState, rng: random.Random, number: int, now_ms: int) -> None:
    participants = tuple(sorted(rng.sample(PARTICIPANTS, rng.randint(1, 3))))
    timeout_ms = rng.randint(50, 400)
    if rng.random() < 0.2:
        state.apply(
            BeginRound(
                round_id=f"c{number}",
                kind=Kind.CHECKPOINT,
                session_id="",
                participants=participants,
                checkpoint_id=f"cp{number}",
                label="",
                timeout_ms=timeout_ms,
                now_ms=now_ms,
            )
        )
        return
    txn_id = f"t{number}"
    begin = BeginTxn(
        txn_id=txn_id,
        session_id="s",
        participants=participants,
        timeout_ms=timeout_ms,
        now_ms=now_ms,
    )
    state.apply(begin)
    state.apply(RequestCommit(txn_id=txn_id, now_ms=now_ms))


@pytest.mark.parametrize("seed", range(200))
def test_a_skipped_poll_answers_what_a_walk_would(seed: int) -> None:
    rng = random.Random(seed)
    state = CoordinatorState(LIMITS)
    skipping, walking = Outbox(LIMITS), WalksEveryPoll(LIMITS)
    now_ms, begun = 0, 0
    sent: list[Prepare | Decide] = []  # what was sent, for replies to answer
    for _ in range(STEPS):
        roll = rng.random()
        if roll < 0.08:
            begun += 1
            _begin(state, rng, begun, now_ms)
        elif roll < 0.4 and sent:
            message = rng.choice(sent)
            reply = (
                VoteReply(
                    round_id=message.round_id,
                    participant_id=message.participant_id,
                    yes=rng.random() < 0.85,
                )
                if isinstance(message, Prepare)
                else AckReply(round_id=message.round_id, participant_id=message.participant_id)
            )
            skipping.on_reply(reply)
            walking.on_reply(reply)
        else:
            now_ms += rng.choice((0, 1, 5, 10, 20, 30))
            due = skipping.poll(state, now_ms, TERM)
            assert due == walking.poll(state, now_ms, TERM), f"seed {seed} at {now_ms} ms"
            sent += [m for m in due.sends if isinstance(m, Prepare | Decide)]
            for entry in due.proposals:
                if rng.random() < 0.7:  # else lost
                    state.apply(entry)
        assert skipping._retries == walking._retries
