"""Out-of-distribution tiles: class-conditional Gaussians with one shared covariance on the
model's penultimate features (Lee et al., NeurIPS 2018, "A simple unified framework for
detecting out-of-distribution samples and adversarial attacks").

A tile's score is its smallest squared Mahalanobis distance to a class mean; the covariance
is Ledoit–Wolf shrunk (scikit-learn) so a few hundred tiles give a stable precision matrix.
The threshold is a high quantile of the scores of validation tiles (held-out slides of the
training distribution), so about 1 − quantile of in-distribution tiles exceed it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MahalanobisOOD(nn.Module):
    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(n_classes, dim))
        self.register_buffer("precision", torch.eye(dim))

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, n_classes: int) -> MahalanobisOOD:
        """From (N, D) features of training tiles and their class indices (N,)."""
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, np.float64)
        module = cls(n_classes, features.shape[1])
        means = np.stack(
            [
                features[labels == k].mean(0) if (labels == k).any() else features.mean(0)
                for k in range(n_classes)
            ]
        )
        centred = features - means[labels]
        precision = LedoitWolf().fit(centred).precision_
        module.means.copy_(torch.as_tensor(means, dtype=torch.float32))
        module.precision.copy_(torch.as_tensor(precision, dtype=torch.float32))
        return module

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) smallest squared Mahalanobis distance of each feature vector to a class."""
        features = features.float()
        projected = features @ self.precision  # (B, D)
        quad = (projected * features).sum(1, keepdim=True)  # f P f
        cross = projected @ self.means.T  # f P mu
        means_quad = ((self.means @ self.precision) * self.means).sum(1)  # mu P mu
        return (quad - 2 * cross + means_quad[None]).min(1).values


def fit_detector(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    n_classes: int,
    quantile: float = 0.95,
) -> tuple[MahalanobisOOD, dict]:
    """The detector and its settings (threshold at ``quantile`` of validation scores)."""
    detector = MahalanobisOOD.fit(train_features, train_labels, n_classes)
    with torch.no_grad():
        val = detector(torch.as_tensor(val_features)).numpy()
    return detector, detector_settings(detector, val, quantile, len(train_features))


def detector_settings(
    detector: MahalanobisOOD, scores: np.ndarray, quantile: float, n_train: int
) -> dict:
    """What the model file records of a detector: its threshold at ``quantile`` of held-out
    ``scores`` and what it was fitted on."""
    return {
        "method": "mahalanobis",
        "dim": int(detector.means.shape[1]),
        "quantile": quantile,
        "threshold": float(np.quantile(scores, quantile)),
        "n_train_tiles": n_train,
        "n_val_tiles": len(scores),
    }
