"""Run a model over an evaluation loader: class scores per input mode, and embeddings.

Batches are the loader's dicts: "audio" [B, T, 128], "visual" [B, 3, S, S] (one frame) or
[B, N, 3, S, S] (all frames), "labels" (multi-hot [B, C], class indices [B] or index lists), "keys"
and, in eval mode, "valid" (False for the padding rows that even out the lanes: dropped here). With
all frames,
each visual and audio-visual prediction is made twice: from the middle frame alone ("single") and as
the mean over the N frames of the per-frame probabilities ("averaged", the paper's 10-frame protocol).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

ACTIVATIONS = ("sigmoid", "softmax")
CLASSIFY_MODES = ("audio", "visual", "audio_visual")


@dataclass
class Predictions:
    """Scores [N, C] by name ("audio", "visual/single", "visual/averaged", ...), aligned with keys."""

    keys: list[str]
    targets: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    num_frames: int = 1


def label_lists(labels) -> list[list[int]]:
    """Class indices per clip from a multi-hot tensor [B, C], an index tensor [B] or index lists."""
    if isinstance(labels, torch.Tensor):
        if labels.ndim == 1:
            return [[int(c)] for c in labels.tolist()]
        if labels.ndim != 2:
            raise ValueError(f"labels tensor must be [B, C] or [B], got shape {tuple(labels.shape)}")
        return [torch.nonzero(row > 0.5).flatten().tolist() for row in labels]
    return [[int(c) for c in row] for row in labels]


def valid_rows(batch: dict) -> torch.Tensor | None:
    """Indices of the real clips of a batch (None when all are real)."""
    valid = batch.get("valid")
    if valid is None or bool(valid.all()):
        return None
    return torch.nonzero(valid).flatten()


def select_rows(batch: dict, rows: torch.Tensor | None) -> dict:
    """The batch restricted to `rows` (audio, visual, labels, keys)."""
    if rows is None:
        return batch
    idx = rows.tolist()
    labels = batch["labels"]
    labels = labels[rows] if isinstance(labels, torch.Tensor) else [labels[i] for i in idx]
    return {"audio": batch["audio"][rows], "visual": batch["visual"][rows], "labels": labels,
            "keys": [batch["keys"][i] for i in idx]}


def _clip_batches(batches: Iterable[dict], keys: list[str], labels: list[list[int]],
                  progress=None) -> Iterator[dict]:
    """The batches without their padding rows, empty ones skipped. Once the caller is done with a
    batch, its keys and label lists go to `keys` and `labels` and `progress(len(keys))` is called;
    raises if no clip came at all."""
    for batch in batches:
        batch = select_rows(batch, valid_rows(batch))
        if not batch["keys"]:
            continue
        yield batch
        keys.extend(batch["keys"])
        labels.extend(label_lists(batch["labels"]))
        if progress is not None:
            progress(len(keys))
    if not keys:
        raise ValueError("the loader gave no clips: check the shard URLs and that the split is not "
                         "empty")


def multi_hot(labels: list[list[int]], num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), dtype=np.int64)
    for row, classes in enumerate(labels):
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"label indices {bad} outside the model's {num_classes} classes: was "
                             f"the model fine-tuned on this label vocabulary?")
        out[row, classes] = 1
    return out


def middle_frame(num_frames: int) -> int:
    """Index of the frame single-frame evaluation uses: 5 of 10 (0-based), as in CAV-MAE/AVSiam."""
    return num_frames // 2


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)


def _frames(visual: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> [B, 1, 3, S, S]; [B, N, 3, S, S] unchanged."""
    if visual.ndim == 4:
        return visual[:, None]
    if visual.ndim != 5:
        raise ValueError(f"visual batch must be [B,3,S,S] or [B,N,3,S,S], got {tuple(visual.shape)}")
    return visual


def batch_scores(model, audio: torch.Tensor, visual: torch.Tensor, modes: Iterable[str],
                 activation: str = "sigmoid", frame_index: int | None = None) -> dict[str, torch.Tensor]:
    """Probabilities of one batch for each mode; visual modes give /single and /averaged."""
    frames = _frames(visual)
    b, n = frames.shape[:2]
    mid = middle_frame(n) if frame_index is None else frame_index
    if not 0 <= mid < n:
        raise ValueError(f"frame index {mid} outside the {n} frames of a clip")
    out = {}
    for mode in modes:
        if mode == "audio":
            out["audio"] = _activate(model.classify(audio=audio), activation)
            continue
        flat = frames.reshape(b * n, *frames.shape[2:])
        paired_audio = audio.repeat_interleave(n, dim=0) if mode == "audio_visual" else None
        probs = _activate(model.classify(audio=paired_audio, visual=flat), activation)
        probs = probs.reshape(b, n, -1)
        out[f"{mode}/single"] = probs[:, mid]
        out[f"{mode}/averaged"] = probs.mean(dim=1)
    return out


@torch.inference_mode()
def predict(model, batches: Iterable[dict], num_classes: int, modes: Iterable[str] = CLASSIFY_MODES,
            activation: str = "sigmoid", device: str | torch.device = "cpu",
            frame_index: int | None = None, progress=None) -> Predictions:
    """Scores of every clip the batches hold. `progress` is an optional callable(clips_done)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    modes = tuple(modes)
    unknown = sorted(set(modes) - set(CLASSIFY_MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {list(CLASSIFY_MODES)}")
    model.eval()
    keys: list[str] = []
    labels: list[list[int]] = []
    parts: dict[str, list[np.ndarray]] = {}
    num_frames = 1
    for batch in _clip_batches(batches, keys, labels, progress):
        audio = batch["audio"].to(device, non_blocking=True)
        visual = batch["visual"].to(device, non_blocking=True)
        num_frames = _frames(visual).shape[1]
        for name, probs in batch_scores(model, audio, visual, modes, activation, frame_index).items():
            parts.setdefault(name, []).append(probs.cpu().numpy())
    scores = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return Predictions(keys=keys, targets=multi_hot(labels, num_classes), scores=scores,
                       num_frames=num_frames)


@dataclass
class Embeddings:
    keys: list[str]
    labels: list[list[int]]
    audio: np.ndarray
    visual: np.ndarray
    frame_index: int | None
    """Frame of [B, N, ...] batches used; None when the loader chose the single frame."""


@torch.inference_mode()
def embed(model, batches: Iterable[dict], device: str | torch.device = "cpu",
          frame_index: int | None = None, progress=None) -> Embeddings:
    """Audio and visual embeddings (model.embed_audio / embed_visual of the middle frame)."""
    model.eval()
    keys: list[str] = []
    labels: list[list[int]] = []
    audio_parts, visual_parts = [], []
    mid = None
    for batch in _clip_batches(batches, keys, labels, progress):
        visual = batch["visual"]
        if visual.ndim == 5:
            mid = middle_frame(visual.shape[1]) if frame_index is None else frame_index
            if not 0 <= mid < visual.shape[1]:
                raise ValueError(f"frame index {mid} outside the {visual.shape[1]} frames of a clip")
            visual = visual[:, mid]
        audio_parts.append(model.embed_audio(batch["audio"].to(device)).float().cpu().numpy())
        visual_parts.append(model.embed_visual(visual.to(device)).float().cpu().numpy())
    return Embeddings(keys=keys, labels=labels, audio=np.concatenate(audio_parts),
                      visual=np.concatenate(visual_parts), frame_index=mid)
