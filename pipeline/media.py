"""The one ffmpeg wrapper: probe a file (decodes nothing), then decode a clip window in ONE process.

`probe` reads a plain MP4's header in-process (`pipeline.mp4_probe`), else runs ffprobe, and checks what the file claims (streams, dimensions, duration) against the
limits before anything is decoded. `decode_window` builds one ffmpeg command with ffmpeg-python that
seeks to the window (-ss/-t on the input) and writes its outputs at once: the window's audio
(16 kHz, `-ac 1` downmix, s16le) on one pipe, the candidate frames of the stored indices
(`pipeline.frame_select`: non-reference frames left undecoded where the indices are far apart),
already resized inside the filter graph, as rgb24 on stdout, and their presentation times on a
third pipe. Every call is bounded in
time, output bytes and memory (`pipeline.bounded_process`); failures raise `ClipError` with a code.

Every call reads only the file it is given: its input may use only the `file` protocol and one of
the media demuxers in `DEMUXERS` (outputs only `pipe`), so a playlist named like a video (HLS,
concat/ffconcat, SDP) or an image sequence, which would make ffmpeg open other files or URLs, is
refused as `unsupported_format` before anything is read through it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import ffmpeg

from pipeline import errors, frame_select, mp4_probe
from pipeline.bounded_process import (STDOUT, OutputLimitExceeded, ProcessResult, ProcessTimeout,
                                      run_bounded)
from pipeline.params import SAMPLE_RATE, ClipParams, MediaLimits

DEMUXERS = ("mov", "matroska", "avi", "flv", "mpegts", "wav", "mp3", "flac", "ogg", "aac")
"""ffmpeg demuxers accepted (`mov` covers mp4/m4a/3gp, `matroska` covers webm)."""
INPUT_GUARD = {"protocol_whitelist": "file", "format_whitelist": ",".join(DEMUXERS)}
OUTPUT_GUARD = {"protocol_whitelist": "pipe"}
_REFUSED = re.compile(r"\[(\w+) @ [^]]*\] Format not on whitelist|"
                      r"Protocol '([^']*)' not on whitelist")
FALLBACK_FPS = 25.0
_MAX_SANE_FPS = 240.0
_AUDIO = "audio"
_TIMES = "times"
_TIMES_LINE_BYTES = 96      # one framecrc line ("0, dts, pts, duration, size, crc") at most


@dataclass(frozen=True)
class VideoStream:
    index: int
    width: int          # as displayed (after rotation)
    height: int
    fps: float          # rate used to index frames (avg_frame_rate, else r_frame_rate, else 25)
    nb_frames: int | None
    rotation: int
    duration: float | None = None   # what the stream claims (None: unknown, e.g. Matroska)


@dataclass(frozen=True)
class AudioStream:
    index: int
    rate: int
    channels: int
    duration: float | None = None


@dataclass(frozen=True)
class MediaInfo:
    duration: float | None
    audio: AudioStream | None
    video: VideoStream | None


@dataclass(frozen=True)
class Decoded:
    audio: bytes | None          # s16le mono at SAMPLE_RATE (None when not requested)
    frames: list[bytes]          # rgb24 frame_size x frame_size, one per selected index, in order
    ffmpeg_max_rss_kb: int
    stderr: str = ""             # the end of ffmpeg's messages (e.g. "partial file")
    frame_times: list[float] = field(default_factory=list)
    """Presentation time (s from the window start) of each frame in `frames`."""


def _input_url(path: Path) -> str:
    # "file:" stops ffmpeg from reading a protocol out of names like "a:b.mp4".
    return f"file:{path.resolve()}"


def _last_lines(text: str) -> str:
    """The last two distinct lines of ffmpeg's stderr (the cause is often the one before last)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = list(dict.fromkeys(lines[-2:]))
    return " / ".join(last)[-400:] if last else "no message"


