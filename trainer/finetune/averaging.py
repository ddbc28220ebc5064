"""Weight averaging: the element-wise mean of the last K epoch checkpoints (safetensors files).

Reads one file at a time and keeps a running float64 sum, so memory stays at two copies of the
model whatever K is. Integer tensors (counters, index buffers) are taken from the newest file.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


class AveragingError(ValueError):
    """Checkpoints that cannot be averaged; the message names the file and the tensor."""


def last_k(paths: Sequence[str | Path], k: int) -> list[Path]:
    """The newest k of checkpoint files named so that sorting orders them by epoch."""
    if k < 1:
        raise AveragingError(f"average_last must be >= 1, got {k}")
    ordered = sorted(Path(p) for p in paths)
    if not ordered:
        raise AveragingError("no epoch checkpoints to average: did fine-tuning finish an epoch?")
    return ordered[-k:]


def average_state_dicts(paths: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """Mean of every floating-point tensor over the files (same keys and shapes required)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise AveragingError("no checkpoints given to average")
    sums: dict[str, torch.Tensor] = {}
    latest: dict[str, torch.Tensor] = {}
    for index, path in enumerate(paths):
        state = load_file(str(path))
        if index and set(state) != set(latest):
            missing = sorted(set(latest) ^ set(state))[:5]
            raise AveragingError(f"{path}: keys differ from {paths[0]} (e.g. {missing}); average "
                                 f"checkpoints of one run only")
        for name, tensor in state.items():
            if index and tensor.shape != latest[name].shape:
                raise AveragingError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                     f"{paths[0]} has {tuple(latest[name].shape)}")
            latest[name] = tensor
            if tensor.is_floating_point():
                acc = tensor.to(torch.float64)
                sums[name] = acc if index == 0 else sums[name].add_(acc)
    out = {}
    for name, tensor in latest.items():
        out[name] = (sums[name] / len(paths)).to(tensor.dtype) if name in sums else tensor.clone()
    return out


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Average the files into OUT (safetensors, metadata of the newest file plus the sources)."""
    paths = [Path(p) for p in paths]
    averaged = average_state_dicts(paths)
    with safe_open(str(paths[-1]), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    metadata["averaged_from"] = ",".join(p.name for p in paths)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in averaged.items()}, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out
