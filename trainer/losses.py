"""Pretraining losses: symmetric audio-visual InfoNCE (distributed-exact) and masked-patch MSE.

Distributed contrastive loss: each rank gathers every rank's embeddings WITH gradient and computes
only its LOCAL rows (b x B logits, labels offset by rank * b), in both directions. The mean of the
local losses is the single-process loss over the concatenated batch, and with gradients averaged
across ranks (DDP / DeepSpeed default) the gradients are exactly the single-process ones: the
gather's backward sums every rank's gradient for each rank's slice.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward returns the all-reduced (summed) gradient of own slice."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), local.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank -> [world * b, ...] in rank order; gradients flow back to every rank."""
    return _GatherWithGrad.apply(local)


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between L2-normalised audio and visual embeddings.

    temperature: 0.05 as in the paper; `learnable=True` makes log(1/temperature) a parameter
    (clamped to at most `max_logit_scale`). forward(a, v) -> (loss, accuracy) where accuracy is the
    mean top-1 retrieval accuracy of the local rows in both directions.
    """

    def __init__(self, temperature: float = 0.05, learnable: bool = False, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        scale = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale, persistent=False)
        self.max_logit_scale = max_logit_scale

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.shape != visual.shape or audio.dim() != 2:
            raise ValueError(f"audio {tuple(audio.shape)} and visual {tuple(visual.shape)} must be equal [B, D]")
        with torch.autocast(device_type=audio.device.type, enabled=False):  # logits in fp32
            a = F.normalize(audio.float(), dim=-1)
            v = F.normalize(visual.float(), dim=-1)
            rank, world = distributed_world()
            all_a, all_v = (gather_with_grad(a), gather_with_grad(v)) if world > 1 else (a, v)
            labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
            scale = self.scale().float()
            logits_av = scale * a @ all_v.t()   # audio -> visual, [b, B]
            logits_va = scale * v @ all_a.t()   # visual -> audio, [b, B]
            loss = (F.cross_entropy(logits_av, labels) + F.cross_entropy(logits_va, labels)) / 2
        with torch.no_grad():
            acc = ((logits_av.argmax(-1) == labels).float().mean() + (logits_va.argmax(-1) == labels).float().mean()) / 2
        return loss, acc


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     norm_pix_loss: bool = False) -> torch.Tensor:
    """Mean over dropped patches (mask True) of the per-patch mean squared error.

    With `norm_pix_loss`, each target patch is normalised to zero mean and unit variance first (MAE).
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} disagree")
    target = target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)
