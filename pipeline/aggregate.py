"""From tile probabilities to a calibrated slide call, with "indeterminate" when unsure.

Aggregators: mean, top-k mean, quantile, majority vote, attention (weights from a MIL
model). Temperature scaling (one scalar fitted on validation slides by minimising the
negative log-likelihood) calibrates the slide probabilities. ``decide`` turns the fused
differential into a call and says why when it is indeterminate.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .differential import Differential
from .errors import UsageError
from .knowledge import CONFIGS

AGGREGATORS = ("mean", "top_k", "quantile", "vote", "attention")


@dataclass(frozen=True)
class CallConfig:
    """Thresholds of ``configs/calls.yaml``."""

    aggregation: str = "mean"
    top_k_fraction: float = 0.2
    quantile: float = 0.75
    min_probability: float = 0.7
    min_tiles: int = 20
    min_agreement: float = 0.3
    image_prob_floor: float = 0.05

    @classmethod
    def load(cls, path: str | Path | None = None) -> CallConfig:
        path = Path(path) if path else CONFIGS / "calls.yaml"
        try:
            doc = yaml.safe_load(path.read_text()) or {}
            config = cls(**doc)
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"{path}: cannot read call settings ({err})") from None
        except TypeError as err:
            raise UsageError(f"{path}: {err}; known keys: {', '.join(asdict(cls()))}") from None
        if config.aggregation not in AGGREGATORS:
            raise UsageError(f"{path}: aggregation must be one of {', '.join(AGGREGATORS)}")
        return config


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


@dataclass
class Call:
    """The slide's call: a class (or an entity outside the image model), or indeterminate."""

    label: str
    entity: str
    probability: float
    indeterminate: bool
    reasons: list[str] = field(default_factory=list)
    outside_scope: bool = False

    @property
    def text(self) -> str:
        return "indeterminate" if self.indeterminate else self.label


def agreement(image_probs: dict[str, float], diff_ihc_only: Differential) -> float:
    """Bhattacharyya coefficient between image-only and IHC-only class distributions."""
    classes = diff_ihc_only.kb.image_classes
    ihc = diff_ihc_only.class_posterior()
    a = np.array([image_probs.get(c, 0.0) for c in classes], float)
    b = np.array([ihc[c] for c in classes], float)
    if a.sum() <= 0 or b.sum() <= 0:
        return 0.0
    return float(np.sqrt((a / a.sum()) * (b / b.sum())).sum())


def decide(
    diff: Differential,
    config: CallConfig,
    n_tiles: int | None = None,
    image_probs: dict[str, float] | None = None,
    ihc_only: Differential | None = None,
) -> Call:
    """Call the slide from the fused differential; indeterminate with reasons when unsure."""
    classes = diff.class_posterior()
    label, probability = max(classes.items(), key=lambda kv: kv[1])
    members = [i for i, e in enumerate(diff.entities) if (diff.kb.image_class_of[e] or e) == label]
    entity = diff.entities[max(members, key=lambda i: diff.posterior[i])]
    reasons = []
    if probability < config.min_probability:
        reasons.append(
            f"leading class {label} has probability {probability:.2f} < {config.min_probability}"
        )
    if n_tiles is not None and n_tiles < config.min_tiles:
        reasons.append(f"only {n_tiles} tissue tiles (< {config.min_tiles})")
    if image_probs is not None and ihc_only is not None and ihc_only.terms:
        bc = agreement(image_probs, ihc_only)
        if bc < config.min_agreement:
            img_top = max(image_probs, key=image_probs.get)
            ihc_top = max(diff.kb.image_classes, key=ihc_only.class_posterior().get)
            reasons.append(
                f"image and IHC conflict (agreement {bc:.2f} < {config.min_agreement}): "
                f"image favours {img_top}, IHC favours {ihc_top}"
            )
    return Call(
        label=label,
        entity=entity,
        probability=probability,
        indeterminate=bool(reasons),
        reasons=reasons,
        outside_scope=diff.kb.image_class_of[entity] is None,
    )
