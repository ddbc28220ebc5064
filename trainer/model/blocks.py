"""The Siamese transformer block: timm's attention and MLP, one LayerNorm pair per modality.

AVSiam shares every block's attention and MLP weights between audio and visual tokens; only the
LayerNorms before attention and before the MLP are per modality (norm1_a/norm1_v, norm2_a/norm2_v).
With `shared=False` the block also owns a second attention and MLP for audio (`attn_a`, `mlp_a`),
which gives the separate-encoder baseline (AVSep / CAV-MAE-style) with the same code path.
"""
from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models.vision_transformer import Block


def layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps)


def copy_layer_norm(source: nn.LayerNorm, eps: float) -> nn.LayerNorm:
    """A new LayerNorm with `source`'s weights and the given eps."""
    norm = layer_norm(source.normalized_shape[0], eps)
    norm.load_state_dict(source.state_dict())
    return norm


class SiameseBlock(nn.Module):
    """Pre-norm transformer block whose LayerNorms are chosen by modality ("a" or "v")."""

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm1: nn.LayerNorm, norm2: nn.LayerNorm,
                 *, eps: float, drop_path: float = 0.0, shared: bool = True) -> None:
        super().__init__()
        self.norm1_a = copy_layer_norm(norm1, eps)
        self.norm1_v = copy_layer_norm(norm1, eps)
        self.attn = attn
        self.norm2_a = copy_layer_norm(norm2, eps)
        self.norm2_v = copy_layer_norm(norm2, eps)
        self.mlp = mlp
        if not shared:  # the audio encoder of the separate-encoder variant, same initial weights
            self.attn_a = copy.deepcopy(attn)
            self.mlp_a = copy.deepcopy(mlp)
        self.shared = shared
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @classmethod
    def from_timm(cls, block: Block, *, eps: float, drop_path: float, shared: bool) -> "SiameseBlock":
        """Take a timm ViT `Block`'s attention and MLP; both norm pairs start from its norms."""
        if not isinstance(block.ls1, nn.Identity) or not isinstance(block.ls2, nn.Identity):
            raise ValueError("ViTs with LayerScale are not supported by the Siamese block")
        return cls(block.attn, block.mlp, block.norm1, block.norm2, eps=eps, drop_path=drop_path, shared=shared)

    def forward(self, x: torch.Tensor, modality: str, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if modality == "a":
            norm1, norm2 = self.norm1_a, self.norm2_a
            attn, mlp = (self.attn, self.mlp) if self.shared else (self.attn_a, self.mlp_a)
        elif modality == "v":
            norm1, norm2, attn, mlp = self.norm1_v, self.norm2_v, self.attn, self.mlp
        else:
            raise ValueError(f"modality must be 'a' or 'v', got {modality!r}")
        x = x + self.drop_path(attn(norm1(x), attn_mask=attn_mask))
        return x + self.drop_path(mlp(norm2(x)))


def plain_block(dim: int, num_heads: int, *, eps: float, drop_path: float = 0.0) -> Block:
    """A standard timm ViT block (fusion and decoder), with the official blocks' LayerNorm eps."""
    return Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path,
                 norm_layer=partial(nn.LayerNorm, eps=eps))


def fusion_block_from_timm(block: Block, *, eps: float, drop_path: float = 0.0) -> Block:
    """A fusion block initialised from a timm encoder block (weights copied, not shared)."""
    dim = block.norm1.normalized_shape[0]
    fusion = plain_block(dim, block.attn.num_heads, eps=eps, drop_path=drop_path)
    fusion.load_state_dict(block.state_dict())
    return fusion
