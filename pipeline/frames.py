"""Which frames of a window are stored (CAV-MAE indices) and how they are encoded (JPEG).

CAV-MAE takes frame i of N at index int(i * total / N) with total = min(frame count, fps * 10 s)
counted from the clip start. Here the count is over the window: total = min(frames in the window,
fps * window seconds). Indices repeat when total < N; ffmpeg decodes each distinct index once and
`expand_frames` maps them back to N frames. Frames arrive from ffmpeg already scaled and cropped.

A stored JPEG never exceeds `jpeg_budget(size)` (the frame's raw RGB size plus 2 KiB), the bound
the plan uses for `--max-shard-bytes`: a frame whose JPEG would be larger (noise-like content at a
very high quality) is encoded again at the next lower quality in `_FALLBACK_QUALITIES` that fits,
so the result is still a deterministic function of the frame.
"""
from __future__ import annotations

import io
import math

from PIL import Image

_FALLBACK_QUALITIES = (95, 90, 80, 70, 50, 25, 10, 1)


def frame_total(fps: float, window_seconds: float, nb_frames: int | None = None) -> int:
    """Frames in the window: fps x seconds (floored), capped by the stream's own frame count."""
    total = int(math.floor(fps * window_seconds + 1e-6))
    if nb_frames:
        total = min(total, nb_frames)
    return max(total, 1)


def frame_indices(total: int, num_frames: int) -> list[int]:
    """The CAV-MAE indices int(i * total / N), i = 0..N-1 (may repeat when total < N)."""
    return [i * total // num_frames for i in range(num_frames)]


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
