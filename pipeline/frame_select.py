"""Which decoded frames become the stored ones, and how little of the stream is decoded for them.

The stored frame for a wanted index i (counted at the stream's fps from the window start) is the
decoded frame whose presentation time is nearest to i / fps. ffmpeg's `select` filter passes on
only the candidates: a frame within one frame period of a target that is nearer to it than the
frame passed before, and the first frame at or after a target that has none within a period (so
a target always has one unless the stream ended before it). The survivors (at most two per
target in a stream of one frame per period) are scaled and written out with their presentation times (a `framecrc` side output in the input
stream's time base), and `pick` chooses per target.

When the wanted indices lie at least `SKIP_SPACING` frames apart (10 frames of a 10-s window are
~25 apart), the decoder is told to skip non-reference frames (`-skip_frame:v noref`): a frame no
other frame is predicted from (an H.264/HEVC B-frame outside a B-pyramid, a non-reference VP9/AV1
frame where the decoder supports it) is never decoded, so ~half of an x264 stream's frames are
skipped. The stored frame is then the nearest reference frame, which in a B-pyramid (x264's
default) is within one frame period of the target. If any target's nearest decoded frame is
farther than that (B-frames without a pyramid, a gap of a variable-rate stream), the frames are
decoded again without skipping, so a stored frame is the nearest frame the stream has.

Frames after the last target's candidates are not needed: when the audio is decoded too (and so
reads the window to its end), the video is decoded only up to `video_end`, ~2 periods past the
last target (with CAV-MAE's indices, int(9 * total / 10) is the last: ~10% of the window is not
decoded). A target left without a frame by that cut or by skipping is decoded again in full.
"""
from __future__ import annotations

import math

SKIP_SPACING = 4
"""Least distance, in frames, between wanted indices for skipping non-reference frames (closer
targets could collapse onto one reference frame)."""
REACH = 1.01
"""Candidates lie within REACH frame periods of a target (1 % slack for timestamp rounding)."""


def may_skip(indices: list[int]) -> bool:
    """True when the sorted distinct `indices` are far enough apart to skip non-reference frames."""
    return len(indices) > 0 and all(b - a >= SKIP_SPACING for a, b in zip(indices, indices[1:]))


def targets(indices: list[int], fps: float) -> list[float]:
    """Presentation times (s from the window start) of the wanted indices at `fps`."""
    return [i / fps for i in indices]


def video_end(times: list[float], period: float, seconds: float) -> float:
    """How far (s from the window start) the video must be decoded for the targets `times`: one
    reach past the last target's candidates (a frame there only matters when the stream has a gap
    around the target, which the caller then decodes again in full), at most the window."""
    return min(seconds, times[-1] + 2 * REACH * period) if times else seconds


def _intervals(times: list[float], reach: float) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for t in times:
        low, high = max(0.0, t - reach), t + reach
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def expression(times: list[float], period: float) -> str:
    """The `select` expression passing the candidates of every target in `times`: a frame within
    reach of a target that is nearer to it than the frame passed last, and the first frame at or
    after a target when nothing within reach of it was passed. The frame `pick` chooses is always
    among them (at most two per target where the stream has one frame per period)."""
    reach = REACH * period
    terms = []
    for t in times:
        nearer = f"not(lte(abs(prev_selected_t-{t:.6f}),abs(t-{t:.6f})))"
        terms.append(f"between(t,{max(0.0, t - reach):.6f},{t + reach:.6f})*{nearer}")
        terms.append(f"gte(t,{t:.6f})*not(gte(prev_t,{t:.6f}))"
                     f"*not(lte(abs(prev_selected_t-{t:.6f}),{reach:.6f}))")
    return "+".join(terms)


def most_candidates(times: list[float], period: float, max_fps: float) -> int:
    """An upper bound on the frames `expression` passes from a stream of at most `max_fps`."""
    reach = REACH * period
    spans = sum(math.floor((high - low) * max_fps) + 1 for low, high in _intervals(times, reach))
    return spans + len(times)


def pick(times: list[float], decoded: list[float], period: float) -> tuple[list[int], bool]:
    """For each target in `times`, the position in `decoded` (presentation times, ascending) of
    the nearest decoded frame (the earlier on a tie); targets after the last decoded frame and
    farther than a period from it get none, so the list may be shorter than `times`.

    The flag is False when a target has a frame after it but none within one period: the
    stream was decoded too sparsely there."""
    chosen: list[int] = []
    close = True
    limit = REACH * period
    for t in times:
        if not decoded:
            break
        best = min(range(len(decoded)), key=lambda j: (abs(decoded[j] - t), decoded[j]))
        if abs(decoded[best] - t) > limit:
            if decoded[-1] < t:                 # the stream ended before this target
                break
            close = False
        chosen.append(best)
    return chosen, close


def parse_framecrc(text: str) -> list[float]:
    """Presentation times (s) of the frames listed by ffmpeg's framecrc muxer."""
    num, den = 1, 1
    times = []
    for line in text.splitlines():
        if line.startswith("#tb 0:"):
            num, den = (int(x) for x in line.split(":", 1)[1].strip().split("/"))
        elif line and not line.startswith("#"):
            times.append(int(line.split(",")[2]) * num / den)
    return times
