"""Patch + positional embedding per modality, and the patch layout of both inputs.

Audio: fbank [B, T, F] -> [B, 1, F, T] (frequency as image rows, time as columns) -> 16x16 patches,
so tokens are frequency-major: 8 rows of 64 time patches for a 1024 x 128 spectrogram. Visual: RGB
[B, 3, S, S] -> (S/16)^2 tokens. No class token is used.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def fbank_as_image(fbank: torch.Tensor) -> torch.Tensor:
    """[B, T, F] normalised fbank -> [B, 1, F, T], the 1-channel image the audio patches come from."""
    if fbank.dim() != 3:
        raise ValueError(f"audio input must be fbank [batch, frames, mel_bins], got shape {tuple(fbank.shape)}")
    return fbank.unsqueeze(1).transpose(2, 3)


class PatchPosEmbed(nn.Module):
    """Conv2d patch embedding plus a learned positional embedding for one modality."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, D] tokens (row-major patch order) with positions added."""
        x = self.proj(image)
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(f"input {tuple(image.shape[-2:])} gives a {tuple(x.shape[-2:])} patch grid; "
                             f"this model was built for {self.grid} (check audio_frames / image_size)")
        return x.flatten(2).transpose(1, 2) + self.pos_embed


def patchify(image: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C] pixel targets in token order (pixels in (row, col, channel) order).

    Extra rows/columns beyond the patch grid (e.g. 128 mel bins with 14-pixel patches) are cropped,
    exactly as the strided convolution ignores them.
    """
    b, c = image.shape[:2]
    h, w = grid
    p = patch_size
    x = image[:, :, : h * p, : w * p].reshape(b, c, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, h * w, p * p * c)
