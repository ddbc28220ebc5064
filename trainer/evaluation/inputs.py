"""What every evaluation reads: a model (see `trainer.model.source`) and an eval-mode loader of shards."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(kw_only=True)
class EvalInputs:
    """The model and shards of one evaluation, and how to stream them."""

    model: str
    """Model source (see `trainer.model.source`)."""
    shards: str
    """Shard URLs: a folder written by `avsiam shard`, a brace pattern, or `::`-joined patterns."""
    batch_size: int = 16
    num_workers: int = 0
    device: str = "auto"
    """auto (cuda when available) | cuda | cpu."""
    official_size: str | None = None
    """Model size of an official checkpoint (base, large, huge); None = base."""
    loader_options: dict[str, Any] = field(default_factory=dict)
    """Further `make_loader` options (e.g. fbank_mean, fbank_std)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, got {self.device!r}")

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def eval_loader(inputs: EvalInputs, model, frames: str | int, with_classes: bool):
    """The eval-mode loader of the shards, shaped for `model` (fbank length, frame size), with the
    model's training normalisation unless an option names one (see `trainer.model.shard_fit`).

    `frames`: "middle", "all" or an index. `with_classes`: labels as multi-hot over the model's
    classes (mapped by label id from the shards' vocabulary; a foreign one is refused); otherwise
    as lists of the shards' class indices (retrieval, embeddings).
    """
    from shards.loader import make_loader

    from trainer.model.shard_fit import (MappedLabels, label_mapping, normalization_options,
                                         read_shards_dataset)

    facts = getattr(model, "facts", None)
    options = {"audio_frames": model.config.audio_frames, "image_size": model.config.image_size,
               "frames": frames, **normalization_options(facts, inputs.loader_options),
               **inputs.loader_options}
    dataset, where = read_shards_dataset(model.config, inputs.shards,
                                         bool(inputs.loader_options.get("allow_pipe")))
    mapping = None
    if with_classes and "num_classes" not in options:
        vocabulary = dataset.get("labels") if isinstance(dataset.get("labels"), dict) else {}
        shard_ids = vocabulary.get("ids") if isinstance(vocabulary.get("ids"), list) else None
        shard_classes = vocabulary.get("num_classes") if isinstance(vocabulary.get("num_classes"), int) \
            and vocabulary.get("num_classes") > 0 else None
        mapping = label_mapping(facts.label_ids if facts is not None else None, shard_ids,
                                model.config.num_classes, shard_classes, where)
        options["num_classes"] = len(mapping) if mapping is not None else model.config.num_classes
    loader = make_loader(inputs.shards, mode="eval", batch_size=inputs.batch_size,
                         num_workers=inputs.num_workers, seed=0, **options)
    return MappedLabels(loader, mapping, model.config.num_classes) if mapping is not None else loader


def progress_batches(loader, desc: str):
    """The loader's batches with a tqdm bar (batches) on stderr when it is a terminal."""
    import sys

    from tqdm import tqdm

    return tqdm(loader, total=len(loader), desc=desc, unit="batch", file=sys.stderr,
                dynamic_ncols=True, disable=not sys.stderr.isatty())
