"""Real test slides: pyramidal TIFFs written with tifffile, with known content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

GLASS = (242, 240, 244)
TISSUE = (205, 120, 170)


def write_pyramid(
    path: Path,
    image: np.ndarray,
    mpp: float | None = 0.25,
    downsamples: tuple[int, ...] = (1, 4),
    tile: int = 256,
    compression: str | None = "jpeg",
    resolution_unit: str = "CENTIMETER",
) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF (levels as successive pages, like scanners)."""
    kwargs: dict = {}
    if mpp is not None:
        per_unit = 1e4 if resolution_unit == "CENTIMETER" else 25400.0
        kwargs = {"resolution": (per_unit / mpp, per_unit / mpp), "resolutionunit": resolution_unit}
    ckw = {"compression": compression}
    if compression == "jpeg":
        ckw["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path) as tif:
        for i, ds in enumerate(downsamples):
            level = image if ds == 1 else _shrink(image, ds)
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                **ckw,
                **(kwargs if i == 0 else {}),
            )
    return path


def _shrink(image: np.ndarray, ds: int) -> np.ndarray:
    h, w = image.shape[:2]
    pil = Image.fromarray(image).resize((max(1, w // ds), max(1, h // ds)), Image.Resampling.BOX)
    return np.asarray(pil)


def tissue_image(
    width: int, height: int, boxes: list[tuple[int, int, int, int]], seed: int = 0
) -> np.ndarray:
    """Glass with textured pink 'tissue' rectangles ``(x, y, w, h)`` in pixels."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GLASS
    for x, y, w, h in boxes:
        noise = rng.integers(-25, 25, size=(h, w, 1))
        image[y : y + h, x : x + w] = np.clip(np.array(TISSUE) + noise, 0, 255)
    return image
