#!/usr/bin/env python3
"""Time the replicated log's codec on a batch of a saturated one-shot run.

    .venv/bin/python scripts/bench_codec.py [--txns 10] [--repeat 5]

The batch holds ``--txns`` one-shot transactions at two participants (each a BeginTxn
with two ~100-byte actions and a RequestCommit), their votes in one RecordVotes and
their acknowledgements in one RecordAcks: what one LogBatch carries under load. Every
node decodes every batch when it applies it (the leader too), and the leader encodes
it. Prints the best of ``--repeat`` runs, in microseconds per batch and per transaction.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.core.entries import (
    Ack,
    BeginTxn,
    Entry,
    RecordAcks,
    RecordVotes,
    RequestCommit,
    Vote,
)
from coordinator.core.messages import TxnAction
from coordinator.replication.codec import decode_batch, encode_batch

PARTICIPANTS = ("p1", "p2")


def one_shot_batch(txns: int) -> list[Entry]:
    entries: list[Entry] = []
    votes, acks = [], []
    for _ in range(txns):
        txn_id = uuid.uuid4().hex
        payload = b'{"key":"k-%s","value":"%s"}' % (txn_id.encode(), b"v" * 100)
        actions = tuple(
            TxnAction(participant_id=p, action="stage", payload=payload) for p in PARTICIPANTS
        )
        entries.append(
            BeginTxn(
                txn_id=txn_id,
                session_id="",
                participants=PARTICIPANTS,
                timeout_ms=30_000,
                now_ms=1_796_000_000_000,
                owner="app",
                actions=actions,
            )
        )
        entries.append(RequestCommit(txn_id=txn_id, now_ms=1_796_000_000_000))
        votes += [
            Vote(round_id=txn_id, participant_id=p, yes=True, result=b"null") for p in PARTICIPANTS
        ]
        acks += [Ack(round_id=txn_id, participant_id=p) for p in PARTICIPANTS]
    entries.append(RecordVotes(votes=tuple(votes), now_ms=1_796_000_000_000))
    entries.append(RecordAcks(acks=tuple(acks), now_ms=1_796_000_000_000))
    return entries


def best_us(run: Callable[[], object], repeat: int, calls: int = 1000) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txns", type=int, default=10, help="transactions in the batch")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is shown")
    args = parser.parse_args()
    if args.txns < 1 or args.repeat < 1:
        parser.error("--txns and --repeat must be at least 1")
    entries = one_shot_batch(args.txns)
    data = encode_batch(entries)
    if decode_batch(data) != tuple(entries):
        print("bench_codec: the batch does not decode to what was encoded", file=sys.stderr)
        return 1
    encode = best_us(lambda: encode_batch(entries), args.repeat)
    decode = best_us(lambda: decode_batch(data), args.repeat)
    print(
        f"{len(entries)} entries, {args.txns} transactions, {len(data)} bytes: "
        f"encode {encode:.0f} us ({encode / args.txns:.1f} per txn), "
        f"decode {decode:.0f} us ({decode / args.txns:.1f} per txn)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
