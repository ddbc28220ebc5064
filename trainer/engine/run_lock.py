"""One run at a time in a run folder: rank 0 holds an exclusive `flock` on `OUT/run.lock`.

Two runs writing the same folder (a job re-submitted while the first still runs, a second terminal)
would both save `step_N` checkpoints, and one's retention or `--overwrite` would delete the other's.
So rank 0 takes the lock before it looks at the folder and keeps it until the process exits (the
kernel releases it on any exit, SIGKILL included) or the next run of the same process starts; a
second run stops in one line naming the holder. The file holds the holder's host and pid, for
that message only. A filesystem without flock (Lustre mounted without `-o flock`) gets a warning
and no lock.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("trainer.engine")

RUN_LOCK = "run.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
_held: dict[str, int | None] = {"fd": None}


def hold_run_lock(out: Path, command: str) -> None:
    """Take OUT/run.lock for this process (releasing the one of an earlier run in it), or raise a
    one-line ValueError when another run holds it."""
    release_run_lock()
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = path.read_text(errors="replace").strip() or "another process"
        raise ValueError(f"avsiam {command}: {out} is in use by another run ({holder}); wait for it "
                         f"to end, or give this run another --out") from None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in _UNSUPPORTED:
            raise
        log.warning("%s: no file locks on this filesystem (%s): nothing keeps a second run out of "
                    "this folder", path, exc.strerror)
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
    _held["fd"] = fd


def release_run_lock() -> None:
    fd, _held["fd"] = _held["fd"], None
    if fd is not None:
        os.close(fd)
