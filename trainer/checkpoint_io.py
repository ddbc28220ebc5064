"""Safe reading and writing of weight files.

Reading never runs code from a file: `.safetensors` are read with safetensors; anything else
(official `.pth`/`.bin`/`.pt`) goes through `torch.load(..., weights_only=True)`, whose restricted
unpickler refuses any object that is not a tensor or a plain container. A refused file raises
`CheckpointError` naming the file and what to do. Our own exports are always safetensors, written
atomically (temporary file, then rename), with string metadata.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

import torch

# Containers some trainers wrap their weights in; the first present key whose value is a dict wins.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")


class CheckpointError(RuntimeError):
    """A weight file that cannot be read safely or does not hold a state dict."""


def load_state_dict_file(path: str | os.PathLike, *, with_metadata: bool = False):
    """Read a flat {name: tensor} state dict (CPU) from `path`, never executing pickled code.

    Returns the dict, or (dict, metadata) with `with_metadata=True` (metadata: the safetensors
    header's strings; {} for other formats).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        state = _torch_load_weights_only(path)
    state = _unwrap(state, path)
    return (state, metadata) if with_metadata else state


def _torch_load_weights_only(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        detail = str(exc).strip().splitlines()
        reason = next((line for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[-1] if detail else "")
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors, and loading "
            f"them could run code (torch.load weights_only=True rejected it: {reason.strip()}). "
            "Official AVSiam/CAV-MAE checkpoints hold only tensors; this file is not one of them or was "
            "tampered with. Only if you fully trust its source, re-save its tensors as .safetensors and "
            "load that instead.") from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch weight file ({exc})") from exc


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors (keys: {list(obj)[:8]})")
    return state


def save_state_dict_file(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                         metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors to `path` as safetensors, atomically. Shared or non-contiguous tensors are copied."""
    from safetensors.torch import save_file
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: our exports are safetensors; name the file *.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if key in seen or not tensor.is_contiguous():
            tensor = tensor.clone().contiguous()
        if key is not None:
            seen.add(key)
        tensors[name] = tensor
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
