"""Per-sample preparation and the deterministic batch transforms of audio and frames.

Order (CAV-MAE, whose released weights AVSiam starts from):
  fbank: cut/zero-pad the RAW log-mel to `audio_frames` -> [mixup] -> [SpecAugment] -> normalise
         (x - mean) / std -> [noise] -> [roll]. With the default "pad_then_norm" the padded frames end
         at (0 - mean) / std ~ +1.13, as the official models saw; "norm_then_pad" sets them to 0.
  frames: chosen JPEG(s) only are decoded -> uint8 -> float, ImageNet mean/std.
Random draws come from the per-sample generator given in (seeded by the sample's stream position), in
a fixed order: frame index, SpecAugment seed, noise scale + noise, roll shift.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from .npy import readonly_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def choose_frames(stored: int, how, rng: np.random.Generator) -> list[int]:
    """Indices of the frames to decode: random one, the middle one (N // 2), all, or a fixed one."""
    if how == "random":
        return [int(rng.integers(stored))]
    if how == "middle":
        return [stored // 2]
    if how == "all":
        return list(range(stored))
    return [int(how)]


def place_fbank(out: torch.Tensor, fbank: np.ndarray) -> int:
    """Copy the raw fbank, cut to out's rows, into a float32 [frames, 128] row of the batch and
    zero the rest (padding); returns how many rows are real."""
    t = min(fbank.shape[0], out.shape[0])
    out[:t].copy_(readonly_tensor(fbank[:t]))
    out[t:].zero_()
    return t


def label_target(indices: Sequence[int], num_classes: int | None, label_type: str,
                 smoothing: float):
    """multi_hot: float [C] (CAV-MAE smoothing: s / C off, 1 - s on); index: first label or -1;
    no num_classes: the list itself."""
    if num_classes is None:
        return list(indices)
    if label_type == "index":
        return int(indices[0]) if len(indices) else -1
    out = torch.full((num_classes,), smoothing / num_classes, dtype=torch.float32)
    if len(indices):
        out[list(indices)] = 1.0 - smoothing
    return out


def normalise_fbank(audio: torch.Tensor, valid: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    order: str) -> torch.Tensor:
    """(x - mean) / std per row ([B] mean/std: each sample's dataset); norm_then_pad zeroes padding."""
    audio.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
    if order == "norm_then_pad":
        rows = torch.arange(audio.shape[1]).view(1, -1)
        audio.masked_fill_((rows >= valid.view(-1, 1)).unsqueeze(-1), 0.0)
    return audio


def add_noise(audio: torch.Tensor, rngs: list[np.random.Generator]) -> torch.Tensor:
    """CAV-MAE: x += U(0,1)[T, F] * U(0,1) / 10, per sample."""
    for i, rng in enumerate(rngs):
        scale = rng.random() / 10.0
        noise = rng.random(tuple(audio.shape[1:]), dtype=np.float32)
        audio[i].add_(torch.from_numpy(noise), alpha=scale)
    return audio


def roll_time(audio: torch.Tensor, rngs: list[np.random.Generator]) -> torch.Tensor:
    """CAV-MAE: roll each sample along time by U{-T, T-1}."""
    frames = audio.shape[1]
    for i, rng in enumerate(rngs):
        audio[i] = torch.roll(audio[i], int(rng.integers(-frames, frames)), dims=0)
    return audio


def normalise_frames(frames_u8: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 with ImageNet mean/std (into `out` if given), on the
    tensor's device."""
    mean, inv_std = _frame_stats(frames_u8.ndim, frames_u8.device)
    if out is None:
        out = torch.empty(frames_u8.shape, dtype=torch.float32, device=frames_u8.device)
    return out.copy_(frames_u8).sub_(mean).mul_(inv_std)


@functools.lru_cache(maxsize=16)
def _frame_stats(ndim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and 1/std on the 0..255 scale, shaped to broadcast over [..., 3, S, S]."""
    shape = [1] * (ndim - 3) + [3, 1, 1]
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=device).view(shape) * 255.0)
    return mean, inv_std


def model_input(x: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    """A batch tensor as the model takes it: on `device` as `dtype`. uint8 tensors are raw frames
    (`raw_frames=True`): they move as bytes and are normalised (ImageNet mean/std) on the device."""
    if x.dtype != torch.uint8:
        return x.to(device, dtype=dtype, non_blocking=True)
    return normalise_frames(x.to(device, non_blocking=True)).to(dtype)
