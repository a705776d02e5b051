"""The one inference runner: stream a tile dataset through a model, batch by batch.

Used by prediction, embedding, evaluation and calibration alike. ``step`` maps a batch of
normalised tiles to named tensors (a model's ``forward_tiles``); the runner keeps the keys
asked for, puts NaN rows where a tile could not be read, and times reading apart from the
model. CUDA runs use pinned memory and fp16 autocast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from pipeline.core.errors import UsageError

Step = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class TileRun:
    outputs: dict[str, np.ndarray]
    """Each kept key: (N, ...) float32 in dataset order, NaN rows for unreadable tiles."""
    readable: np.ndarray
    """(N,) bool: the tile could be read."""
    read_s: float
    model_s: float


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; refuse CUDA where there is none."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available; use cpu")
    return device


def run_tiles(
    step: Step,
    dataset: Dataset,
    keys: Sequence[str],
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
) -> TileRun:
    """Run ``step`` over every item of ``dataset`` (items are dicts with ``image``, or None)."""
    from pipeline.tiles.dataset import worker_init

    cuda = device.startswith("cuda")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SequentialSampler(dataset),
        num_workers=workers,
        collate_fn=_collate_with_mask,
        worker_init_fn=worker_init if workers else None,
        pin_memory=cuda,
    )
    amp = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    present: list[np.ndarray] = []
    model_s, start = 0.0, time.perf_counter()
    with torch.no_grad():
        for batch, readable in loader:
            present.append(readable)
            if not readable.any():
                for k in keys:
                    chunks[k].append(None)
                continue
            t = time.perf_counter()
            with amp:
                out = step(batch["image"].to(device, non_blocking=True))
            for k in keys:
                chunks[k].append(out[k].float().cpu().numpy())
            model_s += time.perf_counter() - t
    readable = np.concatenate(present) if present else np.zeros(0, bool)
    outputs = {k: _fill(chunks[k], present, len(readable)) for k in keys}
    return TileRun(outputs, readable, time.perf_counter() - start - model_s, model_s)


def _collate_with_mask(batch: list[dict | None]) -> tuple[dict, np.ndarray]:
    from pipeline.tiles.dataset import collate

    return collate(batch), np.array([b is not None for b in batch])


def _fill(chunks: list, present: list[np.ndarray], n: int) -> np.ndarray:
    """Scatter per-batch rows of readable tiles into an (n, ...) array with NaN elsewhere."""
    shape = next((c.shape[1:] for c in chunks if c is not None), (0,))
    out = np.full((n, *shape), np.nan, np.float32)
    start = 0
    for chunk, mask in zip(chunks, present, strict=True):
        if chunk is not None:
            out[start : start + len(mask)][mask] = chunk
        start += len(mask)
    return out
