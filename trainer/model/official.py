"""Conversion of official AVSiam checkpoints (github GenjiB/AVSiam, classes CAVMAE_BASE / CAVMAEFT_BASE).

The official layout (see tests/data/official_avsiam_base_*_keys.txt) differs from ours in:
- a 'module.' prefix on every key (saved from DistributedDataParallel);
- `my_blocks.*` duplicating `vit_base.blocks.*` (one module registered twice), stale copies
  `my_patch_embed*`, the reconstruction-only audio copy `ast_base.*`, an unused `mlp_head_mm_v2`,
  the ViT's unused class token / classifier, and LayerNorms the forward never calls;
- `x = x + norm_pre(x)` with norm_pre = Identity doubles (patch embedding + position): we fold the
  factor 2 into the patch-projection weight and bias and the positional embeddings;
- the fusion blocks `mm_layer_1/2` run every token with their AUDIO norms (norm1_a/norm2_a), which
  become the plain norms of our fusion blocks; the decoder blocks use their plain norms.
Every official key is either placed, or listed as ignored with its reason, or reported as unknown.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from trainer.checkpoint_io import load_state_dict_file

log = logging.getLogger(__name__)

_Double = Callable[[torch.Tensor], torch.Tensor]


def _twice(t: torch.Tensor) -> torch.Tensor:
    return t * 2


def _twice_without_class_slot(t: torch.Tensor) -> torch.Tensor:
    return t[:, 1:] * 2


# (official pattern, our name template, transform) for every key we place.
_PLACE: list[tuple[str, str, _Double | None]] = [
    (r"vit_base\.patch_embed\.proj\.(weight|bias)", r"embed_v.proj.\1", _twice),
    (r"vit_base\.patch_embed_a\.proj\.(weight|bias)", r"embed_a.proj.\1", _twice),
    (r"vit_base\.pos_embed", "embed_v.pos_embed", _twice_without_class_slot),
    (r"vit_base\.pos_embed_a", "embed_a.pos_embed", _twice),
    (r"vit_base\.blocks\.(\d+)\.(norm1_a|norm1_v|norm2_a|norm2_v|attn|mlp)\.(.+)", r"blocks.\1.\2.\3", None),
    (r"vit_base\.norm\.(weight|bias)", r"norm_v.\1", None),
    (r"vit_base\.norm_a\.(weight|bias)", r"norm_a.\1", None),
    (r"mm_layer_(\d+)\.(norm1|norm2)_a\.(.+)", r"fusion.{\1-1}.\2.\3", None),
    (r"mm_layer_(\d+)\.(attn|mlp)\.(.+)", r"fusion.{\1-1}.\2.\3", None),
    (r"decoder_embed\.(weight|bias)", r"decoder.embed.\1", None),
    (r"decoder_pos_embed_(a|v)", r"decoder.pos_embed_\1", None),
    (r"decoder_modality_(a|v)", r"decoder.modality_\1", None),
    (r"mask_token", "decoder.mask_token", None),
    (r"decoder_blocks\.(\d+)\.(norm1|norm2|attn|mlp)\.(.+)", r"decoder.blocks.\1.\2.\3", None),
    (r"decoder_norm\.(weight|bias)", r"decoder.norm.\1", None),
    (r"decoder_pred_(a|v)\.(weight|bias)", r"decoder.pred_\1.\2", None),
    (r"mlp_head\.0\.(weight|bias)", r"head_v.norm.\1", None),
    (r"mlp_head\.1\.(weight|bias)", r"head_v.fc.\1", None),
    (r"mlp_head_a\.0\.(weight|bias)", r"head_a.norm.\1", None),
    (r"mlp_head_a\.1\.(weight|bias)", r"head_a.fc.\1", None),
    (r"mlp_head_mm\.0\.(weight|bias)", r"head_av.norm.\1", None),
    (r"mlp_head_mm\.1\.(weight|bias)", r"head_av.fc.\1", None),
]

# (official pattern, reason) for keys the official forward never uses.
_IGNORE: list[tuple[str, str]] = [
    (r"vit_base\.(cls_token|head\.(weight|bias))", "ViT class token / ImageNet classifier: not used"),
    (r"vit_base\.blocks\.\d+\.(norm1|norm2)\.(weight|bias)", "block norms replaced by the per-modality pairs"),
    (r"my_blocks\..+", "duplicate registration of vit_base.blocks"),
    (r"my_patch_embed(_a)?\..+", "stale copy of the patch embedding, not used in forward"),
    (r"ast_base\..+", "reconstruction-only audio copy of the ViT (pretraining code)"),
    (r"mm_layer_\d+\.(norm1|norm2|norm1_v|norm2_v)\.(weight|bias)", "fusion blocks run with their audio norms"),
    (r"decoder_blocks\.\d+\.(norm1_a|norm1_v|norm2_a|norm2_v)\.(weight|bias)", "decoder blocks use plain norms"),
    (r"mlp_head_mm_v2\..+", "unused audio-visual head variant"),
]

OFFICIAL_PREFIX = "module."
_OPTIONAL_PARTS = ("decoder.", "head_a.", "head_v.", "head_av.")


class OfficialCheckpointError(ValueError):
    """An official checkpoint that does not fit the requested model."""


@dataclass
class ConversionReport:
    """What happened to every key: placed (official -> ours), ignored (with reason), unknown, missing."""

    placed: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def unplaced(self) -> list[str]:
        """Every official key that was not placed into the model (ignored or unknown)."""
        return sorted([*self.ignored, *self.unknown])

    def summary(self) -> str:
        lines = [f"placed {len(self.placed)} official keys"]
        reasons: dict[str, list[str]] = {}
        for key, reason in self.ignored.items():
            reasons.setdefault(reason, []).append(key)
        for reason, keys in sorted(reasons.items()):
            lines.append(f"ignored {len(keys)} ({reason}): {', '.join(sorted(keys)[:3])}{' ...' if len(keys) > 3 else ''}")
        if self.missing:
            parts: dict[str, int] = {}
            for key in self.missing:
                parts[key.split(".")[0]] = parts.get(key.split(".")[0], 0) + 1
            lines.append("model parts not in the checkpoint (left as initialised): "
                         + ", ".join(f"{part} ({n} keys)" for part, n in parts.items()))
        for title, keys in (("UNKNOWN official keys (not placed)", self.unknown), ("shape mismatches", self.mismatched)):
            if keys:
                lines.append(f"{title}: {len(keys)}")
                lines.extend(f"  {k}" for k in keys)
        return "\n".join(lines)


def _our_name(template: str, match: re.Match) -> str:
    name = match.expand(template)
    return re.sub(r"\{(\d+)-1\}", lambda m: str(int(m.group(1)) - 1), name)


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(OFFICIAL_PREFIX):] if k.startswith(OFFICIAL_PREFIX) else k: v for k, v in state.items()}


def convert_official_state_dict(official: Mapping[str, torch.Tensor],
                                expected: Mapping[str, torch.Size] | None = None
                                ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Official (prefixed or not) -> our key names and values, plus the full report.

    `expected` (our name -> shape, e.g. from a model's state dict) adds missing and mismatch checks.
    """
    converted, report = {}, ConversionReport()
    for key, value in strip_prefix(official).items():
        for pattern, template, transform in _PLACE:
            match = re.fullmatch(pattern, key)
            if match:
                name = _our_name(template, match)
                converted[name] = transform(value) if transform else value
                report.placed[key] = name
                break
        else:
            reason = next((r for p, r in _IGNORE if re.fullmatch(p, key)), None)
            if reason is None:
                report.unknown.append(key)
            else:
                report.ignored[key] = reason
    if expected is not None:
        for name, shape in expected.items():
            if name not in converted:
                report.missing.append(name)
            elif tuple(converted[name].shape) != tuple(shape):
                report.mismatched.append(f"{name}: checkpoint {tuple(converted[name].shape)} vs model {tuple(shape)}")
        for name in [n for n in converted if n not in expected]:  # e.g. more blocks than the model has
            key = next(k for k, v in report.placed.items() if v == name)
            report.unknown.append(key)
            del report.placed[key]
            del converted[name]
    report.unknown.sort()
    return converted, report


