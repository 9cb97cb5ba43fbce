"""SIGKILL crash tests with a real child process (rollback_child.py).

- restore: a process killed during a restore comes back with the old head or the
  restored state, never a mix, and every record still passes its checksum;
- compensation: killed while compensating (and while charging), restarted until it
  finishes: every charge is refunded exactly once in effect, no refund is made for a
  charge that never happened.
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

import lmdb

from participant_sdk.checkpoints import LmdbCheckpointStore, checkpoints_dir
from participant_sdk.effects import EffectLog, EffectStatus

CHILD = Path(__file__).with_name("rollback_child.py")
WAIT_S_MAX = 30.0
REPO = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "protos")])}
    stderr = open(Path(args[1]) / "child.stderr", "a")  # noqa: SIM115 (the child owns it)
    try:
        return subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    finally:
        stderr.close()


def child_stderr(data_dir: Path) -> str:
    path = data_dir / "child.stderr"
    return path.read_text()[-2000:] if path.exists() else ""


def read_until(child: subprocess.Popen[str], stop) -> list[str]:  # type: ignore[no-untyped-def]
    """Lines until ``stop(lines)`` is true or the child exits; fails at the bound."""
    assert child.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + WAIT_S_MAX
    while not stop(lines):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"child too slow: {lines[-3:]}"
        ready, _, _ = select.select([child.stdout], [], [], remaining)
        if ready:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
    return lines


def kill(child: subprocess.Popen[str]) -> list[str]:
    """SIGKILL, then the lines the child printed before it died (it runs on between
    our last read and the signal)."""
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.stdout is not None
    rest = child.stdout.read().splitlines()
    child.stdout.close()
    return [line.strip() for line in rest]


def possible_tags(lines: list[str]) -> set[int]:
    """The head tags the child could have left durable: the last completed one, or
    the one its last write (if unfinished) was making."""
    done = int(lines[0].split()[1])
    pending: int | None = None
    for line in lines[1:]:
        if line.startswith("save "):
            pending = int(line.split()[1])
        elif line.startswith("restore "):
            pending = int(line.split()[2])
        elif line == "ok":
            assert pending is not None
            done, pending = pending, None
    return {done} if pending is None else {done, pending}


def test_sigkill_during_restore_leaves_old_or_restored_state(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CONCORD_CRASH_SEED", "11")))
    restores_hit = 0
    for _ in range(6):
        child = spawn("restore", str(tmp_path), str(rng.randrange(1 << 30)))
        try:
            wanted = rng.randint(20, 80)
            after_restore = rng.random() < 0.6  # kill right after a restore started
            lines = read_until(
                child,
                lambda ls, w=wanted, a=after_restore: (
                    len(ls) >= w and (not a or ls[-1].startswith("restore"))
                ),
            )
        finally:
            lines += kill(child)
        store = LmdbCheckpointStore(checkpoints_dir(tmp_path))
        try:
            assert store.verify() == []
            latest = store.latest()
            assert latest is not None
            tag = latest.state["tag"]
            assert all(latest.state[f"k{i}"] == tag for i in range(20)), "mixed state"
            assert tag in possible_tags(lines), (tag, lines[-3:])
            restores_hit += lines[-1].startswith("restore")
            for info in store.list():
                state = store.load(info.checkpoint_id).state
                assert len({state[f"k{i}"] for i in range(20)}) == 1
        finally:
            store.close()
    print(f"kills that landed with a restore under way: {restores_hit}")  # pytest -s


def test_sigkill_during_compensation_compensates_exactly_once(tmp_path: Path) -> None:
    n = 12
    rng = random.Random(int(os.environ.get("CONCORD_CRASH_SEED", "5")))
    kills = 0
    for attempt in range(8):
        child = spawn("compensate", str(tmp_path), str(n))
        try:
            if attempt < 4:
                # Kill after the k-th refund (before it is marked COMPENSATED) or,
                # on the first run, in the middle of charging.
                k = rng.randint(1, 4)
                target = "charged" if attempt == 0 else "refunded"
                lines = read_until(
                    child,
                    lambda ls, k=k, t=target: (
                        sum(x.startswith(t) for x in ls) >= k or "finished" in ls
                    ),
                )
                if "finished" not in lines:
                    kill(child)
                    kills += 1
                    continue
            else:
                lines = []
            if "finished" not in lines:
                lines += read_until(child, lambda ls: "finished" in ls)
            assert "finished" in lines, (lines[-5:], child_stderr(tmp_path))
            child.wait(timeout=WAIT_S_MAX)
            break
        finally:
            if child.poll() is None:
                kill(child)
    assert kills >= 2
    env = lmdb.open(str(tmp_path / "bank"), max_dbs=4, readonly=True, lock=False)
    try:
        with env.begin() as txn:

            def table(name: bytes) -> dict[str, str]:
                db = env.open_db(name, txn=txn, create=False)
                return {bytes(k).decode(): bytes(v).decode() for k, v in txn.cursor(db=db)}

            charges, refunds = table(b"charges"), table(b"refunds")
            calls = table(b"refund_calls")
            try:
                orphans = table(b"refund_without_charge")
            except lmdb.Error:
                orphans = {}
    finally:
        env.close()
    assert charges and refunds == charges  # every charge refunded once, same amount
    assert orphans == {}  # never compensated what did not happen
    assert any(int(c) > 1 for c in calls.values()) or kills  # retried after a crash
    log = EffectLog.open(tmp_path)
    try:
        assert {e.status for e in log.effects("t1")} <= {
            EffectStatus.COMPENSATED,
            EffectStatus.NOT_APPLIED,
        }
    finally:
        log.close()
