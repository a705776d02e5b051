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

from .metrics import slide_metrics


class ABMIL(pl.LightningModule):
    def __init__(self, hparams: dict):
        super().__init__()
        self.save_hyperparameters({"config": hparams})
        h = hparams
        self.classes = list(h["classes"])
        dim, hidden = int(h["feature_dim"]), int(h.get("attention_dim", 128))
        self.project = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(h.get("dropout", 0.1))
        )
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, len(self.classes))
        self.loss = nn.CrossEntropyLoss(label_smoothing=h.get("label_smoothing", 0.0))
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def config(self) -> dict:
        return self.hparams["config"]

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
        for key, value in slide_metrics(probs, labels, self.classes).items():
            if not math.isnan(value):
                self.log(f"val/slide_{key}", value, prog_bar=key == "balanced_accuracy")

    def configure_optimizers(self):
        h = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
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

    def __init__(self, hparams: dict, encoder: nn.Module | None = None):
        super().__init__()
        if encoder is None:
            from .backbones import build_backbone

            encoder = build_backbone(hparams["backbone"])[0]
        self.encoder = encoder
        self.mil = ABMIL(hparams)
        self.classes = self.mil.classes

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Slide logits (1, K) from a stack of normalised tiles (N, 3, H, W)."""
        return self.mil(self.encoder(tiles).unsqueeze(0))
