"""The module DeepSpeed wraps: the AVSiam model plus the contrastive loss (its temperature may learn).

Everything the step runs goes through `forward(task, ...)`, so ZeRO-3's module hooks gather the
parameters of every call. Pretraining freezes what it never calls (the classifier heads; and the
fusion blocks and decoder when the reconstruction weight is 0): frozen weights carry no gradient or
optimizer state and are kept as they are (DeepSpeed saves them as frozen parameters).
"""
from __future__ import annotations

import torch.nn as nn

from trainer.losses import ContrastiveLoss
from trainer.model import AVSiam

from .config import ObjectiveConfig, PretrainConfig

MODEL_PREFIX = "model."


class PretrainModule(nn.Module):
    def __init__(self, model: AVSiam, contrastive_loss: ContrastiveLoss) -> None:
        super().__init__()
        self.model = model
        self.contrastive_loss = contrastive_loss

    def forward(self, task: str, *args, **kwargs):
        if task == "contrastive_loss":
            return self.contrastive_loss(*args, **kwargs)
        return self.model(task, *args, **kwargs)


def build_model(cfg: PretrainConfig) -> AVSiam:
    """The AVSiam of `cfg.model`, with the engine's activation-checkpointing policy applied."""
    fields = {k: getattr(cfg.model, k) for k in cfg.model.__dataclass_fields__ if k not in ("size", "num_classes")}
    model = AVSiam(cfg.model.size, cfg.model.num_classes, **fields)
    model.set_grad_checkpointing(cfg.deepspeed.grad_checkpointing)
    return model


def build_pretrain_module(cfg: PretrainConfig) -> PretrainModule:
    module = PretrainModule(build_model(cfg), ContrastiveLoss(temperature=cfg.objective.temperature,
                                                              learnable=cfg.objective.learnable_temperature))
    for name in unused_submodules(cfg.objective):
        getattr(module.model, name).requires_grad_(False)
    return module


def unused_submodules(objective: ObjectiveConfig) -> list[str]:
    """Submodules of AVSiam that the pretraining objective never calls."""
    names = ["head_a", "head_v", "head_av"]
    if not objective.uses_reconstruction:
        names += ["fusion", "decoder"]
    return names


def param_groups(module: PretrainModule, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: decayed, and not decayed (the model's `no_weight_decay`
    names, 1-d tensors such as norms and biases, and the temperature)."""
    skip = {MODEL_PREFIX + n for n in module.model.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name in skip or param.ndim <= 1 or name.startswith("contrastive_loss."):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def model_state_from_module(state: dict) -> dict:
    """Keys of a `PretrainModule` state dict -> keys of an `AVSiam` state dict."""
    return {k[len(MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
