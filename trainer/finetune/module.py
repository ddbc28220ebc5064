"""The module DeepSpeed wraps for fine-tuning, its starting weights and its parameter groups.

`FinetuneModule` holds the AVSiam model under `model.` (the same prefix as pretraining, so
`avsiam export` consolidates fine-tuning checkpoints too). The MAE decoder is frozen: no
classification path calls it. Parameter groups carry an `lr_scale` (1 for the backbone, the head
and fusion multipliers for those parts) and split decayed from non-decayed tensors.
"""
from __future__ import annotations

import logging

import torch.nn as nn

from trainer.model import AVSiam

from .config import FinetuneConfig

log = logging.getLogger("trainer.finetune")

HEAD_MODULES = ("head_a", "head_v", "head_av")
FUSION_MODULES = ("fusion",)
FROZEN_MODULES = ("decoder",)


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
        from trainer.evaluation.model_source import load_model

        model = load_model(cfg.init.checkpoint, cfg.init.official_size, **cfg.model)
        if model.config.num_classes != cfg.num_classes:
            log.info("fresh classifier heads: %d -> %d classes", model.config.num_classes,
                     cfg.num_classes)
            model.reset_classifier(cfg.num_classes)
    else:
        fields = dict(cfg.model)
        size = fields.pop("size", "base")
        model = AVSiam(size, cfg.num_classes, **fields)
    model.train()
    for name in FROZEN_MODULES:
        getattr(model, name).requires_grad_(False)
    return model


def part_of(name: str) -> str:
    """'head', 'fusion' or 'backbone' for a model parameter name."""
    top = name.split(".", 1)[0]
    if top in HEAD_MODULES:
        return "head"
    if top in FUSION_MODULES:
        return "fusion"
    return "backbone"


def param_groups(module: FinetuneModule, cfg: FinetuneConfig) -> list[dict]:
    """Trainable parameters by (part, decay): each group's lr is lr x its `lr_scale`."""
    scales = {"backbone": 1.0, "head": cfg.heads.head_lr_mult, "fusion": cfg.heads.fusion_lr_mult}
    skip = set(module.model.no_weight_decay())
    groups: dict[tuple[str, bool], list] = {}
    for name, param in module.model.named_parameters():
        if not param.requires_grad:
            continue
        decay = name not in skip and param.ndim > 1
        groups.setdefault((part_of(name), decay), []).append(param)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": cfg.optim.weight_decay if decay else 0.0,
                    "lr_scale": scales[part], "name": f"{part}{'' if decay else '/no_decay'}"})
    return out
