"""Which frames of a window are stored (`--frame-sampling`) and how they are encoded (JPEG).

`cavmae` (default, what this project follows): CAV-MAE takes frame i of N at index
int(i * total / N) with total = min(frame count, fps * 10 s) counted from the clip start. Here the
count is over the window: total = min(frames in the window, fps * window seconds).
`avsiam`: AVSiam's own loaders take floor(linspace(s, total - 1, N)) with s = randint(0, 5) drawn
per load; here s in 0..4 is drawn once per clip from its key (a re-run stores the same frames).
Indices repeat when total < N; each distinct index is stored from one decoded frame (the nearest
to index / fps, see `pipeline.frame_select`) and `expand_frames` maps them back to N frames.
Frames arrive from ffmpeg already resized (`--frame-crop`: `center` = short side to the frame size,
bicubic, then centre crop, as CAV-MAE; `squash` = the whole picture resized to a square, as
AVSiam's loaders).

A stored JPEG never exceeds `jpeg_budget(size)` (the frame's raw RGB size plus 2 KiB), the bound
the plan uses for `--max-shard-bytes`: a frame whose JPEG would be larger (noise-like content at a
very high quality) is encoded again at the next lower quality in `_FALLBACK_QUALITIES` that fits,
so the result is still a deterministic function of the frame.
"""
from __future__ import annotations

import hashlib
import io
import math

from PIL import Image

_FALLBACK_QUALITIES = (95, 90, 80, 70, 50, 25, 10, 1)
SAMPLINGS = ("cavmae", "avsiam")
CROPS = ("center", "squash")
AVSIAM_MAX_OFFSET = 4
"""AVSiam's first index is randint(0, 5): 0..4."""


def frame_total(fps: float, window_seconds: float, nb_frames: int | None = None) -> int:
    """Frames in the window: fps x seconds (floored), capped by the stream's own frame count."""
    total = int(math.floor(fps * window_seconds + 1e-6))
    if nb_frames:
        total = min(total, nb_frames)
    return max(total, 1)


def frame_indices(total: int, num_frames: int, sampling: str = "cavmae", key: str = "") -> list[int]:
    """The stored indices, i = 0..N-1 (may repeat when total < N): CAV-MAE's int(i * total / N),
    or AVSiam's floor(linspace(s, total - 1, N)) with the clip's offset s (`avsiam_offset`)."""
    if sampling == "cavmae":
        return [i * total // num_frames for i in range(num_frames)]
    if sampling != "avsiam":
        raise ValueError(f"frame sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    last = total - 1
    first = min(avsiam_offset(key), last)
    if num_frames == 1:
        return [first]
    return [first + (i * (last - first)) // (num_frames - 1) for i in range(num_frames)]


def avsiam_offset(key: str) -> int:
    """The clip's first AVSiam index in 0..4, a fixed function of its sample key."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") % (AVSIAM_MAX_OFFSET + 1)


def expand_frames(indices: list[int], decoded: list) -> list:
    """Map each of the N wanted indices to a decoded frame.

    `decoded[j]` is the j-th distinct index in sorted order. When ffmpeg returned fewer frames than
    asked (the stream ended early), later indices take the last decoded frame.
    """
    distinct = sorted(set(indices))
    position = {index: min(j, len(decoded) - 1) for j, index in enumerate(distinct)}
    return [decoded[position[i]] for i in indices]


def jpeg_budget(size: int) -> int:
    """Most bytes of one stored JPEG frame of size x size."""
    return size * size * 3 + 2048


def encode_jpeg(rgb: bytes, size: int, quality: int) -> bytes:
    """rgb24 bytes of a size x size frame -> JPEG bytes (PIL, deterministic), at most
    `jpeg_budget(size)` bytes."""
    image = Image.frombytes("RGB", (size, size), rgb)
    budget = jpeg_budget(size)
    for q in (quality, *(q for q in _FALLBACK_QUALITIES if q < quality)):
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=q)
        if out.tell() <= budget:
            return out.getvalue()
    raise ValueError(f"a {size}x{size} frame does not fit {budget} bytes as JPEG at any quality")
