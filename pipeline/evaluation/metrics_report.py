"""Evaluation metrics with patient-level bootstrap confidence intervals, and their plots.

Point estimates come from scikit-learn; each metric's 95% interval resamples *patients*
(with all their slides or tiles), never tiles independently.
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from models.metrics import auroc, binary_extras
from pipeline.tiles.aggregate import expected_calibration_error


def point_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    decided: np.ndarray | None = None,
    positive: int = 0,
) -> dict[str, float]:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, macro AUROC, ECE and,
    with ``decided`` (False = indeterminate), the indeterminate rate and decided accuracy."""
    k = len(classes)
    pred = probs.argmax(1)
    out = {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred))
        if len(labels)
        else math.nan,
        "ece": expected_calibration_error(probs, labels),
    }
    out["auroc_macro"] = auroc(probs, labels, k, positive)
    if k == 2:
        out.update(binary_extras(probs, labels, positive))
    p, r, f, _ = precision_recall_fscore_support(
        labels, pred, labels=list(range(k)), zero_division=0
    )
    for i, c in enumerate(classes):
        out[f"precision_{c}"], out[f"recall_{c}"], out[f"f1_{c}"] = (
            float(p[i]),
            float(r[i]),
            float(f[i]),
        )
    if decided is not None:
        out["indeterminate_rate"] = float(1 - decided.mean()) if len(decided) else math.nan
        out["decided_accuracy"] = (
            float((pred[decided] == labels[decided]).mean()) if decided.any() else math.nan
        )
    return out


def bootstrap(
    probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    classes: list[str],
    decided: np.ndarray | None = None,
    n: int = 1000,
    seed: int = 0,
    positive: int = 0,
) -> dict[str, list[float]]:
    """95% percentile intervals per metric from ``n`` resamples of the groups (patients)."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in unique]
    samples: dict[str, list[float]] = {}
    with warnings.catch_warnings():  # a resample may hold one class only: metrics say NaN
        warnings.simplefilter("ignore")
        for _ in range(n):
            pick = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
            d = decided[pick] if decided is not None else None
            metrics = point_metrics(probs[pick], labels[pick], classes, d, positive)
            for key, value in metrics.items():
                samples.setdefault(key, []).append(value)
    intervals = {}
    for key, values in samples.items():
        v = np.array(values, float)
        v = v[~np.isnan(v)]
        intervals[key] = (
            [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
            if len(v)
            else [math.nan] * 2
        )
    return intervals


def confusion(probs: np.ndarray, labels: np.ndarray, k: int) -> list[list[int]]:
    return confusion_matrix(labels, probs.argmax(1), labels=list(range(k))).tolist()


def save_plots(
    out, probs: np.ndarray, labels: np.ndarray, classes: list[str], prefix: str
) -> list[str]:
    """ROC curves, confusion matrix and reliability diagram as PNG; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from pipeline.core.atomic import atomic_path

    names = []

    def save(fig, name):
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for i, c in enumerate(classes):
        if 0 < (labels == i).sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels == i, probs[:, i])
            ax.plot(fpr, tpr, label=c)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC ({prefix}, one vs rest)",
    )
    ax.legend(fontsize=8)
    save(fig, f"{prefix}_roc.png")
    cm = np.array(confusion(probs, labels, len(classes)))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center")
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="true",
        title=f"confusion ({prefix})",
    )
    ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    save(fig, f"{prefix}_confusion.png")
    conf, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, 11)
    centres, accs = [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            centres.append(conf[sel].mean())
            accs.append(correct[sel].mean())
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot(centres, accs, "o-")
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"reliability ({prefix}), ECE {expected_calibration_error(probs, labels):.3f}",
    )
    save(fig, f"{prefix}_reliability.png")
    return names


def report_level(
    out: Path, level: str, probs, labels, groups, classes, decided, n_boot, positive: int = 0
) -> dict:
    """Metrics, patient-bootstrap intervals, confusion matrix and plots of one level."""
    metrics = point_metrics(probs, labels, classes, decided, positive)
    intervals = (
        bootstrap(probs, labels, groups, classes, decided, n=n_boot, positive=positive)
        if n_boot
        else {}
    )
    plots = save_plots(out, probs, labels, classes, level)
    return {
        "n": len(labels),
        "n_patients": len(np.unique(groups)),
        "metrics": metrics,
        "ci95": intervals,
        "confusion_matrix": {
            "classes": classes,
            "rows_true_columns_predicted": confusion(probs, labels, len(classes)),
        },
        "plots": plots,
    }
