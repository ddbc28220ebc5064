"""The clip plan: every clip's YouTube-like id, labels, split and container, from the seed alone."""
from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.config import SynthConfig

YTID_LENGTH = 11
DASH_FRACTION = 0.1  # ids starting with '-' (AudioSet has them; a naive CLI takes them for options)
DOUBLE_DASH_FRACTION = 0.03  # ids starting with '--'
_PLAN_STREAM = 1  # the plan's RNG stream; clips use (seed, index) streams, see clip_rng


@dataclass(frozen=True)
class ClipPlan:
    """One clip to make."""

    index: int
    ytid: str
    labels: tuple[int, ...]
    """Class indices, the primary class first; two of them for a multi-label clip."""
    split: str
    """'train' or 'test'."""
    fmt: str
    """Container name, a key of encode.FORMATS."""

    @property
    def filename(self) -> str:
        return f"{self.ytid}.{self.fmt}"


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The clip's own random stream: independent of worker count and of the other clips."""
    return np.random.default_rng([seed, 0, index])


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _ytid(seed: int, index: int, salt: int, dash: int) -> str:
    digest = hashlib.sha256(f"avsiam-synth:{seed}:{index}:{salt}".encode()).digest()
    text = base64.urlsafe_b64encode(digest).decode()[:YTID_LENGTH]  # [A-Za-z0-9_-]
    return "-" * dash + text[dash:]


def _ytids(seed: int, count: int, rng: np.random.Generator) -> list[str]:
    draws = rng.random(count)
    dashes = np.where(draws < DOUBLE_DASH_FRACTION, 2, np.where(draws < DASH_FRACTION, 1, 0))
    seen: set[str] = set()
    ids = []
    for index in range(count):
        salt = 0
        ytid = _ytid(seed, index, salt, int(dashes[index]))
        while ytid.lower() in seen:  # unique even on case-insensitive file systems
            salt += 1
            ytid = _ytid(seed, index, salt, int(dashes[index]))
        seen.add(ytid.lower())
        ids.append(ytid)
    return ids


def _labels(config: SynthConfig, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Balanced primary classes; a second, different class for a fixed fraction of the clips."""
    n, k = config.clips, config.classes
    primary = rng.permutation(np.arange(n) % k)
    n_multi = _round_half_up(n * config.multi_label_fraction) if k > 1 else 0
    multi = set(int(i) for i in rng.choice(n, size=n_multi, replace=False))
    offsets = rng.integers(1, max(k, 2), size=n)
    labels = []
    for i in range(n):
        first = int(primary[i])
        labels.append((first, (first + int(offsets[i])) % k) if i in multi else (first,))
    return labels


def _test_counts(sizes: list[int], fraction: float, rng: np.random.Generator) -> list[int]:
    """Test clips per class: round(total x fraction) in all, shared in proportion to the class sizes
    (largest remainder, ties broken at random), keeping one clip per class for training unless the
    fraction is 1."""
    caps = [n if fraction >= 1.0 else max(0, n - 1) for n in sizes]
    quotas = [n * fraction for n in sizes]
    counts = [min(int(q), cap) for q, cap in zip(quotas, caps)]
    wanted = min(_round_half_up(sum(sizes) * fraction), sum(caps))
    order = sorted(range(len(sizes)), key=lambda c: (-(quotas[c] - int(quotas[c])), rng.random()))
    while sum(counts) < wanted:
        for c in order:
            if sum(counts) < wanted and counts[c] < caps[c]:
                counts[c] += 1
    return counts


def _splits(config: SynthConfig, primaries: list[int], rng: np.random.Generator) -> list[str]:
    """Stratified by primary class: each class's test clips are a random subset of its clips."""
    splits = ["train"] * len(primaries)
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(primaries):
        by_class.setdefault(c, []).append(i)
    members = [by_class[c] for c in sorted(by_class)]
    counts = _test_counts([len(m) for m in members], config.test_fraction, rng)
    for clips, n_test in zip(members, counts):
        for i in rng.permutation(clips)[:n_test]:
            splits[int(i)] = "test"
    return splits


def make_plan(config: SynthConfig) -> list[ClipPlan]:
    """All clips of the dataset, in index order."""
    rng = np.random.default_rng([config.seed, _PLAN_STREAM])
    ytids = _ytids(config.seed, config.clips, rng)
    labels = _labels(config, rng)
    splits = _splits(config, [lab[0] for lab in labels], rng)
    formats = config.formats
    return [ClipPlan(index=i, ytid=ytids[i], labels=labels[i], split=splits[i],
                     fmt=formats[i % len(formats)]) for i in range(config.clips)]
