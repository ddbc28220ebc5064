"""Load an AVSiam model from any of the forms users have, for evaluation or fine-tuning.

Sources, tried in this order:
- a `.safetensors` file written by `avsiam export`, `avsiam convert` or `avsiam finetune`;
- a run folder: its `model.safetensors` (fine-tuning runs), else the newest complete DeepSpeed
  checkpoint under it (or under its `checkpoints/`), consolidated on the fly;
- an official AVSiam checkpoint (`.pth`/`.bin`), converted on load (`official_size`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from trainer.checkpoint_io import load_state_dict_file
from trainer.engine.checkpoint import complete_checkpoints, read_marker
from trainer.engine.export import export_weights

from .avsiam import CONFIG_METADATA_KEY, AVSiam


class ModelSourceError(ValueError):
    """A model source that cannot be read; the message says what was expected."""


def _checkpoint_root(folder: Path) -> Path | None:
    for root in (folder / "checkpoints", folder):
        if complete_checkpoints(root):
            return root
    if read_marker(folder) is not None:
        return folder
    return None


def load_model(source: str | Path, official_size: str | None = None, **overrides):
    """An AVSiam model in eval mode on the CPU (see the module doc for the accepted sources).

    `overrides`: config fields that do not change weight shapes (e.g. drop_path_rate)."""
    path = Path(source)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return AVSiam.load(path / "model.safetensors", **overrides).eval()
        root = _checkpoint_root(path)
        if root is None:
            raise ModelSourceError(f"{path}: neither a model.safetensors nor a complete checkpoint "
                                   f"(step_*/complete.json) in it or in its checkpoints/ folder")
        with tempfile.TemporaryDirectory(prefix="avsiam-eval-") as tmp:
            exported, _ = export_weights(root, Path(tmp) / "model.safetensors")
            return AVSiam.load(exported, **overrides).eval()
    if not path.is_file():
        raise ModelSourceError(f"{path}: no such model file or run folder")
    if path.suffix == ".safetensors":
        _, metadata = load_state_dict_file(path, with_metadata=True)
        if CONFIG_METADATA_KEY in metadata:
            return AVSiam.load(path, **overrides).eval()
    return AVSiam.from_official(path, size=official_size or "base", **overrides).eval()
