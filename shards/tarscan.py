"""Walk a local tar file: (name, bytes) of the members a predicate keeps; the others are never read.

The shards the pipeline writes are plain ustar (POSIX) tars. For those, headers are parsed here
directly (checksum verified, sizes bounded), about 4x less CPU than tarfile's general parser, which
matters at 12 members per sample. Any header this fast path does not handle (pax or GNU long names,
base-256 sizes, ...) hands over to the standard library's tarfile from that point, so every valid tar
still reads. Damage raises tarfile.ReadError; the caller counts the shard as unreadable.
"""
from __future__ import annotations

import tarfile
from typing import Callable, Iterator

BLOCK = 512
MAX_MEMBER_BYTES = 1 << 28      # 256 MiB: no format member comes close; a lying header cannot OOM us
_REGULAR = (b"0", b"\0")
_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6", b"7")   # links, devices, dirs, fifos: no data kept


class _Unsupported(Exception):
    """A header the fast path leaves to tarfile."""


def tar_file_members(path: str, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Members of a local tar in order, as (name, bytes), for names `keep` accepts."""
    with open(path, "rb", buffering=1 << 16) as raw:
        resume_at = 0
        try:
            for name, offset, size in _ustar_headers(raw):
                resume_at = offset + _padded(size)
                if keep(name):
                    yield name, _read(raw, offset, size, name)
            return
        except _Unsupported:
            pass
        raw.seek(0)
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            for info in tar:
                tar.members = []                    # no index of the whole shard in memory
                if info.offset_data < resume_at or not info.isreg() or not keep(info.name):
                    continue
                yield info.name, _read(raw, info.offset_data, info.size, info.name)


def _ustar_headers(raw) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular member; raises _Unsupported for exotic headers."""
    offset = 0
    while True:
        raw.seek(offset)
        header = raw.read(BLOCK)
        if len(header) == 0 or header.count(0) == BLOCK:
            return                                   # end of archive (or truncated at a boundary)
        if len(header) < BLOCK:
            raise tarfile.ReadError(f"truncated header at byte {offset}")
        if _checksum(header) != _octal(header[148:156], offset):
            raise tarfile.ReadError(f"bad header checksum at byte {offset}")
        kind = header[156:157]
        if header[124] & 0x80 or (kind not in _REGULAR and kind not in _SKIPPED):
            raise _Unsupported
        size = _octal(header[124:136], offset)
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        offset += BLOCK
        if kind in _REGULAR:
            yield name.decode("utf-8", "surrogateescape"), offset, size
        offset += _padded(size)


def _read(raw, offset: int, size: int, name: str) -> bytes:
    if size > MAX_MEMBER_BYTES:
        raise tarfile.ReadError(f"member {name!r} claims {size} bytes (> {MAX_MEMBER_BYTES})")
    raw.seek(offset)
    data = raw.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"unexpected end of data in member {name!r}")
    return data


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _octal(field: bytes, offset: int) -> int:
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"invalid number {field!r} in the header at byte {offset}") from None


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK
