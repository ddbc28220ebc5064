"""An in-process header reader for plain ISO-BMFF files (mp4/m4v/mov), instead of an ffprobe
process per clip (whose start-up, linking a Debian ffmpeg's ~215 libraries, cost as much as a
quarter of a clip's CPU time).

`read` returns what `ffprobe -show_format -show_streams -of json` prints, as far as
`pipeline.media._parse_probe` reads it (format duration; each stream's index, type, sample rate,
channels, width/height, display-matrix rotation, avg_frame_rate, nb_frames, duration), with the
numbers computed the way FFmpeg's mov demuxer computes them, so every check that follows the probe
is the same. It vouches only for the common, simple layout: one `moov` (at the front or the end),
every track a video track (H.264/HEVC/AV1/VP9) or an AAC-LC audio track with one sample
description, at most one edit that maps the media at normal speed, a right-angle display matrix,
no fragments, no cover art. Anything else (fragmented files, other codecs or boxes, a box that
does not fit its parent, a truncated file, a non-ISO file) returns None and the caller runs
ffprobe as before.

Bounded: the boxes are walked at most `_MAX_DEPTH` deep and `_MAX_BOXES` in all, every size is
checked against its parent and the file, and at most `max_moov_bytes` of `moov` are read.
Setting `AVSIAM_PROBE=ffprobe` makes `read` return None (always the ffprobe process).
"""
from __future__ import annotations

import math
import os
import stat
import struct
from fractions import Fraction
from pathlib import Path

FORCE_ENV = "AVSIAM_PROBE"
FORMAT_NAME = "mov,mp4,m4a,3gp,3g2,mj2"     # what ffprobe names the mov demuxer
_MAX_DEPTH = 8
_MAX_BOXES = 4096
_MAX_TOP_BOXES = 64
_INT_MAX = 2 ** 31 - 1
_VIDEO_CONFIG = {b"avc1": b"avcC", b"avc3": b"avcC", b"hvc1": b"hvcC", b"hev1": b"hvcC",
                 b"av01": b"av1C", b"vp09": b"vpcC"}     # sample entry: its decoder config box
_VIDEO_CODECS = set(_VIDEO_CONFIG)
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000,
              7350)
_SAFE_AAC_RATES = {32000, 44100, 48000}     # lower rates may be HE-AAC cores (decoder doubles them)
_TOP = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"}
_LAYOUT = {   # box: the boxes it may hold (containers are keys; the rest are read or skipped)
    b"trak": {b"tkhd", b"edts", b"mdia", b"udta", b"tref"},
    b"edts": {b"elst"},
    b"mdia": {b"mdhd", b"hdlr", b"minf"},
    b"minf": {b"vmhd", b"smhd", b"dinf", b"stbl"},
    b"stbl": {b"stsd", b"stts", b"ctts", b"cslg", b"stsc", b"stsz", b"stco", b"co64", b"stss",
              b"stps", b"sdtp", b"sgpd", b"sbgp"},
}
_IDENTITY = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


class _Odd(Exception):
    """Something this reader does not vouch for: ffprobe decides."""


def _need(condition: bool) -> None:
    if not condition:
        raise _Odd()


def read(path: Path, *, max_moov_bytes: int) -> dict | None:
    """ffprobe's JSON for `path` (the parts `_parse_probe` reads), or None: let ffprobe run."""
    if os.environ.get(FORCE_ENV) == "ffprobe":
        return None
    try:
        # O_NONBLOCK: a FIFO named like a video must not block the open (ffprobe has a timeout)
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            status = os.fstat(handle.fileno())
            _need(stat.S_ISREG(status.st_mode))
            size = status.st_size
            moov = _find_moov(handle, size, max_moov_bytes)
            return _describe(moov)
    except (_Odd, OSError, struct.error, ValueError, ZeroDivisionError, OverflowError):
        return None


def _header(data: bytes, at: int, end: int) -> tuple[bytes, int, int]:
    """(type, start of payload, end of box) of the box at `at`, which must end by `end`."""
    _need(at + 8 <= end)
    size, kind = struct.unpack_from(">I4s", data, at)
    body = at + 8
    if size == 1:
        _need(body + 8 <= end)
        size = struct.unpack_from(">Q", data, body)[0]
        body += 8
    _need(size >= body - at and at + size <= end)   # size 0 ("to the end") only at the top
    return kind, body, at + size


