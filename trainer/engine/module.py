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
from trainer.model.parts import freeze_parts, part_of

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


def build_pretrain_module(cfg: PretrainConfig) -> PretrainModule:
    module = PretrainModule(AVSiam.from_config(cfg.model),
                            ContrastiveLoss(temperature=cfg.objective.temperature,
                                            learnable=cfg.objective.learnable_temperature))
    freeze_parts(module.model, unused_parts(cfg.objective))
    return module


def unused_parts(objective: ObjectiveConfig) -> set[str]:
    """Model parts (trainer.model.parts) that the pretraining objective never calls."""
    return {"head"} if objective.uses_reconstruction else {"head", "fusion", "decoder"}


def param_groups(module: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None
                 ) -> list[dict]:
    """Trainable parameters of a module holding the model under `model.`, grouped by (model part,
    decay). Not decayed: the model's `no_weight_decay` names, 1-d tensors (norms, biases) and
    parameters outside the model (the temperature, in group "loss"). Each group carries its
    `name` ("head", "backbone/no_decay", ...) and `lr_scale` (lr_scales[part], default 1)."""
    scales = lr_scales or {}
    matcher = module.model.group_matcher(coarse=True)
    skip = {MODEL_PREFIX + n for n in module.model.no_weight_decay()}
    groups: dict[tuple[str, bool], list] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(MODEL_PREFIX):
            key = (part_of(name[len(MODEL_PREFIX):], matcher), name not in skip and param.ndim > 1)
        else:
            key = ("loss", False)
        groups.setdefault(key, []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "lr_scale": scales.get(part, 1.0), "name": part if decay else f"{part}/no_decay"}
            for (part, decay), params in sorted(groups.items())]


def model_state_from_module(state: dict) -> dict:
    """Keys of a `PretrainModule` state dict -> keys of an `AVSiam` state dict."""
    return {k[len(MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
