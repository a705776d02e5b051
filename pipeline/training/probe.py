"""Probes on frozen features: standardised features, then class-balanced logistic regression
(``linear``) or a one-hidden-layer ReLU network (``mlp``), their regularisation chosen by
patient-grouped inner cross-validation, exported as an ordinary fascicle tile model (the
encoder plus the probe as its head) that ``fascicle predict`` and ``fascicle evaluate`` use
like any other.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neural_network import MLPClassifier

C_GRID = (0.01, 0.1, 1.0, 10.0)
"""Logistic regression: inverse L2 strength."""
ALPHA_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
"""MLP: L2 penalty."""
DEFAULT_C = 1.0
DEFAULT_ALPHA = 1e-3
PROBES = ("linear", "mlp")


@dataclass
class Probe:
    """A fitted probe: ``probs(features)`` gives (N, K) for all K classes."""

    mean: np.ndarray
    scale: np.ndarray
    model: object
    """A fitted ``LogisticRegression`` or ``MLPClassifier``."""
    k: int
    c: float
    """The regularisation chosen: C (linear) or alpha (mlp)."""
    chosen_by: str
    """``inner grouped CV (n folds)`` or why the default was kept."""

    @property
    def kind(self) -> str:
        return "mlp" if isinstance(self.model, MLPClassifier) else "linear"

    def probs(self, features: np.ndarray) -> np.ndarray:
        p = self.model.predict_proba((features - self.mean) / self.scale)
        out = np.zeros((len(features), self.k))
        out[:, self.model.classes_] = p
        return out

    def hidden(self) -> tuple[np.ndarray, np.ndarray]:
        """MLP: (H, D) weights and (H,) biases of the hidden layer on raw features."""
        w, b = self.model.coefs_[0].T, self.model.intercepts_[0]
        return w / self.scale, b - (w * (self.mean / self.scale)).sum(1)

    def output(self) -> tuple[np.ndarray, np.ndarray]:
        """MLP: (K, H) weights and (K,) biases of the output layer, as softmax logits."""
        coef, bias = self.model.coefs_[1].T, self.model.intercepts_[1]
        return self._logits(coef, bias, coef.shape[1])

    def _logits(self, coef, bias, width: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.model.classes_) == 2:  # one unit: the logit of classes_[1]
            coef, bias = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, bias[0]])
        w = np.zeros((self.k, width))
        b = np.full(self.k, -30.0)  # a class absent from training gets ~0 probability
        w[self.model.classes_], b[self.model.classes_] = coef, bias
        return w, b

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, D) weights and (K,) biases on raw features whose softmax is ``probs``."""
        coef = self.model.coef_ / self.scale
        bias = self.model.intercept_ - (self.model.coef_ * (self.mean / self.scale)).sum(1)
        return self._logits(coef, bias, coef.shape[1])


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int, kind: str = "linear", hidden=256):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        if kind == "linear":
            model = LogisticRegression(
                C=c, class_weight="balanced", max_iter=3000, random_state=seed
            )
            return model.fit(x, y)
        counts = np.bincount(y)
        weights = len(y) / (len(counts[counts > 0]) * counts[y])  # class-balanced
        model = MLPClassifier((hidden,), alpha=c, max_iter=400, random_state=seed)
        return model.fit(x, y, sample_weight=weights)


def inner_folds(y: np.ndarray, groups: np.ndarray, most: int = 3) -> int:
    """Inner folds possible with every class in every training part: 0 when too few patients."""
    per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
    n = min(most, min(per_class)) if per_class else 0
    return n if n >= 2 and len(per_class) >= 2 else 0