def _run_tool(tool: str, build, *, outputs: dict[str, int], timeout_s: float, limits: MediaLimits,
              failure: str, timeout_hint: str) -> ProcessResult:
    """`run_bounded` with its failures as ClipErrors: TIMEOUT, OUTPUT_TOO_LARGE, or `failure` for a
    non-zero exit (with the last lines of stderr)."""
    try:
        result = run_bounded(build, outputs=outputs, timeout_s=timeout_s, memory_mb=limits.ffmpeg_memory_mb)
    except ProcessTimeout as exc:
        raise errors.ClipError(errors.TIMEOUT, f"{tool} {exc} ({timeout_hint})")
    except OutputLimitExceeded as exc:
        raise errors.ClipError(errors.OUTPUT_TOO_LARGE, f"{tool} {exc}")
    if result.returncode != 0:
        refused = _REFUSED.search(result.stderr_tail)
        if refused:
            raise _unsupported(tool, refused.group(1) or f"{refused.group(2)} protocol")
        raise errors.ClipError(failure, f"{tool} exit {result.returncode}: {_last_lines(result.stderr_tail)}")
    return result


def _unsupported(tool: str, what: str) -> errors.ClipError:
    return errors.ClipError(errors.UNSUPPORTED_FORMAT,
                            f"{tool} refused {what}: accepted are the media containers "
                            f"{', '.join(DEMUXERS)}, never playlists or image sequences")


def _ratio(text: str | None) -> float:
    try:
        value = float(Fraction(text)) if text else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out >= 0 else None


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(round(float(tag))) % 360 if _float(tag) is not None else 0


def probe(path: Path, params: ClipParams, limits: MediaLimits) -> MediaInfo:
    """Streams, dimensions and duration of `path`, checked against the limits: read in-process
    for a plain MP4 (`pipeline.mp4_probe`, the same numbers), else by one bounded ffprobe."""
    data = mp4_probe.read(path, max_moov_bytes=limits.probe_max_bytes)
    return _parse_probe(data if data is not None else _ffprobe(path, limits), params)


def _ffprobe(path: Path, limits: MediaLimits) -> dict:
    guard = [arg for name, value in INPUT_GUARD.items() for arg in (f"-{name}", value)]
    command = ["ffprobe", "-v", "error", *guard, "-show_format", "-show_streams", "-of", "json",
               _input_url(path)]
    result = _run_tool("ffprobe", lambda urls: command, outputs={STDOUT: limits.probe_max_bytes},
                       timeout_s=limits.probe_timeout_s, limits=limits, failure=errors.PROBE_FAILED,
                       timeout_hint="file blocks or is unreadable")
    try:
        data = json.loads(result.outputs[STDOUT] or b"{}")
    except ValueError as exc:
        raise errors.ClipError(errors.PROBE_FAILED, f"ffprobe printed invalid JSON ({exc})")
    return data


def _parse_probe(data: dict, params: ClipParams) -> MediaInfo:
    demuxer = str((data.get("format") or {}).get("format_name") or "")
    if not set(demuxer.split(",")) & set(DEMUXERS):
        raise _unsupported("ffprobe", demuxer or "an unknown format")
    streams = data.get("streams") or []
    duration = _float((data.get("format") or {}).get("duration"))
    audio = video = None
    for stream in streams:
        kind = stream.get("codec_type")
        if kind == "audio" and audio is None:
            rate = int(_float(stream.get("sample_rate")) or 0)
            channels = int(stream.get("channels") or 0)
            if rate > 0 and channels > 0:
                audio = AudioStream(int(stream["index"]), rate, channels,
                                    _float(stream.get("duration")))
        elif kind == "video" and video is None:
            if (stream.get("disposition") or {}).get("attached_pic"):
                continue  # cover art, not a video
            video = _video_stream(stream, params)
        if duration is None and kind in ("audio", "video"):
            duration = _float(stream.get("duration"))
    if duration is not None and duration > params.max_source_seconds:
        raise errors.ClipError(errors.ABSURD_DURATION,
                               f"file claims {duration:.1f} s, over the "
                               f"{params.max_source_seconds:g}"
                               f" s limit (max_source_seconds)")
    return MediaInfo(duration=duration, audio=audio, video=video)


