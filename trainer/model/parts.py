"""The model's parts, named once: timm-style `group_matcher` regexes over parameter names.

Coarse parts (fine-tuning's lr groups, the parts pretraining or fine-tuning freezes): backbone,
fusion, decoder, head. Fine parts (`avsiam model-info`): the backbone split into shared (attention
+ MLP of a shared backbone), audio and visual (embeddings, norms, per-modality weights).
"""
from __future__ import annotations

import re

import torch.nn as nn

_REST = {"fusion": r"^fusion\.", "decoder": r"^decoder\.", "head": r"^head_(a|v|av)\."}


def group_matcher(share_backbone: bool = True, coarse: bool = False) -> dict[str, str]:
    """Part name -> regex of the parameter names it holds (the first matching part wins)."""
    if coarse:
        return {"backbone": r"^(embed_[av]|norm_[av]|blocks)\.", **_REST}
    visual = r"^(embed_v|norm_v)\.|^blocks\.\d+\.norm\d_v\."
    shared = r"^blocks\.\d+\.(attn|mlp)\."
    parts = {"audio": r"^(embed_a|norm_a)\.|^blocks\.\d+\.(norm\d_a|attn_a|mlp_a)\."}
    if share_backbone:
        parts.update(visual=visual, shared=shared)
    else:
        parts["visual"] = f"{visual}|{shared}"   # a separate backbone: attn/mlp are the visual ones
    return {**parts, **_REST}


def part_of(name: str, matcher: dict[str, str]) -> str:
    """The part of parameter `name` under `matcher`."""
    for part, pattern in matcher.items():
        if re.match(pattern, name):
            return part
    raise ValueError(f"parameter {name!r} belongs to no model part; add it to trainer/model/parts.py")


def freeze_parts(model: nn.Module, parts: set[str] | tuple[str, ...]) -> None:
    """No gradient (and so no optimizer state) for the parameters of these coarse parts."""
    matcher = model.group_matcher(coarse=True)
    for name, param in model.named_parameters():
        if part_of(name, matcher) in parts:
            param.requires_grad_(False)
