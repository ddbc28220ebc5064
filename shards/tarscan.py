"""Walk a tar: (name, bytes) of the members a predicate keeps; the others are never read.

One scanner for local files (seekable: skipped members are never read, several times less CPU
than a stream walk) and `pipe:` streams (skipped members are read in chunks and dropped). It reads
what writers of shards produce: ustar/POSIX headers, pax extended headers (`path`, `size`) and GNU
long names; any other extension (GNU sparse or multi-volume members) is a damaged shard. Headers are
checked strictly, so that no header can make a reader loop, seek backwards or allocate what the
file does not hold: checksum verified; sizes octal digits only (or positive base-256), never
negative, never past the end of a local file; extended headers at most MAX_EXTENDED_BYTES. Damage
raises tarfile.ReadError; the caller counts the shard as unreadable.

`keep(name, size)` is asked for every regular member, before any of its bytes are read, and answers
SKIP (not read, not reported), READ (read and yielded with its bytes) or REFUSE (not read; yielded
with None, so the caller can count what it refused: see shards.reader.MemberFilter's byte budget).
Links, devices, directories and FIFOs inside the tar carry no data; `on_special(name, type)` hears
of them (verify reports them), the loader ignores them.
"""
from __future__ import annotations

import os
import tarfile
from typing import Callable, Iterator

from .files import open_regular

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
SKIP, READ, REFUSE = 0, 1, 2
MAX_EXTENDED_BYTES = 1 << 16     # a pax header or GNU long name: a path, not data
_REGULAR = (b"0", b"\0", b"7")
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")           # links, devices, directories, FIFOs
_IGNORED = (b"g", b"K")                                     # global pax header, GNU long link name
_REFUSED = {b"S": "GNU sparse", b"M": "GNU multi-volume", b"V": "GNU volume label"}
_OCTAL = b"01234567"

Keep = Callable[[str, int], int]


def tar_file_members(path: str, keep: Keep,
                     on_special: Callable[[str, bytes], None] | None = None
                     ) -> Iterator[tuple[str, bytes | None]]:
    """Members of a local tar (a regular file, else NotRegularFile) in order: see the module doc."""
    with open_regular(path, buffering=1 << 16) as raw:
        yield from _members(raw, keep, os.fstat(raw.fileno()).st_size, on_special)


def tar_stream_members(stream, keep: Keep,
                       on_special: Callable[[str, bytes], None] | None = None
                       ) -> Iterator[tuple[str, bytes | None]]:
    """Members of a tar read from a non-seekable stream (a `pipe:` command's stdout)."""
    yield from _members(stream, keep, None, on_special)


def _members(raw, keep: Keep, end: int | None, on_special) -> Iterator[tuple[str, bytes | None]]:
    pos = 0                                  # offset of the next header
    ext_name = ext_size = None               # from a pax header or GNU long name before a member
    while True:
        header = raw.read(BLOCK)
        if not header or header == ZERO_BLOCK:
            return                                           # end of archive
        if len(header) < BLOCK:
            raise tarfile.ReadError(f"truncated header at byte {pos}")
        size = _checked_size(header, pos)
        if ext_size is not None:
            size = ext_size
        kind = header[156:157]
        start, pos = pos, pos + BLOCK
        if end is not None and pos + size > end:
            raise tarfile.ReadError(f"member at byte {start} claims {size} bytes, past the end of "
                                    f"the file ({end} bytes)")
        if kind in _REGULAR:
            if ext_name is not None:
                name, ext_name, ext_size = ext_name, None, None
            elif header[345]:                                # a ustar prefix
                name = _header_name(header)
            else:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if kind == b"\0" and name.endswith("/"):          # old tars' directories
                _notify(on_special, name, b"5")
                continue
            verdict = keep(name, size)
            if verdict == READ:
                data = raw.read(size)
                if len(data) != size:
                    raise tarfile.ReadError(f"unexpected end of data in member {name!r}")
                padding = -size % BLOCK
                pos += size + padding
                if padding:
                    _skip(raw, pos - padding, padding, end)
                yield name, data
                continue
            _skip(raw, pos, _padded(size), end)
            pos += _padded(size)
            if verdict == REFUSE:
                yield name, None
        elif kind in _NO_DATA:
            _notify(on_special, ext_name if ext_name is not None else _header_name(header), kind)
            ext_name = ext_size = None
        elif kind in (b"x", b"L"):
            if size > MAX_EXTENDED_BYTES:
                raise tarfile.ReadError(f"extended header at byte {start} claims {size} bytes "
                                        f"(> {MAX_EXTENDED_BYTES})")
            data = _read(raw, size, "an extended header")
            _skip(raw, pos + size, _padding(size), end)
            pos += _padded(size)
            if kind == b"L":
                ext_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                path, pax_size = _pax_records(data, start)
                ext_name = path if path is not None else ext_name
                ext_size = pax_size if pax_size is not None else ext_size
        elif kind in _REFUSED:
            raise tarfile.ReadError(f"{_REFUSED[kind]} member at byte {start}: not a shard member")
        else:                                # _IGNORED and unknown types: data skipped, unread
            _skip(raw, pos, _padded(size), end)
            pos += _padded(size)
            if kind not in _IGNORED:
                ext_name = ext_size = None


