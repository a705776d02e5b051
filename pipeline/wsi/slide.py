"""``Slide``: one whole-slide image with a validated resolution, whatever its format.

>>> with Slide("case.svs") as slide:                       # doctest: +SKIP
...     level = slide.best_level_for_mpp(0.5)
...     thumb, downsample = slide.thumbnail(mpp=8.0)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import InvalidResolutionError, SlideError
from pipeline.wsi.jpeg_tiles import JpegLevel
from pipeline.wsi.readers import Reader, open_reader
from pipeline.wsi.resolution import Resolution, resolve_mpp

LEVEL_MPP_TOLERANCE = 0.025
"""A pyramid level up to 2.5% coarser than the requested resolution is still used (the tile is
then resized up by at most that much); scanners' nominal 0.5 µm/px is often 0.504-0.51."""
THUMBNAIL_CHUNK = 4096
DEFAULT_BUDGET_MB = 1024


def memory_budget_bytes() -> int:
    """The most one thumbnail or mask may take: ``FASCICLE_MEMORY_BUDGET_MB`` (1024)."""
    try:
        return int(float(os.environ.get("FASCICLE_MEMORY_BUDGET_MB", DEFAULT_BUDGET_MB)) * 2**20)
    except ValueError:
        return DEFAULT_BUDGET_MB * 2**20


"""Thumbnails are assembled from regions of at most this many level pixels per side."""


class Slide:
    """A whole-slide image: pyramid geometry, resolution (µm/px) and pixel access.

    Args:
        path: slide file (any OpenSlide format, or PNG/JPEG for small inputs).
        mpp: microns per pixel override, used instead of the file's metadata.
        backend: ``auto`` (fast tifffile path where possible), ``openslide``, ``tifffile``
            or ``image``.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, backend: str = "auto") -> None:
        self.path = Path(path)
        self._reader: Reader = open_reader(self.path, backend)
        try:
            self.resolution: Resolution = resolve_mpp(self.path, self._reader.properties, mpp)
        except Exception:
            self._reader.close()
            raise

    # -- geometry ---------------------------------------------------------------------------
    @property
    def slide_id(self) -> str:
        """File name without its extension."""
        name = self.path.name
        return name[: -len(self.path.suffix)] if self.path.suffix else name

    @property
    def backend(self) -> str:
        return self._reader.name

    @property
    def properties(self):
        return self._reader.properties

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._reader.level_dimensions[0]

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._reader.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._reader.level_downsamples

    @property
    def mpp(self) -> float:
        return self.resolution.mpp

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Scanned region ``(x, y, width, height)`` in level-0 pixels (OpenSlide bounds)."""
        props = self.properties
        w, h = self.dimensions
        try:
            return (
                int(props["openslide.bounds-x"]),
                int(props["openslide.bounds-y"]),
                int(props["openslide.bounds-width"]),
                int(props["openslide.bounds-height"]),
            )
        except (KeyError, ValueError):
            return (0, 0, w, h)

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """Coarsest level whose resolution is at least ``target_mpp`` (never up-sample)."""
        fine_enough = [
            i
            for i in range(len(self.level_downsamples))
            if self.level_mpp(i) <= target_mpp * (1 + LEVEL_MPP_TOLERANCE)
        ]
        if not fine_enough:
            raise InvalidResolutionError(
                self.path,
                f"scanned at {self.mpp:.4g} µm/px, coarser than the {target_mpp:g} µm/px asked for "
                "(tiles would have to be up-sampled)",
                f"use a model trained at {self.mpp:.3g} µm/px or coarser, or tile with --mpp "
                f"{self.mpp:.3g} or coarser; if the slide's resolution is wrong, correct it with "
                "--slide-mpp",
            )
        return max(fine_enough, key=self.level_mpp)

    # -- pixels -----------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB ``uint8`` region at ``level``; ``x, y`` in level-0 pixels; white off the image."""
        return self._reader.read_region(x, y, level, width, height)

    def jpeg_level(self, level: int) -> JpegLevel | None:
        """The level's stored JPEG tiles, for decoding elsewhere (e.g. on a GPU); None unless
        the slide is read by the tiled-TIFF fast path and the level is JPEG-compressed."""
        jpeg_level = getattr(self._reader, "jpeg_level", None)
        return jpeg_level(level) if jpeg_level else None

    def tile_bytes(self, level: int, index: int) -> bytes | None:
        """Stored bytes of tile ``index`` of ``level`` (a ``jpeg_level`` slide only)."""
        return self._reader.tile_bytes(level, index)

    def thumbnail(self, mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide at about ``mpp`` µm/px (never finer than level 0).

        Read chunk by chunk from the best level, so memory stays bounded even on slides
        without low-resolution levels. Returns the image and its downsample from level 0.
        """
        mpp = max(mpp, self.mpp)
        level = self.best_level_for_mpp(mpp)
        w0, h0 = self.dimensions
        downsample = mpp / self.mpp
        out_w, out_h = max(1, math.ceil(w0 / downsample)), max(1, math.ceil(h0 / downsample))
        budget = memory_budget_bytes()
        if out_w * out_h * 3 > budget:
            raise SlideError(
                self.path,
                f"declares {w0} x {h0} px; a {out_w} x {out_h} thumbnail would need "
                f"{out_w * out_h * 3 / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB budget",
                "check the file is a real slide; raise FASCICLE_MEMORY_BUDGET_MB if it is",
            )
        out = np.empty((out_h, out_w, 3), np.uint8)
        scale = downsample / self.level_downsamples[level]  # level px per output px
        step = max(1, int(THUMBNAIL_CHUNK / scale))  # output px per chunk
        lw, lh = self.level_dimensions[level]
        for oy in range(0, out_h, step):
            for ox in range(0, out_w, step):
                cw, ch = min(step, out_w - ox), min(step, out_h - oy)
                lx0, ly0 = round(ox * scale), round(oy * scale)
                lx1 = min(round((ox + cw) * scale), lw)
                ly1 = min(round((oy + ch) * scale), lh)
                ds = self.level_downsamples[level]
                region = self.read_region(
                    round(lx0 * ds), round(ly0 * ds), level, max(1, lx1 - lx0), max(1, ly1 - ly0)
                )
                out[oy : oy + ch, ox : ox + cw] = resize(region, cw, ch)
        return out, downsample

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> None:
        raise TypeError("Slide handles cannot be pickled; open the slide in each worker instead")

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"Slide({str(self.path)!r}, {w}x{h} px, {self.mpp:.4g} µm/px "
            f"[{self.resolution.source}], {len(self.level_dimensions)} levels, {self.backend})"
        )


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average resize (anti-aliased when shrinking); a no-op at the same size."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    pil = Image.fromarray(image)
    if w % width == 0 and h % height == 0 and w // width == h // height:
        return np.asarray(pil.reduce(w // width))
    return np.asarray(pil.resize((width, height), Image.Resampling.BOX))
