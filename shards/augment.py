"""Fine-tuning augmentation: SpecAugment (torchaudio) and mixup, both reproducible.

SpecAugment uses torchaudio's FrequencyMasking / TimeMasking on the raw (padded, un-normalised)
log-mel, as CAV-MAE does (masked cells become 0 before normalising). torchaudio draws from torch's
global generator, so each sample runs under `torch.random.fork_rng` seeded from its own generator:
the draws are reproducible and the caller's global RNG state is untouched.

Mixup: with probability `prob` a sample is mixed with another sample of its batch (drawn at random)
with lambda ~ Beta(alpha, alpha) (CAV-MAE: alpha 10). CAV-MAE mixes waveforms; with stored log-mel
fbanks the mix happens in the power domain, log(l * e^a + (1 - l) * e^b), so a loud and a quiet sound
mix as they would in the waveform. Frames mix linearly with the same lambda, label targets likewise.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.transforms as T


def spec_augment(audio: torch.Tensor, freqm: int, timem: int,
                 rngs: list[np.random.Generator]) -> torch.Tensor:
    """Mask one frequency band (width < freqm) and one time span (width < timem) per sample."""
    fmask = T.FrequencyMasking(freqm) if freqm else None
    tmask = T.TimeMasking(timem) if timem else None
    for i, rng in enumerate(rngs):
        seed = int(rng.integers(1 << 62))
        spec = audio[i].t().unsqueeze(0)            # [1, mel, time], as torchaudio expects
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if fmask is not None:
                spec = fmask(spec)
            if tmask is not None:
                spec = tmask(spec)
        audio[i] = spec.squeeze(0).t()
    return audio


def mixup_pairs(batch_size: int, prob: float, alpha: float,
                rng: np.random.Generator) -> list[tuple[int, int, float]]:
    """(sample, partner, lambda) for the samples that get mixed; partners are other samples."""
    pairs = []
    if batch_size < 2:
        return pairs
    for i in range(batch_size):
        if rng.random() < prob:
            j = int(rng.integers(batch_size - 1))
            j += j >= i
            pairs.append((i, j, float(rng.beta(alpha, alpha))))
    return pairs


def apply_mixup(batch: dict, pairs: list[tuple[int, int, float]]) -> dict:
    """Mix audio (power domain), frames and label targets of each pair, from the unmixed originals.

    Adds "mix_lambda" [B] (1 for unmixed samples) and "mix_partner" [B] (itself when unmixed).
    """
    audio, visual, labels = batch["audio"], batch["visual"], batch["labels"]
    size = audio.shape[0]
    batch["mix_lambda"] = torch.ones(size)
    batch["mix_partner"] = torch.arange(size)
    if not pairs:
        return batch
    src_a, src_v, src_valid = audio.clone(), visual.clone(), batch["audio_valid"].clone()
    src_l = labels.clone() if isinstance(labels, torch.Tensor) else None
    for i, j, lam in pairs:
        audio[i] = torch.logaddexp(src_a[i] + math.log(lam), src_a[j] + math.log1p(-lam))
        visual[i] = lam * src_v[i] + (1.0 - lam) * src_v[j]
        if src_l is not None:
            labels[i] = lam * src_l[i] + (1.0 - lam) * src_l[j]
        batch["audio_valid"][i] = torch.maximum(src_valid[i], src_valid[j])
        batch["mix_lambda"][i] = lam
        batch["mix_partner"][i] = j
    return batch