def _video_stream(stream: dict, params: ClipParams) -> VideoStream:
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if width <= 0 or height <= 0 or width * height > params.max_pixels or \
            max(width, height) > params.max_side:
        raise errors.ClipError(errors.ABSURD_DIMENSIONS,
                               f"video stream claims {width}x{height}; accepted: both > 0, at most "
                               f"{params.max_side} per side and {params.max_pixels} pixels")
    rotation = _rotation(stream)
    if rotation in (90, 270):
        width, height = height, width
    rates = (_ratio(stream.get("avg_frame_rate")), _ratio(stream.get("r_frame_rate")))
    fps = next((f for f in rates if 0 < f <= _MAX_SANE_FPS), FALLBACK_FPS)
    nb = _float(stream.get("nb_frames"))
    return VideoStream(int(stream["index"]), width, height, fps, int(nb) if nb else None, rotation,
                       _float(stream.get("duration")))


def _resize(stream, params: ClipParams):
    """Bicubic resize to a frame_size square: short side + centre crop, or the whole picture."""
    size = params.frame_size
    if params.frame_crop == "squash":
        return stream.filter("scale", size, size, flags="bicubic")
    short = f"if(lt(iw,ih),{size},-1)", f"if(lt(iw,ih),-1,{size})"
    return stream.filter("scale", short[0], short[1], flags="bicubic").filter("crop", size, size)


def decode_command(path: Path, info: MediaInfo, *, start: float, seconds: float,
                   targets: list[float], skip_nonref: bool, params: ClipParams,
                   limits: MediaLimits, video_url: str | None, times_url: str | None,
                   audio_url: str | None) -> list[str]:
    """The one ffmpeg command of a clip: seek to the window on the input; frames (when video_url)
    near the `targets` (s from the window start) passed by `select` (non-reference frames not
    decoded when `skip_nonref`), resized in the filter graph, as rgb24, with their presentation
    times as framecrc lines on times_url; audio (when audio_url) downmixed to mono 16 kHz s16le."""
    input_args = {"t": f"{seconds:.6f}", "threads": limits.ffmpeg_threads}
    if start > 0:
        input_args["ss"] = f"{start:.6f}"
    if video_url is not None and skip_nonref:
        input_args["skip_frame:v"] = "noref"
    source = ffmpeg.input(_input_url(path), **INPUT_GUARD, **input_args)
    nodes = []
    if video_url is not None:
        chosen = frame_select.expression(targets, 1.0 / info.video.fps)
        video = _resize(source[str(info.video.index)].filter("select", chosen), params).split()
        nodes.append(ffmpeg.output(video[0], video_url, format="rawvideo", pix_fmt="rgb24",
                                   vsync="passthrough", threads=1, flush_packets=0,
                                   **OUTPUT_GUARD))
        nodes.append(ffmpeg.output(video[1], times_url, format="framecrc", vsync="passthrough",
                                   enc_time_base=-1, threads=1, **OUTPUT_GUARD))
    if audio_url is not None:
        # flush_packets 0: 32 KB writes instead of one per audio packet (fewer wake-ups)
        nodes.append(ffmpeg.output(source[str(info.audio.index)], audio_url, format="s16le",
                                   acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, flush_packets=0,
                                   **OUTPUT_GUARD))
    command = ffmpeg.merge_outputs(*nodes).compile()
    command[1:1] = ["-nostdin", "-hide_banner", "-loglevel", "error"]
    if limits.ffmpeg_threads > 0:
        command[1:1] = ["-filter_complex_threads", str(limits.ffmpeg_threads)]
    return command


def audio_limit_bytes(seconds: float) -> int:
    """Most bytes of decoded audio accepted for a window of `seconds` (s16 mono at SAMPLE_RATE; a
    second of slack for codec padding, and 64 KiB): more fails the row as output_too_large."""
    return int(math.ceil((seconds + 1.0) * SAMPLE_RATE)) * 2 + 65536


