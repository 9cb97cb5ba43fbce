"""Child process for test_store_crash.py: a bank of accounts moved by transactions,
checkpoints and rollbacks through the real core and LmdbStore, forever, until killed.

Usage: python crash_child.py DATA_DIR SEED. Prints one line per finished step."""

from __future__ import annotations

import random
import sys
import time
import uuid

from coordinator.core.messages import Decide, Prepare
from coordinator.core.types import Decision, Kind
from participant_sdk.core import ParticipantCore
from participant_sdk.isolation import BranchWork
from participant_sdk.store import LmdbStore

PID = "bank"
ACCOUNTS = [f"acct/{i}" for i in range(8)]
BALANCE_INITIAL = 100


def now_ms() -> int:
    return int(time.time() * 1000)


def main() -> None:
    store = LmdbStore(sys.argv[1], PID)
    rng = random.Random(int(sys.argv[2]))
    records, term = store.load()
    core = ParticipantCore.recover(PID, records, term)

    def decide(record_id: str, kind: Kind, decision: Decision, checkpoint_id: str = "") -> None:
        msg = Decide(
            round_id=record_id,
            kind=kind,
            participant_id=PID,
            decision=decision,
            checkpoint_id=checkpoint_id,
            term=core.term_seen,
        )
        store.apply(core.on_decide(msg, now_ms()), {})

    def prepare(round_id: str, kind: Kind, writes: dict | None = None, cp: str = "") -> bool:
        msg = Prepare(
            round_id=round_id,
            kind=kind,
            participant_id=PID,
            session_id="s",
            checkpoint_id=cp,
            term=core.term_seen + rng.choice((0, 0, 1)),
        )
        step = core.on_prepare(msg, now_ms(), lambda m: (True, ""))
        store.apply(step, {round_id: BranchWork(writes=writes or {})})
        return step.reply.yes  # type: ignore[union-attr]

    for record in core.in_doubt():  # the cluster's answer, in this test: always COMMIT
        decide(record.round_id, record.kind, Decision.COMMIT, record.checkpoint_id)
    if store.get(ACCOUNTS[0]) is None:
        core.begin_branch("init")
        prepare("init", Kind.TXN, {a: str(BALANCE_INITIAL).encode() for a in ACCOUNTS})
        decide("init", Kind.TXN, Decision.COMMIT)
    print("ready", flush=True)
    step_count = 0
    while True:
        step_count += 1
        choice = rng.random()
        if choice < 0.8:
            txn = f"t-{uuid.uuid4().hex[:12]}"
            a, b = rng.sample(ACCOUNTS, 2)
            amount = rng.randint(1, 10)
            writes = {
                a: str(int(store.get(a) or b"0") - amount).encode(),
                b: str(int(store.get(b) or b"0") + amount).encode(),
            }
            core.begin_branch(txn)
            if prepare(txn, Kind.TXN, writes):
                print("prepared", flush=True)  # a kill right after this leaves it in doubt
                decide(
                    txn, Kind.TXN, rng.choice((Decision.COMMIT, Decision.COMMIT, Decision.ABORT))
                )
        elif choice < 0.9:
            cp = f"cp-{uuid.uuid4().hex[:8]}"
            if prepare(cp, Kind.CHECKPOINT, cp=cp):
                decide(cp, Kind.CHECKPOINT, rng.choice((Decision.COMMIT, Decision.ABORT)), cp)
        else:
            kept = store.checkpoints()
            if kept:
                cp = rng.choice(kept).checkpoint_id
                rid = f"rb-{uuid.uuid4().hex[:8]}"
                if prepare(rid, Kind.ROLLBACK, cp=cp):
                    decide(rid, Kind.ROLLBACK, Decision.COMMIT, cp)
        print(step_count, flush=True)


if __name__ == "__main__":
    main()
