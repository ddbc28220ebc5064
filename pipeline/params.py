"""What a clip becomes (`ClipParams`) and the limits protecting a worker from its input
(`MediaLimits`).

`ClipParams` holds every parameter that changes the bytes of a sample, including the limits that
decide which files fail (absurd dimensions or durations, windows too long); its hash
(`params_hash`) is stored in each sample's json and in dataset.json, and a re-run with other
values is refused. `MediaLimits` bounds the time, output and memory of each ffmpeg/ffprobe
process; it never changes the bytes of a good sample.

Per-clip memory (documented bound): Python holds the window's audio (16 kHz s16 mono, at most
`max_window_seconds` x 32 KB) and N frames of frame_size x frame_size x 3 bytes; frames are
selected, scaled and cropped inside ffmpeg's filter graph, so full-resolution frames never reach
Python. The ffmpeg child decodes with `ffmpeg_threads` threads (default 1) under an address-space
limit of `ffmpeg_memory_mb`; its frame buffers scale with the source resolution, capped by
`max_pixels`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from pipeline.frames import CROPS, SAMPLINGS
from shards import format as fmt

PIPELINE_VERSION = "1.2"
SAMPLE_RATE = 16000
SEGMENT_MODES = ("auto", "full", "cut")
CUT_TOLERANCE_S = 1.5
"""`--segments auto` takes a file as already cut when its duration is this close to the window."""
# The CAV-MAE fbank arguments (torchaudio.compliance.kaldi.fbank), fixed by the format.
FBANK_ARGS = dict(htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False,
                  window_type="hanning", num_mel_bins=fmt.NUM_MEL_BINS, dither=0.0, frame_shift=10)


class ParamsError(ValueError):
    """An invalid parameter; the message names it and the accepted range."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ParamsError(message)


@dataclass(frozen=True, kw_only=True)
class ClipParams:
    """Everything that decides the bytes of a sample (besides the input file and the plan)."""

    num_frames: int = fmt.DEFAULT_NUM_FRAMES
    """Frames stored per clip, at CAV-MAE indices int(i * total / N)."""
    frame_size: int = fmt.DEFAULT_FRAME_SIZE
    """Side of the stored square frames."""
    frame_crop: str = "center"
    """"center": short side resized (bicubic) to frame_size, then centre-cropped (CAV-MAE);
    "squash": the whole picture resized to frame_size x frame_size (AVSiam's loaders)."""
    frame_sampling: str = "cavmae"
    """"cavmae": indices int(i * total / N); "avsiam": floor(linspace(s, total - 1, N)) with
    s in 0..4 fixed per clip from its key (see pipeline.frames)."""
    jpeg_quality: int = 90
    """PIL JPEG quality of the stored frames."""
    keep_single_modality: bool = False
    """Keep clips that have only audio or only video (recorded per sample); else they fail."""
    max_window_seconds: float = 60.0
    """Longest clip window decoded; a longer window (e.g. a whole 2-hour file) fails its row."""
    max_pixels: int = 40_000_000
    """Largest width x height of a video stream accepted (8K UHD is 33.2 M)."""
    max_side: int = 16384
    """Largest width or height accepted."""
    max_source_seconds: float = 48 * 3600.0
    """Longest file duration accepted (what the container claims)."""
    segments: str = "auto"
    """How a manifest window is taken from its file: "full" seeks the window inside the file,
    "cut" takes the file as the segment itself (decoded from 0), "auto" decides per file from its
    duration (see pipeline.window)."""
    min_coverage: float = 0.5
    """Least fraction of the asked window that must be decoded; a shorter window fails its row
    as short_window (a longer one is kept, its coverage recorded)."""

    def __post_init__(self) -> None:
        _check(1 <= self.num_frames <= fmt.MAX_FRAMES,
               f"num_frames must be in 1..{fmt.MAX_FRAMES}, got {self.num_frames}")
        _check(fmt.MIN_FRAME_SIZE <= self.frame_size <= fmt.MAX_FRAME_SIZE,
               f"frame_size must be in {fmt.MIN_FRAME_SIZE}..{fmt.MAX_FRAME_SIZE}, got "
               f"{self.frame_size}")
        _check(self.frame_crop in CROPS,
               f"frame_crop must be one of {', '.join(CROPS)}, got {self.frame_crop!r}")
        _check(self.frame_sampling in SAMPLINGS,
               f"frame_sampling must be one of {', '.join(SAMPLINGS)}, got {self.frame_sampling!r}")
        _check(1 <= self.jpeg_quality <= 100,
               f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        _check(0 < self.max_window_seconds <= 24 * 3600,
               f"max_window_seconds must be in (0, 86400], got {self.max_window_seconds}")
        _check(self.max_pixels > 0 and self.max_side > 0, "max_pixels and max_side must be > 0")
        _check(self.max_source_seconds > 0, "max_source_seconds must be > 0")
        _check(self.segments in SEGMENT_MODES,
               f"segments must be one of {', '.join(SEGMENT_MODES)}, got {self.segments!r}")
        _check(0 < self.min_coverage <= 1,
               f"min_coverage must be in (0, 1], got {self.min_coverage}")

    def as_dict(self) -> dict:
        """All output-affecting values, including the fixed audio and fbank settings."""
        out = asdict(self)
        out.update(cut_tolerance_seconds=CUT_TOLERANCE_S, sample_rate=SAMPLE_RATE,
                   audio_channels=1, fbank=dict(FBANK_ARGS),
                   frame_filter="nearest decoded frame to index / fps (non-reference frames "
                                "skipped when indices are >= 4 apart), resized bicubic (ffmpeg)",
                   format_version=fmt.FORMAT_VERSION, pipeline_version=PIPELINE_VERSION)
        return out


def params_hash(values: dict) -> str:
    """A short stable hash of a JSON-able dict of parameters."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class MediaLimits:
    """Bounds on each ffmpeg/ffprobe process; they do not change the bytes of a good sample."""

    probe_timeout_s: float = 30.0
    """Time limit of one ffprobe call."""
    decode_timeout_s: float = 120.0
    """Time limit of the one ffmpeg decode of a clip."""
    probe_max_bytes: int = 4 << 20
    """Largest ffprobe JSON accepted; also the largest MP4 `moov` read in-process (a bigger one
    goes to ffprobe)."""
    ffmpeg_threads: int = 1
    """Decoder/filter threads per ffmpeg (1: one worker per core is the fast layout)."""
    ffmpeg_memory_mb: int = 4096
    """Address-space limit (RLIMIT_AS) of each ffmpeg/ffprobe child; 0 disables it."""

    def __post_init__(self) -> None:
        _check(self.probe_timeout_s > 0 and self.decode_timeout_s > 0, "timeouts must be > 0")
        _check(self.probe_max_bytes >= 4096, "probe_max_bytes must be >= 4096")
        _check(self.ffmpeg_threads >= 0, "ffmpeg_threads must be >= 0 (0 = ffmpeg's choice)")
        _check(self.ffmpeg_memory_mb == 0 or self.ffmpeg_memory_mb >= 256,
               "ffmpeg_memory_mb must be 0 (no limit) or >= 256")