def infer_geometry(state: Mapping[str, torch.Tensor], patch_size: int, mel_bins: int = 128) -> dict:
    """Model config fields readable from an (unprefixed) official state dict's shapes."""
    fields: dict = {}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"vit_base\.blocks\.(\d+)\.", k))}
    if blocks:
        fields["depth"] = max(blocks) + 1
    if "vit_base.pos_embed" in state:
        side = int(round((state["vit_base.pos_embed"].shape[1] - 1) ** 0.5))
        fields["image_size"] = side * patch_size
    if "vit_base.pos_embed_a" in state:
        cols = state["vit_base.pos_embed_a"].shape[1] // (mel_bins // patch_size)
        if cols != 1024 // patch_size:  # keep the default 1024 frames when they give this grid
            fields["audio_frames"] = cols * patch_size
    fusion = {int(m.group(1)) for k in state if (m := re.match(r"mm_layer_(\d+)\.", k))}
    if fusion:
        fields["fusion_depth"] = max(fusion)
    if "decoder_embed.weight" in state:
        fields["decoder_dim"] = state["decoder_embed.weight"].shape[0]
        fields["decoder_depth"] = 1 + max(int(m.group(1)) for k in state
                                          if (m := re.match(r"decoder_blocks\.(\d+)\.", k)))
    if "mlp_head_mm.1.weight" in state:
        fields["num_classes"] = state["mlp_head_mm.1.weight"].shape[0]
    return fields


