"""`PretrainConfig`: the one typed configuration of a pretraining run, read from YAML plus overrides.

A run is described by a tree of small component configs (model, data, objective, optim, deepspeed,
checkpoint, run fields); every field is documented here and validated in `__post_init__`. Presets
are YAML files in `trainer/configs/` (`tiny_cpu`, `avsiam_base`, `avsiam_large`, `avsiam_huge`);
`key=value` overrides use dotted paths (`optim.lr=3e-4`, `deepspeed.zero_stage=3`) and YAML values.
The DeepSpeed config is derived from this one (`deepspeed_config.py`), never written by hand.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.config import NORMALIZATIONS
from trainer.masking import AUDIO_MASKS
from trainer.model.config import AVSiamConfig

from .preflight import check_loader_options
from .yaml_config import load_yaml_config, plain

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"
PRECISIONS = ("bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "multistep", "constant")
OBJECTIVE_SCHEDULES = ("sum", "alternate", "official")


@dataclass(kw_only=True)
class DataConfig:
    """Where batches come from (`shards.loader.make_loader`)."""

    train: str = ""                 # shard URLs: a brace pattern, a folder of shards or a list
    batch_size: int = 8             # samples per rank per micro-batch = the rank's contrastive batch
    num_workers: int = 2            # loader worker processes per rank
    # fbank mean/std: paper (-5.081 / 4.4849, every split alike, as the released weights saw) |
    # dataset (the shards' measured dataset.json statistics). Recorded in the model file.
    normalization: str = "paper"
    # Further loader options: fields of shards.config.LoaderConfig, typed and checked at load.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("data.batch_size", self.batch_size)
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        _choice("data.normalization", self.normalization, NORMALIZATIONS)
        self.options = check_loader_options(self.options, batch_size=self.batch_size,
                                            num_workers=self.num_workers)

    def loader_options(self) -> dict[str, Any]:
        """make_loader keyword options of this section (beyond batch size and workers)."""
        return {"normalization": self.normalization, **self.options}


@dataclass(kw_only=True)
class ObjectiveConfig:
    """The two pretraining losses and how a step computes them."""

    mask_ratios: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)  # multi-ratio groups (contrastive)
    # Audio "tf" masking of the contrastive groups (trainer/masking.py): official (the official code's
    # rule and its line statistics) | structured (whole lines kept whole) | unstructured.
    audio_mask: str = "official"
    packed: bool = False            # all mask groups in one encoder pass (attention masks)
    reconstruction_ratio: float = 0.75
    norm_pix_loss: bool = False     # per-patch target normalisation (off in the released code)
    contrastive_weight: float = 1.0
    reconstruction_weight: float = 1.0
    temperature: float = 0.05
    learnable_temperature: bool = False
    # official: the official loop, a contrastive optimizer step then a reconstruction step on the
    # same batch, each with its own Adam state (engine/phased_adam.py; the paper presets).
    # sum: one summed loss, one optimizer step per batch (one gradient reduction, one update).
    # alternate: the two steps of official sharing one Adam state.
    schedule: str = "sum"
    # Gradient caching: embed the rank's batch in chunks of this many samples without activations,
    # then re-run each chunk with gradients. None = the whole micro-batch in one pass.
    contrastive_chunk: int | None = None
    # Chunk of the reconstruction pass (its loss is a mean over samples, so chunks just add up).
    # None = same as contrastive_chunk.
    reconstruction_chunk: int | None = None

    def __post_init__(self) -> None:
        self.mask_ratios = tuple(float(r) for r in self.mask_ratios)
        if not self.mask_ratios or any(not 0.0 <= r < 1.0 for r in self.mask_ratios):
            raise ValueError(f"objective.mask_ratios must be a non-empty list in [0, 1), got {self.mask_ratios}")
        if not 0.0 < self.reconstruction_ratio < 1.0:
            raise ValueError(f"objective.reconstruction_ratio must be in (0, 1), got {self.reconstruction_ratio}")
        if self.contrastive_weight < 0 or self.reconstruction_weight < 0 or \
                self.contrastive_weight + self.reconstruction_weight == 0:
            raise ValueError("objective loss weights must be >= 0 and not both 0")
        _positive("objective.temperature", self.temperature)
        _choice("objective.schedule", self.schedule, OBJECTIVE_SCHEDULES)
        _choice("objective.audio_mask", self.audio_mask, AUDIO_MASKS)
        for name in ("contrastive_chunk", "reconstruction_chunk"):
            value = getattr(self, name)
            if value is not None:
                _positive(f"objective.{name}", value)

    @property
    def uses_contrastive(self) -> bool:
        return self.contrastive_weight > 0

    @property
    def uses_reconstruction(self) -> bool:
        return self.reconstruction_weight > 0


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (defaults: the official AVSiam pretraining)."""

    name: str = "adam"              # adam (L2 weight decay, official) | adamw (decoupled)
    lr: float = 1e-4                # peak lr (paper 1e-4; official script 2e-4)
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-7
    schedule: str = "multistep"     # multistep (official) | cosine (after warm-up) | constant
    warmup_steps: int = 0           # linear warm-up from 0 (all schedules)
    min_lr_ratio: float = 0.0       # cosine floor, as a fraction of lr
    milestones: tuple[float, ...] = (0.4, 0.6, 0.8)  # multistep: fractions of max_steps (10/15/20 of 25 epochs)
    gamma: float = 0.5              # multistep factor at each milestone
    grad_clip: float = 0.0          # max global grad norm; 0 = off

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, ("adam", "adamw"))
        _choice("optim.schedule", self.schedule, SCHEDULES)
        self.betas = tuple(float(b) for b in self.betas)
        self.milestones = tuple(float(m) for m in self.milestones)
        _positive("optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("optim.weight_decay, optim.grad_clip and optim.warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 < self.gamma <= 1.0:
            raise ValueError("optim.min_lr_ratio must be in [0, 1] and optim.gamma in (0, 1]")
        if list(self.milestones) != sorted(self.milestones) or any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"optim.milestones must be increasing fractions in (0, 1), got {self.milestones}")


