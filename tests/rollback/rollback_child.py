"""Child process for the rollback crash tests, run until SIGKILLed.

``restore DIR SEED``: saves states whose keys all carry one tag and restores random
checkpoints, printing ``save TAG`` / ``restore HEAD_TAG TARGET_TAG`` before each
write and ``ok`` after it (an acknowledged write, which must survive the kill).

``compensate DIR N``: charges N keys in txn t1 (a bank in its own LMDB env that dedupes
by idempotency key and counts refund calls), then aborts t1: refunds run newest first.
Each run first recovers what the previous one left. Prints ``refunded KEY`` after the
bank wrote a refund (before the log marks it COMPENSATED) and ``finished`` at the end.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import lmdb

from coordinator.core.types import Decision
from participant_sdk.checkpoints import (
    CheckpointLimits,
    CheckpointPolicy,
    LmdbCheckpointStore,
    checkpoints_dir,
)
from participant_sdk.effects import Effect, EffectLog

KEYS = 20
WAL_SIZE_BYTES = 16 << 10


def state_of(tag: int) -> dict[str, object]:
    return {**{f"k{i}": tag for i in range(KEYS)}, "tag": tag, "blob": "b" * (tag % 7 * 100)}


def run_restore(data_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    # A small write-ahead log: kills land in the middle of moving it into LMDB too.
    store = LmdbCheckpointStore(
        checkpoints_dir(data_dir),
        CheckpointPolicy(full_every_n=4),
        CheckpointLimits(wal_size_bytes=WAL_SIZE_BYTES),
    )
    latest = store.latest()
    tag = 0 if latest is None else int(latest.state["tag"])  # type: ignore[call-overload]
    print(f"ready {tag}", flush=True)
    while True:
        kept = store.list()
        if kept and rng.random() < 0.3:
            target = rng.choice(kept)
            target_tag = int(store.load(target.checkpoint_id).state["tag"])  # type: ignore[call-overload]
            print(f"restore {tag} {target_tag}", flush=True)
            store.restore(target.checkpoint_id)
            tag = target_tag
        else:
            tag = rng.randrange(1, 1 << 30)
            print(f"save {tag}", flush=True)
            store.save(state_of(tag))
        print("ok", flush=True)


def run_compensate(data_dir: str, n: int) -> None:
    bank_env = lmdb.open(str(Path(data_dir) / "bank"), max_dbs=4, sync=True)
    charges = bank_env.open_db(b"charges")
    refunds = bank_env.open_db(b"refunds")
    calls = bank_env.open_db(b"refund_calls")
    orphan = bank_env.open_db(b"refund_without_charge")

    def refund(effect: Effect) -> None:
        with bank_env.begin(write=True) as txn:
            key = effect.key.encode()
            count = int(txn.get(key, b"0", db=calls)) + 1
            txn.put(key, str(count).encode(), db=calls)
            amount = txn.get(key, db=charges)
            if amount is None:
                txn.put(key, b"1", db=orphan)
            else:
                txn.put(key, amount, db=refunds, overwrite=False)  # idempotent by key
        print(f"refunded {effect.key}", flush=True)

    def charged(effect: Effect) -> bool:
        with bank_env.begin() as txn:
            return txn.get(effect.key.encode(), db=charges) is not None

    log = EffectLog.open(data_dir, sleep=lambda s: None)

    @log.compensable(compensate=refund, probe=charged, name="charge")
    def charge(amount: int, *, idempotency_key: str) -> int:
        with bank_env.begin(write=True) as txn:
            txn.put(idempotency_key.encode(), str(amount).encode(), db=charges, overwrite=False)
        print(f"charged {idempotency_key}", flush=True)
        return amount

    log.recover()
    print("ready", flush=True)
    with log.transaction("t1"):
        for i in range(n):
            charge(i + 1, idempotency_key=f"t1/charge/{i}")
    log.on_decision("t1", Decision.ABORT)
    print("finished", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "restore":
        run_restore(sys.argv[2], int(sys.argv[3]))
    else:
        run_compensate(sys.argv[2], int(sys.argv[3]))
