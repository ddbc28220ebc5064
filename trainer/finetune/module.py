"""The module DeepSpeed wraps for fine-tuning, its starting weights and its parameter groups.

`FinetuneModule` holds the AVSiam model under `model.` (the same prefix as pretraining, so
`avsiam export` consolidates fine-tuning checkpoints too). The MAE decoder is frozen: no
classification path calls it. The parameter groups are the engine's (`trainer.engine.module.
param_groups`, with the head and fusion lr multipliers as the parts' lr scales).
"""
from __future__ import annotations

import logging

import torch.nn as nn

from trainer.model import AVSiam, AVSiamConfig
from trainer.model.parts import freeze_parts
from trainer.model.source import load_model

from .config import FinetuneConfig

log = logging.getLogger("trainer.finetune")

FROZEN_PARTS = {"decoder"}    # no classification path calls it


class FinetuneModule(nn.Module):
    def __init__(self, model: AVSiam) -> None:
        super().__init__()
        self.model = model

    def forward(self, task: str, *args, **kwargs):
        return self.model(task, *args, **kwargs)


def build_finetune_model(cfg: FinetuneConfig) -> AVSiam:
    """The starting model: pretrained weights (any source `load_model` reads) or `cfg.model`, with
    classifier heads for `cfg.num_classes` (fresh when the checkpoint's class count differs)."""
    if cfg.init.checkpoint:
        model = load_model(cfg.init.checkpoint, cfg.init.official_size, **cfg.model)
        if model.config.num_classes != cfg.num_classes:
            log.info("fresh classifier heads: %d -> %d classes", model.config.num_classes,
                     cfg.num_classes)
            model.reset_classifier(cfg.num_classes)
    else:
        model = AVSiam.from_config(AVSiamConfig(num_classes=cfg.num_classes, **cfg.model))
    model.train()
    freeze_parts(model, FROZEN_PARTS)
    return model
