"""Run length in epochs: `max_epochs` becomes `max_steps` once the loader knows the epoch's size.

An epoch is the loader's batches per rank (the samples in the shards' records over the global batch
data.batch_size x ranks, `shards.loader`), and an optimizer step takes `gradient_accumulation` of
them. So `max_epochs=25` with the multi-step milestones 0.4/0.6/0.8 halves the lr after epochs 10, 15
and 20 (the paper's) for any dataset size and GPU count. The derived `steps_per_epoch` and `max_steps`
are part of the run's resolved config (config.yaml, the checkpoint's client state). A resume derives
them again: the same shards on the same world size give the same schedule.
"""
from __future__ import annotations

import dataclasses
import logging

from .config import PretrainConfig, epoch_steps

log = logging.getLogger("trainer.engine")


def with_epoch_steps(cfg: PretrainConfig, loader_batches: int) -> PretrainConfig:
    """`cfg` with max_steps from max_epochs (unchanged when the run counts steps)."""
    if cfg.max_epochs is None:
        return cfg
    per_epoch = cfg.steps_per_epoch
    if per_epoch is None:
        per_epoch = optimizer_steps_per_epoch(loader_batches, cfg.gradient_accumulation)
    steps = epoch_steps(cfg.max_epochs, per_epoch)
    log.info("max_epochs=%g x %d steps per epoch: max_steps=%d", cfg.max_epochs, per_epoch, steps)
    return dataclasses.replace(cfg, steps_per_epoch=per_epoch, max_steps=steps)


def optimizer_steps_per_epoch(loader_batches: int, gradient_accumulation: int) -> int:
    """Optimizer steps in an epoch of `loader_batches` batches per rank (pretraining and fine-tuning)."""
    steps = loader_batches // gradient_accumulation
    if steps < 1:
        raise ValueError(f"an epoch of {loader_batches} batches per rank makes no optimizer step of "
                         f"gradient_accumulation={gradient_accumulation} batches; lower it or data.batch_size")
    return steps
