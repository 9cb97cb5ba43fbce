"""LazyFS's model of a disk (docs/reliability.md, "The LazyFS disk model"): what a power
cut keeps and what it drops. Each test writes through the mount, cuts the power, and
reads the backing directory (the disk) and, after a remount, the mount again."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.tier2 import lazyfs as lazyfs_module
from simulations.tier2.lazyfs import SECTOR_SIZE, LazyFs

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, data: bytes, *, offset: int = 0, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_synced_write_survives_and_an_unsynced_one_does_not(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    _write(mnt / "kept", b"synced", sync=True)
    _write(mnt / "kept", b"+lost", offset=6)
    _write(mnt / "never-synced", b"lost")
    assert _files(mnt) == {"kept": b"synced+lost", "never-synced": b"lost"}, "reads see all"

    lazyfs.power_cut()

    assert not os.path.ismount(mnt)
    assert _files(lazyfs.backing) == {"kept": b"synced"}
    lazyfs.mount()
    assert _files(mnt) == {"kept": b"synced"}


def test_fdatasync_and_o_dsync_writes_are_durable(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    fd = os.open(mnt / "datasynced", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"one")
    os.fdatasync(fd)
    os.close(fd)
    fd = os.open(mnt / "datasynced", os.O_WRONLY | os.O_DSYNC)
    os.pwrite(fd, b"two", 3)
    os.close(fd)

    lazyfs.power_cut()

    assert _files(lazyfs.backing) == {"datasynced": b"onetwo"}


def test_any_sync_commits_every_name_but_only_the_synced_file_s_data(lazyfs: LazyFs) -> None:
    """Namespace changes are one ordered journal that any fsync commits, as ext4's does:
    a file created and written but never synced keeps its name, not its contents."""
    mnt = lazyfs.mountpoint
    (mnt / "dir").mkdir()
    _write(mnt / "dir" / "other", b"unsynced data")
    _write(mnt / "synced", b"data", sync=True)
    _write(mnt / "after-the-sync", b"lost")

    lazyfs.power_cut()

    assert _files(lazyfs.backing) == {"dir/other": b"", "synced": b"data"}


def test_a_rename_is_durable_only_once_something_is_synced(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    _write(mnt / "state", b"old", sync=True)
    _write(mnt / "state.tmp", b"new", sync=True)
    os.rename(mnt / "state.tmp", mnt / "state")
    assert _files(mnt) == {"state": b"new"}

    lazyfs.power_cut()
    assert _files(lazyfs.backing) == {"state": b"old", "state.tmp": b"new"}

    lazyfs.mount()
    os.rename(mnt / "state.tmp", mnt / "state")
    _fsync_dir(mnt)
    lazyfs.power_cut()
    assert _files(lazyfs.backing) == {"state": b"new"}


def test_an_unlink_is_durable_only_once_the_directory_is_synced(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    (mnt / "dir").mkdir()
    _write(mnt / "dir" / "f", b"data", sync=True)
    os.unlink(mnt / "dir" / "f")

    lazyfs.power_cut()
    assert _files(lazyfs.backing) == {"dir/f": b"data"}

    lazyfs.mount()
    os.unlink(mnt / "dir" / "f")
    _fsync_dir(mnt / "dir")
    lazyfs.power_cut()
    assert _files(lazyfs.backing) == {}
    assert (lazyfs.backing / "dir").is_dir()


def test_writes_to_an_unlinked_open_file_never_reach_another_file(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    _write(mnt / "old", b"old", sync=True)
    fd = os.open(mnt / "old", os.O_WRONLY)
    try:
        os.pwrite(fd, b"pending", 0)
        os.unlink(mnt / "old")
        os.pwrite(fd, b"after the unlink", 0)
    finally:
        os.close(fd)
    for i in range(20):  # new files, one of which may get the old inode number
        _write(mnt / f"new{i}", b"new", sync=True)

    lazyfs.power_cut()

    assert _files(lazyfs.backing) == {f"new{i}": b"new" for i in range(20)}


def test_a_truncate_is_data_of_its_file(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    _write(mnt / "f", b"0123456789", sync=True)
    os.truncate(mnt / "f", 4)
    with open(mnt / "g", "wb") as g:  # O_TRUNC of an existing file: a truncate too
        g.write(b"x")
        g.flush()
        os.fsync(g.fileno())
    with open(mnt / "g", "wb"):
        pass

    lazyfs.power_cut()

    assert _files(lazyfs.backing) == {"f": b"0123456789", "g": b"x"}


def test_pending_data_follows_its_file_through_an_unsynced_rename(lazyfs: LazyFs) -> None:
    """A prefix of a file's unsynced writes lands under the name the disk knows it by."""
    mnt = lazyfs.mountpoint
    _write(mnt / "a", b"." * SECTOR_SIZE, sync=True)
    _write(mnt / "a", b"x" * SECTOR_SIZE)
    os.rename(mnt / "a", mnt / "b")

    lazyfs.power_cut("prefix", seed=_seed_keeping(1, of=1))

    assert _files(lazyfs.backing) == {"a": b"x" * SECTOR_SIZE}


