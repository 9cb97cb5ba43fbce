"""Bugs planted in the processes of a chaos run, each a ``sitecustomize`` module: put
its directory on PYTHONPATH and every Python process the harness starts (nodes and
agents) imports it before anything else. The product code carries no bug flags; these
patch it from outside, like the simulator's planted subclasses (simulations/planted.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# An ``lmdb`` module whose ``open`` never syncs, for the module ``target`` to import.
_UNSYNCED_LMDB = """\
import lmdb
import types

_open = lmdb.open
unsynced = types.ModuleType("lmdb")
unsynced.__dict__.update(vars(lmdb))
unsynced.open = lambda *args, **kwargs: _open(
    *args, **{**kwargs, "sync": False, "metasync": False}
)
"""

PLANTED = {
    # The Raft journal's LMDB environment without fsync, and its snapshot never synced.
    "journal-skips-sync": _UNSYNCED_LMDB
    + """
from coordinator.replication import journal

journal.lmdb = unsynced
journal._fsync_path = lambda *args, **kwargs: None
""",
    # Every participant store (state, checkpoints, effect log) without fsync.
    "store-skips-sync": _UNSYNCED_LMDB
    + """
from participant_sdk.storage import lmdbkv

lmdbkv.lmdb = unsynced
""",
    # The participant's writes are synced by a background flusher every 5 s (as the
    # operating system's writeback would write them), and a vote is sent as soon as its
    # write is in the page cache: before its sync returns.
    "vote-before-sync": _UNSYNCED_LMDB
    + """
import threading
import time

from participant_sdk.storage import lmdbkv


def _open_with_flusher(*args, **kwargs):
    env = unsynced.open(*args, **kwargs)

    def flush():
        while True:
            time.sleep(5.0)
            try:
                env.sync(True)
            except Exception:
                return  # closed

    threading.Thread(target=flush, daemon=True).start()
    return env


flushing = types.ModuleType("lmdb")
flushing.__dict__.update(vars(unsynced))
flushing.open = _open_with_flusher
lmdbkv.lmdb = flushing
""",
    # A YES sent without the PREPARED record that promises it.
    "yes-without-prepared-record": """\
from dataclasses import replace

from participant_sdk import core

_on_prepare = core.ParticipantCore.on_prepare


def on_prepare(self, msg, now_ms, vote, **kwargs):
    step = _on_prepare(self, msg, now_ms, vote, **kwargs)
    kept = tuple(
        p
        for p in step.persist
        if not (isinstance(p, core.RoundRecord) and p.state is core.LocalState.PREPARED)
    )
    return replace(step, persist=kept)


core.ParticipantCore.on_prepare = on_prepare
""",
    # A restarted participant rebuilt without the rounds it is in doubt about.
    "forget-in-doubt-at-restart": """\
from participant_sdk import core

_recover = core.ParticipantCore.recover.__func__


def recover(cls, participant_id, records, *args, **kwargs):
    decided = [r for r in records if r.state is not core.LocalState.PREPARED]
    return _recover(cls, participant_id, decided, *args, **kwargs)


core.ParticipantCore.recover = classmethod(recover)
""",
}


def plant(name: str, where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant bug ``name`` in every Python process started from now on (this test's)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(PLANTED[name])
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(where), inherited])))