def decode_window(path: Path, info: MediaInfo, *, start: float, seconds: float,
                  frame_indices: list[int], want_audio: bool, want_video: bool,
                  params: ClipParams, limits: MediaLimits) -> Decoded:
    """Decode [start, start+seconds): mono 16 kHz audio and, for each of `frame_indices` (sorted,
    unique, counted at the stream's fps from the window start), the decoded frame nearest to
    index / fps with its presentation time (`pipeline.frame_select`). One ffmpeg process; a
    second, video only, when skipping non-reference frames left a target without a frame within
    one period."""
    want_video = want_video and bool(frame_indices)
    skip = want_video and frame_select.may_skip(frame_indices)
    first = _decode_once(path, info, start=start, seconds=seconds, frame_indices=frame_indices,
                         want_audio=want_audio, want_video=want_video, skip_nonref=skip,
                         params=params, limits=limits)
    if not want_video:
        return first
    rss, stderr = first.ffmpeg_max_rss_kb, first.stderr
    frames, times, close = _pick(first, frame_indices, info.video.fps)
    if skip and not close:
        again = _decode_once(path, info, start=start, seconds=seconds,
                             frame_indices=frame_indices, want_audio=False, want_video=True,
                             skip_nonref=False, params=params, limits=limits)
        frames, times, _ = _pick(again, frame_indices, info.video.fps)
        rss, stderr = max(rss, again.ffmpeg_max_rss_kb), stderr + "\n" + again.stderr
    return Decoded(first.audio, frames, rss, stderr, times)


def _pick(decoded: Decoded, frame_indices: list[int], fps: float):
    wanted = frame_select.targets(frame_indices, fps)
    chosen, close = frame_select.pick(wanted, decoded.frame_times, 1.0 / fps)
    return ([decoded.frames[j] for j in chosen], [decoded.frame_times[j] for j in chosen], close)


def _decode_once(path: Path, info: MediaInfo, *, start: float, seconds: float,
                 frame_indices: list[int], want_audio: bool, want_video: bool, skip_nonref: bool,
                 params: ClipParams, limits: MediaLimits) -> Decoded:
    """One bounded ffmpeg run; its video frames are all candidates, with their times."""
    size = params.frame_size
    outputs: dict[str, int] = {}
    targets: list[float] = []
    if want_audio:
        outputs[_AUDIO] = audio_limit_bytes(seconds)
    if want_video:
        targets = frame_select.targets(frame_indices, info.video.fps)
        most = frame_select.most_candidates(targets, 1.0 / info.video.fps, _MAX_SANE_FPS)
        outputs[STDOUT] = most * size * size * 3
        outputs[_TIMES] = most * _TIMES_LINE_BYTES + 4096

    def build(urls: dict[str, str]) -> list[str]:
        return decode_command(path, info, start=start, seconds=seconds, targets=targets,
                              skip_nonref=skip_nonref, params=params, limits=limits,
                              video_url=urls.get(STDOUT), times_url=urls.get(_TIMES),
                              audio_url=urls.get(_AUDIO))

    result = _run_tool("ffmpeg", build, outputs=outputs, timeout_s=limits.decode_timeout_s,
                       limits=limits, failure=errors.DECODE_FAILED,
                       timeout_hint=f"decode of {seconds:g} s window")
    raw = result.outputs.get(STDOUT, b"")
    frame_bytes = size * size * 3
    frames = [raw[i:i + frame_bytes] for i in range(0, len(raw) - frame_bytes + 1, frame_bytes)]
    times = frame_select.parse_framecrc(result.outputs.get(_TIMES, b"").decode("ascii", "replace"))
    if len(times) != len(frames) or times != sorted(times):
        raise errors.ClipError(errors.DECODE_FAILED,
                               f"ffmpeg gave {len(frames)} frames but {len(times)} frame times "
                               f"(or times out of order)")
    return Decoded(audio=result.outputs.get(_AUDIO) if want_audio else None, frames=frames,
                   ffmpeg_max_rss_kb=result.max_rss_kb, stderr=result.stderr_tail,
                   frame_times=times)
