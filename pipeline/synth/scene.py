"""One clip's scene: its class recipes plus the within-class variation drawn from the clip's RNG.

Video (video.py) and audio (audio.py) both render from the same scene, which ties them together beyond
the class: sound beats flash the object, and the sound pans with the object's horizontal position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.classes import ClassRecipe

ATTACK_S = 0.005  # pulse attack
DECAY_S = 0.08  # pulse decay time constant


@dataclass(frozen=True)
class SoundParams:
    """Within-class variation of one object's sound."""

    timbre: str
    pattern: str
    base_hz: float  # class register times the clip's pitch offset
    pattern_period_s: float
    pulse_hz: float
    pulse_phase: float
    gain: float  # linear peak gain of this object's sound


@dataclass(frozen=True)
class ObjectTrack:
    """One object on screen, per video frame, and the sound it makes."""

    recipe: ClassRecipe
    rgb: np.ndarray  # float32 [3], jittered class colour
    x: np.ndarray  # float [F] sprite centre, pixels
    y: np.ndarray  # float [F]
    size: np.ndarray  # int [F] sprite side, pixels
    brightness: np.ndarray  # float [F] in (0, 1]; follows the sound's beats
    sound: SoundParams


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one clip's frames and samples."""

    width: int
    height: int
    fps: int
    num_frames: int
    seconds: float
    background: np.ndarray  # uint8 [H, W, 3]
    objects: tuple[ObjectTrack, ...]
    noise_level: float  # linear RMS of the background hiss


def pulse_envelope(t: np.ndarray, pulse_hz: float, phase: float) -> np.ndarray:
    """1 for continuous sounds; otherwise a fast attack and exponential decay at every beat."""
    if not pulse_hz:
        return np.ones_like(t, dtype=np.float32)
    since = ((t * pulse_hz + phase) % 1.0) / pulse_hz  # seconds since the last beat
    return (np.minimum(1.0, since / ATTACK_S) * np.exp(-since / DECAY_S)).astype(np.float32)


def _triangle(u: np.ndarray) -> np.ndarray:
    """Triangle wave 0 -> 1 -> 0 over one unit of u."""
    return 1.0 - np.abs(2.0 * (u % 1.0) - 1.0)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A muted random colour, a gentle gradient and static grain."""
    base = rng.uniform(25, 170) + rng.uniform(-25, 25, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height)[..., None]
    tint = rng.uniform(-30, 30, size=3)
    grain = rng.normal(0.0, rng.uniform(0.0, 12.0), size=(height, width, 1))
    image = base + ramp * tint + grain
    return np.clip(image, 0, 255).astype(np.uint8)


def _path(rng: np.random.Generator, motion: str, t: np.ndarray, side: float, width: int,
          height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, y and scale factor over time for one motion kind."""
    growth = 1.3 if motion == "growing and shrinking" else 1.0
    half = side * growth / 2
    x_lo, x_hi, y_lo, y_hi = half, width - half, half, height - half
    period = rng.uniform(1.2, 3.5)
    phase = rng.uniform(0.0, 1.0)
    cx, cy = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
    ones = np.ones_like(t)
    scale = ones
    if motion == "bouncing sideways":
        span = rng.uniform(0.5, 1.0) * (x_hi - x_lo)
        start = rng.uniform(x_lo, x_hi - span)
        x, y = start + span * _triangle(t / period + phase), cy * ones
    elif motion == "bouncing up and down":
        span = rng.uniform(0.5, 1.0) * (y_hi - y_lo)
        start = rng.uniform(y_lo, y_hi - span)
        x, y = cx * ones, start + span * _triangle(t / period + phase)
    elif motion == "circling":
        radius = rng.uniform(0.4, 1.0) * min(x_hi - x_lo, y_hi - y_lo) / 2
        cx = rng.uniform(x_lo + radius, x_hi - radius)
        cy = rng.uniform(y_lo + radius, y_hi - radius)
        angle = 2 * np.pi * (rng.choice([-1.0, 1.0]) * t / period + phase)
        x, y = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
    elif motion == "growing and shrinking":
        x, y = cx * ones, cy * ones
        scale = 0.7 + 0.6 * _triangle(t / period + phase)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return x, y, scale


def _object(rng: np.random.Generator, recipe: ClassRecipe, frame_t: np.ndarray, width: int,
            height: int, shrink: float) -> ObjectTrack:
    side = rng.uniform(0.26, 0.4) * min(width, height) * shrink
    x, y, scale = _path(rng, recipe.motion, frame_t, side, width, height)
    rgb = np.clip(np.asarray(recipe.rgb, np.float32) * rng.uniform(0.85, 1.1, size=3), 0, 255)
    semitones = rng.uniform(-3.0, 3.0)
    sound = SoundParams(timbre=recipe.timbre, pattern=recipe.pattern,
                        base_hz=recipe.base_hz * 2.0 ** (semitones / 12.0),
                        pattern_period_s=rng.uniform(0.8, 2.0), pulse_hz=recipe.pulse_hz,
                        pulse_phase=rng.uniform(0.0, 1.0), gain=10.0 ** (rng.uniform(-14, -4) / 20))
    flash = pulse_envelope(frame_t, sound.pulse_hz, sound.pulse_phase)
    return ObjectTrack(recipe=recipe, rgb=rgb, x=x, y=y,
                       size=np.maximum(4, np.round(side * scale)).astype(np.int32),
                       brightness=(0.55 + 0.45 * flash).astype(np.float32), sound=sound)


def make_scene(recipes: list[ClassRecipe], rng: np.random.Generator, *, width: int, height: int,
               fps: int, num_frames: int, seconds: float) -> Scene:
    """Draw a clip's variation: background, each object's path/size/colour/sound, noise level."""
    frame_t = np.arange(num_frames, dtype=np.float64) / fps
    background = _background(rng, width, height)
    shrink = 1.0 if len(recipes) == 1 else 0.8
    objects = tuple(_object(rng, r, frame_t, width, height, shrink) for r in recipes)
    noise_level = 10.0 ** (rng.uniform(-60, -32) / 20)
    return Scene(width=width, height=height, fps=fps, num_frames=num_frames, seconds=seconds,
                 background=background, objects=objects, noise_level=noise_level)
