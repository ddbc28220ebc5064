"""What a pretraining run of a paper size (Base, Large, Huge) must state rather than leave to chance.

The paper starts every size from an ImageNet-21k ViT. A run that names no weights file would start
from random weights without a word, so it is refused before anything heavy starts, with the key to
set, the timm weights of the size and the way to choose random initialisation on purpose
(`model.pretrained=none`). The tiny size (tests, CPU demo) has no such recipe and is not checked.
"""
from __future__ import annotations

from trainer.model.config import FROM_SCRATCH

PAPER_SIZES = ("base", "large", "huge")


def missing_weights_message(cfg, command: str = "pretrain") -> str | None:
    """One line naming model.pretrained when a paper-size pretraining run gives no weights; else None."""
    model = cfg.model
    if model.size not in PAPER_SIZES or model.pretrained is not None:
        return None
    return (f"avsiam {command}: model.pretrained is not set, so the {model.size} model would start from "
            f"random weights; set model.pretrained=FILE, a local .safetensors/.pth of timm's "
            f"{model.timm_weights} (download it elsewhere: nothing here downloads), or "
            f"model.pretrained={FROM_SCRATCH} for a deliberate from-scratch run")
