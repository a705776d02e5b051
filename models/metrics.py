"""Slide-level classification metrics from per-slide probabilities (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score


def slide_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Balanced accuracy, macro one-vs-rest AUROC (NaN unless every class is present) and
    per-class recall of slide probabilities (N, K) against integer labels (N,)."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    pred = probs.argmax(1)
    k = len(classes)
    out = {
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "accuracy": float((pred == labels).mean()),
    }
    present = np.unique(labels)
    if len(present) == k and k > 1:
        out["auroc_macro"] = float(
            roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(k)))
        )
    else:
        out["auroc_macro"] = float("nan")
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