def fit_probe(
    features: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    k: int,
    seed: int = 0,
    kind: str = "linear",
    hidden: int = 256,
) -> Probe:
    """Fit on ``features`` (N, D) with labels ``y`` and patient ``groups``; the regularisation
    (C for ``linear``, alpha for ``mlp``) by grouped inner CV on log loss (ties: the stronger
    regularisation)."""
    mean = features.mean(0)
    scale = np.maximum(features.std(0), 1e-6)
    x = (features - mean) / scale
    n = inner_folds(y, groups)
    grid = C_GRID if kind == "linear" else ALPHA_GRID[::-1]  # strongest regularisation first
    name, default = ("C", DEFAULT_C) if kind == "linear" else ("alpha", DEFAULT_ALPHA)
    c, how = default, f"default {name}={default} (too few patients per class for inner CV)"
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs two or more classes in its training data")
    if n:
        splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
        losses = []
        for candidate in grid:
            loss = []
            for train, test in splitter.split(x, y, groups):
                fold = _fit(x[train], y[train], candidate, seed, kind, hidden)
                p = np.zeros((len(test), k))
                p[:, fold.classes_] = fold.predict_proba(x[test])
                p = np.clip(p, 1e-9, 1)
                loss.append(log_loss(y[test], p / p.sum(1, keepdims=True), labels=list(range(k))))
            losses.append(float(np.mean(loss)))
        best = min(range(len(grid)), key=lambda i: (round(losses[i], 6), i))
        c, how = grid[best], f"inner grouped CV ({n} folds, log loss)"
    return Probe(mean, scale, _fit(x, y, c, seed, kind, hidden), k, c, how)


def probe_head(probe: Probe, feature_dim: int) -> dict[str, torch.Tensor]:
    """The probe as the state of a ``TileClassifier`` head: ``head.1`` its Linear, and for an
    MLP ``head.3`` the output layer after the ReLU."""
    layers = [probe.hidden(), probe.output()] if probe.kind == "mlp" else [probe.linear()]
    if layers[0][0].shape[1] != feature_dim:
        raise ValueError(f"probe has {layers[0][0].shape[1]} features, encoder: {feature_dim}")
    state = {}
    for index, (w, b) in zip((1, 3), layers, strict=False):
        state[f"head.{index}.weight"] = torch.tensor(w, dtype=torch.float32)
        state[f"head.{index}.bias"] = torch.tensor(b, dtype=torch.float32)
    return state


def export_probe(
    path,
    probe: Probe,
    config,
    features,
    labels: list[str],
    temperature: float = 1.0,
    extra: dict | None = None,
    ood: tuple | None = None,
):
    """Write the encoder and the probe as a fascicle tile model at ``path``; ``ood``: a fitted
    ``MahalanobisOOD`` on the encoder's features and its settings, so predictions flag tissue
    unlike the training tiles."""
    from models.checkpoint import save_model
    from models.meta import ModelMeta
    from models.tile_classifier import TileClassifier
    from pipeline import __version__

    d, m, scheme = config.data, config.model, config.scheme()
    folded = {x: scheme.class_of(x) for x in sorted(set(labels)) if x not in scheme.classes}
    meta = ModelMeta(
        kind="tile",
        classes=list(scheme.classes),
        label_map=folded or None,
        rest_class=scheme.rest,
        positive_class=scheme.positive,
        class_balance=[1.0 / len(scheme.classes)] * len(scheme.classes),
        target_mpp=d.target_mpp,
        tile_px=d.tile_px,
        min_tissue=d.min_tissue,
        mean=list(features.mean),
        std=list(features.std),
        backbone=m.encoder,
        pretrained=m.pretrained,
        weights_path=m.weights_path,
        weights_partial=m.weights_partial,
        dropout=0.0,
        aggregator="mean",
        temperature=float(temperature),
        encoder_source=features.encoder["weights"],
        package_version=__version__,
        seed=config.seed,
        head_hidden=probe.model.hidden_layer_sizes[0] if probe.kind == "mlp" else None,
        extra={"recipe": f"{probe.kind} probe", "probe_regularisation": probe.c, **(extra or {})},
        ood=ood[1] if ood else None,
    )
    torch.manual_seed(0)  # the same random-init encoder the features came from (tests)
    model = TileClassifier(meta)
    state = model.state_dict() | probe_head(probe, model.feature_dim)
    if ood:
        state |= {f"ood.{k}": v for k, v in ood[0].state_dict().items()}
    model.load_state_dict(state)
    return save_model(path, model, meta)
