"""Kaldi log-mel fbank of a clip's audio, exactly as CAV-MAE computes it, stored raw as float16.

CAV-MAE loads the 16 kHz waveform as float in [-1, 1], subtracts its mean, and calls
torchaudio.compliance.kaldi.fbank with the arguments in `pipeline.params.FBANK_ARGS`. We store the
result unpadded and unnormalised ([T, 128], 10 s -> 998 frames); padding to 1024 frames and the
(x - mean) / std normalisation happen in the loader.
"""
from __future__ import annotations

import numpy as np

from pipeline.params import FBANK_ARGS, SAMPLE_RATE

# kaldi.fbank needs at least one 25 ms window (snip_edges=True).
MIN_SAMPLES = int(SAMPLE_RATE * 0.025)


def pcm_to_waveform(pcm: bytes) -> np.ndarray:
    """s16le mono bytes -> float32 samples in [-1, 1) (what torchaudio.load returns)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def compute_fbank(pcm: bytes) -> np.ndarray:
    """float16 [T, 128] fbank of s16le mono 16 kHz audio with at least MIN_SAMPLES samples."""
    import torch
    from torchaudio.compliance import kaldi

    waveform = torch.from_numpy(pcm_to_waveform(pcm)).unsqueeze(0)
    if waveform.shape[1] < MIN_SAMPLES:
        raise ValueError(f"{waveform.shape[1]} samples is fewer than one fbank window "
                         f"({MIN_SAMPLES})")
    waveform = waveform - waveform.mean()
    with torch.no_grad():
        bank = kaldi.fbank(waveform, **FBANK_ARGS)
    return bank.numpy().astype(np.float16)
