"""Balanced sampling (CAV-MAE, for AudioSet-2M / VGGSound fine-tuning), done while streaming.

CAV-MAE weights label l by 1000 / (count_l + 0.01), a sample by the sum over its labels, and draws an
epoch of N samples with torch's WeightedRandomSampler (with replacement). Streaming cannot draw by
index, so each sample arriving in the stream is instead emitted k times with E[k] = N * w_i / sum(w):
k = floor(m_i) + Bernoulli(frac(m_i)), m_i = w_i / mean(w). Every sample's expected number of
appearances per epoch, and so the expected label distribution, equals the exact sampler's; repeats
are spread by the shuffle buffer that follows. A sample without labels has weight 0, as in CAV-MAE.
mean(w) needs only the label counts: sum_l count_l * w_l / N.

Label counts come from the `label_counts` option, else dataset.json's "label_counts", else the
manifest.parquet label_indices of the rows the shards' records mark usable, else a scan of the
shards' KEY.json members (local shards; only tar headers and the small JSON members are read).
"""
from __future__ import annotations

import json
import os
import tarfile
from typing import Iterable, Iterator, Sequence

import numpy as np

from .format import (FBANK_SUFFIX, FIRST_FRAME, MANIFEST_NAME, MAX_META_BYTES, META_SUFFIX,
                     STATUS_OK, split_member)
from .sources import ShardRef

LABEL_WEIGHT_NUMERATOR = 1000.0
LABEL_WEIGHT_EPS = 0.01


def label_weights(label_counts: Sequence[float]) -> np.ndarray:
    """CAV-MAE per-label weight 1000 / (count + 0.01)."""
    counts = np.asarray(label_counts, dtype=np.float64)
    return LABEL_WEIGHT_NUMERATOR / (counts + LABEL_WEIGHT_EPS)


def mean_sample_weight(label_counts: Sequence[float], num_samples: int) -> float:
    """mean over samples of sum_{l in labels} w_l, from label counts alone."""
    counts = np.asarray(label_counts, dtype=np.float64)
    mean = float((counts * label_weights(counts)).sum() / max(1, num_samples))
    if mean <= 0:
        raise ValueError("balanced sampling needs at least one labelled sample (all label counts are 0)")
    return mean


def sample_weights(labels: Sequence[Sequence[int]], weights: np.ndarray) -> np.ndarray:
    """Per-sample CAV-MAE weights (the exact sampler's input)."""
    return np.array([float(weights[list(ls)].sum()) if len(ls) else 0.0 for ls in labels])


def normalise_counts(raw, num_classes: int) -> np.ndarray:
    """Label counts as a float array of num_classes from a list or an {index: count} mapping."""
    out = np.zeros(num_classes, dtype=np.float64)
    items = raw.items() if isinstance(raw, dict) else enumerate(raw)
    for index, count in items:
        index = int(index)
        if not 0 <= index < num_classes:
            raise ValueError(f"label count for index {index} is outside num_classes={num_classes}")
        out[index] = float(count)
    return out


def meta_labels(sample: dict) -> list[int] | None:
    """label_indices of a raw sample's JSON member (None if it has none or it is unreadable)."""
    data = sample.get(META_SUFFIX)
    if not isinstance(data, bytes) or len(data) > MAX_META_BYTES:
        return None
    try:
        meta = json.loads(data)
        labels = meta.get("label_indices") if isinstance(meta, dict) else None
        return [int(i) for i in labels] if isinstance(labels, list) else None
    except (ValueError, TypeError):
        return None


class BalanceRepeat:
    """Stage: emit each raw sample k times, E[k] = its weight / the mean weight."""

    def __init__(self, weights: np.ndarray, mean_weight: float, rng: np.random.Generator):
        self.weights = weights
        self.mean_weight = mean_weight
        self.rng = rng

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        n = len(self.weights)
        for sample in samples:
            if "__flush__" in sample:
                yield sample
                continue
            labels = None if "__error__" in sample else meta_labels(sample)
            if labels is None or any(not 0 <= i < n for i in labels):
                yield sample            # unreadable: passes once, decoding counts it
                continue
            m = float(self.weights[labels].sum()) / self.mean_weight if labels else 0.0
            k = int(m) + int(self.rng.random() < m - int(m))
            for _ in range(k):
                yield sample


def scan_label_counts(shards: Iterable[ShardRef], num_classes: int) -> tuple[np.ndarray, int]:
    """Label counts and the number of samples with audio and frames, read from local shards' JSON."""
    counts = np.zeros(num_classes, dtype=np.float64)
    total = 0
    for shard in shards:
        if shard.url.startswith("pipe:"):
            raise ValueError(f"balanced sampling over {shard.url!r} needs label_counts=... (or "
                             "dataset.json 'label_counts'); pipe: shards cannot be scanned")
        members: dict[str, set] = {}
        labels_of: dict[str, list] = {}
        with tarfile.open(shard.url, mode="r:") as tar:
            for info in tar:
                key, suffix = split_member(info.name)
                members.setdefault(key, set()).add(suffix)
                if suffix == META_SUFFIX and info.isreg() and info.size <= MAX_META_BYTES:
                    labels_of[key] = meta_labels({META_SUFFIX: tar.extractfile(info).read()}) or []
        for key, suffixes in members.items():
            if FBANK_SUFFIX in suffixes and FIRST_FRAME in suffixes:
                total += 1
                for i in labels_of.get(key, []):
                    if 0 <= i < num_classes:
                        counts[i] += 1
    return counts, total


def manifest_label_counts(folder: str, shards: Iterable[ShardRef],
                          num_classes: int) -> tuple[np.ndarray, int] | None:
    """Label counts of the usable rows (records: ok, audio and video) from manifest.parquet."""
    import pyarrow.parquet as pq

    manifest = os.path.join(folder, MANIFEST_NAME)
    records = [s.url[:-4] + ".parquet" for s in shards]
    if not os.path.exists(manifest) or not all(os.path.exists(r) for r in records):
        return None
    table = pq.read_table(manifest, columns=["row", "label_indices"]).to_pydict()
    labels_of = dict(zip(table["row"], table["label_indices"]))
    counts = np.zeros(num_classes, dtype=np.float64)
    total = 0
    for record in records:
        rows = pq.read_table(record, columns=["row", "status", "has_audio", "has_video"]).to_pydict()
        for row, status, audio, video in zip(rows["row"], rows["status"], rows["has_audio"],
                                             rows["has_video"]):
            if status == STATUS_OK and audio and video:
                total += 1
                for i in labels_of.get(row) or []:
                    if 0 <= i < num_classes:
                        counts[i] += 1
    return counts, total
