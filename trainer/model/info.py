"""Facts about a model: parameters by part and forward FLOPs per sample of each pass.

FLOPs are counted by torch's FlopCounterMode (matmuls and convolutions; one multiply-add = 2 FLOPs)
on a model built on the meta device, so even `huge` costs no memory or compute.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainer.masking import keep_count

from .avsiam import AVSiam
from .config import AVSiamConfig
from .parts import part_of

DEFAULT_RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)


def parameter_groups(model: AVSiam) -> dict[str, int]:
    """Parameter counts: shared (attention + MLP), audio, visual, fusion, decoder, heads, total."""
    matcher = model.group_matcher()
    groups = {"shared": 0, "audio": 0, "visual": 0, "fusion": 0, "decoder": 0, "heads": 0}
    for name, param in model.named_parameters():
        part = part_of(name, matcher)
        groups["heads" if part == "head" else part] += param.numel()
    groups["total"] = sum(groups.values())
    return groups


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def forward_gflops(model: AVSiam, ratios: tuple[float, ...] = DEFAULT_RATIOS, rec_ratio: float = 0.75) -> dict[str, float]:
    """GFLOPs per sample of: audio-only, visual-only and audio-visual classification, one contrastive
    pretraining pass (multi-ratio sub-batches, averaged over groups) and one reconstruction pass.

    Passes are summed from their parts; equal blocks are counted once and multiplied (LayerNorms,
    additions and pooling are not counted)."""
    cfg = model.config
    device = next(model.parameters()).device
    dim = model.embed_dim
    n_a, n_v = model.embed_a.num_tokens, model.embed_v.num_tokens

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, device=device)

    def encode(modality: str, count: int) -> float:
        return len(model.blocks) * _flops(lambda: model.blocks[0](zeros(1, count, dim), modality))

    def fuse(count: int) -> float:
        return len(model.fusion) * _flops(lambda: model.fusion[0](zeros(1, count, dim))) if len(model.fusion) else 0.0

    embed_a = _flops(lambda: model.tokens(audio=zeros(1, cfg.audio_frames, cfg.mel_bins)))
    embed_v = _flops(lambda: model.tokens(visual=zeros(1, 3, cfg.image_size, cfg.image_size)))
    head = _flops(lambda: model.head_a(zeros(1, dim)))
    head_av = _flops(lambda: model.head_av(zeros(1, 2 * dim)))
    full_a, full_v = encode("a", n_a), encode("v", n_v)
    contrastive = embed_a + embed_v + sum(encode("a", keep_count(n_a, r)) + encode("v", keep_count(n_v, r))
                                          for r in ratios) / len(ratios)
    keep_a, keep_v = keep_count(n_a, rec_ratio), keep_count(n_v, rec_ratio)
    mask_a = torch.ones(1, n_a, dtype=torch.bool, device=device)
    mask_v = torch.ones(1, n_v, dtype=torch.bool, device=device)
    decode = _flops(lambda: model.decoder(zeros(1, keep_a, dim), zeros(1, keep_v, dim), mask_a, mask_v))
    flops = {
        "audio_only": embed_a + full_a + head,
        "visual_only": embed_v + full_v + head,
        "audio_visual": embed_a + embed_v + full_a + full_v + fuse(n_a + n_v) + head_av,
        "contrastive": contrastive,
        "reconstruction": embed_a + embed_v + encode("a", keep_a) + encode("v", keep_v) + fuse(keep_a + keep_v) + decode,
    }
    return {k: v / 1e9 for k, v in flops.items()}


def meta_model(size: str = "base", **overrides) -> AVSiam:
    """The model on the meta device: shapes and counts only, no memory."""
    with torch.device("meta"):
        return AVSiam.from_config(AVSiamConfig(size=size, **overrides))
