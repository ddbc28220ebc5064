"""Audio-visual retrieval metrics and the deterministic K-clips-per-class subset.

Two notions of a correct retrieval are computed and named apart:

- instance-level: the query's own paired clip must be retrieved (R@K, median rank);
- class-level: a retrieved clip is correct when it shares at least one class with the query (R@K,
  median rank); chance for R@1 is about 1/K with K balanced classes.

Ties are broken against the query (an equal-scoring wrong clip ranks first), so a collapsed model
whose embeddings are all equal gets the worst ranks, never perfect ones.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


class RetrievalInputError(ValueError):
    """Embeddings or labels that cannot be evaluated; the message says what is wrong."""


def cosine_similarity(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[Nq, D] x [Ni, D] -> [Nq, Ni] cosine similarities (vectors L2-normalised here)."""
    q = np.asarray(queries, dtype=np.float64)
    i = np.asarray(items, dtype=np.float64)
    if q.ndim != 2 or i.ndim != 2 or q.shape[1] != i.shape[1]:
        raise RetrievalInputError(f"embeddings must be [N, D] with the same D, got {q.shape} and "
                                  f"{i.shape}")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    i = i / np.maximum(np.linalg.norm(i, axis=1, keepdims=True), 1e-12)
    return q @ i.T


def instance_ranks(similarity: np.ndarray) -> np.ndarray:
    """1-based rank of item i for query i (the paired clip); ties count against the query."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise RetrievalInputError(f"similarity must be a non-empty square [N, N] matrix, got "
                                  f"{sim.shape}: queries and items must be the same clips in order")
    match = np.diag(sim)[:, None]
    return (sim >= match).sum(axis=1)  # includes the match itself: rank 1 when nothing ties or beats


def relevance_matrix(labels: Sequence[Sequence[int]]) -> np.ndarray:
    """[N, N] bool: clips i and j share at least one class."""
    n = len(labels)
    num_classes = 1 + max((max(l) for l in labels if len(l)), default=-1)
    hot = np.zeros((n, max(num_classes, 1)), dtype=bool)
    for row, classes in enumerate(labels):
        hot[row, list(classes)] = True
    return (hot.astype(np.int64) @ hot.T.astype(np.int64)) > 0


def class_ranks(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the best-ranked clip sharing a class with the query (0 when none does)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if relevant.shape != sim.shape:
        raise RetrievalInputError(f"relevance {relevant.shape} must match similarity {sim.shape}")
    best_relevant = np.where(relevant, sim, -np.inf).max(axis=1, keepdims=True)
    ranks = 1 + (np.where(relevant, -np.inf, sim) >= best_relevant).sum(axis=1)
    return np.where(relevant.any(axis=1), ranks, 0)


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose rank is in 1..k (queries with rank 0 have no relevant item)."""
    valid = ranks > 0
    return float(np.mean(ranks[valid] <= k)) if valid.any() else float("nan")


@dataclass
class DirectionMetrics:
    """Retrieval figures of one direction (e.g. audio->visual: audio queries, visual items)."""

    recall: dict[int, float]
    """Instance-level R@K: the paired clip is within the top K."""
    median_rank: float
    """Instance-level median rank of the paired clip (1 = perfect, N = worst)."""
    mean_rank: float
    class_recall: dict[int, float] = field(default_factory=dict)
    """Class-level R@K: a clip sharing a class with the query is within the top K."""
    class_median_rank: float = float("nan")
    num_queries: int = 0

    def flat(self, prefix: str) -> dict[str, float]:
        """{prefix}_r1, {prefix}_medr, {prefix}_class_r1, ... as plain floats."""
        out = {f"{prefix}_r{k}": v for k, v in self.recall.items()}
        out[f"{prefix}_medr"] = self.median_rank
        out[f"{prefix}_meanr"] = self.mean_rank
        out.update({f"{prefix}_class_r{k}": v for k, v in self.class_recall.items()})
        out[f"{prefix}_class_medr"] = self.class_median_rank
        return out


def direction_metrics(similarity: np.ndarray, labels: Sequence[Sequence[int]] | None = None,
                      ks: Sequence[int] = (1, 5, 10)) -> DirectionMetrics:
    """Instance-level (and, given labels, class-level) metrics of one similarity matrix."""
    ranks = instance_ranks(similarity)
    out = DirectionMetrics(recall={k: recall_at(ranks, k) for k in ks},
                           median_rank=float(np.median(ranks)), mean_rank=float(ranks.mean()),
                           num_queries=int(ranks.size))
    if labels is not None:
        if len(labels) != ranks.size:
            raise RetrievalInputError(f"{len(labels)} label lists for {ranks.size} clips")
        cranks = class_ranks(similarity, relevance_matrix(labels))
        out.class_recall = {k: recall_at(cranks, k) for k in ks}
        valid = cranks[cranks > 0]
        out.class_median_rank = float(np.median(valid)) if valid.size else float("nan")
    return out


def retrieval_metrics(audio: np.ndarray, visual: np.ndarray,
                      labels: Sequence[Sequence[int]] | None = None,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Both directions on paired embeddings (row i of audio and visual is the same clip):
    a2v_r1, a2v_medr, a2v_class_r1, ..., v2a_... (cosine similarity)."""
    if len(audio) != len(visual):
        raise RetrievalInputError(f"{len(audio)} audio and {len(visual)} visual embeddings: they "
                                  f"must be paired clip by clip")
    sim = cosine_similarity(audio, visual)
    out = direction_metrics(sim, labels, ks).flat("a2v")
    out.update(direction_metrics(sim.T, labels, ks).flat("v2a"))
    out["num_clips"] = int(len(audio))
    return out


def _order_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


@dataclass
class Subset:
    """Which clips a retrieval evaluation uses, and the classes that fell short of K."""

    indices: list[int]
    per_class: int
    short_classes: dict[int, int] = field(default_factory=dict)
    """class -> clips found, for classes with fewer than `per_class` candidates."""

    def summary(self) -> dict:
        return asdict(self) | {"indices": len(self.indices)}


def select_per_class(keys: Sequence[str], labels: Sequence[Sequence[int]], per_class: int,
                     seed: int = 0) -> Subset:
    """Pick up to `per_class` clips for every class, deterministically from keys and seed alone.

    Candidates are ordered by a hash of (seed, key), independent of the order clips were read in;
    classes are filled in ascending order, and a multi-label clip is used once (by the first class
    that takes it). Returned indices are sorted and refer to the input order.
    """
    if per_class < 1:
        raise RetrievalInputError(f"per_class must be >= 1, got {per_class}")
    if len(keys) != len(labels):
        raise RetrievalInputError(f"{len(keys)} keys for {len(labels)} label lists")
    if len(set(keys)) != len(keys):
        raise RetrievalInputError("duplicate keys: each clip must appear once (were shards read "
                                  "twice?)")
    order = sorted(range(len(keys)), key=lambda i: _order_key(seed, keys[i]))
    classes = sorted({c for l in labels for c in l})
    chosen: set[int] = set()
    short: dict[int, int] = {}
    for c in classes:
        taken = 0
        for i in order:
            if taken == per_class:
                break
            if i not in chosen and c in labels[i]:
                chosen.add(i)
                taken += 1
        if taken < per_class:
            short[int(c)] = taken
    return Subset(indices=sorted(chosen), per_class=per_class, short_classes=short)
