"""Classification metrics from per-slide (or per-tile) probabilities (scikit-learn), for any
number of classes: two classes get the binary AUROC of the positive class and its
sensitivity at fixed specificities; more get the macro one-vs-rest AUROC."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score, roc_curve

SPECIFICITIES = (0.9, 0.95)


def auroc(probs: np.ndarray, labels: np.ndarray, k: int, positive: int = 0) -> float:
    """Binary AUROC of class ``positive`` (k = 2) or macro one-vs-rest AUROC (k > 2); NaN
    unless every class is present. For two classes the macro value is the same number."""
    if k < 2 or len(np.unique(labels)) < k:
        return math.nan
    if k == 2:
        return float(roc_auc_score(labels == positive, probs[:, positive]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(k))))


def sensitivity_at_specificity(
    probs: np.ndarray, labels: np.ndarray, positive: int, specificity: float
) -> float:
    """Largest sensitivity for the positive class whose specificity is at least the target."""
    truth = labels == positive
    if truth.all() or not truth.any():
        return math.nan
    fpr, tpr, _ = roc_curve(truth, probs[:, positive])
    ok = (1 - fpr) >= specificity
    return float(tpr[ok].max()) if ok.any() else 0.0


def binary_extras(probs: np.ndarray, labels: np.ndarray, positive: int) -> dict[str, float]:
    """Sensitivity at 90% and 95% specificity for the positive class."""
    return {
        f"sensitivity_at_specificity_{round(100 * s)}": sensitivity_at_specificity(
            probs, labels, positive, s
        )
        for s in SPECIFICITIES
    }


def slide_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], positive: int = 0
) -> dict[str, float]:
    """Balanced accuracy, AUROC (binary or macro), per-class recall and, for two classes,
    sensitivity at fixed specificity, of probabilities (N, K) against integer labels (N,)."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    pred = probs.argmax(1)
    k = len(classes)
    out = {
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "accuracy": float((pred == labels).mean()),
        "auroc_macro": auroc(probs, labels, k, positive),
    }
    if k == 2:
        out.update(binary_extras(probs, labels, positive))
    recalls = recall_score(labels, pred, labels=list(range(k)), average=None, zero_division=np.nan)
    for c, r in zip(classes, recalls, strict=True):
        out[f"recall_{c}"] = float(r)
    return out


def per_slide_mean(probs: np.ndarray, slide_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slide indices, mean tile probability per slide), slides in ascending index order."""
    slides = np.unique(slide_index)
    sums = np.zeros((slides.max() + 1, probs.shape[1]))
    np.add.at(sums, slide_index, probs)
    counts = np.bincount(slide_index, minlength=slides.max() + 1)
    return slides, sums[slides] / counts[slides, None]
