"""Opening the files of a shard folder: regular files only, bounded reads, the file named in errors.

Where a shard, record or metadata file should be, a FIFO would block its reader forever (opening
one waits for a writer), a device could feed it endless bytes (/dev/zero) and a directory fails
late with a confusing error. `open_regular` therefore checks with `stat` before opening (a device is
never opened), opens with O_NONBLOCK (a FIFO swapped in meanwhile cannot block the open) and checks
the open file again with `fstat` (nothing swapped in is read). Metadata is read whole, so it is read
only up to a bound, and parsed JSON must be an object: every failure is a `MetadataError` naming
the file.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


class MetadataError(ValueError):
    """A metadata file that is missing, not a regular file, too large or not the expected JSON."""


class NotRegularFile(OSError):
    """A path that exists but is not a regular file (FIFO, device, directory, socket)."""


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def is_regular(path: str | os.PathLike) -> bool:
    """True for an existing regular file (symlinks followed); never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike, buffering: int = -1):
    """A binary reader of a regular file; NotRegularFile (an OSError) for anything else."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"{path} is {kind_of(mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path} is {kind_of(mode)}, not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (MetadataError otherwise)."""
    try:
        with open_regular(path) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as e:
        raise MetadataError(f"{path} cannot be read: {e}") from None
    if len(data) > max_bytes:
        raise MetadataError(f"{path} is larger than {max_bytes} bytes")
    return data


def read_json_object(path: str | os.PathLike, max_bytes: int) -> dict:
    """The JSON object in a regular file of at most `max_bytes`; MetadataError names the file."""
    data = read_bounded(path, max_bytes)
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:       # RecursionError: nesting too deep
        raise MetadataError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") \
            from None
    if not isinstance(value, dict):
        raise MetadataError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value