def _find_moov(handle, size: int, max_moov_bytes: int) -> bytes:
    """The bytes of the one `moov` box; the top level may hold only ftyp (first), moov, mdat
    and padding, each inside the file."""
    at, moov, seen = 0, None, 0
    while at < size:
        seen += 1
        _need(seen <= _MAX_TOP_BOXES)
        handle.seek(at)
        head = handle.read(16)
        _need(len(head) >= 8)
        box_size, kind = struct.unpack_from(">I4s", head)
        start = 8
        if box_size == 1:
            _need(len(head) == 16)
            box_size, start = struct.unpack_from(">Q", head, 8)[0], 16
        elif box_size == 0:
            box_size = size - at
        _need(kind in _TOP and box_size >= start and at + box_size <= size)
        _need((kind == b"ftyp") == (at == 0))
        if kind == b"moov":
            _need(moov is None and box_size <= max_moov_bytes)
            handle.seek(at + start)
            moov = handle.read(box_size - start)
            _need(len(moov) == box_size - start)
        at += box_size
    _need(moov is not None)
    return moov


def _children(data: bytes, start: int, end: int, counter: list[int]):
    at = start
    while at < end:
        counter[0] += 1
        _need(counter[0] <= _MAX_BOXES)
        kind, body, stop = _header(data, at, end)
        _need(stop > at)
        yield kind, body, stop
        at = stop


