"""Tiles read on the fly from slides, for any model that consumes them.

No tile images are written to disk: each DataLoader worker process and each decode thread
opens its own slide handles (cached per thread, never pickled) and reads tiles at the
coordinates of ``tiles/*.h5``; ``close_handles`` closes them after an inference run. A slide
that cannot be read is logged once and its tiles are dropped by ``collate``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.core.errors import SlideError
from pipeline.wsi.manifest import SlideEntry
from pipeline.wsi.slide import Slide
from pipeline.wsi.tiling import TileSpec, read_tile

log = logging.getLogger(__name__)


@dataclass
class SlideTiles:
    """One slide's tiles and label, as training needs them."""

    entry: SlideEntry
    label: int
    split: str
    coords: np.ndarray
    spec: TileSpec


# -- reading tiles in workers and threads ------------------------------------------------
_LOCAL = threading.local()
_OPENED: list[Slide] = []
_OPENED_LOCK = threading.Lock()
_BROKEN: set[str] = set()


def thread_handles() -> dict[tuple[str, float | None, str], Slide]:
    """This thread's open slides (a reader's tile cache is not shared between threads)."""
    if not hasattr(_LOCAL, "handles"):
        _LOCAL.handles = {}
    return _LOCAL.handles


def _open(entry: SlideEntry, backend: str) -> Slide:
    """This thread's handle for a slide (DataLoader workers and decode threads each get their
    own)."""
    key = (str(entry.path), entry.mpp, backend)
    handles = thread_handles()
    slide = handles.get(key)
    if slide is None:
        slide = handles[key] = Slide(entry.path, mpp=entry.mpp, backend=backend)
        with _OPENED_LOCK:
            _OPENED.append(slide)
    return slide


def close_handles() -> None:
    """Close every slide this process opened for reading tiles (once its threads are done) and
    forget which were unreadable (a later run may find them mended)."""
    with _OPENED_LOCK:
        opened = _OPENED[:]
        _OPENED.clear()
        _BROKEN.clear()
    for slide in opened:
        slide.close()
    thread_handles().clear()


class TileDataset(Dataset):
    """Items are (slide index, x, y); returns a transformed tile, its label and slide index.

    A slide that cannot be read is logged once and its items come back as ``None``, which
    ``collate`` drops: one bad slide never stops training.
    """

    def __init__(
        self, slides: list[SlideTiles], items: np.ndarray, transform, backend: str = "auto"
    ):
        self.slides, self.items, self.transform, self.backend = slides, items, transform, backend

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> np.ndarray | None:
        s, x, y = (int(v) for v in self.items[index])
        slide = self.slides[s]
        if slide.entry.slide_id in _BROKEN:
            return None
        try:
            return read_tile(_open(slide.entry, self.backend), x, y, slide.spec)
        except (SlideError, OSError) as err:
            _BROKEN.add(slide.entry.slide_id)
            log.warning("skipping slide %s from now on: %s", slide.entry.slide_id, err)
            return None

    def __getitem__(self, index: int) -> dict | None:
        tile = self.read(index)
        if tile is None:
            return None
        s = int(self.items[index][0])
        image = self.transform(image=np.ascontiguousarray(tile))["image"]
        return {"image": image, "label": self.slides[s].label, "slide": s}


def worker_init(_: int) -> None:
    """One thread per DataLoader worker for OpenCV and BLAS (N workers on N cores, not N²),
    and a distinct, reproducible augmentation seed per worker (from torch's worker seed)."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(1)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(info.seed % 2**32))


def collate(batch: list[dict | None]) -> dict:
    kept = [b for b in batch if b is not None]
    if not kept:
        return {
            "image": torch.zeros(0),
            "label": torch.zeros(0, dtype=torch.long),
            "slide": torch.zeros(0, dtype=torch.long),
        }
    return {
        "image": torch.stack([b["image"] for b in kept]),
        "label": torch.tensor([b["label"] for b in kept], dtype=torch.long),
        "slide": torch.tensor([b["slide"] for b in kept], dtype=torch.long),
    }


def collate_with_mask(batch: list[dict | None]) -> tuple[dict, np.ndarray]:
    """``collate`` and which items could be read (the inference runner keeps their places)."""
    return collate(batch), np.array([b is not None for b in batch])


def all_items(slides: list[SlideTiles], indices: list[int]) -> np.ndarray:
    """(slide index, x, y) of every tile of the given slides."""
    parts = [
        np.column_stack([np.full(len(slides[i].coords), i), slides[i].coords]) for i in indices
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), np.int64)


def eval_items(slides: list[SlideTiles], indices: list[int], per_slide: int) -> np.ndarray:
    """A fixed, evenly spread subset of up to ``per_slide`` tiles of each slide."""
    parts = []
    for i in indices:
        n = len(slides[i].coords)
        pick = np.unique(np.linspace(0, n - 1, min(n, per_slide)).round().astype(int))
        parts.append(np.column_stack([np.full(len(pick), i), slides[i].coords[pick]]))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), np.int64)


def sample_tiles(
    slides: list[SlideTiles], n: int, seed: int, backend: str = "auto"
) -> list[np.ndarray]:
    """Up to ``n`` raw tiles from training slides (for normalisation statistics)."""
    rng = np.random.default_rng(seed)
    train = [i for i, s in enumerate(slides) if s.split == "train"]
    items = all_items(slides, train)
    pick = rng.choice(len(items), min(n, len(items)), replace=False)
    dataset = TileDataset(slides, items[pick], transform=None, backend=backend)
    return [t for t in (dataset.read(i) for i in range(len(dataset))) if t is not None]
