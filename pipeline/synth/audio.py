"""Synthesise a scene's sound (stereo float) with numpy and write it as a 16-bit WAV."""
from __future__ import annotations

import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.synth.scene import Scene, SoundParams, pulse_envelope

RISE_SEMITONES = 7.0  # rising / falling glides span a fifth per period
ALTERNATE_SEMITONES = 5.0  # alternating notes are a fourth apart
HOP = 32  # samples per control-rate step (pitch, envelope, pan); 0.7 ms at 44.1 kHz
TABLE_SIZE = 4096  # one cycle of each wavetable (a power of two)
# Harmonic amplitudes of each periodic timbre; "hiss" is band noise around the pitch instead.
# At most 9 harmonics of at most ~1.25 kHz stay below the Nyquist frequency of 44.1/48 kHz.
TIMBRE_HARMONICS = {"tone": (1.0,), "buzz": (1.0, 0, 1 / 3, 0, 1 / 5, 0, 1 / 7, 0, 1 / 9),
                    "brass": tuple(1.0 / n for n in range(1, 10)), "hiss": (1.0,)}


@lru_cache(maxsize=None)
def wavetable(timbre: str) -> np.ndarray:
    """float32 [TABLE_SIZE]: one cycle of the timbre, peak 1."""
    if timbre not in TIMBRE_HARMONICS:
        raise ValueError(f"unknown timbre {timbre!r}")
    phase = 2 * np.pi * np.arange(TABLE_SIZE) / TABLE_SIZE
    cycle = sum(w * np.sin(n * phase) for n, w in enumerate(TIMBRE_HARMONICS[timbre], 1) if w)
    return (cycle / np.abs(cycle).max()).astype(np.float32)


def pitch_track(sound: SoundParams, t: np.ndarray) -> np.ndarray:
    """Instantaneous frequency (Hz) at times `t` for the sound's pitch pattern."""
    u = (t / sound.pattern_period_s + sound.pulse_phase) % 1.0
    if sound.pattern == "steady":
        semis = 0.08 * np.sin(2 * np.pi * 5.0 * t)  # slight vibrato
    elif sound.pattern == "rising":
        semis = RISE_SEMITONES * u
    elif sound.pattern == "falling":
        semis = RISE_SEMITONES * (1.0 - u)
    elif sound.pattern == "alternating":
        semis = np.where(u < 0.5, 0.0, ALTERNATE_SEMITONES)
    else:
        raise ValueError(f"unknown pitch pattern {sound.pattern!r}")
    return sound.base_hz * np.exp2(semis / 12.0)


def upsample(values: np.ndarray, step: int, samples: int) -> np.ndarray:
    """Linear interpolation of control values spaced `step` samples apart -> float32 [samples]."""
    v = values.astype(np.float32)
    ramp = np.arange(step, dtype=np.float32) / step
    return (v[:-1, None] + (v[1:] - v[:-1])[:, None] * ramp).ravel()[:samples]


def table_index(cycles_per_sample: np.ndarray, samples: int, step: int = HOP) -> np.ndarray:
    """Wavetable positions for a frequency held constant over each control step.

    The phase is accumulated per step in float64 and only its fraction is carried per sample, so
    float32 keeps it exact enough however long the clip.
    """
    inc = cycles_per_sample[:-1]
    start = np.concatenate([[0.0], np.cumsum(inc * step)[:-1]]) % 1.0
    ramp = np.arange(step, dtype=np.float32)
    phase = start.astype(np.float32)[:, None] + inc.astype(np.float32)[:, None] * ramp
    return (phase.ravel()[:samples] * TABLE_SIZE).astype(np.int32) & (TABLE_SIZE - 1)


def control_times(samples: int, rate: int, step: int = HOP) -> np.ndarray:
    """Times (s) of the control points covering `samples` samples, one extra at the end."""
    return np.arange(samples // step + 2, dtype=np.float64) * step / rate


def object_sound(sound: SoundParams, samples: int, rate: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Mono float32 [samples] sound of one object, peak about `sound.gain`."""
    tc = control_times(samples, rate)
    wave = wavetable(sound.timbre)[table_index(pitch_track(sound, tc) / rate, samples)]
    if sound.timbre == "hiss":  # ring-modulated slow noise: a noise band about base_hz/4 wide
        step = max(HOP, round(8 * rate / sound.base_hz))
        wave *= upsample(rng.standard_normal(samples // step + 2), step, samples) * 0.6
    envelope = upsample(pulse_envelope(tc, sound.pulse_hz, sound.pulse_phase), HOP, samples)
    return wave * envelope * np.float32(sound.gain)


def synthesize(scene: Scene, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Stereo float32 [samples, 2] in [-1, 1]; each object pans with its horizontal position."""
    samples = round(scene.seconds * rate)
    tc = control_times(samples, rate)
    frame_t = np.arange(scene.num_frames, dtype=np.float64) / scene.fps
    mix = rng.standard_normal((samples, 2), dtype=np.float32) * np.float32(scene.noise_level)
    for track in scene.objects:
        mono = object_sound(track.sound, samples, rate, rng)
        pan = np.interp(tc, frame_t, track.x / scene.width * 2 - 1) * 0.8  # -0.8 left .. 0.8 right
        angle = (pan + 1) * np.pi / 4
        mix[:, 0] += mono * upsample(np.cos(angle), HOP, samples)
        mix[:, 1] += mono * upsample(np.sin(angle), HOP, samples)
    return np.clip(mix, -1.0, 1.0)


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    """Write float [-1, 1] audio [samples, channels] as 16-bit PCM WAV."""
    pcm = np.round(audio * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(pcm.shape[1])
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
