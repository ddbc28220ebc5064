"""One plan row -> one sample: find the file, probe it, decode its window once, build the members.

This runs inside a worker process. It never raises for bad input: every problem becomes a failed
`ClipResult` with a precise reason. The result carries the sample's tar members in format order
(fbank, frames, json) and its fbank moments, so the parent only writes bytes.
"""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline import errors, fbank as fbank_mod, frames as frames_mod, media, window as window_mod
from pipeline.params import PIPELINE_VERSION, SAMPLE_RATE, ClipParams, MediaLimits
from pipeline.stats import Moments, sample_moments
from shards import format as fmt

# Test-only fault hook: a worker whose row has this source id exits at once (os._exit), as a crash
# in native code would, leaving a child process behind as a running ffmpeg would be. Used to prove
# that dead workers are replaced, their rows recorded and their children killed.
FAULT_EXIT_ENV = "AVSIAM_TEST_EXIT_ON_SOURCE_ID"
FAULT_CHILD = ("sleep", "86.86")
FAULT_HANG_ENV = "AVSIAM_TEST_HANG_ON_SOURCE_ID"
"""Test-only, like FAULT_EXIT_ENV: the worker given this source id hangs (past any time limit)."""


@dataclass(frozen=True)
class ClipTask:
    """What a worker needs to make one sample (a plan row)."""

    row: int
    key: str
    source_id: str
    candidates: tuple[str, ...]      # media paths to try, relative to videos_dir (or inside it)
    start: float | None
    end: float | None
    labels: tuple[str, ...]
    label_indices: tuple[int, ...]


@dataclass(frozen=True)
class ClipContext:
    """Per-job settings shared by all tasks of a worker."""

    videos_dir: str
    params: ClipParams
    limits: MediaLimits
    params_hash: str


@dataclass(frozen=True)
class ClipResult:
    row: int
    key: str
    source_id: str
    path: str | None
    status: str
    reason: str | None = None
    has_audio: bool = False
    has_video: bool = False
    members: tuple[tuple[str, bytes], ...] = ()
    moments: Moments = field(default_factory=Moments)
    ffmpeg_max_rss_kb: int = 0
    coverage: float | None = None       # decoded / asked seconds of the window (when known)
    window_source: str | None = None    # "seek" | "cut" (when the window was chosen)


def failed(task: ClipTask, reason: str, path: str | None = None, *,
           coverage: float | None = None, window_source: str | None = None) -> ClipResult:
    return ClipResult(task.row, task.key, task.source_id, path, fmt.STATUS_FAILED, reason,
                      coverage=coverage, window_source=window_source)


def process_clip(task: ClipTask, ctx: ClipContext) -> ClipResult:
    """Make the sample of `task`; bad input gives a failed result, never an exception."""
    return next(process_clips([task], ctx))