def _describe(moov: bytes) -> dict:
    counter = [0]
    movie = None
    tracks = []
    for kind, body, stop in _children(moov, 0, len(moov), counter):
        if kind == b"mvhd":
            _need(movie is None)
            movie = _mvhd(moov, body, stop)
        elif kind == b"trak":
            tracks.append(_trak(moov, body, stop, counter))
        elif kind == b"udta":
            _need(b"covr" not in moov[body:stop])      # cover art: an extra ffprobe stream
        else:
            _need(kind in (b"iods", b"free", b"skip"))
    _need(movie is not None and tracks)
    timescale, duration, matrix = movie
    _need(timescale > 0 and 0 < duration < 2 ** 62 and matrix == _IDENTITY)
    micros = (duration * 1_000_000 + timescale // 2) // timescale     # av_rescale, near-inf
    streams = [_stream(index, track, timescale) for index, track in enumerate(tracks)]
    return {"format": {"format_name": FORMAT_NAME, "duration": f"{micros * (1 / 1000000):f}"},
            "streams": streams}


def _full(data: bytes, body: int) -> tuple[int, int]:
    return data[body], body + 4


def _mvhd(data, body, stop):
    version, at = _full(data, body)
    if version == 1:
        _need(at + 28 <= stop)
        timescale, duration = struct.unpack_from(">IQ", data, at + 16)
        at += 28
    else:
        _need(version == 0 and at + 16 <= stop)
        timescale, duration = struct.unpack_from(">II", data, at + 8)
        at += 16
    at += 4 + 2 + 10        # rate, volume, reserved
    _need(at + 36 <= stop)
    return timescale, duration, struct.unpack_from(">9i", data, at)


def _trak(data, body, stop, counter) -> dict:
    track: dict = {}
    _walk(data, b"trak", body, stop, counter, track, depth=1)
    for key in ("tkhd", "mdhd", "hdlr", "stsd", "stts", "stsc", "stsz", "stco"):
        _need(key in track)
    return track


def _walk(data, parent, start, end, counter, track, depth):
    _need(depth <= _MAX_DEPTH)
    for kind, body, stop in _children(data, start, end, counter):
        _need(kind in _LAYOUT[parent])
        if kind in _LAYOUT:
            _walk(data, kind, body, stop, counter, track, depth + 1)
        elif kind in _PARSERS:
            name = "stco" if kind == b"co64" else kind.decode("latin-1")
            _need(name not in track)
            track[name] = _PARSERS[kind](data, body, stop)


def _tkhd(data, body, stop):
    version, at = _full(data, body)
    at += 32 if version == 1 else 20       # times, track id, reserved, duration
    _need(version in (0, 1))
    at += 8 + 2 + 2 + 2 + 2                # reserved, layer, group, volume, reserved
    _need(at + 44 <= stop)
    matrix = struct.unpack_from(">9i", data, at)
    width, height = struct.unpack_from(">II", data, at + 36)
    return matrix, width >> 16, height >> 16


def _mdhd(data, body, stop):
    version, at = _full(data, body)
    if version == 1:
        _need(at + 28 <= stop)
        return struct.unpack_from(">IQ", data, at + 16), 1
    _need(version == 0 and at + 16 <= stop)
    return struct.unpack_from(">II", data, at + 8), 0


def _hdlr(data, body, stop):
    _need(body + 12 <= stop)
    return data[body + 8:body + 12]


def _elst(data, body, stop):
    version, at = _full(data, body)
    _need(version in (0, 1) and at + 4 <= stop)
    count = struct.unpack_from(">I", data, at)[0]
    _need(count == 1)
    layout = ">Qqhh" if version == 1 else ">Iihh"
    _need(at + 4 + struct.calcsize(layout) <= stop)
    segment, media_time, rate, fraction = struct.unpack_from(layout, data, at + 4)
    _need(media_time >= 0 and rate == 1 and fraction == 0)
    return segment, media_time


def _stts(data, body, stop):
    version, at = _full(data, body)
    _need(version == 0 and at + 4 <= stop)
    count = struct.unpack_from(">I", data, at)[0]
    _need(0 < count and at + 4 + 8 * count <= stop)
    pairs = struct.unpack_from(f">{2 * count}I", data, at + 4)
    samples = sum(pairs[0::2])
    duration = sum(n * d for n, d in zip(pairs[0::2], pairs[1::2]))
    _need(0 < samples < 2 ** 31 and duration > 0 and all(d < 2 ** 31 for d in pairs[1::2]))
    return samples, duration


def _stsz(data, body, stop):
    _, at = _full(data, body)
    _need(at + 8 <= stop)
    sample_size, count = struct.unpack_from(">II", data, at)
    _need(count > 0 and (sample_size > 0 or at + 8 + 4 * count <= stop))
    return count


def _entries(data, body, stop):
    """A table box with at least one entry (stsc, stco, co64)."""
    _, at = _full(data, body)
    _need(at + 4 <= stop and struct.unpack_from(">I", data, at)[0] > 0)
    return True


def _stsd(data, body, stop):
    _, at = _full(data, body)
    _need(at + 4 <= stop)
    _need(struct.unpack_from(">I", data, at)[0] == 1)
    kind, entry, end = _header(data, at + 4, stop)
    _need(end == stop)
    if kind in _VIDEO_CODECS:
        # 6 reserved + data reference index, 16 pre-defined, then width/height; 78 bytes in all
        _need(entry + 78 <= end)
        width, height = struct.unpack_from(">HH", data, entry + 24)
        inner = {k for k, _, _ in _children(data, entry + 78, end, [0])}
        _need(_VIDEO_CONFIG[kind] in inner and not inner - {_VIDEO_CONFIG[kind], b"pasp", b"btrt",
                                                             b"colr", b"fiel"})
        pasp = _box(data, entry + 78, end, b"pasp")
        if pasp is not None:
            _need(pasp[1] - pasp[0] >= 8)
            h, v = struct.unpack_from(">II", data, pasp[0])
            _need(h == v)
        return "video", {"width": width, "height": height}
    _need(kind == b"mp4a" and entry + 28 <= end)
    version = struct.unpack_from(">H", data, entry + 8)[0]
    _need(version == 0)
    esds = _box(data, entry + 28, end, b"esds")
    _need(esds is not None)
    rate, channels = _aac_config(data[esds[0] + 4:esds[1]])
    return "audio", {"sample_rate": str(rate), "channels": channels}


def _box(data, start, end, kind):
    for k, body, stop in _children(data, start, end, [0]):
        if k == kind:
            return body, stop
    return None


def _descriptor(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of payload, end) of an MPEG-4 descriptor (size in up to 4 7-bit bytes)."""
    tag, size, at = data[at], 0, at + 1
    for _ in range(4):
        byte = data[at]
        at += 1
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    _need(at + size <= len(data))
    return tag, at, at + size


def _aac_config(esds: bytes) -> tuple[int, int]:
    """(sample rate, channels) of an AAC-LC AudioSpecificConfig inside an esds descriptor."""
    tag, at, end = _descriptor(esds, 0)
    _need(tag == 3)
    flags = esds[at + 2]
    at += 3 + (2 if flags & 0x80 else 0)
    _need(not flags & 0x60)                      # no URL, no OCR stream
    tag, at, end = _descriptor(esds, at)
    _need(tag == 4 and esds[at] == 0x40 and end - at >= 13)    # MPEG-4 audio
    tag, at, end = _descriptor(esds, at + 13)
    _need(tag == 5 and end - at >= 2)
    bits = int.from_bytes(esds[at:at + 2], "big")
    object_type, rate_index, channel_config = bits >> 11, (bits >> 7) & 0xF, (bits >> 3) & 0xF
    _need(object_type == 2 and rate_index < len(_AAC_RATES) and 1 <= channel_config <= 6)
    rate = _AAC_RATES[rate_index]
    _need(rate in _SAFE_AAC_RATES)
    # nothing after it, or the backward-compatible "no SBR" signal FFmpeg's encoder writes
    # (sync 0x2b7, extension type 5, sbr_present 0); anything else may be HE-AAC: ffprobe
    _need(end - at == 2 or (end - at == 5 and esds[at + 2:at + 4] == b"\x56\xe5"
                            and not esds[at + 4] & 0x80))
    return rate, channel_config


_PARSERS = {b"tkhd": _tkhd, b"mdhd": _mdhd, b"hdlr": _hdlr, b"elst": _elst, b"stts": _stts,
            b"stsz": _stsz, b"stsd": _stsd, b"stsc": _entries, b"stco": _entries, b"co64": _entries}


def _rotation(matrix) -> int | None:
    """ffprobe's "rotation" of a non-identity display matrix (None for the identity)."""
    if tuple(matrix) == _IDENTITY:
        return None
    a, b, u, c, d, v, _, _, w = matrix
    _need(u == 0 and v == 0 and w == 0x40000000)
    _need((a, b, c, d) in ((0x10000, 0, 0, 0x10000), (0, 0x10000, -0x10000, 0),
                           (-0x10000, 0, 0, -0x10000), (0, -0x10000, 0x10000, 0)))
    scale = math.hypot(a / 65536.0, c / 65536.0), math.hypot(b / 65536.0, d / 65536.0)
    return int(-(math.atan2(b / 65536.0 / scale[1], a / 65536.0 / scale[0]) * 180 / math.pi))


def _stream(index: int, track: dict, movie_timescale: int) -> dict:
    matrix, track_width, track_height = track["tkhd"]
    (timescale, media_duration), version = track["mdhd"]
    kind, fields = track["stsd"]
    samples, stts_duration = track["stts"]
    _need(timescale > 0 and track["stsz"] == samples)
    _need(track["hdlr"] == {"video": b"vide", "audio": b"soun"}[kind])
    _need(0 < media_duration < 2 ** 31 - 1 or version == 1 and media_duration > 0)
    duration = min(media_duration, stts_duration)      # FFmpeg: mdhd, then capped by stts
    if "elst" in track:
        # the one edit caps it too, rescaled to the track's time scale (av_rescale: nearest)
        segment, media_time = track["elst"]
        _need(segment > 0 and media_time < stts_duration)
        duration = min(duration, (segment * timescale + movie_timescale // 2) // movie_timescale)
    stream = {"index": index, "codec_type": kind, "nb_frames": str(samples),
              "duration": f"{duration * (1 / timescale):f}", **fields}
    if kind == "video":
        _need(fields["width"] == track_width and fields["height"] == track_height)
        rate = Fraction(timescale * samples, stts_duration)
        _need(rate.numerator <= _INT_MAX and rate.denominator <= _INT_MAX)
        stream["avg_frame_rate"] = f"{rate.numerator}/{rate.denominator}"
        stream["disposition"] = {"attached_pic": 0}
        rotation = _rotation(matrix)
        if rotation is not None:
            stream["side_data_list"] = [{"side_data_type": "Display Matrix", "rotation": rotation}]
    else:
        _need(tuple(matrix) == _IDENTITY)
    return stream
