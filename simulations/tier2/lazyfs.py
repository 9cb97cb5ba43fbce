"""LazyFS: a FUSE file system that loses what was never synced, like a disk on power loss.

Every crash a process-kill nemesis injects leaves the operating system's page cache
behind, so a write that was never fsynced is still there after the restart and a missing
fsync goes unseen. This file system keeps unsynced changes in a working copy only and
writes a change to the backing directory (the "disk") only when a sync makes it durable;
a power cut throws the working copy away. docs/reliability.md ("The LazyFS disk model")
describes the model; in short:

- Reads see every write (a working copy of the backing directory is served).
- File contents and size (writes, truncates) become durable per file, when that file is
  fsynced or fdatasynced, or written through a descriptor opened ``O_SYNC``/``O_DSYNC``.
- Namespace changes (create, mkdir, unlink, rmdir, rename) are journaled in order and the
  whole journal becomes durable at any fsync, fdatasync or directory fsync (as a journaling
  file system commits its whole running transaction); the synced file's data follows.
  Attributes other than size (mode, owner, times) are not modelled. Hard links, symbolic
  links and device nodes are refused.
- A power cut drops every unsynced change. With ``keep="prefix"`` a random prefix (seeded)
  of each file's unsynced data writes survives; with ``torn=True`` the first write lost is
  also written in part, cut at a 512-byte sector boundary (a torn last page).
- A clean unmount (``LazyFs.unmount``, SIGTERM, ``fusermount3 -u``) is a clean shutdown:
  everything is made durable first.

Run it as a process (``python -m simulations.tier2.lazyfs mount BACKING MOUNTPOINT``) and
drive it from the ``LazyFs`` class, or cut the power with ``python -m
simulations.tier2.lazyfs cut MOUNTPOINT`` (it writes a command to the hidden control file
``MOUNTPOINT/.lazyfs``, which returns once the backing directory holds what survived).
The file system always runs in its own process: a process that serves a FUSE mount must
not page-fault on it (LMDB reads through mmap), or it waits on itself.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import select
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CONTROL_NAME = ".lazyfs"
SECTOR_SIZE = 512  # a disk writes a sector whole or not at all; a torn write splits between
_CONTROL_FH = 2**63 - 1  # the control file's handle: no descriptor has this number
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC
_MOUNT_TIMEOUT_S = 10.0
_EXIT_TIMEOUT_S = 10.0

Keep = Literal["none", "prefix"]


class LazyFsUnavailable(RuntimeError):
    """FUSE or the Python binding is missing; the message is one line that says which."""


class LazyFsError(RuntimeError):
    """The file system did not mount, cut or unmount as asked."""


def unavailable_reason() -> str | None:
    """Why LazyFS cannot run on this machine (one line), or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "LazyFS needs FUSE, and /dev/fuse is missing on this machine"
    if shutil.which("fusermount3") is None:
        return "LazyFS needs fusermount3: install the fuse3 system package (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        return "LazyFS needs the mfusepy package: pip install 'concord-txn[lazyfs]'"
    except OSError as exc:  # mfusepy raises it when it finds no libfuse
        return f"LazyFS needs libfuse3 (apt-get install fuse3): {exc}"
    return None


# -- the disk model ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Write:
    offset: int
    data: bytes


@dataclass(frozen=True)
class _Truncate:
    size: int


_DataOp = _Write | _Truncate
# A namespace change: ("create" | "mkdir", path, mode), ("unlink" | "rmdir", path),
# ("rename", old, new). Paths are relative to the root, with a leading "/".
_NamespaceOp = tuple[Any, ...]


@dataclass
class _PendingFile:
    """A file's data changes since its last sync."""

    live_path: str | None  # its name in the working copy now (None: unlinked)
    durable_path: str | None  # its name on the disk (None: the disk has no name for it yet)
    ops: list[_DataOp] = field(default_factory=list)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


