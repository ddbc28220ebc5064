"""One writer at a time: advisory `flock` locks on files under `OUT/locks/`.

`avsiam shard` takes `plan.lock` while it reads or writes manifest.parquet, one
`{split}-NNNNNN.lock` per shard while it writes (and commits) that shard, and `dataset.lock` while
it writes dataset.json. A lock belongs to an open file of its holder, so the kernel releases it when
the holder exits in any way, SIGKILL included: a dead run never leaves a shard locked, and the next
run redoes what it left uncommitted. Lock files are never deleted (deleting one while another
process waits on it would let two processes hold "the" lock); they hold the holder's host and pid,
for messages only.

Shared filesystems: on NFS, Linux emulates flock with NFS byte-range locks, which hold across
clients unless the filesystem is mounted with `nolock` (then they hold only within one node).
Lustre supports flock across nodes only when mounted with `-o flock` (`localflock`: within one
node; neither: flock fails, and `avsiam shard` stops with a message saying so).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Callable

from pipeline.output_files import OutputError, writing

LOCKS_DIR = "locks"
_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class LockingUnsupported(OutputError):
    """The filesystem of --out does not support flock."""


class FileLock:
    """An exclusive flock on `path`; `try_acquire` never waits, `acquire` waits (polling, so a
    signal such as SLURM's TERM interrupts it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        assert self._fd is None, f"{self.path} is already held by this process"
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)   # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                raise LockingUnsupported(self.path.parent.parent, (
                    f"its filesystem does not support file locks (flock: {exc.strerror}), which "
                    f"keep concurrent runs from writing the same shard; mount it with locking "
                    f"(Lustre: -o flock; NFS: without nolock) or pass a --out on another "
                    f"filesystem")) from exc
            raise OutputError(self.path, exc) from exc
        self._fd = fd
        try:   # who holds it, for the messages of runs that wait; never needed for correctness
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return True

    def acquire(self, on_wait: Callable[[str], None] | None = None, poll_s: float = 0.2,
                remind_s: float = 60.0) -> None:
        """Wait until the lock is ours; `on_wait(holder)` is called at once and every `remind_s`."""
        last = None
        while not self.try_acquire():
            now = time.monotonic()
            if on_wait is not None and (last is None or now - last >= remind_s):
                on_wait(self.holder())
                last = now
            time.sleep(poll_s)

    def check(self) -> None:
        """Raise unless this process still holds the lock on the file now at `path` (someone
        deleting OUT/locks/ while runs hold locks would let a second writer in)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: not held by this process")
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise OutputError(self.path, "this lock file was deleted while this run held it, so "
                              "another run may be writing the same shard; leave OUT/locks/ alone "
                              "and run the same command again")

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)            # closing the file releases the flock

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another run"
        except OSError:
            return "another run"

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FolderLocks:
    """The lock files of one output folder."""

    def __init__(self, out: Path):
        self.folder = Path(out) / LOCKS_DIR
        with writing(self.folder):
            self.folder.mkdir(exist_ok=True)

    def named(self, name: str) -> FileLock:
        return FileLock(self.folder / f"{name}.lock")

    def shard(self, stem: str) -> FileLock:
        return self.named(stem)

    def plan(self) -> FileLock:
        return self.named("plan")

    def dataset(self) -> FileLock:
        return self.named("dataset")