def load_official(cls, source: str | os.PathLike | Mapping[str, torch.Tensor], size: str = "base",
                  strict: bool = True, return_report: bool = False, **overrides):
    """Build `cls` (AVSiam) from an official checkpoint.

    Geometry (depth, image size, audio length, decoder size, classes) is read from the checkpoint
    unless given in `overrides`. Unplaced keys are always logged; with `strict`, unknown official
    keys or shape mismatches raise `OfficialCheckpointError` (ignored keys and model parts absent
    from the checkpoint, e.g. heads of a pretraining checkpoint, are reported but allowed).
    """
    from .config import SIZES
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = load_state_dict_file(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    state = strip_prefix(state)
    if size not in SIZES:
        raise OfficialCheckpointError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    patch = SIZES[size].patch_size
    dim = state.get("vit_base.norm.weight", torch.empty(SIZES[size].embed_dim)).shape[0]
    if dim != SIZES[size].embed_dim:
        raise OfficialCheckpointError(f"{name}: embedding width {dim} does not match size {size!r} "
                                      f"({SIZES[size].embed_dim}); name its size: avsiam convert --size, "
                                      "eval/embed --official-size, fine-tuning init.official_size")
    fields = {**infer_geometry(state, patch, overrides.get("mel_bins", 128)), **overrides}
    if fields.get("share_backbone", True) is False:
        raise OfficialCheckpointError("official checkpoints have a shared backbone; share_backbone=False cannot hold one")
    num_classes = fields.pop("num_classes", 527)
    model = cls(size, num_classes, **fields)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, report = convert_official_state_dict(state, expected)
    if report.mismatched or (strict and report.unknown):
        raise OfficialCheckpointError(f"{name}: does not fit AVSiam size {size!r}:\n{report.summary()}")
    model.load_state_dict(converted, strict=False)
    log.info("%s: %s", name, report.summary())
    # A pretraining checkpoint has no heads and a fine-tuning one no decoder: expected, only logged.
    unexpected_missing = [k for k in report.missing if not k.startswith(_OPTIONAL_PARTS)]
    if report.unknown or unexpected_missing:
        warnings.warn(f"{name}: {len(report.unknown)} unknown official keys not placed, "
                      f"{len(unexpected_missing)} encoder keys left as initialised:\n{report.summary()}",
                      stacklevel=3)
    return (model, report) if return_report else model
