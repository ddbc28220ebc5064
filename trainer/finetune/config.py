"""`FinetuneConfig`: the typed configuration of a fine-tuning run, read from YAML plus overrides.

It is a `RunConfig` (the fields every run has: out_dir, seed, device, data, optim, deepspeed,
checkpoint, ...) read by the YAML machinery (`trainer.engine.yaml_config`: presets plus `key=value`
overrides); what
fine-tuning adds is here: the starting weights, the loss, the per-iteration head mix with its lr
multipliers, the epoch schedule of the paper's recipes, and weight averaging. Presets: `trainer/configs/finetune_*.yaml`
(as20k, as2m, vggsound: the official recipes; tiny_cpu: the demo).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.engine.config import PRESET_DIR, CheckpointConfig, RunConfig
from trainer.engine.yaml_config import load_yaml_config

from .heads import DEFAULT_MIX, check_mix

LOSSES = ("bce", "ce")
PRESET_PREFIX = "finetune_"


@dataclass(kw_only=True)
class InitConfig:
    """The weights fine-tuning starts from."""

    checkpoint: str = ""            # .safetensors (avsiam export/convert), a pretraining run folder,
    #                                 or an official AVSiam .pth; "" = model.* from scratch/timm weights
    official_size: str | None = None  # size of an official checkpoint (base | large | huge)


@dataclass(kw_only=True)
class HeadsConfig:
    """Which head each iteration trains, and the lr multipliers of heads and fusion blocks."""

    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    head_lr_mult: float = 100.0     # the three classifier heads (official: 100 AudioSet, 10 VGGSound)
    fusion_lr_mult: float = 100.0   # the audio-visual fusion blocks (official: 100 AudioSet, 1 VGGSound)

    def __post_init__(self) -> None:
        self.mix = check_mix(self.mix)
        if self.head_lr_mult <= 0 or self.fusion_lr_mult <= 0:
            raise ValueError("heads.head_lr_mult and heads.fusion_lr_mult must be > 0")


@dataclass(kw_only=True)
class EpochSchedule:
    """Epochs and the official step decay: from epoch `decay_start` (0-based, = CAV-MAE's
    lrscheduler_start counted from 1 and applied at epoch ends) the lr is multiplied by
    `decay_factor` every `decay_every` epochs. With optim.schedule=multistep (the default) this
    defines optim.milestones and optim.gamma; cosine and constant schedules ignore it."""

    epochs: int = 15
    decay_start: int = 2
    decay_every: int = 1
    decay_factor: float = 0.75

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.decay_start < 1 or self.decay_every < 1:
            raise ValueError("schedule.epochs, decay_start and decay_every must be >= 1")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"schedule.decay_factor must be in (0, 1], got {self.decay_factor}")

    def milestones(self) -> tuple[float, ...]:
        """Decay points as fractions of the run (the engine's multistep convention)."""
        return tuple(e / self.epochs for e in range(self.decay_start, self.epochs, self.decay_every))


@dataclass(kw_only=True)
class FinetuneConfig(RunConfig):
    """A whole fine-tuning run: the run fields plus the starting weights, heads and epochs."""

    out_dir: str = "runs/finetune"  # metrics.jsonl, TensorBoard, checkpoints, epochs/, model.safetensors
    num_classes: int = 527          # the label vocabulary of the shards (AudioSet 527, VGGSound 309)
    loss: str = "bce"               # bce (multi-label AudioSet) | ce (single-label VGGSound)
    average_last: int = 1           # model.safetensors = mean of the last K epoch weights (1 = last)
    init: InitConfig = field(default_factory=InitConfig)
    model: dict[str, Any] = field(default_factory=dict)
    """AVSiamConfig fields. With a checkpoint only shape-free ones apply (e.g. drop_path_rate);
    without one they define the model (size, audio_frames, image_size, pretrained, ...)."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    schedule: EpochSchedule = field(default_factory=EpochSchedule)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every_steps=0, keep=2))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.num_classes < 1 or self.average_last < 1:
            raise ValueError("num_classes and average_last must be >= 1")
        if self.average_last > self.schedule.epochs:
            raise ValueError(f"average_last={self.average_last} exceeds schedule.epochs="
                             f"{self.schedule.epochs}")
        for key in ("num_classes",):
            if key in self.model:
                raise ValueError(f"set {key} at the top level, not in model.{key}")
        if self.optim.schedule == "multistep":
            self.optim.milestones = self.schedule.milestones()
            self.optim.gamma = self.schedule.decay_factor

    @property
    def epochs_dir(self) -> Path:
        return Path(self.out_dir) / "epochs"


def preset_names() -> list[str]:
    return sorted(p.stem[len(PRESET_PREFIX):] for p in PRESET_DIR.glob(f"{PRESET_PREFIX}*.yaml"))


def resolve_finetune_config(name_or_path: str | Path) -> Path:
    """A YAML path, or a preset name (`as20k` or `finetune_as20k`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    for candidate in (PRESET_DIR / f"{name}.yaml", PRESET_DIR / f"{PRESET_PREFIX}{name}.yaml"):
        if candidate.is_file() and candidate.stem.startswith(PRESET_PREFIX):
            return candidate
    raise FileNotFoundError(f"fine-tuning config {name_or_path!r}: no such file and no such preset "
                            f"(presets: {', '.join(preset_names())})")


def load_finetune_config(name_or_path: str | Path | None = None,
                         overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Read a YAML config (or preset), apply `key=value` overrides, build and validate."""
    path = None if name_or_path is None else resolve_finetune_config(name_or_path)
    return load_yaml_config(FinetuneConfig, path, overrides)
