"""LMDB crash test: a child process applies Steps in a loop and is SIGKILLed at a random
moment, several times; after every reopen each Step is fully there or fully absent.

Invariants checked after each kill:
- the balances in ``state`` sum to the initial total (an ApplyBranch or a restore is
  never half done), and so does every checkpoint;
- a branch has held writes if and only if its record is PREPARED (the vote, its record
  and its held writes are one write), and an in-doubt branch holds both of its writes;
- the audit log is an unbroken hash chain.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from participant_sdk.core import LocalState
from participant_sdk.store import LmdbStore

CHILD = Path(__file__).with_name("crash_child.py")
ACCOUNTS = 8
TOTAL = ACCOUNTS * 100
KILLS = 5
WAIT_S_MAX = 20.0


def read_lines_until(child: subprocess.Popen[str], lines_wanted: int, after: str = "") -> int:
    """Read the child's progress lines until ``lines_wanted`` (and then, if ``after``,
    until a line equal to it), or fail at the bound."""
    assert child.stdout is not None
    seen = 0
    line = ""
    deadline = time.monotonic() + WAIT_S_MAX
    while seen < lines_wanted or (after and line.strip() != after):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"child made only {seen} steps in {WAIT_S_MAX}s"
        ready, _, _ = select.select([child.stdout], [], [], remaining)
        if ready:
            line = child.stdout.readline()
            assert line, f"child exited early with {child.poll()}"
            seen += 1
    return seen


def check_invariants(data_dir: Path) -> dict[str, int]:
    store = LmdbStore(data_dir, "bank")
    try:
        balances = store.items("acct/")
        if balances:
            assert sum(int(v) for _, v in balances) == TOTAL, balances
        for info in store.checkpoints():
            items = store.checkpoint_items(info.checkpoint_id)
            assert sum(int(v) for k, v in items if k.startswith("acct/")) == TOTAL
        records, _ = store.load()
        prepared = {r.round_id for r in records if r.state is LocalState.PREPARED}
        txn_prepared = {r for r in prepared if r.startswith(("t-", "init"))}
        assert set(store.held_branches()) == txn_prepared
        for txn in txn_prepared:
            assert len(store.held(txn)) in (2, ACCOUNTS)
        store.verify_audit()
        return {"records": len(records), "in_doubt": len(prepared)}
    finally:
        store.close()


def test_sigkill_leaves_every_step_whole(tmp_path: Path) -> None:
    data_dir = tmp_path / "bank"
    rng = random.Random(int(os.environ.get("CONCORD_CRASH_SEED", "7")))
    in_doubt_seen = 0
    for kill in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(rng.randrange(1 << 30))],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            # Every other kill lands just after a vote was made durable: the child is
            # then writing the decision, and the branch is usually left in doubt.
            after = "prepared" if kill % 2 else ""
            read_lines_until(child, 1 + rng.randint(30, 120), after)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=10)
            assert child.stdout is not None
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL, f"kill {kill}: {child.returncode}"
        counts = check_invariants(data_dir)
        in_doubt_seen += counts["in_doubt"]
    assert check_invariants(data_dir)["records"] > 0
    print(f"branches left in doubt by {KILLS} kills: {in_doubt_seen}")  # pytest -s
