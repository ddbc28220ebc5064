"""Which part of a file is a row's clip, and whether decoding delivered it (`--segments`,
`--min-coverage`).

Users hold AudioSet and VGGSound in two layouts: full-length videos, where the manifest window
[start, end] lies inside the file, and files already cut to their segment (`{ytid}.mp4` from yt-dlp
--download-sections and most AudioSet download scripts, VGGSound's `{ytid}_{start:06d}.mp4`),
where the file itself is the window. A row's window is taken by
- seek (`--segments full`): decode [start, end] of the file;
- cut (`--segments cut`): decode the file from 0 for end - start seconds (the whole file when the
  row has no end);
- `--segments auto` (default), per file from its duration D and the window length L: cut when
  |D - L| <= 1.5 s, or when D < end and D <= L + 1.5 s (a cut file shorter than its window); seek
  otherwise. (A full-length file within 1.5 s of the window length, e.g. an 11-s video with a
  1-11 s row, is taken as cut: such users pass `--segments full`.)

Before decoding, the streams' claimed extent inside the window must cover `--min-coverage` of the
window (else `short_window`). After decoding, a window that gave much less than the container
claims (ffmpeg reports "partial file", or the audio stops early) is a truncated download
(`truncated_file`); otherwise coverage = seconds decoded / seconds asked (the shorter of the kept
modalities), recorded per sample and checked against `--min-coverage` again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import errors, media
from pipeline.params import CUT_TOLERANCE_S, SAMPLE_RATE, ClipParams

SEEK, CUT = "seek", "cut"
# ffmpeg's mov/mp4 demuxer, when a packet the index lists lies past the end of the file.
_PARTIAL_FILE = "partial file"
# ffprobe, when an MP4 without its index (written last unless +faststart) was cut off.
_MISSING_INDEX = "moov atom not found"
_HINT_CUT = "if the files are already cut to their segments, pass --segments cut (or auto)"


class WindowError(errors.ClipError):
    """A ClipError that also knows how the window was taken and how much of it was found, both
    recorded in the row's record."""

    def __init__(self, code: str, detail: str, *, source: str | None = None,
                 coverage: float | None = None):
        super().__init__(code, detail)
        self.source = source
        self.coverage = coverage


@dataclass(frozen=True)
class Window:
    """How a row's window is decoded from its file."""

    source: str                  # SEEK or CUT
    row_start: float             # the manifest window
    row_end: float | None
    start: float                 # where decoding starts in the file
    seconds: float               # how long it runs (ffmpeg -t)
    asked: float | None          # seconds the row asks for (None: unknown, whole file of no length)
    audio_claimed: float | None  # seconds of [start, start + seconds] the audio stream claims
    video_claimed: float | None  # same for the video stream (None: no such stream, or unknown)

    def describe(self) -> str:
        end = "end" if self.row_end is None else f"{self.row_end:g}"
        where = "seeked in the file" if self.source == SEEK else \
            "the file from 0 as the segment"
        return f"window [{self.row_start:g}, {end}] s ({where})"


def layout(mode: str, start: float, end: float | None, duration: float | None) -> str:
    """SEEK or CUT for `--segments mode` and a file of `duration` seconds (None: unknown)."""
    if mode == "full":
        return SEEK
    if mode == "cut":
        return CUT
    if end is None:                    # no window length to compare with: whole file or seek
        return CUT if start == 0 else SEEK
    if duration is None:
        return SEEK
    length = end - start
    if abs(duration - length) <= CUT_TOLERANCE_S or \
            (duration < end and duration <= length + CUT_TOLERANCE_S):
        return CUT
    return SEEK


def _claimed(stream, duration: float | None, start: float, seconds: float) -> float | None:
    """Seconds of [start, start + seconds] a stream claims to hold (its own duration, else the
    file's)."""
    if stream is None:
        return None
    extent = stream.duration if stream.duration is not None else duration
    if extent is None:
        return None
    return max(0.0, min(start + seconds, extent) - start)


