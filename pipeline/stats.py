"""Exact, streaming fbank mean/std: per-sample moments combined in a fixed order (Chan et al.).

The writer computes each sample's moments from the float16 array it stores, and `avsiam stats`
recomputes them from the tars with the same function, so both give the same bits. Shards are
combined in shard order, samples in row order, so the result does not depend on the worker count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """count, mean and sum of squared deviations (M2) of a set of values."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def combine(self, other: "Moments") -> "Moments":
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / count
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / count
        return Moments(count, mean, m2)

    @property
    def std(self) -> float:
        """Population standard deviation (0 when empty)."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def as_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, data: dict) -> "Moments":
        return cls(int(data["count"]), float(data["mean"]), float(data["m2"]))


def sample_moments(fbank: np.ndarray) -> Moments:
    """Moments of all values of one stored fbank array (float16 read as float64)."""
    values = np.asarray(fbank, dtype=np.float64)
    if values.size == 0:
        return Moments()
    mean = float(values.mean())
    return Moments(int(values.size), mean, float(np.square(values - mean).sum()))


def combine_all(parts) -> Moments:
    """Combine an iterable of Moments in order."""
    total = Moments()
    for part in parts:
        total = total.combine(part)
    return total


def shard_moments(tar_path: str) -> Moments:
    """Moments of every fbank in a shard, samples in tar (= row) order, streaming."""
    import io
    import tarfile

    from shards import format as fmt

    total = Moments()
    with tarfile.open(tar_path, mode="r|") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith("." + fmt.FBANK_SUFFIX):
                data = tar.extractfile(member).read()
                total = total.combine(sample_moments(np.load(io.BytesIO(data), allow_pickle=False)))
    return total
