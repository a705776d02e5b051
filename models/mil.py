"""Gated-attention multiple-instance learning (ABMIL, Ilse et al. 2018) on padded bags.

A bag is one slide's tile features (N, D); batches are padded to the longest bag with a
mask, so several slides train together. ``attention`` exposes per-tile weights for
heatmaps. Hyper-parameters are plain values (exported with ``models.checkpoint``).
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from .meta import ModelMeta
from .metrics import slide_metrics
from .ood import MahalanobisOOD
from .outputs import SlideOutput


class ABMIL(pl.LightningModule):
    def __init__(self, meta: ModelMeta):
        super().__init__()
        self.save_hyperparameters({"config": meta.to_dict()})
        self.meta = meta
        self.classes = list(meta.classes)
        dim, hidden = int(meta.feature_dim), int(meta.attention_dim)
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(meta.dropout))
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, len(self.classes))
        self.loss = nn.CrossEntropyLoss(label_smoothing=meta.label_smoothing)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def attention(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention weights (B, N) summing to 1 over unmasked tiles, projected tiles)."""
        h = self.project(features)
        scores = self.attention_w(
            torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        )
        scores = scores.squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1), h

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        weights, h = self.attention(features, mask)
        return self.classifier((weights.unsqueeze(-1) * h).sum(1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["features"], batch["mask"])
        loss = self.loss(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["features"], batch["mask"])
        self.log(
            "val/loss", self.loss(logits, batch["label"]), batch_size=len(logits), sync_dist=True
        )
        self._val.append((logits.float().softmax(1).detach(), batch["label"].detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs = torch.cat([p for p, _ in self._val]).cpu().numpy()
        labels = torch.cat([y for _, y in self._val]).cpu().numpy()
        self._val.clear()
        positive = self.meta.scheme().positive_index
        for key, value in slide_metrics(probs, labels, self.classes, positive).items():
            if not math.isnan(value):
                self.log(f"val/slide_{key}", value, prog_bar=key == "balanced_accuracy")

    def configure_optimizers(self):
        m = self.meta
        optimizer = torch.optim.AdamW(self.parameters(), lr=m.lr, weight_decay=m.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def pad_bags(bags: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (N_i, D) bags into (B, max N, D) features and a (B, max N) mask."""
    longest = max(len(b) for b in bags)
    dim = bags[0].shape[1]
    features = torch.zeros(len(bags), longest, dim)
    mask = torch.zeros(len(bags), longest, dtype=torch.bool)
    for i, bag in enumerate(bags):
        features[i, : len(bag)] = torch.as_tensor(bag, dtype=torch.float32)
        mask[i, : len(bag)] = True
    return features, mask


class MILBundle(nn.Module):
    """What an exported MIL model holds: the frozen tile encoder and the ABMIL head."""

    slide_inputs = ("features",)

    def __init__(self, meta: ModelMeta, encoder: nn.Module | None = None):
        super().__init__()
        if encoder is None:
            from .backbones import build_backbone

            encoder = build_backbone(meta.backbone)[0]
        self.encoder = encoder
        self.mil = ABMIL(meta)
        self.meta = meta
        self.ood = MahalanobisOOD(len(meta.classes), meta.ood["dim"]) if meta.ood else None
        self.classes = self.mil.classes

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Slide logits (1, K) from a stack of normalised tiles (N, 3, H, W)."""
        return self.mil(self.encoder(tiles).unsqueeze(0))

    def forward_tiles(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.encoder(images)}

    def forward_slide(self, outputs: dict[str, np.ndarray]) -> SlideOutput:
        """Attention-pooled slide probabilities; every tile carries the slide's."""
        device = next(self.mil.parameters()).device
        features = torch.as_tensor(outputs["features"], dtype=torch.float32, device=device)
        features = features.unsqueeze(0)
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=device)
        with torch.no_grad():
            weights, _ = self.mil.attention(features, mask)
            slide = self.mil(features, mask).float().softmax(1).cpu().numpy()[0]
            ood = self.ood(features[0]).cpu().numpy() if self.ood is not None else None
        tiles = np.repeat(slide[None], features.shape[1], axis=0)
        return SlideOutput(tiles, slide, weights[0].float().cpu().numpy(), ood)
