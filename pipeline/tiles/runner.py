"""The one inference runner: stream a tile dataset through a model, batch by batch.

Used by prediction, embedding, evaluation and calibration alike. ``step`` maps a batch of
normalised tiles to named tensors (a model's ``forward_tiles``); the runner keeps the keys
asked for, puts NaN rows where a tile could not be read, and times reading apart from the
model. Tiles are decoded ahead of the model by the engine's threads (``engine``), or, for
JPEG slides on a GPU, decoded on the device itself (``jpeg_batches``); the model runs under the
engine's autocast and memory layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.core.ahead import read_ahead
from pipeline.tiles.dataset import collate_with_mask
from pipeline.tiles.engine import Engine, plan_engine

Step = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Batches = Iterator[tuple[torch.Tensor, np.ndarray]]


@dataclass
class TileRun:
    outputs: dict[str, np.ndarray]
    """Each kept key: (N, ...) float32 in dataset order, NaN rows for unreadable tiles."""
    readable: np.ndarray
    """(N,) bool: the tile could be read."""
    read_s: float
    model_s: float
    decoded_on: str = "cpu threads"
    """How tiles were decoded: ``cpu threads`` (one by one), or ``batched on <device>``
    (``jpeg_batches``)."""


def run_tiles(
    step: Step,
    dataset: Dataset,
    keys: Sequence[str],
    batch_size: int = 64,
    engine: Engine | None = None,
    normalise: tuple[Sequence[float], Sequence[float]] | None = None,
) -> TileRun:
    """Run ``step`` over every item of ``dataset`` (items are dicts with ``image``, or None).

    ``normalise`` (mean, std) says the dataset's transform is that normalisation alone, which
    lets the engine decode JPEG slides on its device instead (``jpeg_batches``).
    """
    engine = engine or plan_engine("cpu")
    batches, decoded_on = None, "cpu threads"
    if engine.decode == "device" and normalise is not None:
        from pipeline.tiles.jpeg_batches import device_batches

        batches = device_batches(dataset, batch_size, engine.device, *normalise)
        decoded_on = f"batched on {engine.device}" if batches is not None else decoded_on
    if batches is None:
        batches = threaded_batches(dataset, batch_size, engine.workers, pin=engine.cuda)
    try:
        return _run(step, batches, keys, engine, decoded_on)
    finally:
        from pipeline.tiles.dataset import close_handles

        close_handles()


def _run(step: Step, batches: Batches, keys: Sequence[str], engine: Engine, decoded_on: str):
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    present: list[np.ndarray] = []
    model_s, start = 0.0, time.perf_counter()
    with torch.no_grad():
        for images, readable in batches:
            present.append(readable)
            if not readable.any():
                for k in keys:
                    chunks[k].append(None)
                continue
            t = time.perf_counter()
            with engine.autocast():
                out = step(engine.inputs(images))
            for k in keys:
                chunks[k].append(out[k].float().cpu().numpy())
            model_s += time.perf_counter() - t
    readable = np.concatenate(present) if present else np.zeros(0, bool)
    outputs = {k: _fill(chunks[k], present, len(readable)) for k in keys}
    return TileRun(outputs, readable, time.perf_counter() - start - model_s, model_s, decoded_on)


def threaded_batches(dataset: Dataset, batch_size: int, workers: int, pin: bool = False) -> Batches:
    """Collated batches of ``dataset`` in order, each read by one of ``workers`` threads,
    at most ``2 * workers`` batches ahead of the consumer (0 workers: read in line); ``pin``
    puts them in page-locked memory for asynchronous copies to a GPU."""
    n = len(dataset)
    ranges = (range(i, min(i + batch_size, n)) for i in range(0, n, batch_size))

    def read(indices: range) -> tuple[torch.Tensor, np.ndarray]:
        batch, readable = collate_with_mask([dataset[i] for i in indices])
        images = batch["image"]
        return (images.pin_memory() if pin and len(images) else images), readable

    yield from read_ahead(read, ranges, workers, 2 * workers, "fascicle-decode")


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
