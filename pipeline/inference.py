"""Running a tile model over a tile dataset (no Lightning, no distributed sampling)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler


def predict_items(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Softmax probabilities (N, K) for every item of ``dataset``; NaN rows where unreadable."""
    from .data import collate

    model = model.to(device).eval()
    out = []
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SequentialSampler(dataset),
        num_workers=num_workers,
        collate_fn=_keep_index(collate),
    )
    k = None
    with torch.no_grad():
        for batch, present in loader:
            if len(batch["image"]):
                probs = model(batch["image"].to(device)).float().softmax(1).cpu().numpy()
                k = probs.shape[1]
            rows = np.full((len(present), k or len(model.classes)), np.nan)
            rows[present] = probs if len(batch["image"]) else rows[present]
            out.append(rows)
    return np.concatenate(out) if out else np.zeros((0, len(model.classes)))


def _keep_index(collate):
    def wrapped(batch):
        present = np.array([b is not None for b in batch])
        return collate(batch), present

    return wrapped
