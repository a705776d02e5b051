"""Tissue detection on a low-resolution thumbnail.

Otsu's threshold on HSV saturation (blurred), minus near-black pixels and pen-like ink
(H&E never stains greener than red), then morphological closing and small-object removal.
Holes (vessels, cysts) are kept by default: dilated vessels are diagnostic in sarcomas.
A user mask (PNG) or QuPath GeoJSON polygons can replace or restrict the detection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import draw, filters, morphology

from pipeline.core.errors import UsageError


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection settings; lengths in µm so they do not depend on the thumbnail."""

    mask_mpp: float = 8.0
    blur_um: float = 16.0
    min_saturation: float = 0.04
    """Floor on the Otsu threshold, so a slide of almost only glass is not split on noise."""
    max_value_dark: float = 0.12
    """Pixels darker than this (HSV value) are slide edges, dirt or label, not tissue."""
    pen_green_over_red: int = 25
    """A pixel whose green exceeds its red by this much is ink (blue/green pen), not stain."""
    close_um: float = 24.0
    min_object_mm2: float = 0.02
    fill_holes: bool = False
    min_hole_mm2: float = 0.0005
    """Holes smaller than this are filled even when ``fill_holes`` is off (speckle)."""


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and its scale: mask pixel (i, j) covers level-0 pixels
    ``[j*downsample, (j+1)*downsample) x [i*downsample, (i+1)*downsample)``."""

    mask: np.ndarray
    downsample: float
    mpp: float

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * (self.mpp / 1000) ** 2


def _disk(radius_um: float, mpp: float) -> np.ndarray:
    return morphology.disk(max(1, round(radius_um / mpp)))


def pen_mask(rgb: np.ndarray, params: TissueParams = TissueParams()) -> np.ndarray:
    """Ink from marker pens (blue, green): green channel clearly above red."""
    r = rgb[..., 0].astype(np.int16)
    g = rgb[..., 1].astype(np.int16)
    return (g - r) > params.pen_green_over_red


def detect_tissue(rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail at ``mpp`` µm/px."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"))  # C code, ~20x skimage's rgb2hsv
    saturation = hsv[..., 1].astype(np.float32) / 255
    saturation = filters.gaussian(saturation, sigma=max(0.5, params.blur_um / mpp / 2))
    if float(saturation.max() - saturation.min()) < 1e-6:
        threshold = params.min_saturation
    else:
        threshold = max(filters.threshold_otsu(saturation), params.min_saturation)
    tissue = saturation > threshold
    ink = morphology.dilation(pen_mask(rgb, params), _disk(params.blur_um, mpp))
    tissue &= ~ink
    tissue &= hsv[..., 2] > params.max_value_dark * 255
    tissue = morphology.closing(tissue, _disk(params.close_um / 2, mpp))
    px_per_mm2 = (1000 / mpp) ** 2
    tissue = morphology.remove_small_objects(
        tissue, max_size=max(1, round(params.min_object_mm2 * px_per_mm2))
    )
    max_hole = tissue.size if params.fill_holes else round(params.min_hole_mm2 * px_per_mm2)
    return morphology.remove_small_holes(tissue, max_size=max(1, max_hole))


def mask_from_image(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A user mask image (non-zero = tissue) resized to ``shape`` (rows, cols)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            resized = image.convert("L").resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read the mask image ({err}); give a PNG") from None
    return np.asarray(resized) > 0


def mask_from_geojson(path: str | Path, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Rasterise QuPath GeoJSON (Polygon / MultiPolygon, level-0 pixel coordinates).

    Holes (inner rings) are subtracted. Features of other geometry types are rejected.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read GeoJSON ({err})") from None
    features = doc.get("features", [doc]) if isinstance(doc, dict) else doc
    mask = np.zeros(shape, bool)
    for i, feature in enumerate(features):
        geometry = feature.get("geometry", feature) if isinstance(feature, dict) else None
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind == "Polygon":
            polygons = [geometry["coordinates"]]
        elif kind == "MultiPolygon":
            polygons = geometry["coordinates"]
        else:
            raise UsageError(
                f"{path}: feature {i} has geometry {kind!r}; only Polygon and MultiPolygon "
                "annotations can define tissue (draw areas, not points or lines, in QuPath)"
            )
        for rings in polygons:
            for ring_index, ring in enumerate(rings):
                xy = np.asarray(ring, float) / downsample
                rr, cc = draw.polygon(xy[:, 1], xy[:, 0], shape)
                mask[rr, cc] = ring_index == 0
    return mask


def tissue_mask(
    thumbnail: np.ndarray,
    downsample: float,
    mpp: float,
    params: TissueParams = TissueParams(),
    user_mask: str | Path | None = None,
    user_mask_mode: str = "replace",
) -> TissueMask:
    """Detect tissue on ``thumbnail`` and apply a user mask (``replace`` or ``restrict``)."""
    detected = detect_tissue(thumbnail, mpp, params)
    if user_mask is not None:
        user_mask = Path(user_mask)
        if user_mask.suffix.lower() in {".geojson", ".json"}:
            given = mask_from_geojson(user_mask, detected.shape, downsample)
        else:
            given = mask_from_image(user_mask, detected.shape)
        if user_mask_mode == "replace":
            detected = given
        elif user_mask_mode == "restrict":
            detected &= given
        else:
            raise UsageError(f"unknown mask mode {user_mask_mode!r}: use replace or restrict")
    return TissueMask(mask=detected, downsample=downsample, mpp=mpp)