def choose(task_start: float | None, task_end: float | None, info: media.MediaInfo,
           params: ClipParams, shown: str) -> Window:
    """The window of a row in its file, checked against the file's claims and the limits."""
    start = task_start or 0.0
    if start < 0 or (task_end is not None and task_end <= start):
        raise errors.ClipError(errors.BAD_WINDOW, f"window [{start:g}, {task_end}] is empty")
    duration = info.duration
    source = layout(params.segments, start, task_end, duration)
    offset = start if source == SEEK else 0.0
    if source == SEEK and duration is not None and start >= duration:
        raise WindowError(errors.WINDOW_OUTSIDE_FILE,
                          f"window starts at {start:g} s but the file lasts {duration:.3f} s "
                          f"({shown}; {_HINT_CUT})", source=SEEK, coverage=0.0)
    if task_end is not None:
        asked: float | None = task_end - start
    elif duration is not None:
        asked = duration - offset
    else:
        asked = None
    seconds = params.max_window_seconds if asked is None else asked
    if seconds > params.max_window_seconds + 1e-6:
        raise errors.ClipError(errors.WINDOW_TOO_LONG,
                               f"window of {seconds:.1f} s exceeds max_window_seconds "
                               f"{params.max_window_seconds:g} (use --clip-seconds to cut "
                               f"whole-file clips, or raise --max-window-seconds)")
    window = Window(source, start, task_end, offset, seconds, asked,
                    _claimed(info.audio, duration, offset, seconds),
                    _claimed(info.video, duration, offset, seconds))
    claims = [c for c in (window.audio_claimed, window.video_claimed) if c is not None]
    if asked and claims and min(claims) < params.min_coverage * asked:
        found = min(claims)
        hint = _HINT_CUT if source == SEEK and params.segments == "full" else \
            "lower --min-coverage to keep windows this short"
        raise WindowError(errors.SHORT_WINDOW,
                          f"{shown} holds {found:.2f} s of the {asked:g}-s {window.describe()}, "
                          f"the file lasts {_seconds(duration)}: coverage {found / asked:.2f} < "
                          f"--min-coverage {params.min_coverage:g} ({hint})",
                          source=source, coverage=_round(found / asked))
    return window


def _seconds(value: float | None) -> str:
    return "an unknown time" if value is None else f"{value:.3f} s"


def _round(value: float) -> float:
    return round(float(value), 6)


def _fell_short(claimed: float | None, got: float | None) -> bool:
    """Decoded much less than claimed: more than 0.5 s or 5% (whichever is more) missing."""
    if claimed is None or got is None:
        return False
    return got < claimed - max(0.5, 0.05 * claimed)


def decoded_extents(window: Window, decoded: media.Decoded, frames_asked: list[int], fps: float,
                    shown: str) -> tuple[float | None, float | None]:
    """(audio seconds, video seconds) decoded from the window; a file that gave much less than
    its container claims raises truncated_file.

    Audio seconds are exact. Video seconds are what the stream claims when every asked frame
    came, else the time of the first frame that did not come (the video ended before it)."""
    audio_s = None if decoded.audio is None else len(decoded.audio) // 2 / SAMPLE_RATE
    video_s = None
    if frames_asked:
        got = len(decoded.frames)
        video_s = (window.video_claimed if window.video_claimed is not None else window.seconds) \
            if got >= len(frames_asked) else frames_asked[got] / fps
    partial = _PARTIAL_FILE in decoded.stderr
    if partial or _fell_short(window.audio_claimed, audio_s) or \
            (audio_s is None and _fell_short(window.video_claimed, video_s)):
        kind, claimed, got = ("audio", window.audio_claimed, audio_s) if audio_s is not None \
            else ("video", window.video_claimed, video_s)
        said = " and ffmpeg reports a partial file" if partial else ""
        coverage = None if not window.asked or got is None else _round(min(1.0, got / window.asked))
        raise WindowError(errors.TRUNCATED_FILE,
                          f"{shown} claims {_seconds(claimed)} of {kind} in the "
                          f"{window.describe()} but ffmpeg decoded {_seconds(got)}{said}: the "
                          f"file is cut off (an incomplete download?); download it again",
                          source=window.source, coverage=coverage)
    return audio_s, video_s


def coverage(window: Window, audio_s: float | None, video_s: float | None, params: ClipParams,
             shown: str) -> tuple[float, float]:
    """(seconds decoded, coverage) of the kept modalities' shorter extent; below --min-coverage
    the row fails as short_window."""
    extents = [s for s in (audio_s, video_s) if s is not None]
    decoded_s = min(extents) if extents else 0.0
    if not window.asked:
        return _round(decoded_s), 1.0
    value = min(1.0, decoded_s / window.asked)
    if value < params.min_coverage:
        raise WindowError(errors.SHORT_WINDOW,
                          f"{shown} gave {decoded_s:.2f} s of the {window.asked:g}-s "
                          f"{window.describe()}: coverage {value:.2f} < --min-coverage "
                          f"{params.min_coverage:g} (lower --min-coverage to keep windows this "
                          f"short)", source=window.source, coverage=_round(value))
    return _round(decoded_s), _round(value)


def probe_error(error: errors.ClipError, path: Path, shown: str) -> errors.ClipError:
    """A probe failure as the row's reason: an MP4 (it starts with an ftyp box) cut off before
    its index is truncated_file; anything else (e.g. random bytes named .mp4) stays as it is."""
    if error.code == errors.PROBE_FAILED and _MISSING_INDEX in error.detail:
        try:
            with open(path, "rb") as handle:
                head = handle.read(12)
        except OSError:
            return error
        if head[4:8] == b"ftyp":
            return errors.ClipError(errors.TRUNCATED_FILE,
                                    f"{shown}: {error.detail} (an MP4 whose index was never "
                                    f"written: the download stopped early); download it again")
    return error
