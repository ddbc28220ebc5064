"""Why a row failed: one exception type with a short code and a precise detail.

The per-shard record stores `reason` as "code: detail" (e.g. "missing_file: none of abc.mp4, abc.mkv
under /data/videos"); dataset.json counts failures by code, the part before the colon.
"""
from __future__ import annotations

# Input file problems
MISSING_FILE = "missing_file"
NOT_REGULAR_FILE = "not_regular_file"
EMPTY_FILE = "empty_file"
UNREADABLE_FILE = "unreadable_file"
UNSAFE_PATH = "unsafe_path"
PROBE_FAILED = "probe_failed"
UNSUPPORTED_FORMAT = "unsupported_format"      # not one of media.DEMUXERS (playlists, sequences)
# Stream problems
NO_STREAMS = "no_streams"
NO_AUDIO = "no_audio_stream"
NO_VIDEO = "no_video_stream"
NO_AUDIO_SAMPLES = "no_audio_samples"
NO_VIDEO_FRAMES = "no_video_frames"
ABSURD_DIMENSIONS = "absurd_dimensions"
ABSURD_DURATION = "absurd_duration"
# Window problems
BAD_WINDOW = "bad_window"
WINDOW_OUTSIDE_FILE = "window_outside_file"
WINDOW_TOO_LONG = "window_too_long"
SHORT_WINDOW = "short_window"          # less of the window decoded than --min-coverage asks
# Decoding problems
TRUNCATED_FILE = "truncated_file"      # the container claims more than ffmpeg could decode
DECODE_FAILED = "decode_failed"
TIMEOUT = "timeout"
OUTPUT_TOO_LARGE = "output_too_large"
# Process problems (recorded by the worker pool)
WORKER_DIED = "worker_died"
WORKER_TIMEOUT = "worker_timeout"
INTERNAL_ERROR = "internal_error"


class ClipError(Exception):
    """A row cannot become a sample; `code` is one of the constants above."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


def reason_code(reason: str | None) -> str:
    """The code of a stored reason string ("code: detail" -> "code")."""
    if not reason:
        return ""
    return reason.split(":", 1)[0].strip()
