"""Consolidated fp32 AVSiam weights from a DeepSpeed checkpoint of any ZeRO stage and world size."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from trainer.model import AVSiam, AVSiamConfig
from trainer.model.file_metadata import ModelFacts, config_text

from .checkpoint import find_resume_point, read_marker
from .module import model_state_from_module


def export_weights(checkpoint: str | Path, out: str | Path) -> tuple[Path, int]:
    """Write `out` (.safetensors, with the model config and the training facts of complete.json as
    metadata: see trainer/model/file_metadata.py); returns (path, step)."""
    point = find_resume_point(str(checkpoint), Path(checkpoint), flag="--checkpoint")
    marker = read_marker(point.path)
    if not marker or "model_config" not in marker:
        raise ValueError(f"{point.path}/complete.json has no model_config; was it written by `avsiam pretrain`?")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")    # before DeepSpeed picks its accelerator
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from .quiet import library_prints
    with library_prints():          # DeepSpeed's "Processing zero checkpoint ..." lines
        fp32 = get_fp32_state_dict_from_zero_checkpoint(str(point.root), tag=point.tag)
    state = model_state_from_module(fp32)
    cfg = AVSiamConfig.from_json(config_text(marker["model_config"]))
    with torch.device("meta"):
        model = AVSiam.from_config(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    model.facts = ModelFacts.from_dict(marker.get("model_facts"))
    out = Path(out)
    model.save(out)
    return out, point.step
