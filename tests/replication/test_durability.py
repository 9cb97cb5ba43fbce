"""Restart from the data dir, snapshots, and the journal's sync contract."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from coordinator.replication.journal import LmdbJournal
from coordinator.replication.node import JOURNAL_DIR, SNAPSHOT_FILE, ProposeStatus
from tests.replication.helpers import (
    addresses,
    begin,
    cluster,
    leader_of,
    propose_wait,
    round_ids,
    wait_until,
)


def _restart_keeps_state(root: Path, entries: int, **knobs: object) -> None:
    nodes = addresses(3)
    wanted = {f"t{i}" for i in range(entries)}
    with cluster(root, nodes, **knobs) as started:
        leader = leader_of(started)
        for txn_id in sorted(wanted):
            assert propose_wait(leader, begin(txn_id)).status is ProposeStatus.APPLIED
        wait_until(lambda: all(round_ids(c) == wanted for c in started.values()), "replication")
        term_before = max(c.term() for c in started.values())
    with cluster(root, nodes, **knobs) as restarted:
        wait_until(
            lambda: all(round_ids(c) == wanted for c in restarted.values()),
            "every restarted node to recover all rounds",
        )
        assert min(c.term() for c in restarted.values()) >= term_before


def test_restart_without_compaction(tmp_path: Path) -> None:
    _restart_keeps_state(tmp_path, 40)
    assert not (tmp_path / "n0" / SNAPSHOT_FILE).exists()


def test_restart_after_compaction(tmp_path: Path) -> None:
    _restart_keeps_state(tmp_path, 120, log_compaction_entries_min=20)
    for node_id in ("n0", "n1", "n2"):
        assert (tmp_path / node_id / SNAPSHOT_FILE).exists(), f"{node_id} never compacted"
    journal = LmdbJournal(
        tmp_path / "n0" / JOURNAL_DIR,
        identity={"node_id": "n0", "members": ["n0", "n1", "n2"]},
        dump_path=tmp_path / "n0" / SNAPSHOT_FILE,
        map_bytes=1 << 24,
    )
    try:
        assert journal.entries()[0][1] > 1, "the log was never compacted"
    finally:
        journal._destroy()


def _journal(path: Path) -> LmdbJournal:
    return LmdbJournal(
        path / JOURNAL_DIR,
        identity={"node_id": "n0", "members": ["n0"]},
        dump_path=path / SNAPSHOT_FILE,
        map_bytes=1 << 24,
    )


def _crash_after(path: Path, body: str) -> None:
    """Run ``body`` against a journal in a child process that then dies without closing
    anything (``os._exit``): only what was committed to LMDB survives."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from tests.replication.test_durability import _journal
        journal = _journal(Path({str(path)!r}))
        {body}
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)


def test_term_and_vote_are_durable_at_once(tmp_path: Path) -> None:
    _crash_after(tmp_path, "journal.setCurrentTerm(7, '127.0.0.1:9')")
    journal = _journal(tmp_path)
    try:
        assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (7, "127.0.0.1:9")
    finally:
        journal._destroy()


def test_entries_are_durable_at_the_barrier(tmp_path: Path) -> None:
    _crash_after(
        tmp_path,
        "journal.add(b'a', 1, 1); journal.add(b'b', 2, 1); journal.flush(); "
        "journal.add(b'c', 3, 1)",
    )
    journal = _journal(tmp_path)
    try:
        # Flushed before the crash: durable. Appended after the last barrier (never
        # acknowledged, since every send is a barrier): may be lost.
        assert list(journal.entries()) == [(b"a", 1, 1), (b"b", 2, 1)]
    finally:
        journal._destroy()
