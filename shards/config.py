"""`LoaderConfig`: every option of `make_loader`, typed, documented and validated once.

Options left as None take the mode's default (`MODE_DEFAULTS`) or, for dataset facts (fbank
statistics, frame size, frames per clip), the value in the shards' dataset.json, else the format's
defaults. `resolved(...)` returns a copy with every such field filled in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .format import MAX_SAMPLE_BYTES, TARGET_FRAMES

MODES = ("pretrain", "finetune", "eval")
NORMALIZATIONS = ("paper", "dataset")

# What each mode does unless an option says otherwise (CAV-MAE / AVSiam recipes).
MODE_DEFAULTS: dict[str, dict] = {
    "pretrain": dict(frames="random", noise=False, roll=False, freqm=0, timem=0, mixup=0.0,
                     label_smoothing=0.0, shuffle_buffer=1000),
    "finetune": dict(frames="random", noise=True, roll=True, freqm=48, timem=192, mixup=0.5,
                     label_smoothing=0.1, shuffle_buffer=1000),
    "eval": dict(frames="middle", noise=False, roll=False, freqm=0, timem=0, mixup=0.0,
                 label_smoothing=0.0, shuffle_buffer=0),
}


@dataclass(kw_only=True)
class LoaderConfig:
    """Options of the streaming loader (keyword arguments of `make_loader`)."""

    mode: str = "pretrain"          # pretrain | finetune | eval
    batch_size: int                 # per rank
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0            # DataLoader worker processes of this rank
    seed: int = 0
    lanes: int | None = None        # independent sample streams per rank (None: max(1, num_workers));
    #                                 the stream depends on lanes, not on num_workers, so a run can
    #                                 resume with another worker count if lanes is kept
    # --- audio
    audio_frames: int = TARGET_FRAMES
    normalization: str = "paper"     # fbank mean/std: paper (CAV-MAE/AVSiam -5.081 / 4.4849 for every
    #                                  split, as the released weights saw) | dataset (the statistics in
    #                                  the shards' dataset.json, else the paper's)
    fbank_mean: float | None = None  # set both to override either choice
    fbank_std: float | None = None
    norm_order: str = "pad_then_norm"  # CAV-MAE order (padding ends at ~+1.13) | norm_then_pad (0)
    noise: bool | None = None        # fbank += U(0,1) * U(0,1) / 10 (after normalising)
    roll: bool | None = None         # random roll along time by U{-F, F-1}
    freqm: int | None = None         # SpecAugment frequency mask width (torchaudio FrequencyMasking)
    timem: int | None = None         # SpecAugment time mask width (torchaudio TimeMasking)
    # --- frames
    image_size: int | None = None    # None: frame size in dataset.json, else 224; resized if different
    frames: str | int | None = None  # random | middle | all | a fixed frame index
    num_frames: int | None = None    # frames stored per clip (for "all" and eval padding)
    # --- labels
    num_classes: int | None = None   # vocabulary size (finetune/eval default: dataset.json);
    #                                 None: labels as lists of label indices
    label_type: str = "multi_hot"    # multi_hot (float [B, C], soft with smoothing/mixup) | index
    label_smoothing: float | None = None
    mixup: float | None = None       # probability a sample is mixed with another of its batch
    mixup_alpha: float = 10.0        # lambda ~ Beta(alpha, alpha)
    require_labels: bool = False     # a sample without labels is a bad sample (counted, replaced):
    #                                  single-label training (cross-entropy) has no target for it
    balanced: bool = False           # streaming CAV-MAE balanced sampling (finetune)
    label_counts: tuple[float, ...] | None = None  # None: dataset.json "label_counts", else a scan
    # --- stream
    shuffle_buffer: int | None = None        # samples held (undecoded) per lane; 0 = no shuffle
    shuffle_buffer_bytes: int = 512 << 20    # and at most this many bytes per lane
    max_sample_bytes: int = MAX_SAMPLE_BYTES  # all members of one sample together, as their tar
    #                                  headers declare them; a larger sample is a counted skip
    #                                  (oversized_sample), refused before any of it is read
    resampled: bool | None = None    # draw shards with replacement (None: only when mixing)
    samples_per_epoch: int | None = None  # None: counted from the shards' records
    drop_last: bool = True           # train: floor (True) or ceil (False) of samples/(B*world)
    allow_pipe: bool = False         # accept pipe: URLs given directly (they run a shell command)
    prefetch_factor: int = 2         # batches in flight per worker
    pin_memory: bool = False
    output_dtype: str = "float32"    # audio/visual as handed out: float32 | bfloat16 | float16
    #                                  (computed in float32 either way; half the bytes to move)
    raw_frames: bool = False         # visual handed out as uint8, un-normalised (1/4 of the float32
    #                                  bytes, no normalising in the workers); `model_input` moves it
    #                                  and normalises it on the device (the trainer does). No mixup.
    on_error: str = "skip"           # skip (count + rate-limited warning) | raise

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        _positive("batch_size", self.batch_size)
        _positive("world_size", self.world_size)
        _positive("audio_frames", self.audio_frames)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.lanes is not None:
            _positive("lanes", self.lanes)
            if self.lanes % max(1, self.num_workers):
                raise ValueError(f"lanes={self.lanes} must be a multiple of num_workers="
                                 f"{self.num_workers} (each worker serves whole lanes)")
        if self.norm_order not in ("pad_then_norm", "norm_then_pad"):
            raise ValueError(f"norm_order must be pad_then_norm or norm_then_pad, not {self.norm_order!r}")
        if self.label_type not in ("multi_hot", "index"):
            raise ValueError(f"label_type must be multi_hot or index, not {self.label_type!r}")
        if self.frames is not None and not isinstance(self.frames, int) \
                and self.frames not in ("random", "middle", "all"):
            raise ValueError(f"frames must be random, middle, all or an index, not {self.frames!r}")
        if self.output_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"output_dtype must be float32, bfloat16 or float16, not {self.output_dtype!r}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be skip or raise, not {self.on_error!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be paper or dataset, not {self.normalization!r}")
        if self.fbank_std is not None and self.fbank_std <= 0:
            raise ValueError(f"fbank_std must be > 0, got {self.fbank_std}")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 0:
            raise ValueError("shuffle_buffer must be >= 0")
        _positive("shuffle_buffer_bytes", self.shuffle_buffer_bytes)
        _positive("max_sample_bytes", self.max_sample_bytes)
        for name in ("num_classes", "image_size", "num_frames"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive("prefetch_factor", self.prefetch_factor)
        if self.samples_per_epoch is not None:
            _positive("samples_per_epoch", self.samples_per_epoch)

    @property
    def per_sample_draws(self) -> bool:
        """Whether decoding or finishing a row draws random numbers (resolved configs): a frame
        chosen at decode time (random with balanced sampling), SpecAugment, noise or roll."""
        return bool(self.noise or self.roll or self.freqm or self.timem
                    or (self.frames == "random" and self.balanced))

    def resolved(self, *, fbank_mean: float, fbank_std: float, image_size: int,
                 num_frames: int) -> "LoaderConfig":
        """A copy with mode defaults and dataset facts filled in, checked for consistency."""
        fill = {k: v for k, v in MODE_DEFAULTS[self.mode].items() if getattr(self, k) is None}
        facts = dict(fbank_mean=fbank_mean, fbank_std=fbank_std, image_size=image_size,
                     num_frames=num_frames, lanes=max(1, self.num_workers))
        fill.update({k: v for k, v in facts.items() if getattr(self, k) is None})
        cfg = dataclasses.replace(self, **fill)
        cfg._check_resolved()
        return cfg

    def _check_resolved(self) -> None:
        soft = self.mixup > 0 or self.label_smoothing > 0
        if self.label_type == "index" and soft:
            raise ValueError("label_type='index' cannot carry mixup or label smoothing; use "
                             "label_type='multi_hot' (soft targets; cross-entropy accepts them) "
                             "or set mixup=0, label_smoothing=0")
        if self.raw_frames and self.mixup > 0:
            raise ValueError("raw_frames hands frames over as uint8, which cannot hold mixed "
                             "frames; set mixup=0 or raw_frames=False")
        if (soft or self.balanced) and self.num_classes is None:
            raise ValueError("mixup, label smoothing and balanced sampling need num_classes")
        if self.mode == "eval":
            augment = dict(noise=self.noise, roll=self.roll, freqm=self.freqm, timem=self.timem,
                           mixup=self.mixup, balanced=self.balanced, resampled=self.resampled)
            on = [k for k, v in augment.items() if v]
            if on or self.frames == "random":
                raise ValueError(f"eval mode is deterministic: turn off {on or ['frames=random']}")
        if isinstance(self.frames, int) and not 0 <= self.frames < self.num_frames:
            raise ValueError(f"frames={self.frames} is outside the {self.num_frames} stored frames")
        if not 0 <= self.mixup <= 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError("mixup must be in [0, 1] and label_smoothing in [0, 1)")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