@dataclass(kw_only=True)
class DeepSpeedConfig:
    """ZeRO, precision and wrapping policy; the DeepSpeed JSON config is derived from these."""

    zero_stage: int = 2             # 1 | 2 | 3
    precision: str = "bf16"         # bf16 | fp16 | fp32 (fp32 on CPU)
    grad_checkpointing: bool = False  # non-reentrant activation checkpointing of the ViT blocks
    overlap_comm: bool | None = None  # None: on for CUDA, off for CPU
    reduce_bucket_size: int = 200_000_000
    allgather_bucket_size: int = 200_000_000
    extra: dict[str, Any] = field(default_factory=dict)  # merged last into the derived config

    def __post_init__(self) -> None:
        _choice("deepspeed.zero_stage", self.zero_stage, (1, 2, 3))
        _choice("deepspeed.precision", self.precision, PRECISIONS)


@dataclass(kw_only=True)
class CheckpointConfig:
    """When and where DeepSpeed checkpoints are written, and where a run resumes from."""

    dir: str | None = None          # None: <run.out_dir>/checkpoints
    every_steps: int = 1000         # 0 = only at the end and on a stop signal
    every_minutes: float = 0.0      # also save when this long passed since the last (0 = off)
    keep: int = 3                   # complete checkpoints kept (older ones are deleted); 0 = all
    resume: str = "none"            # none | auto (latest complete, none if there is none) | a folder
    save_final: bool = True

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep < 0 or self.every_minutes < 0:
            raise ValueError("checkpoint.every_steps, checkpoint.every_minutes and checkpoint.keep "
                             "must be >= 0")


@dataclass(kw_only=True)
class RunConfig:
    """The fields every run has, pretraining or fine-tuning: what the loop (`loop.py`) reads."""

    out_dir: str = "runs/run"       # TensorBoard logs, metrics.jsonl, checkpoints
    seed: int = 0
    device: str = "auto"            # auto (cuda when available) | cuda | cpu
    log_every: int = 10             # metric records every N steps (JSONL, TensorBoard)
    progress: bool = True           # rank 0: a bar on a terminal, else a line per metrics record
    stop_at_step: int | None = None  # behave as if a stop signal arrived after this step (tests, drills)
    # Micro-batches per optimizer step (in pretraining each its own contrastive batch); the loop
    # accumulates them, DeepSpeed's own gradient_accumulation_steps is always 1.
    gradient_accumulation: int = 1
    peak_tflops: float | None = None  # device peak for MFU; None: known GPUs, else MFU is not reported
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        _positive("log_every", self.log_every)
        _positive("gradient_accumulation", self.gradient_accumulation)
        _choice("device", self.device, ("auto", "cuda", "cpu"))
        if self.stop_at_step is not None:
            _positive("stop_at_step", self.stop_at_step)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.out_dir) / "checkpoints"

    @property
    def two_adam_states(self) -> bool:
        """Whether the optimizer keeps one Adam state per objective phase (phased_adam.PhasedAdam)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """A whole pretraining run: the run fields plus the model, its objective and the run length."""

    out_dir: str = "runs/pretrain"
    max_steps: int | None = 1000    # optimizer steps (schedule length); null when max_epochs gives it
    # Run length in epochs of the training shards (the paper presets: 25): at start max_steps =
    # round(max_epochs * steps_per_epoch), steps_per_epoch = the loader's batches per epoch (the
    # shards' records / global batch) // gradient_accumulation (engine/epochs.py), so the lr
    # milestones (fractions of max_steps) land on the same epochs for any dataset size and GPU count.
    max_epochs: float | None = None
    steps_per_epoch: int | None = None  # derived at start when max_epochs is set (recorded); may be given
    model: AVSiamConfig = field(default_factory=AVSiamConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_epochs is None:
            _positive("max_steps", self.max_steps)
        else:
            _positive("max_epochs", self.max_epochs)
            if self.steps_per_epoch is not None:
                _positive("steps_per_epoch", self.steps_per_epoch)
            if self.max_steps is not None and self.steps_per_epoch is None:
                raise ValueError(f"max_steps={self.max_steps} and max_epochs={self.max_epochs:g} are both set; "
                                 "give one (max_epochs=null to count optimizer steps)")
            if self.max_steps is not None and self.max_steps != epoch_steps(self.max_epochs, self.steps_per_epoch):
                raise ValueError(f"max_steps={self.max_steps} is not max_epochs={self.max_epochs:g} x "
                                 f"steps_per_epoch={self.steps_per_epoch}; leave max_steps null")

    @property
    def two_adam_states(self) -> bool:
        return self.objective.schedule == "official"


def epoch_steps(max_epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps of `max_epochs` epochs of `steps_per_epoch` steps (at least 1)."""
    return max(1, round(max_epochs * steps_per_epoch))


# --- loading --------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a preset in trainer/configs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise FileNotFoundError(f"config {name_or_path!r}: no such file and no such preset "
                            f"(presets: {', '.join(preset_names())})")


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                ) -> PretrainConfig:
    """Read a YAML config (or preset name), apply `key=value` overrides, build and validate."""
    path = None if name_or_path is None else resolve_config_path(name_or_path)
    return load_yaml_config(PretrainConfig, path, overrides)


def _positive(name: str, value) -> None:
    if value is None or value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
