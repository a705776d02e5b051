"""From tile probabilities to calibrated slide probabilities: pure numerics.

Aggregators: mean, top-k mean, quantile, majority vote, attention (weights from a MIL
model). Temperature scaling (one scalar fitted on validation slides by minimising the
negative log-likelihood) calibrates the slide probabilities; ECE measures calibration.
"""

from __future__ import annotations

import itertools

import numpy as np

AGGREGATORS = ("mean", "top_k", "quantile", "vote", "attention")


def aggregate(
    tile_probs: np.ndarray,
    method: str = "mean",
    top_k_fraction: float = 0.2,
    quantile: float = 0.75,
    attention: np.ndarray | None = None,
) -> np.ndarray:
    """Slide probabilities (K,) from tile probabilities (N, K); rows need not be calibrated."""
    p = np.asarray(tile_probs, float)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError("tile_probs must be a non-empty (tiles, classes) array")
    if method == "mean":
        out = p.mean(0)
    elif method == "top_k":
        k = max(1, round(top_k_fraction * len(p)))
        out = np.sort(p, axis=0)[-k:].mean(0)
    elif method == "quantile":
        out = np.quantile(p, quantile, axis=0)
    elif method == "vote":
        out = np.bincount(p.argmax(1), minlength=p.shape[1]) / len(p)
    elif method == "attention":
        if attention is None or len(attention) != len(p):
            raise ValueError("attention aggregation needs one weight per tile")
        w = np.exp(attention - np.max(attention))
        out = (w[:, None] * p).sum(0) / w.sum()
    else:
        raise ValueError(f"unknown aggregation {method!r}; choose from {', '.join(AGGREGATORS)}")
    out = np.clip(out, 1e-6, None)
    return out / out.sum()


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Soften (T > 1) or sharpen (T < 1) probabilities: softmax(log p / T)."""
    logits = np.log(np.clip(np.asarray(probs, float), 1e-12, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the NLL of ``labels`` (indices) under ``probs`` (N, K)."""
    from scipy.optimize import minimize_scalar

    probs, labels = np.asarray(probs, float), np.asarray(labels, int)

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
    return float(ece)