class DiskModel:
    """What is durable on the disk (``durable`` dir) and what is only in the working copy
    (``live`` dir). Every change is applied to ``live`` by the caller first; the model
    records it and writes it to ``durable`` when a sync makes it durable."""

    def __init__(self, live: Path, durable: Path) -> None:
        self.live = live
        self.durable = durable
        self.journal: list[_NamespaceOp] = []
        self.pending: dict[int, _PendingFile] = {}  # by the working copy's inode number
        self.unlinked: list[_PendingFile] = []  # pending data of files unlinked since

    def _disk_name(self, live_path: str) -> str | None:
        """The disk's name for what the working copy calls ``live_path``: undo the
        journaled namespace changes, newest first."""
        path = live_path
        for op in reversed(self.journal):
            if op[0] == "rename":
                _, old, new = op
                if _within(path, new):
                    path = old + path[len(new) :]
            elif op[0] in ("create", "mkdir") and _within(path, op[1]):
                return None
        return path

    def record_namespace(self, op: _NamespaceOp) -> None:
        kind = op[0]
        gone = op[1] if kind == "unlink" else op[2] if kind == "rename" else None
        for ino, pending in list(self.pending.items()):
            if gone is not None and pending.live_path == gone:
                # Its inode number may be reused by a new file: keep its data apart.
                del self.pending[ino]
                pending.live_path = None
                self.unlinked.append(pending)
            elif kind == "rename" and pending.live_path and _within(pending.live_path, op[1]):
                pending.live_path = op[2] + pending.live_path[len(op[1]) :]
        self.journal.append(op)

    def record_data(self, ino: int, live_path: str | None, op: _DataOp) -> None:
        if live_path is None:
            # A file already unlinked: its name is gone once the unlink is durable, and
            # a power cut may lose this write anyway. Keyed by an inode number that a new
            # file may get, it would mix into that file's changes: it lands in the
            # working copy only.
            return
        pending = self.pending.get(ino)
        if pending is None:
            pending = self.pending[ino] = _PendingFile(live_path, self._disk_name(live_path))
        else:
            pending.live_path = live_path
        pending.ops.append(op)

    def commit_namespace(self) -> None:
        """Make every journaled namespace change durable, in order."""
        for op in self.journal:
            kind = op[0]
            target = self._on_disk(op[1])
            if kind == "create":
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, op[2]))
            elif kind == "mkdir":
                os.mkdir(target, op[2])
            elif kind == "unlink":
                os.unlink(target)
            elif kind == "rmdir":
                os.rmdir(target)
            elif kind == "rename":
                os.rename(target, self._on_disk(op[2]))
        self.journal.clear()
        self.unlinked.clear()
        # The disk's names are now the working copy's names.
        for pending in self.pending.values():
            pending.durable_path = pending.live_path

    def sync_file(self, ino: int) -> None:
        """fsync/fdatasync of one file: the namespace journal, then the file's data."""
        self.commit_namespace()
        pending = self.pending.pop(ino, None)
        if pending is not None and pending.durable_path is not None:
            self._write_to_disk(pending.durable_path, pending.ops)

    def shutdown(self) -> None:
        """A clean shutdown: everything becomes durable."""
        self.commit_namespace()
        for pending in self.pending.values():
            if pending.durable_path is not None:
                self._write_to_disk(pending.durable_path, pending.ops)
        self.pending.clear()

    def power_cut(self, keep: Keep, torn: bool, seed: int) -> None:
        """Drop what was not synced; see the module docstring for ``keep`` and ``torn``."""
        rng = random.Random(seed)
        for pending in [*self.unlinked, *self.pending.values()]:
            if pending.durable_path is None:
                continue
            kept = rng.randint(0, len(pending.ops)) if keep == "prefix" else 0
            survivors = list(pending.ops[:kept])
            if torn and kept < len(pending.ops):
                first_lost = pending.ops[kept]
                if isinstance(first_lost, _Write):
                    survivors.append(_torn(first_lost, rng))
            self._write_to_disk(pending.durable_path, survivors)
        self.journal.clear()
        self.pending.clear()
        self.unlinked.clear()

    def _on_disk(self, path: str) -> str:
        return os.path.join(self.durable, path.lstrip("/"))

    def _write_to_disk(self, path: str, ops: list[_DataOp]) -> None:
        if not ops:
            return
        fd = os.open(self._on_disk(path), os.O_WRONLY)
        try:
            for op in ops:
                if isinstance(op, _Write):
                    os.pwrite(fd, op.data, op.offset)
                else:
                    os.ftruncate(fd, op.size)
        finally:
            os.close(fd)