def process_clips(tasks: list[ClipTask], ctx: ClipContext) -> Iterator[ClipResult]:
    """The samples of `tasks`, in order, their windows decoded by one ffmpeg run
    (`media.decode_windows`, which falls back to one run per clip when that run fails); bad input
    gives a failed result for its row only, never an exception."""
    prepared: list[_Prepared | ClipResult] = []
    for task in tasks:
        if os.environ.get(FAULT_EXIT_ENV) == task.source_id:
            subprocess.Popen(FAULT_CHILD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os._exit(86)
        if os.environ.get(FAULT_HANG_ENV) == task.source_id:
            time.sleep(3600)
        shown = None
        try:
            resolved = resolve_path(task, ctx.videos_dir)
            shown = _display_path(resolved, ctx.videos_dir)
            prepared.append(_prepare(task, ctx, resolved, shown))
        except Exception as exc:
            prepared.append(_failure(task, exc, shown))
    requests = [one.request for one in prepared if isinstance(one, _Prepared)]
    decoded = iter(media.decode_windows(requests, ctx.params, ctx.limits))
    for task, one in zip(tasks, prepared):
        if isinstance(one, ClipResult):
            yield one
            continue
        try:
            result = next(decoded)
            if isinstance(result, Exception):
                raise result
            yield _make_sample(task, ctx, one, result)
        except Exception as exc:
            yield _failure(task, exc, one.shown)


def _failure(task: ClipTask, exc: Exception, path: str | None) -> ClipResult:
    """The failed result of a row whose sample raised `exc`."""
    if isinstance(exc, window_mod.WindowError):
        return failed(task, exc.reason, path, coverage=exc.coverage, window_source=exc.source)
    if isinstance(exc, errors.ClipError):
        return failed(task, exc.reason, path)
    # a bug or an unforeseen input: record it, keep the job alive
    return failed(task, f"{errors.INTERNAL_ERROR}: {type(exc).__name__}: {exc}"[:500], path)


def resolve_path(task: ClipTask, videos_dir: str) -> Path:
    """The first candidate that is a readable, non-empty regular file under `videos_dir` (checked by
    stat, and opened only once it is known to be a regular file).

    A candidate that would leave `videos_dir` (`..`, or an absolute path elsewhere; pass
    `--videos /` to allow any absolute path) or holds a NUL byte is refused. If no candidate is
    usable, the first that exists in a bad form (a FIFO, a folder, 0 bytes, no read permission)
    gives the reason; if none exists at all, the row's file is missing."""
    problem = None
    root = os.path.normpath(os.path.abspath(videos_dir))
    for candidate in task.candidates:
        if "\0" in candidate:
            raise errors.ClipError(errors.UNSAFE_PATH, f"{candidate!r} holds a NUL byte, which no "
                                                       f"file name can")
        path = Path(os.path.normpath(os.path.join(root, candidate)))
        if os.path.commonpath([root, str(path)]) != root:
            raise errors.ClipError(errors.UNSAFE_PATH, f"{candidate!r} would leave {videos_dir}")
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problem = problem or errors.ClipError(errors.UNREADABLE_FILE, f"{path}: {exc.strerror}")
            continue
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
                "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            problem = problem or errors.ClipError(errors.NOT_REGULAR_FILE, f"{path} is {kind}")
        elif info.st_size == 0:
            problem = problem or errors.ClipError(errors.EMPTY_FILE, f"{path} has 0 bytes")
        else:
            try:
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            except OSError as exc:
                problem = problem or errors.ClipError(errors.UNREADABLE_FILE,
                                                      f"{path}: {exc.strerror}")
                continue
            return path
    if problem is not None:
        raise problem
    shown = ", ".join(task.candidates[:4]) + (", ..." if len(task.candidates) > 4 else "")
    raise errors.ClipError(errors.MISSING_FILE, f"none of {shown} under {videos_dir}")


def _display_path(path: Path, videos_dir: str) -> str:
    """The path as recorded: relative to `videos_dir` (`resolve_path` only returns paths in it)."""
    try:
        return str(path.relative_to(os.path.normpath(os.path.abspath(videos_dir))))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class _Prepared:
    """A row whose file is found and probed and whose window is chosen: what to decode."""

    shown: str
    info: media.MediaInfo
    window: window_mod.Window
    indices: list[int]
    request: media.DecodeRequest


def _prepare(task: ClipTask, ctx: ClipContext, path: Path, shown: str) -> _Prepared:
    params = ctx.params
    try:
        info = media.probe(path, params, ctx.limits)
    except errors.ClipError as exc:
        raise window_mod.probe_error(exc, path, shown) from None
    if info.audio is None and info.video is None:
        raise errors.ClipError(errors.NO_STREAMS, f"{shown} has no audio or video stream")
    if not params.keep_single_modality:
        if info.audio is None:
            raise errors.ClipError(errors.NO_AUDIO, f"{shown} has no audio stream")
        if info.video is None:
            raise errors.ClipError(errors.NO_VIDEO, f"{shown} has no video stream")
    window = window_mod.choose(task.start, task.end, info, params, shown)
    start, seconds = window.start, window.seconds
    available = seconds if info.duration is None else min(seconds, info.duration - start)
    indices: list[int] = []
    if info.video is not None:
        whole = start == 0 and (task.end is None or
                                (info.duration is not None and seconds >= info.duration))
        total = frames_mod.frame_total(info.video.fps, available,
                                       info.video.nb_frames if whole else None)
        indices = frames_mod.frame_indices(total, params.num_frames, params.frame_sampling,
                                           task.key)
    request = media.DecodeRequest(path, info, start, seconds, tuple(sorted(set(indices))),
                                  want_audio=info.audio is not None,
                                  want_video=info.video is not None)
    return _Prepared(shown, info, window, indices, request)


def _make_sample(task: ClipTask, ctx: ClipContext, prepared: _Prepared,
                 decoded: media.Decoded) -> ClipResult:
    params, info, window, shown = ctx.params, prepared.info, prepared.window, prepared.shown
    indices, asked = prepared.indices, list(prepared.request.frame_indices)
    start, seconds = window.start, window.seconds
    audio_s, video_s = window_mod.decoded_extents(window, decoded, asked,
                                                  info.video.fps if info.video else 0.0, shown)
    has_audio = decoded.audio is not None and len(decoded.audio) // 2 >= fbank_mod.MIN_SAMPLES
    has_video = bool(decoded.frames)
    _check_modalities(info, decoded, has_audio, has_video, params, start, seconds)
    decoded_s, coverage = window_mod.coverage(window, audio_s if has_audio else None,
                                              video_s if has_video else None, params, shown)

    members: list[tuple[str, bytes]] = []
    moments = Moments()
    fbank_frames = 0
    if has_audio:
        bank = fbank_mod.compute_fbank(decoded.audio)
        fbank_frames = int(bank.shape[0])
        moments = sample_moments(bank)
        members.append((fmt.FBANK_SUFFIX, _npy_bytes(bank)))
    frame_times: list[float] = []
    if has_video:
        jpegs = [frames_mod.encode_jpeg(rgb, params.frame_size, params.jpeg_quality)
                 for rgb in decoded.frames]
        for i, jpeg in enumerate(frames_mod.expand_frames(indices, jpegs)):
            members.append((fmt.frame_suffix(i), jpeg))
        frame_times = [_round(t) for t in frames_mod.expand_frames(indices, decoded.frame_times)]
    meta = _metadata(task, ctx, info, shown, fbank_frames, has_audio, has_video,
                     window.source, decoded_s, coverage, frame_times)
    members.append((fmt.META_SUFFIX, meta))
    return ClipResult(task.row, task.key, task.source_id, shown, fmt.STATUS_OK, None, has_audio,
                      has_video, tuple(members), moments, decoded.ffmpeg_max_rss_kb, coverage,
                      window.source)


def _check_modalities(info, decoded, has_audio, has_video, params, start, seconds) -> None:
    window = f"window [{start:g}, {start + seconds:g}] s"
    if not has_audio and not has_video:
        raise errors.ClipError(errors.DECODE_FAILED, f"no audio or video decoded in the {window}")
    if params.keep_single_modality:
        return
    if not has_audio:
        samples = len(decoded.audio or b"") // 2
        raise errors.ClipError(errors.NO_AUDIO_SAMPLES,
                               f"audio stream gave {samples} samples in the {window} "
                               f"(need {fbank_mod.MIN_SAMPLES})")
    if not has_video:
        raise errors.ClipError(errors.NO_VIDEO_FRAMES,
                               f"video stream gave no frame in the {window}")


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _metadata(task: ClipTask, ctx: ClipContext, info: media.MediaInfo, shown: str,
              fbank_frames: int, has_audio: bool, has_video: bool, window_source: str,
              decoded_seconds: float, coverage: float, frame_times: list[float]) -> bytes:
    video, audio = info.video, info.audio
    values = {
        "key": task.key, "source_id": task.source_id, "path": shown,
        "start": _round(task.start or 0.0), "end": _round(task.end),
        "window_source": window_source, "decoded_seconds": decoded_seconds, "coverage": coverage,
        "labels": list(task.labels), "label_indices": list(task.label_indices),
        "fps": _round(video.fps) if video else None, "duration": _round(info.duration),
        "width": video.width if video else None, "height": video.height if video else None,
        "audio_rate": audio.rate if audio else None,
        "audio_channels": audio.channels if audio else None,
        "fbank_frames": fbank_frames,
        "num_frames": ctx.params.num_frames if has_video else 0,
        "frame_times": frame_times,
        "has_audio": has_audio, "has_video": has_video,
        "format_version": fmt.FORMAT_VERSION, "pipeline_version": PIPELINE_VERSION,
        "params_hash": ctx.params_hash,
    }
    assert tuple(values) == fmt.META_FIELDS, "metadata fields drifted from shards.format"
    return json.dumps(values, separators=(",", ":"), ensure_ascii=True).encode()


def warm_up() -> None:
    """Load torch/torchaudio once per worker and pin it to one thread."""
    import torch
    from torchaudio.compliance import kaldi  # noqa: F401

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    fbank_mod.compute_fbank(np.zeros(SAMPLE_RATE // 10, dtype="<i2").tobytes())
