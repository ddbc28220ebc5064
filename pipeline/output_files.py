"""Writing into `--out`: temporary names unique per writer, atomic replace, and errors that name the
file and the fix.

Every file of a sharded folder is first written as `NAME.tmp-HOST-PID-RANDOM` and renamed into
place by the process that holds the file's lock (`pipeline.locks`), so two writers never share a
temporary file, and a killed writer's leftovers are recognised by name (`is_temp_of`) and removed by
the next run that takes the lock. A write that fails (a full disk, a read-only folder) raises
`OutputError`, whose message is one line naming the file and what to do.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_MARK = ".tmp"
_RERUN = "run the same command again: committed shards are kept"
_FIXES = {
    errno.ENOSPC: f"free space on its filesystem (or pass another --out), then {_RERUN}",
    errno.EDQUOT: f"the disk quota is used up: free space or raise the quota, then {_RERUN}",
    errno.EROFS: "the filesystem is read-only: pass a writable --out",
    errno.EACCES: "no permission: pass a --out you may write to (or fix its permissions)",
    errno.EPERM: "not permitted: pass a --out you may write to (or fix its permissions)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass another --out",
    errno.EFBIG: "the file is too large for this filesystem: lower --max-shard-bytes",
}
_tag: tuple[int, str] | None = None


class OutputError(Exception):
    """A file or folder of --out cannot be written; the message names it and the fix."""

    def __init__(self, path: str | Path, cause: OSError | str):
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause)
            fix = _FIXES.get(cause.errno, f"check the folder, then {_RERUN}")
            text = f"cannot write {path} ({reason}): {fix}"
        else:
            text = f"{path}: {cause}"
        super().__init__(text)
        self.path = Path(path)


def writer_tag() -> str:
    """HOST-PID-RANDOM of this process: unique per writer, also across the nodes of a cluster."""
    global _tag
    if _tag is None or _tag[0] != os.getpid():
        host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
        _tag = (os.getpid(), f"{host}-{os.getpid()}-{secrets.token_hex(4)}")
    return _tag[1]


def temp_path(path: Path) -> Path:
    """This writer's temporary name for `path` (same folder, so the rename is atomic)."""
    return path.with_name(f"{path.name}{TEMP_MARK}-{writer_tag()}")


def is_temp_of(name: str, target: str) -> bool:
    """Whether file `name` is a temporary file of `target` (any writer, also older `.tmp` names)."""
    return name == target + TEMP_MARK or name.startswith(f"{target}{TEMP_MARK}-")


def temp_target(name: str) -> str | None:
    """The file a temporary file stands for (`x.tar.tmp-h-1-ab` -> `x.tar`), None if not one."""
    if name.endswith(TEMP_MARK):
        return name[:-len(TEMP_MARK)]
    at = name.rfind(TEMP_MARK + "-")
    return name[:at] if at > 0 else None


def remove_temps(folder: Path, targets: set[str], names: list[str] | None = None) -> list[str]:
    """Delete every temporary file of the `targets` in `folder` (from any writer); the caller holds
    the lock that makes them stale. `names`: a listing of the folder taken after that lock."""
    removed = []
    for name in os.listdir(folder) if names is None else names:
        if temp_target(name) in targets:
            try:
                os.unlink(folder / name)
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised inside into an OutputError naming `path`."""
    try:
        yield
    except OSError as exc:
        raise OutputError(path, exc) from exc


def fsync_dir(path: Path) -> None:
    with writing(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to this writer's temporary name, fsync, rename over `path`. On failure the
    temporary file is removed and an OutputError names `path`."""
    temp = temp_path(path)
    try:
        with writing(path):
            with open(temp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def check_out(out: Path) -> None:
    """Say in one line why --out cannot be used (a file, no permission, read-only), writing
    nothing: a missing --out is checked at the nearest folder that exists."""
    if out.exists() and not out.is_dir():
        raise OutputError(out, "--out is a file, not a folder; pass a folder (it is created if "
                               "missing)")
    folder = out
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(out, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    if not os.access(folder, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(folder) else errno.EACCES
        raise OutputError(out, OSError(code, os.strerror(code)))


def prepare_out(out: Path) -> None:
    """`check_out`, then create --out."""
    check_out(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
