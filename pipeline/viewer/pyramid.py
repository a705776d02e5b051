"""A slide as a Deep Zoom pyramid of 256-px JPEG tiles, read on demand from the slide file.

The geometry is OpenSlide's ``DeepZoomGenerator(tile_size=256, overlap=0,
limit_bounds=False)``: level ``z`` halves level ``z + 1`` (rounding up) and the last level is
the slide's level 0, so a Leaflet ``CRS.Simple`` map addresses the same tiles. Pixels come
from the fast reader where the slide allows it (OpenSlide otherwise); the coarse levels are
cut from one cached overview image of at most ``OVERVIEW_SIDE`` px, so zooming out never
re-reads the whole slide. Only tiles that are asked for are read; the memory held is the
overview plus a bounded cache of encoded tiles.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.wsi.slide import Slide, resize

TILE = 256
OVERVIEW_SIDE = 2048
JPEG_QUALITY = 85


class TileOutOfRange(ValueError):
    """A tile address outside the pyramid."""


class SlidePyramid:
    """Deep Zoom tiles of one slide. Thread-safe: reads are serialised, encoding is not."""

    def __init__(self, path: str | Path, mpp: float | None = None, cache_tiles: int = 512):
        self.slide = Slide(path, mpp=mpp)
        w, h = self.slide.dimensions
        dims = [(w, h)]
        while dims[-1] != (1, 1):
            pw, ph = dims[-1]
            dims.append((max(1, math.ceil(pw / 2)), max(1, math.ceil(ph / 2))))
        self.level_dimensions: list[tuple[int, int]] = dims[::-1]
        self.max_level = len(dims) - 1
        self.overview_level = max(
            z for z, (lw, lh) in enumerate(self.level_dimensions) if max(lw, lh) <= OVERVIEW_SIDE
        )
        self._overview: np.ndarray | None = None
        self._lock = threading.Lock()
        self._overview_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._cache_tiles = cache_tiles

    def downsample(self, level: int) -> int:
        """Level-0 pixels per pixel of Deep Zoom ``level``."""
        return 2 ** (self.max_level - level)

    def tiles_across(self, level: int) -> tuple[int, int]:
        lw, lh = self.level_dimensions[level]
        return math.ceil(lw / TILE), math.ceil(lh / TILE)

    def check(self, level: int, col: int, row: int) -> None:
        """Raise ``TileOutOfRange`` unless ``(level, col, row)`` is a tile of the pyramid."""
        if not 0 <= level <= self.max_level:
            raise TileOutOfRange(f"level {level} is outside 0..{self.max_level}")
        cols, rows = self.tiles_across(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileOutOfRange(f"tile {col},{row} is outside level {level} ({cols}x{rows})")

    def pixels(self, level: int, col: int, row: int) -> np.ndarray:
        """The tile's RGB pixels (smaller than 256 px at the right and bottom edges)."""
        self.check(level, col, row)
        lw, lh = self.level_dimensions[level]
        out_w, out_h = min(TILE, lw - col * TILE), min(TILE, lh - row * TILE)
        if level <= self.overview_level:
            scale = 2 ** (self.overview_level - level)
            ov = self.overview()
            x, y = col * TILE * scale, row * TILE * scale
            crop = ov[y : y + out_h * scale, x : x + out_w * scale]
            return resize(np.ascontiguousarray(crop), out_w, out_h) if scale > 1 else crop
        d = self.downsample(level)
        return self._read(col * TILE * d, row * TILE * d, out_w, out_h, d)

    def _read(self, x: int, y: int, width: int, height: int, downsample: int) -> np.ndarray:
        """``width x height`` pixels at ``downsample`` from level-0 ``(x, y)``: read from the
        coarsest slide level at least as fine, then reduced by an exact factor where the
        pyramid allows (white past the slide's edge)."""
        downsamples = self.slide.level_downsamples
        src = max(
            (i for i, ds in enumerate(downsamples) if ds <= downsample * 1.01),
            key=lambda i: downsamples[i],
        )
        ds = downsamples[src]
        w, h = math.ceil(width * downsample / ds), math.ceil(height * downsample / ds)
        with self._lock:
            region = self.slide.read_region(x, y, src, w, h)
        return resize(region, width, height)

    def overview(self) -> np.ndarray:
        """The whole slide at the overview level, read once in chunks of 1024 px."""
        with self._overview_lock:
            if self._overview is None:
                self._overview = self._read_overview()
        return self._overview

    def _read_overview(self) -> np.ndarray:
        d = self.downsample(self.overview_level)
        lw, lh = self.level_dimensions[self.overview_level]
        image = np.empty((lh, lw, 3), np.uint8)
        step = 4 * TILE
        for oy in range(0, lh, step):
            for ox in range(0, lw, step):
                cw, ch = min(step, lw - ox), min(step, lh - oy)
                image[oy : oy + ch, ox : ox + cw] = self._read(ox * d, oy * d, cw, ch, d)
        return image

    def jpeg(self, level: int, col: int, row: int) -> bytes:
        """The tile as a 256 x 256 JPEG, white past the slide's edge; cached."""
        key = (level, col, row)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
        pixels = self.pixels(level, col, row)
        image = Image.fromarray(pixels)
        if pixels.shape[:2] != (TILE, TILE):
            canvas = Image.new("RGB", (TILE, TILE), "white")
            canvas.paste(image, (0, 0))
            image = canvas
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        data = buffer.getvalue()
        with self._lock:
            self._cache[key] = data
            if len(self._cache) > self._cache_tiles:
                self._cache.popitem(last=False)
        return data

    def close(self) -> None:
        self.slide.close()