def _notify(on_special, name: str, kind: bytes) -> None:
    if on_special is not None:
        on_special(name, kind)


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0]
    if prefix:                                               # ustar: prefix/name
        name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _read(raw, size: int, what: str) -> bytes:
    data = raw.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"unexpected end of data in {what}")
    return data


def _skip(raw, pos: int, count: int, end: int | None) -> None:
    """Move past `count` bytes at `pos`: a seek in a file, reading and dropping them in a stream."""
    if end is not None:
        raw.seek(pos + count)
        return
    while count:
        chunk = raw.read(min(count, 1 << 16))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        count -= len(chunk)


def _checked_size(header: bytes, pos: int) -> int:
    """The size field of a header whose checksum is right (ReadError otherwise). Plain octal
    fields, the common case, are parsed here; anything else takes the strict paths below."""
    checksum = header[148:156].strip(b" \0")
    digits = header[124:136].strip(b" \0")
    if checksum.isdigit() and digits.isdigit():             # ASCII 0-9 only: no sign, no '_'
        try:
            if int(checksum, 8) == sum(header) - sum(header[148:156]) + 8 * 32:
                return int(digits, 8)
        except ValueError:                                   # an 8 or a 9
            pass
    _check_checksum(header, pos)
    return _size(header[124:136], pos)


def _check_checksum(header: bytes, pos: int) -> None:
    stored = _octal(header[148:156], pos)
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored != unsigned:
        signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
        if stored != signed:
            raise tarfile.ReadError(f"bad header checksum at byte {pos}")


def _size(field: bytes, pos: int) -> int:
    """A size field: octal digits, or base-256 with the top bit set (negative ones refused)."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    if field[0] & 0x80:
        raise tarfile.ReadError(f"negative size {field!r} in the header at byte {pos}")
    return _octal(field, pos)


def _octal(field: bytes, pos: int) -> int:
    """An octal number field: digits 0-7 only, padded with spaces or NULs (no sign, no '_')."""
    text = field.strip(b" \0")
    if text.strip(_OCTAL):
        raise tarfile.ReadError(f"invalid number {field!r} in the header at byte {pos}")
    return int(text, 8) if text else 0


def _pax_records(data: bytes, pos: int) -> tuple[str | None, int | None]:
    """(path, size) of a pax extended header ("LEN key=value\\n" records)."""
    path = size = None
    i = 0
    while i < len(data) and data[i]:
        space = data.find(b" ", i, i + 20)
        length = int(data[i:space]) if space > i and data[i:space].isdigit() else 0
        if length <= space - i + 1 or i + length > len(data) or data[i + length - 1] != 0x0A:
            raise tarfile.ReadError(f"invalid pax header at byte {pos}")
        key, eq, value = data[space + 1:i + length - 1].partition(b"=")
        if not eq:
            raise tarfile.ReadError(f"invalid pax record {key[:40]!r} at byte {pos}")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        elif key == b"size":
            if not value.isdigit():
                raise tarfile.ReadError(f"invalid pax size {value[:40]!r} at byte {pos}")
            size = int(value)
        i += length
    return path, size


def _padding(size: int) -> int:
    return -size % BLOCK


def _padded(size: int) -> int:
    return size + _padding(size)
