"""The dataset's metadata in the formats users have (AudioSet, VGGSound) plus synth.json.

- `balanced_train_segments.csv`, `eval_segments.csv`: AudioSet segments, three '#' lines, then
  `YTID, start_seconds, end_seconds, "mid1,mid2"` (comma+space separators, quoted label list).
- `class_labels_indices.csv`: `index,mid,display_name`, names quoted as in AudioSet's file.
- `vggsound.csv`: no header, `ytid,start_seconds,label,split`; labels with commas are quoted.
- `synth.json`: parameters, counts and class recipes. Written last: its presence means complete.
Every file is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from pipeline.synth.classes import ClassRecipe
from pipeline.synth.config import SynthConfig
from pipeline.synth.plan import ClipPlan

TRAIN_CSV = "balanced_train_segments.csv"
EVAL_CSV = "eval_segments.csv"
LABELS_CSV = "class_labels_indices.csv"
VGGSOUND_CSV = "vggsound.csv"
SYNTH_JSON = "synth.json"
CLAIM_JSON = ".synth.claim.json"  # synth.json's content while the dataset is being made
SYNTH_JSON_VERSION = 1


def write_atomic(path: Path, text: str) -> None:
    """Write text to `path` through a temporary file in the same folder."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(partial, path)


def segments_csv(plans: list[ClipPlan], recipes: list[ClassRecipe], seconds: float,
                 seed: int) -> str:
    """AudioSet segments CSV text for these clips."""
    positives = sum(len(p.labels) for p in plans)
    used = len({c for p in plans for c in p.labels})
    lines = [f"# Segments csv created by avsiam synth (seed={seed})",
             f"# num_ytids={len(plans)}, num_segs={len(plans)}, num_unique_labels={used}, "
             f"num_positive_labels={positives}",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    for plan in plans:
        mids = ",".join(recipes[c].mid for c in plan.labels)
        lines.append(f'{plan.ytid}, {0.0:.3f}, {seconds:.3f}, "{mids}"')
    return "\n".join(lines) + "\n"


def labels_csv(recipes: list[ClassRecipe]) -> str:
    """class_labels_indices.csv text."""
    lines = ["index,mid,display_name"]
    for recipe in recipes:
        name = recipe.display_name.replace('"', '""')
        lines.append(f'{recipe.index},{recipe.mid},"{name}"')
    return "\n".join(lines) + "\n"


def vggsound_csv(plans: list[ClipPlan], recipes: list[ClassRecipe]) -> str:
    """VGGSound-style CSV text: one row per clip, the first class's display name as label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for plan in plans:
        writer.writerow([plan.ytid, 0, recipes[plan.labels[0]].display_name, plan.split])
    return buffer.getvalue()


def synth_json(config: SynthConfig, recipes: list[ClassRecipe], plans: list[ClipPlan]) -> str:
    """synth.json text: what was asked for, the classes, and how the clips fall."""
    counts = {split: sum(p.split == split for p in plans) for split in ("train", "test")}
    return json.dumps({
        "version": SYNTH_JSON_VERSION,
        "generator": "avsiam synth",
        "parameters": config.identity(),
        "clips": len(plans),
        "classes": len(recipes),
        "counts": {**counts, "multi_label": sum(len(p.labels) > 1 for p in plans)},
        "class_recipes": [recipe.describe() for recipe in recipes],
    }, indent=1) + "\n"


def write_metadata(config: SynthConfig, recipes: list[ClassRecipe],
                   plans: list[ClipPlan]) -> dict[str, str]:
    """Write the four CSVs; return their paths by summary key."""
    out = Path(config.out)
    files = {
        "balanced_train_csv": (TRAIN_CSV, segments_csv([p for p in plans if p.split == "train"],
                                                       recipes, config.seconds, config.seed)),
        "eval_csv": (EVAL_CSV, segments_csv([p for p in plans if p.split == "test"], recipes,
                                            config.seconds, config.seed)),
        "labels_csv": (LABELS_CSV, labels_csv(recipes)),
        "vggsound_csv": (VGGSOUND_CSV, vggsound_csv(plans, recipes)),
    }
    paths = {}
    for key, (name, text) in files.items():
        write_atomic(out / name, text)
        paths[key] = str(out / name)
    return paths
