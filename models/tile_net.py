"""The tile model as inference sees it: backbone, head and out-of-distribution detector, in
plain PyTorch. ``TileNet`` is what a model file loads into (so prediction never imports
Lightning, ~260 MB per process); ``TileClassifier`` trains the same parts with Lightning and
saves a state dict ``TileNet`` reads unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .backbones import build_backbone
from .meta import ModelMeta
from .ood import MahalanobisOOD
from .outputs import SlideOutput


def add_tile_parts(module: nn.Module, meta: ModelMeta, load_weights: bool) -> None:
    """Give ``module`` the tile model's parts: ``backbone``, ``head`` (linear, or one hidden
    ReLU layer for an MLP probe), ``ood`` (or None) and the weighted ``loss``."""
    module.meta = meta
    module.classes = list(meta.classes)
    backbone, dim, _, _ = build_backbone(
        meta.backbone,
        meta.pretrained and load_weights,
        meta.weights_path if load_weights else None,
        meta.weights_partial,
    )
    module.backbone = backbone
    k, hidden = len(module.classes), meta.head_hidden
    module.head = (
        nn.Sequential(nn.Dropout(meta.dropout), nn.Linear(dim, k))
        if not hidden
        else nn.Sequential(
            nn.Dropout(meta.dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, k)
        )
    )
    module.feature_dim = dim
    module.ood = MahalanobisOOD(k, meta.ood["dim"]) if meta.ood else None
    weights = meta.class_weights
    module.loss = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32) if weights else None,
        label_smoothing=meta.label_smoothing,
    )


class TileInference:
    """What every tile model gives the pipeline (``models.outputs.SlideModel``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def slide_inputs(self) -> tuple[str, ...]:
        return ("probs", "ood") if self.ood is not None else ("probs",)

    def forward_tiles(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        out = {"features": features, "probs": self.head(features).float().softmax(1)}
        if self.ood is not None:
            out["ood"] = self.ood(features)
        return out

    def forward_slide(self, outputs: dict[str, np.ndarray]) -> SlideOutput:
        return SlideOutput(tile_probs=outputs["probs"], ood=outputs.get("ood"))


class TileNet(TileInference, nn.Module):
    """A trained tile model for inference (weights from a model file)."""

    def __init__(self, meta: ModelMeta, load_weights: bool = False):
        nn.Module.__init__(self)
        add_tile_parts(self, meta, load_weights)
