"""Model FLOPs of a pretraining step and model FLOPs utilisation (MFU).

The forward FLOPs per sample of the contrastive and reconstruction passes come from
`trainer.model.info.forward_gflops` (what `avsiam model-info` prints: counted on a meta-device model,
1 multiply-add = 2 FLOPs). Training = 3x forward (backward = 2x forward). Recomputation (activation
checkpointing, the second pass of gradient caching) is NOT counted: MFU measures useful model work.
MFU = model FLOPs per second per device / the device's peak dense FLOP/s for the precision in use.
"""
from __future__ import annotations

import dataclasses

from trainer.model.config import AVSiamConfig
from trainer.model.info import forward_gflops, meta_model

# Dense peak FLOP/s per device (bf16/fp16 tensor cores; "tf32" for fp32 runs), from vendor sheets.
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "tf32": 494e12},
    "H100": {"bf16": 989e12, "tf32": 494e12},    # SXM; the PCIe card is ~756e12
    "A100": {"bf16": 312e12, "tf32": 156e12},
    "L40S": {"bf16": 362e12, "tf32": 183e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12},
    "V100": {"bf16": 125e12, "tf32": 15.7e12},   # fp16 tensor cores; no bf16
}


def train_flops_per_sample(model: AVSiamConfig, ratios: tuple[float, ...], reconstruction_ratio: float,
                           contrastive: bool = True, reconstruction: bool = True) -> float:
    """Model FLOPs (forward + backward) of one training sample for the enabled objectives."""
    fields = {**dataclasses.asdict(model), "pretrained": None}   # shapes only: no weights to read
    gflops = forward_gflops(meta_model(**fields), tuple(ratios), reconstruction_ratio)
    forward = (gflops["contrastive"] if contrastive else 0.0) + (gflops["reconstruction"] if reconstruction else 0.0)
    return 3.0 * forward * 1e9


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak dense FLOP/s of a device by (part of) its name; None when unknown (e.g. CPUs)."""
    key = "bf16" if precision in ("bf16", "fp16") else "tf32"
    for name, peaks in PEAK_FLOPS.items():
        if name in device_name.upper():
            return peaks[key]
    return None


def mfu(flops_per_sample: float, samples_per_s_per_device: float, peak: float | None) -> float | None:
    if not peak:
        return None
    return flops_per_sample * samples_per_s_per_device / peak