def _seed_keeping(kept: int, *, of: int) -> int:
    """A seed for which a prefix power cut keeps ``kept`` of a file's ``of`` writes."""
    for seed in range(1000):
        if random.Random(seed).randint(0, of) == kept:
            return seed
    raise AssertionError(f"no seed keeps {kept} of {of}")


def test_a_prefix_power_cut_keeps_a_prefix_of_each_file_s_writes(tmp_path: Path) -> None:
    writes = [(i * SECTOR_SIZE, bytes([65 + i]) * SECTOR_SIZE) for i in range(5)]
    states = []
    for i in range(len(writes) + 1):
        state = bytearray(b"." * SECTOR_SIZE * len(writes))
        for offset, data in writes[:i]:
            state[offset : offset + len(data)] = data
        states.append(bytes(state))

    kept_counts = set()
    for seed in range(6):
        fs = LazyFs(tmp_path / f"disk{seed}", tmp_path / f"mnt{seed}")
        fs.mount()
        try:
            _write(fs.mountpoint / "f", states[0], sync=True)
            for offset, data in writes:
                _write(fs.mountpoint / "f", data, offset=offset)
            fs.power_cut("prefix", seed=seed)
        finally:
            fs.close()
        survived = (fs.backing / "f").read_bytes()
        assert survived in states, f"seed {seed}: not a prefix of the writes"
        kept_counts.add(states.index(survived))
    assert len(kept_counts) > 1, f"every seed kept the same prefix ({kept_counts})"


def test_a_torn_write_keeps_whole_sectors_from_its_start(tmp_path: Path) -> None:
    old, new = b"." * 8 * SECTOR_SIZE, b"n" * 8 * SECTOR_SIZE
    torn_at = set()
    for seed in range(6):
        fs = LazyFs(tmp_path / f"disk{seed}", tmp_path / f"mnt{seed}")
        fs.mount()
        try:
            _write(fs.mountpoint / "f", old, sync=True)
            _write(fs.mountpoint / "f", new)
            fs.power_cut(torn=True, seed=seed)
        finally:
            fs.close()
        survived = (fs.backing / "f").read_bytes()
        cut = len(survived) - len(survived.lstrip(b"n"))
        assert survived == new[:cut] + old[cut:], f"seed {seed}: not a torn write"
        assert cut % SECTOR_SIZE == 0, f"seed {seed}: torn inside a sector ({cut})"
        torn_at.add(cut)
    assert len(torn_at - {0, len(new)}) > 0, f"never torn inside the write ({torn_at})"


def test_killing_the_file_system_is_a_power_cut(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    _write(mnt / "synced", b"kept", sync=True)
    _write(mnt / "unsynced", b"lost")

    lazyfs.kill()

    assert not os.path.ismount(mnt)
    assert _files(lazyfs.backing) == {"synced": b"kept"}
    lazyfs.mount()
    assert _files(mnt) == {"synced": b"kept"}


def test_the_cut_command_cuts_the_power(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    _write(mnt / "synced", b"kept", sync=True)
    _write(mnt / "synced", b"+lost", offset=4)
    command = [sys.executable, "-m", "simulations.tier2.lazyfs", "cut", str(mnt)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    assert not os.path.ismount(mnt)
    lazyfs.close()
    assert _files(lazyfs.backing) == {"synced": b"kept"}


def test_a_clean_unmount_keeps_everything(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    (mnt / "d").mkdir()
    _write(mnt / "d" / "f", b"never synced")
    lazyfs.unmount()
    assert _files(lazyfs.backing) == {"d/f": b"never synced"}


def test_without_fuse_the_command_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(lazyfs_module.shutil, "which", lambda name: None)
    code = lazyfs_module.main(["mount", str(tmp_path), str(tmp_path / "mnt")])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err == "lazyfs: LazyFS needs fusermount3: install the fuse3 system package "
        "(apt-get install fuse3)\n"
    )
