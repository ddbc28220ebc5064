"""The MAE decoder: fused visible tokens -> pixels of every patch, per modality.

Linear to the decoder width, learned mask tokens put back where tokens were dropped, per-modality
positional embeddings and modality tokens, plain transformer blocks over [audio; visual], a LayerNorm,
then one linear prediction head per modality (p*p*1 audio pixels, p*p*3 visual pixels).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import plain_block
from .init import init_decoder_weights, init_token, sincos_pos_embed_2d
from .packing import visible_indices, run_blocks


class MAEDecoder(nn.Module):
    def __init__(self, embed_dim: int, dim: int, depth: int, num_heads: int, *, patch_size: int,
                 audio_grid: tuple[int, int], visual_grid: tuple[int, int], eps: float) -> None:
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, dim))
        # Initialised with fixed sin-cos positions, then trained (the official code trains them from zero).
        self.pos_embed_a = nn.Parameter(sincos_pos_embed_2d(dim, audio_grid))
        self.pos_embed_v = nn.Parameter(sincos_pos_embed_2d(dim, visual_grid))
        self.blocks = nn.ModuleList([plain_block(dim, num_heads, eps=eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pred_a = nn.Linear(dim, patch_size * patch_size * 1)
        self.pred_v = nn.Linear(dim, patch_size * patch_size * 3)
        self.grad_checkpointing = False
        init_decoder_weights(self)
        for token in (self.mask_token, self.modality_a, self.modality_v):
            init_token(token)

    def _fill(self, visible: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, n, d] visible tokens + [B, N] mask -> [B, N, d] with mask tokens at dropped places."""
        b, n, d = visible.shape
        index = visible_indices(mask, n).unsqueeze(-1).expand(-1, -1, d)
        full = self.mask_token.to(visible.dtype).expand(b, mask.shape[1], d)
        return full.scatter(1, index, visible)

    def forward(self, audio_visible: torch.Tensor, visual_visible: torch.Tensor,
                audio_mask: torch.Tensor, visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder outputs of the visible tokens (fused) -> (audio pixels [B, Na, p*p], visual [B, Nv, 3p*p])."""
        a = self._fill(self.embed(audio_visible), audio_mask) + self.pos_embed_a + self.modality_a
        v = self._fill(self.embed(visual_visible), visual_mask) + self.pos_embed_v + self.modality_v
        x = run_blocks(self.blocks, torch.cat([a, v], dim=1), checkpointing=self.grad_checkpointing)
        x = self.norm(x)
        num_a = a.shape[1]
        return self.pred_a(x[:, :num_a]), self.pred_v(x[:, num_a:])
