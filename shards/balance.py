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
import logging
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from .files import MetadataError
from .format import (FBANK_SUFFIX, FIRST_FRAME, MANIFEST_NAME, MAX_META_BYTES, META_SUFFIX,
                     STATUS_OK, split_member)
from .records import (MAX_MANIFEST_BYTES, MAX_MANIFEST_ROWS, MAX_RECORD_BYTES, MAX_RECORD_ROWS,
                      read_columns, record_path)
from .sources import ShardRef
from .tarscan import READ, SKIP, tar_file_members

log = logging.getLogger("shards")
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
        if not isinstance(labels, list) or not all(type(i) is int for i in labels):
            return None
        return labels
    except (ValueError, RecursionError):         # RecursionError: nesting too deep
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
    """Label counts and the number of samples with audio and frames, read from local shards' JSON
    (only tar headers and the small JSON members are read; a damaged shard adds nothing and is
    named in a warning)."""
    counts = np.zeros(num_classes, dtype=np.float64)
    total = 0
    for shard in shards:
        if shard.url.startswith("pipe:"):
            raise ValueError(f"balanced sampling over {shard.url!r} needs label_counts=... (or "
                             "dataset.json 'label_counts'); pipe: shards cannot be scanned")
        members: dict[str, set] = {}
        labels_of: dict[str, list] = {}
        try:
            for name, data in tar_file_members(shard.url, JsonMembers(members)):
                key, _ = split_member(name)
                labels_of[key] = meta_labels({META_SUFFIX: data}) or []
        except Exception as e:  # noqa: BLE001 - a damaged shard: its samples are skipped later
            log.warning("shards: label counts leave out %s (%s: %s)", shard.url,
                        type(e).__name__, e)
            continue
        for key, suffixes in members.items():
            if FBANK_SUFFIX in suffixes and FIRST_FRAME in suffixes:
                total += 1
                for i in labels_of.get(key, []):
                    if 0 <= i < num_classes:
                        counts[i] += 1
    return counts, total


class JsonMembers:
    """tarscan `keep`: notes every member's suffix by key, reads only the small KEY.json ones."""

    def __init__(self, members: dict[str, set]):
        self.members = members

    def __call__(self, name: str, size: int) -> int:
        key, suffix = split_member(name)
        if suffix is None:
            return SKIP
        self.members.setdefault(key, set()).add(suffix)
        return READ if suffix == META_SUFFIX and size <= MAX_META_BYTES else SKIP


def manifest_label_counts(folder: str, shards: Iterable[ShardRef],
                          num_classes: int) -> tuple[np.ndarray, int] | None:
    """Label counts of the usable rows (records: ok, audio and video) from manifest.parquet."""
    manifest = os.path.join(folder, MANIFEST_NAME)
    records = [record_path(s.url) for s in shards]
    if not os.path.exists(manifest) or not all(os.path.exists(r) for r in records):
        return None
    table = read_columns(manifest, ["row", "label_indices"], max_rows=MAX_MANIFEST_ROWS,
                         max_bytes=MAX_MANIFEST_BYTES).to_pydict()
    counts = np.zeros(num_classes, dtype=np.float64)
    total = 0
    try:
        labels_of = dict(zip(table["row"], table["label_indices"]))
        for record in records:
            rows = read_columns(record, ["row", "status", "has_audio", "has_video"],
                                max_rows=MAX_RECORD_ROWS, max_bytes=MAX_RECORD_BYTES).to_pydict()
            for row, status, audio, video in zip(rows["row"], rows["status"], rows["has_audio"],
                                                 rows["has_video"]):
                if status == STATUS_OK and audio and video:
                    total += 1
                    for i in labels_of.get(row) or []:
                        if 0 <= i < num_classes:
                            counts[i] += 1
    except (TypeError, IndexError) as e:         # columns of other types than the plan's
        raise MetadataError(f"{manifest} or a shard record has columns of the wrong type "
                            f"({e}); write the plan again with `avsiam shard`") from None
    return counts, total
