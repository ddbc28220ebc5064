"""The one ffmpeg wrapper: probe a file (decodes nothing), then decode clip windows, several
clips in ONE process.

`probe` reads a plain MP4's header in-process (`pipeline.mp4_probe`), else runs ffprobe, and
checks what the file claims (streams, dimensions, duration) against the limits before anything is
decoded. `decode_windows` builds one ffmpeg command with ffmpeg-python for a few clips side by
side (one process start-up for all of them) that seeks each to its window (-ss/-t on the input)
and writes each clip's outputs on pipes of its own: the window's audio (16 kHz, `-ac 1` downmix,
s16le), the candidate frames of the stored indices (`pipeline.frame_select`: non-reference frames
left undecoded where the indices are far apart, and, with audio, the video decoded only to just
past the last index), already resized inside the filter graph, as rgb24, and their presentation
times. Every call is bounded in time, output bytes and memory (`pipeline.bounded_process`); a run
of several clips that fails or prints anything is redone clip by clip, so failures (`ClipError`
with a code) and messages are always the clip's own.

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
_VIDEO = "video"
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


@dataclass(frozen=True)
class DecodeRequest:
    """One clip's window to decode: [start, start+seconds) of `path`, its audio (when
    `want_audio`) and the frames nearest to `frame_indices` (sorted, unique, counted at the
    stream's fps from the window start; when `want_video`)."""

    path: Path
    info: MediaInfo
    start: float
    seconds: float
    frame_indices: tuple[int, ...] = ()
    want_audio: bool = True
    want_video: bool = True

    @property
    def decodes_video(self) -> bool:
        return self.want_video and bool(self.frame_indices)

    def first_pass(self) -> "_Pass":
        """Its part of the first ffmpeg run: non-reference frames skipped where the indices are
        far apart, and, when the audio is decoded too, the video only up to just past the last
        target (the audio reads the window to its end, so a cut-off file is still noticed)."""
        if not self.decodes_video:
            return _Pass(self, audio=self.want_audio)
        targets = tuple(frame_select.targets(list(self.frame_indices), self.info.video.fps))
        video_seconds = self.seconds
        if self.want_audio:
            video_seconds = frame_select.video_end(list(targets), 1.0 / self.info.video.fps,
                                                   self.seconds)
        return _Pass(self, self.want_audio, targets, frame_select.may_skip(list(self.frame_indices)),
                     video_seconds)

    def second_pass(self) -> "_Pass":
        """The video again, every frame of the window decoded (when the first pass left a target
        without a frame within one period)."""
        targets = tuple(frame_select.targets(list(self.frame_indices), self.info.video.fps))
        return _Pass(self, audio=False, targets=targets, video_seconds=self.seconds)


@dataclass(frozen=True)
class _Pass:
    """One clip's part of an ffmpeg run: its audio, and the candidates of `targets` decoded up to
    `video_seconds` from the window start (non-reference frames skipped when `skip_nonref`)."""

    request: DecodeRequest
    audio: bool
    targets: tuple[float, ...] = ()
    skip_nonref: bool = False
    video_seconds: float = 0.0

    @property
    def video(self) -> bool:
        return bool(self.targets)

    @property
    def cut(self) -> bool:
        """The video stops before the window's end."""
        return self.video and self.video_seconds < self.request.seconds

    def outputs(self, frame_bytes: int) -> dict[str, int]:
        """Its outputs (names) and their byte limits."""
        outputs: dict[str, int] = {}
        if self.audio:
            outputs[_AUDIO] = audio_limit_bytes(self.request.seconds)
        if self.video:
            period = 1.0 / self.request.info.video.fps
            most = frame_select.most_candidates(list(self.targets), period, _MAX_SANE_FPS)
            outputs[_VIDEO] = most * frame_bytes
            outputs[_TIMES] = most * _TIMES_LINE_BYTES + 4096
        return outputs

    def nodes(self, params: ClipParams, limits: MediaLimits, urls: dict[str, str]) -> list:
        """Its ffmpeg-python output nodes: the input seeked to the window (opened a second time,
        for the audio, when the video is cut), frames near the targets passed by `select`,
        resized in the filter graph, as rgb24 with their presentation times as framecrc lines;
        audio downmixed to mono 16 kHz s16le."""
        request = self.request
        common = {"threads": limits.ffmpeg_threads}
        if request.start > 0:
            common["ss"] = f"{request.start:.6f}"
        url = _input_url(request.path)
        video_args = {"t": f"{self.video_seconds if self.video else request.seconds:.6f}"}
        if self.video and self.skip_nonref:
            video_args["skip_frame:v"] = "noref"
        source = ffmpeg.input(url, **INPUT_GUARD, **common, **video_args)
        nodes = []
        if self.video:
            chosen = frame_select.expression(list(self.targets), 1.0 / request.info.video.fps)
            video = _resize(source[str(request.info.video.index)].filter("select", chosen),
                            params).split()
            nodes.append(ffmpeg.output(video[0], urls[_VIDEO], format="rawvideo", pix_fmt="rgb24",
                                       vsync="passthrough", threads=1, flush_packets=0,
                                       **OUTPUT_GUARD))
            nodes.append(ffmpeg.output(video[1], urls[_TIMES], format="framecrc",
                                       vsync="passthrough", enc_time_base=-1, threads=1,
                                       **OUTPUT_GUARD))
        if self.audio:
            if self.cut:
                source = ffmpeg.input(url, **INPUT_GUARD, **common, t=f"{request.seconds:.6f}")
            # flush_packets 0: 32 KB writes instead of one per audio packet (fewer wake-ups)
            nodes.append(ffmpeg.output(source[str(request.info.audio.index)], urls[_AUDIO],
                                       format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE,
                                       flush_packets=0, **OUTPUT_GUARD))
        return nodes


def decode_command(passes: list[_Pass], params: ClipParams, limits: MediaLimits,
                   urls: list[dict[str, str]]) -> list[str]:
    """The one ffmpeg command of `passes` (one per clip; `urls[k]` maps the outputs of pass k to
    their pipes): every clip's inputs, filter chains and outputs side by side."""
    nodes = []
    for one, its_urls in zip(passes, urls):
        nodes += one.nodes(params, limits, its_urls)
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
    """`decode_windows` of one clip; its failure raised (a ClipError for bad input)."""
    request = DecodeRequest(path, info, start, seconds, tuple(frame_indices), want_audio,
                            want_video)
    result = decode_windows([request], params, limits)[0]
    if isinstance(result, Exception):
        raise result
    return result


def decode_windows(requests: list[DecodeRequest], params: ClipParams,
                   limits: MediaLimits) -> list[Decoded | Exception]:
    """Decode each request: mono 16 kHz audio and, for each frame index, the decoded frame nearest
    to index / fps with its presentation time (`pipeline.frame_select`).

    Several requests share ONE ffmpeg process (one start-up instead of several: ~0.07 CPU s each
    for Debian's ffmpeg), bounded by the same time and memory limits as a single clip, each output
    on its own pipe with its own byte limit. If that run fails in any way or prints anything, each
    clip is decoded again on its own, so a failure or a message is always the clip's own and a
    good clip never fails with a bad one. A clip whose first pass left a target without a frame
    within one period (non-reference frames skipped, or the video cut after the last target) is
    decoded again, video only, every frame of the window."""
    results: list[Decoded | Exception | None] = [None] * len(requests)
    together = _distinct_inputs(requests)
    if len(together) > 1:
        try:
            firsts = _run_passes([requests[i].first_pass() for i in together], params, limits)
        except Exception:               # whatever went wrong, each clip alone will say
            firsts = []
        if firsts and not any(first.stderr for first in firsts):
            for i, first in zip(together, firsts):
                results[i] = first
    for i, request in enumerate(requests):
        try:
            if not (request.want_audio or request.decodes_video):
                results[i] = Decoded(audio=None, frames=[], ffmpeg_max_rss_kb=0)
                continue
            first = results[i] or _run_passes([request.first_pass()], params, limits)[0]
            results[i] = _finish(request, first, params, limits)
        except Exception as exc:        # a ClipError, or a bug: the clip's own result either way
            results[i] = exc
    return results


def _distinct_inputs(requests: list[DecodeRequest]) -> list[int]:
    """Positions of the requests that can share a run: the first of each (file, window) (the same
    input twice would be one ffmpeg-python node) and only ones that decode something."""
    seen, keep = set(), []
    for i, request in enumerate(requests):
        key = (str(request.path), request.start, request.seconds)
        if key not in seen and (request.want_audio or request.decodes_video):
            seen.add(key)
            keep.append(i)
    return keep


def _finish(request: DecodeRequest, first: Decoded, params: ClipParams,
            limits: MediaLimits) -> Decoded:
    """The stored frames of `request` from its first pass (a second pass when it left a target
    without a frame within one period)."""
    if not request.decodes_video:
        return first
    fps = request.info.video.fps
    frames, times, close = _pick(first, list(request.frame_indices), fps)
    one = request.first_pass()
    if (one.cut or one.skip_nonref) and len(frames) < len(request.frame_indices):
        close = False       # the cut or a skipped frame, not the stream's end, may have left them
    if close:
        return Decoded(first.audio, frames, first.ffmpeg_max_rss_kb, first.stderr, times)
    again = _run_passes([request.second_pass()], params, limits)[0]
    frames, times, _ = _pick(again, list(request.frame_indices), fps)
    return Decoded(first.audio, frames, max(first.ffmpeg_max_rss_kb, again.ffmpeg_max_rss_kb),
                   first.stderr + "\n" + again.stderr, times)


def _pick(decoded: Decoded, frame_indices: list[int], fps: float):
    wanted = frame_select.targets(frame_indices, fps)
    chosen, close = frame_select.pick(wanted, decoded.frame_times, 1.0 / fps)
    return ([decoded.frames[j] for j in chosen], [decoded.frame_times[j] for j in chosen], close)


def _output_name(k: int, name: str) -> str:
    """The pipe of output `name` of the k-th clip of a run, as limit messages name it."""
    return name if k == 0 else f"{name} of clip {k + 1}"


def _run_passes(passes: list[_Pass], params: ClipParams, limits: MediaLimits) -> list[Decoded]:
    """One bounded ffmpeg run of `passes`; each clip's video frames are all candidates, with
    their times. The run's peak memory and messages are given to every clip."""
    frame_bytes = params.frame_size * params.frame_size * 3
    outputs = {_output_name(k, name): limit for k, one in enumerate(passes)
               for name, limit in one.outputs(frame_bytes).items()}
    longest = max(one.request.seconds for one in passes)

    def build(urls: dict[str, str]) -> list[str]:
        return decode_command(passes, params, limits,
                              [{name: urls[_output_name(k, name)] for name in
                                one.outputs(frame_bytes)} for k, one in enumerate(passes)])

    result = _run_tool("ffmpeg", build,
                       outputs=outputs, timeout_s=limits.decode_timeout_s, limits=limits,
                       failure=errors.DECODE_FAILED,
                       timeout_hint=f"decode of {len(passes)} window(s) of up to {longest:g} s")
    decoded = []
    for k, one in enumerate(passes):
        raw = result.outputs.get(_output_name(k, _VIDEO), b"")
        frames = [raw[i:i + frame_bytes] for i in range(0, len(raw) - frame_bytes + 1, frame_bytes)]
        times = frame_select.parse_framecrc(
            result.outputs.get(_output_name(k, _TIMES), b"").decode("ascii", "replace"))
        if len(times) != len(frames) or times != sorted(times):
            raise errors.ClipError(errors.DECODE_FAILED,
                                   f"ffmpeg gave {len(frames)} frames but {len(times)} frame "
                                   f"times (or times out of order)")
        audio = result.outputs.get(_output_name(k, _AUDIO)) if one.audio else None
        decoded.append(Decoded(audio=audio, frames=frames, ffmpeg_max_rss_kb=result.max_rss_kb,
                               stderr=result.stderr_tail, frame_times=times))
    return decoded
