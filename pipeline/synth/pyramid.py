"""Pyramidal tiled JPEG TIFF writer that never holds a whole level in memory.

Level-0 tiles come from a callback, in row-major order, and are written as they are made;
each is also box-averaged into the lower levels, which accumulate in disk-backed memmaps
(1/16, 1/256, ... of level 0) and are written after it. OpenSlide reads the result as a
generic tiled TIFF with the resolution from the TIFF tags.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.atomic import atomic_path

TILE = 256
LEVEL_FACTOR = 4


def _box_reduce(tile: np.ndarray, factor: int) -> np.ndarray:
    """Area-average by an integer factor (PIL's reduce; partial edge blocks included)."""
    return np.asarray(Image.fromarray(tile).reduce(factor))


def level_shapes(width: int, height: int, min_side: int = 512) -> list[tuple[int, int]]:
    """(height, width) of each level: level 0, then /4 until the long side is < ``min_side``."""
    shapes = [(height, width)]
    ds = LEVEL_FACTOR
    while max(width, height) // ds >= min_side and ds <= TILE:
        shapes.append((height // ds, width // ds))
        ds *= LEVEL_FACTOR
    return shapes


def write_pyramid(
    path: str | Path,
    width: int,
    height: int,
    mpp: float,
    render: Callable[[int, int, int, int], np.ndarray],
    quality: int = 90,
    description: str = "",
) -> None:
    """Write a ``width`` x ``height`` slide rendered tile by tile by ``render(x, y, w, h)``.

    ``render`` returns an RGB uint8 array of shape (h, w, 3) for the level-0 region at
    (x, y); it is called once per 256-px tile. The file appears atomically at ``path``.
    """
    import tifffile

    shapes = level_shapes(width, height)
    with tempfile.TemporaryDirectory(prefix="fascicle-pyramid-") as scratch:
        lower = [
            np.lib.format.open_memmap(
                Path(scratch) / f"level{i}.npy", mode="w+", dtype=np.uint8, shape=(h, w, 3)
            )
            for i, (h, w) in enumerate(shapes[1:], start=1)
        ]

        def level0() -> Iterator[np.ndarray]:
            for y in range(0, height, TILE):
                for x in range(0, width, TILE):
                    w, h = min(TILE, width - x), min(TILE, height - y)
                    tile = render(x, y, w, h)
                    for i, level in enumerate(lower, start=1):
                        f = LEVEL_FACTOR**i
                        small = _box_reduce(tile, f)
                        level[
                            y // f : y // f + small.shape[0], x // f : x // f + small.shape[1]
                        ] = small[: level.shape[0] - y // f, : level.shape[1] - x // f]
                    if (w, h) != (TILE, TILE):
                        padded = np.zeros((TILE, TILE, 3), np.uint8)
                        padded[:h, :w] = tile
                        tile = padded
                    yield tile

        def tiles_of(level: np.ndarray) -> Iterator[np.ndarray]:
            lh, lw = level.shape[:2]
            for y in range(0, lh, TILE):
                for x in range(0, lw, TILE):
                    tile = np.zeros((TILE, TILE, 3), np.uint8)
                    part = level[y : y + TILE, x : x + TILE]
                    tile[: part.shape[0], : part.shape[1]] = part
                    yield tile

        common = {
            "dtype": np.uint8,
            "tile": (TILE, TILE),
            "photometric": "rgb",
            "compression": "jpeg",
            "compressionargs": {"level": quality},
            "metadata": None,
        }
        big = width * height * 3 > 2**31
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=big) as tif:
            tif.write(
                level0(),
                shape=(height, width, 3),
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
                description=description or None,
                **common,
            )
            for level in lower:
                level.flush()
                tif.write(tiles_of(level), shape=level.shape, subfiletype=1, **common)
