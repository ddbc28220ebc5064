"""Make one clip: draw its scene, synthesise the sound, render and encode the frames."""
from __future__ import annotations

from pathlib import Path

from pipeline.synth.audio import synthesize, write_wav
from pipeline.synth.classes import make_classes
from pipeline.synth.config import SynthConfig
from pipeline.synth.encode import FORMATS, encode_clip
from pipeline.synth.plan import ClipPlan, clip_rng
from pipeline.synth.scene import make_scene
from pipeline.synth.video import render_frames

VIDEOS_DIR = "videos"


def clip_path(config: SynthConfig, plan: ClipPlan) -> Path:
    return Path(config.out) / VIDEOS_DIR / plan.filename


def make_clip(config: SynthConfig, plan: ClipPlan) -> bool:
    """Write the clip unless it is already there; True when it was made now.

    Safe to run again after an interruption: the file appears only once complete.
    """
    path = clip_path(config, plan).absolute()
    if path.exists():
        return False
    recipes = make_classes(config.classes)
    rng = clip_rng(config.seed, plan.index)
    width, height = config.size
    scene = make_scene([recipes[c] for c in plan.labels], rng, width=width, height=height,
                       fps=config.fps, num_frames=config.num_frames, seconds=config.seconds)
    rate = FORMATS[plan.fmt].sample_rate
    audio = synthesize(scene, rate, rng)
    wav = path.with_name(f".{plan.ytid}.wav")
    try:
        write_wav(wav, audio, rate)
        encode_clip(path, render_frames(scene), wav, plan.fmt, width=width, height=height,
                    fps=config.fps, timeout_s=config.clip_timeout_s)
    finally:
        wav.unlink(missing_ok=True)
    return True
