"""Classification metrics of the AudioSet/VGGSound protocols: mAP, mAUC, d-prime, top-1.

Pure functions of a score matrix and a multi-hot target matrix (both [N, C]). Classes on which a
metric is undefined (no positive clip for AP; only one kind of clip for AUC) are excluded from that
metric's mean and listed in the result, so a small evaluation set never silently averages zeros in.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score


class MetricsInputError(ValueError):
    """Scores and targets that cannot be evaluated; the message says what is wrong."""


@dataclass
class ClassificationMetrics:
    """Means over the classes where each metric is defined; per-class values keep NaN elsewhere."""

    mAP: float
    """Mean of sklearn's per-class average precision over classes with at least one positive."""
    mAUC: float
    """Mean per-class ROC AUC over classes with both positives and negatives."""
    d_prime: float
    """norm.ppf(mAUC) * sqrt(2)."""
    top1: float
    """Fraction of labelled clips whose highest-scoring class is one of their labels (= accuracy for
    single-label data such as VGGSound)."""
    num_samples: int
    num_classes: int
    ap_classes: int
    """Classes that entered mAP."""
    auc_classes: int
    """Classes that entered mAUC."""
    excluded_no_positives: list[int] = field(default_factory=list)
    """Class indices with no positive clip: excluded from mAP and mAUC."""
    excluded_no_negatives: list[int] = field(default_factory=list)
    """Class indices where every clip is positive: excluded from mAUC."""
    per_class_ap: list[float] = field(default_factory=list)
    per_class_auc: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        """The scalar figures (no per-class lists)."""
        out = asdict(self)
        for name in ("per_class_ap", "per_class_auc"):
            out.pop(name)
        return out


def check_inputs(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to float64 scores and 0/1 targets of the same [N, C] shape."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise MetricsInputError(f"scores {scores.shape} and targets {targets.shape} must both be "
                                f"[samples, classes] of the same shape")
    if scores.shape[0] == 0:
        raise MetricsInputError("no samples to evaluate (empty scores); check the shards and --split")
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise MetricsInputError(f"{bad} non-finite scores (NaN/inf): the model diverged or the input "
                                f"is corrupt")
    if not np.all((targets == 0) | (targets == 1)):
        raise MetricsInputError("targets must be multi-hot 0/1 (mixup or label smoothing must not be "
                                "applied to evaluation targets)")
    return scores, targets.astype(np.int64)


def per_class_average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """sklearn's average precision of each class; NaN for classes without a positive clip."""
    scores, targets = check_inputs(scores, targets)
    out = np.full(scores.shape[1], np.nan)
    for c in np.flatnonzero(targets.sum(axis=0) > 0):
        out[c] = average_precision_score(targets[:, c], scores[:, c])
    return out


def per_class_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """sklearn's ROC AUC of each class; NaN where a class has no positive or no negative clip."""
    scores, targets = check_inputs(scores, targets)
    positives = targets.sum(axis=0)
    out = np.full(scores.shape[1], np.nan)
    for c in np.flatnonzero((positives > 0) & (positives < targets.shape[0])):
        out[c] = roc_auc_score(targets[:, c], scores[:, c])
    return out


def d_prime(auc: float) -> float:
    """The sensitivity index of an AUC: norm.ppf(auc) * sqrt(2)."""
    return float(norm.ppf(auc) * np.sqrt(2.0))


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of clips with at least one label whose argmax class is one of their labels."""
    scores, targets = check_inputs(scores, targets)
    labelled = targets.sum(axis=1) > 0
    if not labelled.any():
        return float("nan")
    best = scores[labelled].argmax(axis=1)
    return float(targets[labelled][np.arange(best.size), best].mean())


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def classification_metrics(scores: np.ndarray, targets: np.ndarray) -> ClassificationMetrics:
    """mAP, mAUC, d-prime and top-1 of scores [N, C] (any monotone score) against 0/1 targets."""
    scores, targets = check_inputs(scores, targets)
    ap = per_class_average_precision(scores, targets)
    auc = per_class_auc(scores, targets)
    positives = targets.sum(axis=0)
    mauc = _nanmean(auc)
    return ClassificationMetrics(
        mAP=_nanmean(ap), mAUC=mauc, d_prime=d_prime(mauc) if np.isfinite(mauc) else float("nan"),
        top1=top1_accuracy(scores, targets), num_samples=int(scores.shape[0]),
        num_classes=int(scores.shape[1]), ap_classes=int(np.sum(~np.isnan(ap))),
        auc_classes=int(np.sum(~np.isnan(auc))),
        excluded_no_positives=[int(c) for c in np.flatnonzero(positives == 0)],
        excluded_no_negatives=[int(c) for c in np.flatnonzero(positives == targets.shape[0])],
        per_class_ap=[float(v) for v in ap], per_class_auc=[float(v) for v in auc])
