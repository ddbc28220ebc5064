"""Export of the shared backbone's visual path as a plain timm VisionTransformer state dict.

The exported model is `timm.create_model(name, **timm_vit_kwargs(config))`: no class token, average
pooling of the final-normed tokens and no fc_norm, so `forward_features(x).mean(1)` (and `forward`)
equals `AVSiam.embed_visual(x)`. The one difference: timm's blocks use LayerNorm eps 1e-6 where the
AVSiam blocks use 1e-5 (as the official code), which moves outputs by ~1e-6 relative.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .config import AVSiamConfig


def timm_vit_kwargs(cfg: AVSiamConfig) -> dict:
    """Arguments of timm.create_model that build the matching plain ViT (besides the model name)."""
    return dict(img_size=cfg.image_size, depth=cfg.encoder_depth, class_token=False, global_pool="avg",
                fc_norm=False, num_classes=0)


def timm_pretrained_cfg(cfg: AVSiamConfig) -> dict:
    """timm's `pretrained_cfg` of the exported model: the input the AVSiam loader gave it in training
    (frames of image_size px, scaled short side + centre crop by the pipeline, ImageNet mean/std),
    so `timm.data.resolve_data_config(model=m)` builds the matching transform."""
    from shards.transforms import IMAGENET_MEAN, IMAGENET_STD

    return dict(input_size=(3, cfg.image_size, cfg.image_size), mean=tuple(IMAGENET_MEAN),
                std=tuple(IMAGENET_STD), interpolation="bicubic", crop_pct=1.0, crop_mode="center",
                num_classes=0, fixed_input_size=True)


_VISUAL_MAP = [
    (r"embed_v\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"embed_v\.pos_embed", "pos_embed"),
    (r"blocks\.(\d+)\.norm1_v\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"blocks\.(\d+)\.norm2_v\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"blocks\.(\d+)\.(attn|mlp)\.(.+)", r"blocks.\1.\2.\3"),
    (r"norm_v\.(weight|bias)", r"norm.\1"),
]


def export_timm_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the visual path in timm ViT key names (audio parts, fusion, decoder, heads dropped)."""
    out = {}
    for key, value in state.items():
        for pattern, template in _VISUAL_MAP:
            match = re.fullmatch(pattern, key)
            if match:
                out[match.expand(template)] = value
                break
    if "pos_embed" not in out or "norm.weight" not in out:
        raise ValueError("not an AVSiam state dict: embed_v.pos_embed / norm_v.weight are missing")
    return out