def _torn(write: _Write, rng: random.Random) -> _Write:
    """The part of ``write`` that reached the disk before the power went: whole sectors
    from its start (possibly none)."""
    end = write.offset + len(write.data)
    first_boundary = (write.offset // SECTOR_SIZE + 1) * SECTOR_SIZE
    cuts = [write.offset, *range(first_boundary, end, SECTOR_SIZE)]
    cut = rng.choice(cuts)
    return _Write(write.offset, write.data[: cut - write.offset])


# -- the FUSE side (runs in the file system's own process) -----------------------------------


def _operations_class() -> type:
    import mfusepy

    fuse_error = mfusepy.FuseOSError

    class LazyOperations(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self, model: DiskModel, ready_fd: int | None) -> None:
            self.model = model
            self.ready_fd = ready_fd
            self.inodes: dict[int, int] = {}  # open descriptor -> inode number
            self.sync_writes: set[int] = set()  # descriptors opened O_SYNC / O_DSYNC
            self.powered = True

        def _check_powered(self) -> None:
            if not self.powered:
                raise fuse_error(errno.EIO)

        def _live(self, path: str) -> str:
            self._check_powered()
            return os.path.join(self.model.live, path.lstrip("/"))

        def init(self, path: str) -> None:
            if self.ready_fd is not None:
                os.write(self.ready_fd, b"mounted\n")
                os.close(self.ready_fd)
                self.ready_fd = None

        def destroy(self, path: str) -> None:
            if self.powered:
                self.model.shutdown()

        # metadata

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            if path == "/" + CONTROL_NAME:
                now = time.time_ns()
                return {
                    "st_mode": stat.S_IFREG | 0o600,
                    "st_nlink": 1,
                    "st_size": 0,
                    "st_atime": now,
                    "st_mtime": now,
                    "st_ctime": now,
                }
            st = os.lstat(self._live(path))
            return {
                "st_mode": st.st_mode,
                "st_nlink": st.st_nlink,
                "st_size": st.st_size,
                "st_uid": st.st_uid,
                "st_gid": st.st_gid,
                "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns,
                "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize,
            }

        def access(self, path: str, amode: int) -> int:
            if path != "/" + CONTROL_NAME and not os.access(self._live(path), amode):
                raise fuse_error(errno.EACCES)
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._live(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._live(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if path != "/" + CONTROL_NAME:
                os.utime(self._live(path), ns=times)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._live(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree")
            return {key: getattr(sv, key) for key in (*keys, "f_files", "f_frsize", "f_namemax")}

        # namespace

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._live(path))]

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._live(path), mode)
            self.model.record_namespace(("mkdir", path, mode))
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._live(path))
            self.model.record_namespace(("rmdir", path))
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(self._live(path))
            self.model.record_namespace(("unlink", path))
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(self._live(old), self._live(new))
            self.model.record_namespace(("rename", old, new))
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            self._check_powered()
            self.model.commit_namespace()
            return 0

        # files

        def _opened(self, fd: int, flags: int) -> int:
            self.inodes[fd] = os.fstat(fd).st_ino
            if flags & _SYNC_FLAGS:
                self.sync_writes.add(fd)
            return fd

        def create(self, path: str, mode: int, flags: int | None = None) -> int:
            flags = os.O_RDWR if flags is None else flags
            live_flags = (flags & ~os.O_APPEND) | os.O_CREAT | os.O_EXCL
            fd = os.open(self._live(path), live_flags, mode)
            self.model.record_namespace(("create", path, mode))
            return self._opened(fd, flags)

        def open(self, path: str, flags: int) -> int:
            if path == "/" + CONTROL_NAME:
                return _CONTROL_FH
            # The kernel computes every write's offset, O_APPEND included; pwrite on a
            # descriptor opened O_APPEND would ignore it.
            fd = os.open(self._live(path), flags & ~(os.O_APPEND | os.O_CREAT | os.O_EXCL))
            self._opened(fd, flags)
            if flags & os.O_TRUNC:
                self.model.record_data(self.inodes[fd], path, _Truncate(0))
            return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            if fh == _CONTROL_FH:
                return b""
            self._check_powered()
            return os.pread(fh, size, offset)

        def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
            if fh == _CONTROL_FH:
                self._control(data)
                return len(data)
            self._check_powered()
            written = os.pwrite(fh, data, offset)
            self.model.record_data(self.inodes[fh], path, _Write(offset, bytes(data[:written])))
            if fh in self.sync_writes:
                self.model.sync_file(self.inodes[fh])
            return written

        def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
            if path == "/" + CONTROL_NAME or fh == _CONTROL_FH:
                return 0
            if fh is not None:
                os.ftruncate(fh, length)
                ino = self.inodes[fh]
            else:
                assert path is not None
                os.truncate(self._live(path), length)
                ino = os.lstat(self._live(path)).st_ino
            self.model.record_data(ino, path, _Truncate(length))
            return 0

        def fsync(self, path: str | None, datasync: int, fh: int) -> int:
            if fh != _CONTROL_FH:
                self._check_powered()
                self.model.sync_file(self.inodes[fh])
            return 0

        def release(self, path: str | None, fh: int) -> int:
            if fh != _CONTROL_FH:
                os.close(fh)
                self.inodes.pop(fh, None)
                self.sync_writes.discard(fh)
            return 0

        def _control(self, data: bytes) -> None:
            words = data.decode("ascii", "replace").split()
            if not words:
                return
            if words[0] != "power-cut" or not self.powered:
                raise fuse_error(errno.EINVAL)
            options = dict(word.split("=", 1) for word in words[1:] if "=" in word)
            keep = options.get("keep", "none")
            if keep not in ("none", "prefix"):
                raise fuse_error(errno.EINVAL)
            self.model.power_cut(
                keep,  # type: ignore[arg-type]
                torn=options.get("torn", "0") == "1",
                seed=int(options.get("seed", "0")),
            )
            self.powered = False  # every later operation fails until it is mounted again

    return LazyOperations


