"""Tile grids at a physical resolution, kept where the tissue mask covers enough of a tile.

Coordinates are level-0 pixels of each tile's top-left corner, stored per slide in
``tiles/<slide_id>.h5`` in the CLAM/TRIDENT layout (dataset ``coords`` with attributes
``patch_level``, ``patch_size``, ``patch_size_level0``) so other tools can read them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import EmptySlideError
from pipeline.core.hashing import params_digest
from pipeline.wsi.slide import Slide, resize
from pipeline.wsi.tissue import TissueMask, TissueParams, tissue_mask

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TilingParams:
    """How a slide is cut into tiles."""

    target_mpp: float = 0.5
    tile_px: int = 224
    overlap_px: int = 0
    """Overlap between neighbouring tiles, in pixels at the target resolution."""
    min_tissue: float = 0.5
    """Minimum fraction of a tile covered by tissue for it to be kept."""
    tissue: TissueParams = field(default_factory=TissueParams)

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(f"overlap_px must be in [0, tile_px), got {self.overlap_px}")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.target_mpp <= 0 or self.tile_px <= 0:
            raise ValueError("target_mpp and tile_px must be positive")

    def hash(self, **extra: object) -> str:
        """Stable hash of the parameters (plus ``extra`` inputs such as an mpp override)."""
        return params_digest({"v": FORMAT_VERSION, **asdict(self), **extra})


@dataclass(frozen=True)
class TileSpec:
    """Geometry of the tiles of one slide."""

    target_mpp: float
    tile_px: int
    level: int
    patch_size: int
    """Pixels read at ``level`` per tile side (CLAM's ``patch_size``)."""
    patch_size_level0: int
    stride_level0: int

    @classmethod
    def from_attrs(cls, attrs: dict) -> TileSpec:
        """The spec stored in a tiles ``.h5`` (see ``save_tiles``)."""
        return cls(
            target_mpp=float(attrs["target_mpp"]),
            tile_px=int(attrs["tile_px"]),
            level=int(attrs["patch_level"]),
            patch_size=int(attrs["patch_size"]),
            patch_size_level0=int(attrs["patch_size_level0"]),
            stride_level0=int(attrs["stride_level0"]),
        )

    @classmethod
    def for_slide(cls, slide: Slide, params: TilingParams) -> TileSpec:
        level = slide.best_level_for_mpp(params.target_mpp)
        ds = slide.level_downsamples[level]
        scale = params.target_mpp / slide.mpp  # level-0 px per target px
        patch_size = max(1, round(params.tile_px * scale / ds))
        stride = (params.tile_px - params.overlap_px) * scale
        step = round(ds) if abs(ds - round(ds)) < 1e-6 else 1
        # level-0 sizes are multiples of the level's downsample, so tiles align with its pixels
        return cls(
            target_mpp=params.target_mpp,
            tile_px=params.tile_px,
            level=level,
            patch_size=patch_size,
            patch_size_level0=round(patch_size * ds),
            stride_level0=max(step, round(stride / step) * step),
        )


def grid(bounds: tuple[int, int, int, int], spec: TileSpec) -> np.ndarray:
    """Top-left corners (N x 2, level-0 x, y) of every whole tile inside ``bounds``."""
    bx, by, bw, bh = bounds
    size, stride = spec.patch_size_level0, spec.stride_level0
    xs = bx + stride * np.arange(max(0, (bw - size) // stride + 1), dtype=np.int64)
    ys = by + stride * np.arange(max(0, (bh - size) // stride + 1), dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)  # row-major: neighbours in a row share decoded slide tiles
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def tissue_fraction(mask: TissueMask, coords: np.ndarray, size_level0: float) -> np.ndarray:
    """Exact fraction of each square tile covered by the (piecewise-constant) mask.

    Uses the summed-area table: its bilinear interpolation at fractional positions is the
    exact integral of the mask, so no per-tile loop and no rounding of tile edges.
    """
    m = mask.mask
    h, w = m.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = m.cumsum(0).cumsum(1)

    def integral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0, w)
        y = np.clip(y, 0, h)
        x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
        y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
        fx, fy = x - x0, y - y0
        return (
            sat[y0, x0] * (1 - fx) * (1 - fy)
            + sat[y0, x0 + 1] * fx * (1 - fy)
            + sat[y0 + 1, x0] * (1 - fx) * fy
            + sat[y0 + 1, x0 + 1] * fx * fy
        )

    d = mask.downsample
    x0 = coords[:, 0] / d
    y0 = coords[:, 1] / d
    x1, y1 = x0 + size_level0 / d, y0 + size_level0 / d
    area = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    return np.clip(area / (size_level0 / d) ** 2, 0.0, 1.0)


@dataclass
class TileSet:
    """The kept tiles of one slide, with what is needed to read them and to check them."""

    slide_id: str
    coords: np.ndarray
    tissue_fraction: np.ndarray
    spec: TileSpec
    mask: TissueMask
    thumbnail: np.ndarray
    slide_mpp: float
    mpp_source: str
    params_hash: str
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.coords)


def tile_slide(
    slide: Slide,
    params: TilingParams = TilingParams(),
    user_mask: str | Path | None = None,
    user_mask_mode: str = "replace",
) -> TileSet:
    """Detect tissue and lay the tile grid over it. Raises ``EmptySlideError`` if none."""
    start = time.perf_counter()
    spec = TileSpec.for_slide(slide, params)
    thumb, downsample = slide.thumbnail(params.tissue.mask_mpp)
    mask = tissue_mask(
        thumb, downsample, slide.mpp * downsample, params.tissue, user_mask, user_mask_mode
    )
    if not mask.mask.any():
        raise EmptySlideError(
            slide.path,
            "no tissue found",
            "check the QC image; lower --min-tissue or supply --tissue-mask if tissue is faint",
        )
    coords = grid(slide.bounds, spec)
    fraction = tissue_fraction(mask, coords, spec.patch_size_level0)
    keep = fraction >= params.min_tissue
    override = slide.resolution.mpp if slide.resolution.source == "override" else None
    return TileSet(
        slide_id=slide.slide_id,
        coords=coords[keep],
        tissue_fraction=fraction[keep].astype(np.float32),
        spec=spec,
        mask=mask,
        thumbnail=thumb,
        slide_mpp=slide.mpp,
        mpp_source=slide.resolution.source,
        params_hash=params.hash(mpp_override=override, user_mask=str(user_mask or "")),
        seconds=time.perf_counter() - start,
    )


def read_tile(slide: Slide, x: int, y: int, spec: TileSpec) -> np.ndarray:
    """The ``tile_px`` x ``tile_px`` RGB tile whose level-0 top-left corner is ``(x, y)``."""
    region = slide.read_region(x, y, spec.level, spec.patch_size, spec.patch_size)
    return resize(region, spec.tile_px, spec.tile_px)


def save_tiles(path: str | Path, tiles: TileSet, **attrs: object) -> None:
    """Write ``tiles`` to ``path`` (HDF5, atomically) in the CLAM/TRIDENT-compatible layout."""
    import h5py

    spec = tiles.spec
    meta = {
        "patch_level": spec.level,
        "patch_size": spec.patch_size,
        "patch_size_level0": spec.patch_size_level0,
        "stride_level0": spec.stride_level0,
        "target_mpp": spec.target_mpp,
        "tile_px": spec.tile_px,
        "slide_mpp": tiles.slide_mpp,
        "mpp_source": tiles.mpp_source,
        "params_hash": tiles.params_hash,
        "slide_id": tiles.slide_id,
        "tissue_mm2": tiles.mask.area_mm2,
        "seconds": tiles.seconds,
        "format_version": FORMAT_VERSION,
        **attrs,
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        coords = f.create_dataset("coords", data=tiles.coords.astype(np.int64).reshape(-1, 2))
        f.create_dataset("tissue_fraction", data=tiles.tissue_fraction)
        for key, value in meta.items():
            f.attrs[key] = value
            coords.attrs[key] = value


def load_tiles(path: str | Path) -> tuple[np.ndarray, dict[str, object]]:
    """Coordinates and attributes of a tiles ``.h5`` file."""
    import h5py

    with h5py.File(path, "r") as f:
        coords = f["coords"][:]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return coords, attrs


def qc_image(tiles: TileSet, slide: Slide | None = None, side_px: int = 1600) -> np.ndarray:
    """Thumbnail with the tissue outline (green) and the kept tiles (blue boxes).

    With ``slide``, small slides are re-read finer than the mask so the picture is about
    ``side_px`` on its long side; otherwise the mask's thumbnail is used.
    """
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    thumb, downsample = tiles.thumbnail, tiles.mask.downsample
    if slide is not None:
        wanted = max(slide.mpp, max(slide.dimensions) * slide.mpp / side_px)
        if wanted < tiles.mask.mpp / 1.5:
            thumb, downsample = slide.thumbnail(wanted)
    image = Image.fromarray(thumb)
    scale = min(1.0, side_px / max(thumb.shape[:2]))
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    outline = find_boundaries(tiles.mask.mask, mode="inner")
    outline = Image.fromarray(outline).resize(image.size, Image.Resampling.NEAREST)
    image.paste((0, 170, 0), mask=outline)
    draw = ImageDraw.Draw(image)
    f = image.width / (thumb.shape[1] * downsample)  # QC pixels per level-0 pixel
    side = tiles.spec.patch_size_level0 * f
    for x, y in tiles.coords:
        x0, y0 = x * f, y * f
        draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], outline=(40, 90, 220))
    return np.asarray(image)
