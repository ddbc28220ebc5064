"""Building blocks from timm and the named initialisation functions of the AVSiam parts.

`create_timm_trunk` builds the size's timm ViT (pretrained=False) and, when a local weights file is
given, loads it through timm's own filter (position resampling to the image size); nothing is ever
downloaded. The AVSiam model then takes the trunk's attention/MLP modules and copies its norms.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.checkpoint_io import load_state_dict_file

from .config import AVSiamConfig
from .embed import PatchPosEmbed


def create_timm_trunk(cfg: AVSiamConfig) -> nn.Module:
    """The size's timm VisionTransformer at this config's image size and depth, classifier removed."""
    kwargs = dict(num_classes=0, img_size=cfg.image_size, depth=cfg.encoder_depth, drop_path_rate=0.0)
    if cfg.pretrained_file is None:
        return timm.create_model(cfg.spec.timm_name, pretrained=False, **kwargs)
    state = load_state_dict_file(cfg.pretrained_file)
    # Pass the tensors straight in: timm then never looks at a URL or the hub.
    overlay = dict(state_dict=state, file=None, url=None, hf_hub_id=None, source="")
    try:
        return timm.create_model(cfg.spec.timm_name, pretrained=True, pretrained_cfg_overlay=overlay,
                                 pretrained_strict=cfg.depth is None, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"{cfg.pretrained}: not {cfg.spec.timm_name} weights for size {cfg.size!r} "
                         f"({str(exc).splitlines()[0]})") from exc


def init_visual_embed(embed: PatchPosEmbed, trunk: nn.Module) -> None:
    """Copy the trunk's patch projection and its patch positions (the class-token slot is dropped)."""
    with torch.no_grad():
        embed.proj.load_state_dict(trunk.patch_embed.proj.state_dict())
        prefix = 0 if getattr(trunk, "no_embed_class", False) else trunk.num_prefix_tokens
        embed.pos_embed.copy_(trunk.pos_embed[:, prefix:])


def init_audio_embed(embed_a: PatchPosEmbed, embed_v: PatchPosEmbed, mode: str) -> None:
    """Audio patches from the RGB kernel's channel mean (bias copied); positions resized from visual.

    mode "grid": bilinear resize of the visual (rows x cols) position grid onto the audio
    (frequency x time) grid. mode "sequence": the official code's 1D nearest resize of the flat
    196-long sequence to the audio token count.
    """
    with torch.no_grad():
        embed_a.proj.weight.copy_(embed_v.proj.weight.mean(dim=1, keepdim=True))
        embed_a.proj.bias.copy_(embed_v.proj.bias)
        pos_v = embed_v.pos_embed
        dim = pos_v.shape[-1]
        if mode == "grid":
            grid_v = pos_v.reshape(1, *embed_v.grid, dim).permute(0, 3, 1, 2)
            grid_a = F.interpolate(grid_v, size=embed_a.grid, mode="bilinear", align_corners=False)
            pos_a = grid_a.flatten(2).transpose(1, 2)
        elif mode == "sequence":
            pos_a = F.interpolate(pos_v.transpose(1, 2), size=embed_a.num_tokens).transpose(1, 2)
        else:
            raise ValueError(f"unknown audio position init {mode!r}")
        embed_a.pos_embed.copy_(pos_a)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """[1, rows*cols, dim] fixed 2D sine-cosine positions (MAE style): half the channels per axis."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a dimension divisible by 4, got {dim}")
    rows, cols = grid
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (xs.reshape(-1), ys.reshape(-1)):
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float().unsqueeze(0)


def init_decoder_weights(module: nn.Module) -> None:
    """MAE's decoder init: xavier-uniform linears, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_token(param: nn.Parameter, std: float = 0.02) -> None:
    nn.init.normal_(param, std=std)


def init_head(module: nn.Module) -> None:
    """Classifier heads: truncated-normal (0.02) weights, zero biases, unit LayerNorms (timm style)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, rising linearly to `rate` (timm's schedule)."""
    if depth == 1:
        return [rate]
    return [rate * i / (depth - 1) for i in range(depth)]


__all__ = ["create_timm_trunk", "init_visual_embed", "init_audio_embed", "sincos_pos_embed_2d",
           "init_decoder_weights", "init_token", "init_head", "drop_path_rates"]
