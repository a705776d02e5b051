"""``TileClassifier``: a backbone and a linear head trained on tiles, judged on slides.

Cross-entropy (optional class weights, label smoothing), AdamW with linear warm-up then
cosine decay, and at the end of each validation epoch the slide-level metrics from mean
tile probabilities per slide (gathered across ranks): the checkpoint is chosen on slide
balanced accuracy. All hyper-parameters are plain values so the exported model loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch

from .meta import ModelMeta
from .metrics import per_slide_mean, slide_metrics
from .tile_net import TileInference, add_tile_parts


class TileClassifier(TileInference, pl.LightningModule):
    def __init__(self, meta: ModelMeta, load_weights: bool = True):
        super().__init__()
        self.save_hyperparameters({"config": meta.to_dict()})
        add_tile_parts(self, meta, load_weights)
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_slide_metrics: dict[str, float] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        self.log("train/tile_accuracy", acc, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"])
        self.log("val/loss", loss, sync_dist=True, batch_size=len(logits))
        probs = logits.float().softmax(1)
        self._val.append((probs.detach(), batch["label"].detach(), batch["slide"].detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs = torch.cat([v[0] for v in self._val])
        labels = torch.cat([v[1] for v in self._val])
        slides = torch.cat([v[2] for v in self._val])
        self._val.clear()
        probs, labels, slides = (self._gather(t) for t in (probs, labels, slides))
        tile_acc = float((probs.argmax(1) == labels).float().mean())
        p, y, s = probs.cpu().numpy(), labels.cpu().numpy(), slides.cpu().numpy()
        ids, slide_probs = per_slide_mean(p, s)
        first = {int(i): int(y[np.flatnonzero(s == i)[0]]) for i in ids}
        labels = np.array([first[int(i)] for i in ids])
        positive = self.meta.scheme().positive_index
        metrics = slide_metrics(slide_probs, labels, self.classes, positive)
        metrics["tile_accuracy"] = tile_acc
        self.last_slide_metrics = metrics
        for key, value in metrics.items():
            if not math.isnan(value):
                self.log(
                    f"val/slide_{key}" if key != "tile_accuracy" else "val/tile_accuracy",
                    value,
                    prog_bar=key == "balanced_accuracy",
                )

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a tensor of varying length from every rank."""
        if self.trainer is None or self.trainer.world_size == 1:
            return t
        n = torch.tensor([len(t)], device=t.device)
        counts = self.all_gather(n).flatten()
        padded = torch.zeros((int(counts.max()), *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: len(t)] = t
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r, : int(c)] for r, c in enumerate(counts)])

    def configure_optimizers(self):
        m = self.meta
        optimizer = torch.optim.AdamW(self.parameters(), lr=m.lr, weight_decay=m.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total - 1, int(m.warmup_epochs * per_epoch))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
