"""Each LMDB store that holds durable state, on LazyFS: what it acknowledged survives a
power cut, and the same store with its sync turned off (the planted bug: LMDB opened
with ``sync=False, metasync=False``; for the write-ahead log in front of LMDB, its
``fdatasync`` made a no-op) loses acknowledged writes.

A child process opens the store on the mount through the store's own API, writes,
prints each write the store acknowledged, and dies without closing anything
(``os._exit``), as a killed process does; then the power is cut, the disk remounted and
the store reopened here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from coordinator.replication.journal import LmdbJournal
from participant_sdk.storage import LoggedLmdbKv, Names
from participant_sdk.store import LmdbStore
from simulations.tier2.lazyfs import LazyFs

REPO = Path(__file__).resolve().parents[2]

# The planted bug, as issue 14 found it possible: every LMDB env opened without syncs.
_UNSYNCED_LMDB = """
import lmdb
_open = lmdb.open
lmdb.open = lambda *args, **kwargs: _open(*args, **{**kwargs, "sync": False, "metasync": False})
"""


def _run_then_die(body: str, *, unsynced: bool = False) -> list[str]:
    """Run ``body`` in a child that then dies without closing anything; the lines it
    printed (the writes it was told were durable)."""
    script = (_UNSYNCED_LMDB if unsynced else "") + textwrap.dedent(body) + "\nos._exit(0)\n"
    result = subprocess.run(
        [sys.executable, "-c", "import os\n" + script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"the writer failed:\n{result.stderr}"
    return result.stdout.split()


# -- the participant store ------------------------------------------------------------------


def _write_audit_events(data_dir: Path, tag: str, *, unsynced: bool = False) -> list[str]:
    return _run_then_die(
        f"""
        from participant_sdk.store import LmdbStore
        store = LmdbStore({str(data_dir)!r}, "p1")
        for i in range(5):
            store.audit_event("note", f"{tag}-{{i}}")
            print(f"{tag}-{{i}}", flush=True)
        """,
        unsynced=unsynced,
    )


def _audit_details(data_dir: Path) -> list[str]:
    store = LmdbStore(data_dir, "p1")
    try:
        return [event.detail for event in store.audit() if event.event == "note"]
    finally:
        store.close()


def test_the_participant_store_keeps_what_it_acknowledged(lazyfs: LazyFs) -> None:
    acked = _write_audit_events(lazyfs.mountpoint / "p1", "acked")
    assert len(acked) == 5

    lazyfs.power_cut("prefix", torn=True, seed=7)
    lazyfs.mount()

    assert _audit_details(lazyfs.mountpoint / "p1") == acked


def test_the_participant_store_without_sync_loses_acknowledged_writes(lazyfs: LazyFs) -> None:
    acked = _write_audit_events(lazyfs.mountpoint / "p1", "synced")
    acked_unsynced = _write_audit_events(lazyfs.mountpoint / "p1", "unsynced", unsynced=True)
    assert len(acked_unsynced) == 5
    assert _audit_details(lazyfs.mountpoint / "p1") == acked + acked_unsynced, "before the cut"

    lazyfs.power_cut()
    lazyfs.mount()

    assert _audit_details(lazyfs.mountpoint / "p1") == acked


# -- the Raft journal -----------------------------------------------------------------------


def _journal(node_dir: Path) -> LmdbJournal:
    return LmdbJournal(
        node_dir / "journal",
        identity={"node_id": "n0", "members": ["n0"]},
        dump_path=node_dir / "snapshot",
        map_bytes=1 << 24,
    )


def _append_entries(node_dir: Path, first: int, *, unsynced: bool = False) -> list[str]:
    """Append entries ``first`` .. ``first + 4`` one flush each (a flush returning is the
    journal's acknowledgement), then queue one more that is never flushed."""
    return _run_then_die(
        f"""
        from pathlib import Path
        from tests.durability.test_power_loss_stores import _journal
        journal = _journal(Path({str(node_dir)!r}))
        for index in range({first}, {first + 5}):
            journal.add(f"command-{{index}}".encode(), index, 1)
            journal.flush()
            print(f"command-{{index}}", flush=True)
        journal.add(b"never-flushed", {first + 5}, 1)
        """,
        unsynced=unsynced,
    )


def _journal_commands(node_dir: Path) -> list[str]:
    journal = _journal(node_dir)
    try:
        return [command.decode() for command, _, _ in journal.entries()]
    finally:
        journal._destroy()  # closes it; nothing is queued, so nothing is written


def test_the_raft_journal_keeps_what_it_acknowledged(lazyfs: LazyFs) -> None:
    acked = _append_entries(lazyfs.mountpoint / "n0", 1)
    assert len(acked) == 5

    lazyfs.power_cut("prefix", torn=True, seed=7)
    lazyfs.mount()

    assert _journal_commands(lazyfs.mountpoint / "n0") == acked


def test_the_raft_journal_without_sync_loses_acknowledged_entries(lazyfs: LazyFs) -> None:
    acked = _append_entries(lazyfs.mountpoint / "n0", 1)
    acked_unsynced = _append_entries(lazyfs.mountpoint / "n0", 6, unsynced=True)
    assert len(acked_unsynced) == 5
    assert _journal_commands(lazyfs.mountpoint / "n0") == acked + acked_unsynced, "before"

    lazyfs.power_cut()
    lazyfs.mount()

    assert _journal_commands(lazyfs.mountpoint / "n0") == acked


# -- LMDB behind a write-ahead log (LoggedLmdbKv: the agent's checkpoints) ------------------

# The planted bug: the log's appends acknowledged without their fdatasync (LMDB's own
# syncs, in C, are untouched).
_UNSYNCED_LOG = """
import os
os.fdatasync = lambda fd: None
"""
_LOG_SIZE_BYTES = 16 * 1024  # small: the writes below fill it and move it into LMDB


def _logged_kv(path: Path, *, readonly: bool = False) -> LoggedLmdbKv:
    return LoggedLmdbKv(
        path,
        ("meta", "items"),
        Names(what=f"logged kv {path}"),
        map_size_bytes=1 << 24,
        log_size_bytes=_LOG_SIZE_BYTES,
        readonly=readonly,
    )


def _put_items(path: Path, tag: str, *, unsynced: bool = False) -> list[str]:
    """40 write transactions of 1 KiB each (2.5 logs' worth), one item each."""
    body = f"""
        from pathlib import Path
        from tests.durability.test_power_loss_stores import _logged_kv
        kv = _logged_kv(Path({str(path)!r}))
        for i in range(40):
            with kv.write() as tx:
                tx.put("items", f"{tag}-{{i:02}}".encode(), b"v" * 1024)
            print(f"{tag}-{{i:02}}", flush=True)
        """
    if unsynced:
        body = _UNSYNCED_LOG + textwrap.dedent(body)
    return _run_then_die(body)


def _items(path: Path, *, readonly: bool = False) -> list[str]:
    """The items' keys. A writable opener moves the log into LMDB (synced); a read-only
    one only reads it."""
    kv = _logged_kv(path, readonly=readonly)
    try:
        with kv.read() as tx:
            return [key.decode() for key, _ in tx.scan("items")]
    finally:
        kv.close()


def test_lmdb_behind_its_log_keeps_what_it_acknowledged(lazyfs: LazyFs) -> None:
    acked = _put_items(lazyfs.mountpoint / "kv", "acked")
    assert len(acked) == 40

    lazyfs.power_cut("prefix", torn=True, seed=7)
    lazyfs.mount()

    assert _items(lazyfs.mountpoint / "kv") == acked


def test_lmdb_behind_a_log_without_sync_loses_acknowledged_writes(lazyfs: LazyFs) -> None:
    acked = _put_items(lazyfs.mountpoint / "kv", "a-synced")
    acked_unsynced = _put_items(lazyfs.mountpoint / "kv", "b-unsynced", unsynced=True)
    assert len(acked_unsynced) == 40
    assert _items(lazyfs.mountpoint / "kv", readonly=True) == acked + acked_unsynced, "before"

    lazyfs.power_cut()
    lazyfs.mount()

    survived = _items(lazyfs.mountpoint / "kv")
    assert set(acked) <= set(survived)
    assert not set(acked_unsynced) <= set(survived), "no acknowledged write was lost"