def _live_dir(backing: Path) -> Path:
    return backing.with_name(backing.name + ".lazyfs-live")


def serve(backing: Path, mountpoint: Path, ready_fd: int | None = None) -> None:
    """Mount ``backing`` at ``mountpoint`` and serve until unmounted (in this process)."""
    import mfusepy

    live = _live_dir(backing)
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(backing, live, symlinks=True)
    try:

        class _Fuse(mfusepy.FUSE):  # type: ignore[misc]
            def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
                # mfusepy drops rename's flags: refuse them rather than overwrite a
                # target RENAME_NOREPLACE protects.
                if flags:
                    return -errno.EINVAL
                return int(super().rename_fuse_3(old, new, flags))

        operations = _operations_class()(DiskModel(live, backing), ready_fd)
        _Fuse(
            operations,
            str(mountpoint),
            foreground=True,
            nothreads=True,
            hard_remove=True,
            fsname="lazyfs",
        )
    finally:
        shutil.rmtree(live, ignore_errors=True)


# -- the controller (runs in the test's or harness's process) --------------------------------


class LazyFs:
    """A LazyFS mount in a child process: ``mount()``, ``power_cut()``, ``unmount()``.

    A power cut leaves the backing directory holding exactly what survived and the mount
    point unmounted; ``mount()`` again is the reboot. Stop every process that uses the
    mount before cutting its power (a process killed later would still hold the mount)."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = Path(backing).resolve()
        self.mountpoint = Path(mountpoint).resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.backing.with_name(self.backing.name + ".lazyfs.log")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def mount(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise LazyFsUnavailable(reason)
        if self._process is not None:
            raise LazyFsError(f"{self.mountpoint} is already mounted by this LazyFs")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        read_end, write_end = os.pipe()
        try:
            with open(self._log, "wb") as log:
                self._process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "simulations.tier2.lazyfs",
                        "mount",
                        str(self.backing),
                        str(self.mountpoint),
                        "--ready-fd",
                        str(write_end),
                    ],
                    pass_fds=(write_end,),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=Path(__file__).resolve().parents[2],
                )
            os.close(write_end)
            write_end = -1
            ready, _, _ = select.select([read_end], [], [], _MOUNT_TIMEOUT_S)
            line = os.read(read_end, 64) if ready else b""
        finally:
            os.close(read_end)
            if write_end != -1:
                os.close(write_end)
        if line != b"mounted\n" or not os.path.ismount(self.mountpoint):
            self._discard_process()
            raise LazyFsError(
                f"LazyFS did not mount {self.mountpoint} within {_MOUNT_TIMEOUT_S:.0f} s: "
                f"{self._log_tail()}"
            )

    def power_cut(self, keep: Keep = "none", *, torn: bool = False, seed: int = 0) -> None:
        """Drop every unsynced change (or keep a random prefix per file), then unmount."""
        if self._process is None:
            raise LazyFsError(f"{self.mountpoint} is not mounted")
        command = f"power-cut keep={keep} torn={int(torn)} seed={seed}\n"
        try:
            with open(self.mountpoint / CONTROL_NAME, "w") as control:
                control.write(command)
        finally:
            self._unmount(lazy=True)

    def kill(self) -> None:
        """The bluntest power cut: SIGKILL the file system's process. Nothing unsynced
        survives (no prefix, no torn write); its dead mount is unmounted."""
        if self._process is None:
            raise LazyFsError(f"{self.mountpoint} is not mounted")
        self._discard_process()

    def _discard_process(self) -> None:
        """SIGKILL the file system's process (by PID) and unmount what it left."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=_EXIT_TIMEOUT_S)
        self._detach()

    def _detach(self) -> None:
        """Lazily unmount whatever is mounted at the mount point, a dead mount included
        (``os.path.ismount`` cannot tell: stat fails on one)."""
        command = ["fusermount3", "-u", "-z", str(self.mountpoint)]
        subprocess.run(command, capture_output=True, timeout=30, check=False)

    def unmount(self) -> None:
        """A clean unmount: what was not synced is made durable first."""
        if self._process is not None:
            self._unmount(lazy=False)

    def close(self) -> None:
        """Unmount, whatever state the mount is in; for finally blocks and fixtures."""
        if self._process is None:
            return
        try:
            self._unmount(lazy=True)
        finally:
            self._stop_process()

    def __enter__(self) -> LazyFs:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unmount(self, *, lazy: bool) -> None:
        command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(self.mountpoint)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if result.returncode != 0 and os.path.ismount(self.mountpoint):
            raise LazyFsError(f"could not unmount {self.mountpoint}: {result.stderr.strip()}")
        self._stop_process()

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.wait(timeout=_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_EXIT_TIMEOUT_S)
            self._detach()
            raise LazyFsError(
                f"LazyFS (pid {process.pid}) did not exit within {_EXIT_TIMEOUT_S:.0f} s of "
                f"unmounting {self.mountpoint}; killed"
            ) from None
        if process.returncode != 0:
            raise LazyFsError(
                f"LazyFS (pid {process.pid}) exited with {process.returncode}: {self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:]) or "(empty log)"


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.tier2.lazyfs",
        description="A FUSE file system that loses what was never synced on a power cut.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mount = commands.add_parser("mount", help="serve BACKING at MOUNTPOINT until unmounted")
    mount.add_argument("backing", type=Path)
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    cut = commands.add_parser("cut", help="cut the power of the LazyFS mounted at MOUNTPOINT")
    cut.add_argument("mountpoint", type=Path)
    cut.add_argument("--keep", choices=("none", "prefix"), default="none")
    cut.add_argument("--torn", action="store_true")
    cut.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "cut":
        control = args.mountpoint / CONTROL_NAME
        try:
            with open(control, "w") as file:
                file.write(f"power-cut keep={args.keep} torn={int(args.torn)} seed={args.seed}\n")
        except OSError as exc:
            print(f"lazyfs: cannot cut the power of {args.mountpoint}: {exc}", file=sys.stderr)
            return 1
        subprocess.run(["fusermount3", "-u", "-z", str(args.mountpoint)], check=False)
        return 0

    reason = unavailable_reason()
    if reason is not None:
        print(f"lazyfs: {reason}", file=sys.stderr)
        return 2
    if not args.backing.is_dir():
        print(f"lazyfs: the backing directory {args.backing} does not exist", file=sys.stderr)
        return 2
    serve(args.backing.resolve(), args.mountpoint.resolve(), args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
