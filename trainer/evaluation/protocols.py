"""The two evaluation protocols end to end: classification and audio-visual retrieval.

Each returns a JSON-ready payload (inputs, per-mode results, and a flat `summary` of headline
figures) plus the tables that show it; `report.write_report` writes both.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .embeddings import EmbeddingTable
from .inputs import EvalInputs, eval_loader, progress_batches
from .metrics import classification_metrics
from trainer.model.source import load_model
from .predict import CLASSIFY_MODES, Embeddings, embed, predict
from .report import Table
from .retrieval import retrieval_metrics, select_per_class

SHORT = {"audio": "audio", "visual": "visual", "audio_visual": "av"}


@dataclass(kw_only=True)
class ClassifyConfig:
    modes: tuple[str, ...] = CLASSIFY_MODES
    frames: str = "all"
    """all: single-frame (middle) AND N-frame averaged predictions; middle: single-frame only."""
    activation: str = "sigmoid"
    """sigmoid (AudioSet, multi-label) | softmax (VGGSound, single-label)."""

    def __post_init__(self) -> None:
        self.modes = tuple(self.modes)
        bad = sorted(set(self.modes) - set(CLASSIFY_MODES))
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {list(CLASSIFY_MODES)}, got {bad}")
        if self.frames not in ("all", "middle"):
            raise ValueError(f"frames must be all or middle, got {self.frames!r}")
        if self.activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be sigmoid or softmax, got {self.activation!r}")


def classification_summary(results: dict[str, dict], num_frames: int) -> dict[str, float]:
    """Headline figures: {audio,visual,av}_{map,mauc,dprime,top1}, visual and av from the frame-
    averaged predictions when there are several frames (suffix _single: the middle frame alone)."""
    out = {}
    for name, metrics in results.items():
        mode, _, frames = name.partition("/")
        suffix = "_single" if frames == "single" and num_frames > 1 else ""
        for key, label in (("mAP", "map"), ("mAUC", "mauc"), ("d_prime", "dprime"), ("top1", "top1")):
            out[f"{SHORT[mode]}_{label}{suffix}"] = metrics[key]
    return out


def run_classification(inputs: EvalInputs, config: ClassifyConfig) -> tuple[dict, list[Table]]:
    started = time.time()
    model = load_model(inputs.model, inputs.official_size).to(inputs.torch_device)
    loader = eval_loader(inputs, model, config.frames, with_classes=True)
    preds = predict(model, progress_batches(loader, "classify"), model.config.num_classes,
                    modes=config.modes, activation=config.activation, device=inputs.torch_device)
    results = {}
    for name, scores in preds.scores.items():
        if name.endswith("/averaged") and preds.num_frames == 1:
            continue  # identical to /single
        results[name] = classification_metrics(scores, preds.targets).summary()
    first = next(iter(results.values()))
    payload = {
        "protocol": "classify", "model": str(inputs.model), "shards": str(inputs.shards),
        "activation": config.activation, "num_clips": len(preds.keys),
        "num_frames": preds.num_frames, "skipped_samples": loader.skipped,
        "excluded_classes_no_positives": first["excluded_no_positives"],
        "results": results, "summary": classification_summary(results, preds.num_frames),
        "seconds": round(time.time() - started, 2),
    }
    table = Table(f"Classification: {len(preds.keys)} clips, {first['ap_classes']} of "
                  f"{first['num_classes']} classes with positives ({config.activation})",
                  ["input", "frames", "mAP", "mAUC", "d_prime", "top1"],
                  headers={"d_prime": "d'", "top1": "top-1"})
    for name, metrics in results.items():
        mode, _, frames = name.partition("/")
        frames = {"single": "middle" if preds.num_frames > 1 else "1",
                  "averaged": f"{preds.num_frames} avg"}.get(frames, "-")
        table.add(input=mode, frames=frames, **{k: metrics[k] for k in ("mAP", "mAUC", "d_prime", "top1")})
    return payload, [table]


def compute_embeddings(inputs: EvalInputs, frame: str | int = "middle") -> Embeddings:
    """Embeddings of every clip; `frame`: "middle" (stored frame N // 2) or a frame index."""
    model = load_model(inputs.model, inputs.official_size).to(inputs.torch_device)
    loader = eval_loader(inputs, model, frame, with_classes=False)
    return embed(model, progress_batches(loader, "embed"), device=inputs.torch_device)


def retrieval_payload(table: EmbeddingTable, per_class: int, seed: int,
                      ks: tuple[int, ...] = (1, 5, 10)) -> tuple[dict, list[Table]]:
    """Retrieval on the K-per-class subset of an embedding table (per_class 0 = every clip)."""
    complete = table.complete()
    if per_class:
        subset = select_per_class(complete.keys, complete.labels, per_class, seed)
        chosen = complete.subset(subset.indices)
        subset_info = subset.summary()
    else:
        chosen, subset_info = complete, {"indices": len(complete), "per_class": 0}
    if len(chosen) < 2:
        raise ValueError(f"retrieval needs at least 2 clips with both modalities, got {len(chosen)}")
    results = retrieval_metrics(chosen.audio, chosen.visual, chosen.labels, ks)
    classes = len({c for l in chosen.labels for c in l})
    summary = {f"retrieval_{d}_{m}": results[f"{d}_{m}"] for d in ("a2v", "v2a")
               for m in [f"r{k}" for k in ks] + ["medr"] + [f"class_r{k}" for k in ks]}
    payload = {"protocol": "retrieval", "num_clips": len(chosen), "num_classes": classes,
               "chance_class_r1": _chance_class_r1(chosen.labels), "subset": subset_info,
               "similarity": "cosine", "results": results, "summary": summary,
               "embedding": dict(table.metadata)}
    out = Table(f"Retrieval: {len(chosen)} clips ({_clips_per_class(chosen.labels, per_class)}, {classes} classes), "
                f"cosine similarity; instance = the paired clip, class = any clip of a shared class",
                ["direction"] + [f"r{k}" for k in ks] + ["medr"] + [f"class_r{k}" for k in ks]
                + ["class_medr"],
                headers={**{f"r{k}": f"R@{k}" for k in ks}, "medr": "MedR",
                         **{f"class_r{k}": f"class R@{k}" for k in ks}, "class_medr": "class MedR"})
    for d, name in (("a2v", "audio->visual"), ("v2a", "visual->audio")):
        out.add(direction=name, **{k: results[f"{d}_{k}"] for k in out.columns[1:]})
    return payload, [out]


def _clips_per_class(labels: list[list[int]], asked: int) -> str:
    """How many clips each class really has in the set: "5 per class", "2-5 per class (asked 5)"."""
    counts: dict[int, int] = {}
    for clip in labels:
        for c in set(clip):
            counts[c] = counts.get(c, 0) + 1
    low, high = min(counts.values(), default=0), max(counts.values(), default=0)
    text = f"{low} per class" if low == high else f"{low}-{high} per class"
    return text if not asked or low == high == asked else f"{text}, asked {asked}"


def _chance_class_r1(labels: list[list[int]]) -> float:
    """Expected class-level R@1 of a random ranking: the mean fraction of the items (the paired
    clip included) that share a class with the query."""
    n = len(labels)
    sets = [set(l) for l in labels]
    shares = [sum(1 for j in range(n) if sets[i] & sets[j] or i == j) / n for i in range(n)]
    return float(np.mean(shares))


def to_table(emb: Embeddings, metadata: dict) -> EmbeddingTable:
    return EmbeddingTable(emb.keys, emb.labels, emb.audio, emb.visual, dict(metadata))
