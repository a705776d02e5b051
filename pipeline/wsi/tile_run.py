"""``fascicle tile``: tile many slides into an output folder, resumable.

Layout of ``out``: ``tiles/<slide_id>.h5`` (coords), ``masks/<slide_id>.png`` (tissue mask),
``qc/<slide_id>.png`` (thumbnail, tissue outline, kept tiles), ``tiling_summary.csv``.
The ``.h5`` is written last, atomically: its presence with the same parameter hash marks a
finished slide, which a rerun skips unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.core.atomic import clean_stale_temps, writable_folder, write_png
from pipeline.core.batch import run_slides, write_summary
from pipeline.core.errors import UsageError
from pipeline.core.paths import under
from pipeline.wsi.manifest import SlideEntry
from pipeline.wsi.slide import Slide
from pipeline.wsi.tiling import TilingParams, load_tiles, qc_image, save_tiles, tile_slide

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "slide_id",
    "status",
    "n_tiles",
    "tissue_mm2",
    "mpp",
    "mpp_source",
    "backend",
    "seconds",
    "reused",
    "path",
    "error",
)


def tiles_file(out: Path, slide_id: str) -> Path:
    """``out/tiles/<slide_id>.h5``, refused when the id would leave ``out``."""
    return under(out, "tiles", f"{slide_id}.h5")


def tiling_params(
    mpp: float = 0.5,
    tile_px: int = 224,
    overlap_px: int = 0,
    min_tissue: float = 0.5,
    fill_holes: bool = False,
) -> TilingParams:
    """Tiling parameters from command-line values; bad values are a ``UsageError``."""
    if tile_px < 16:
        raise UsageError(f"--tile-px must be at least 16, got {tile_px}")
    if not 0 <= overlap_px < tile_px:
        raise UsageError(f"--overlap must be in [0, --tile-px), got {overlap_px}")
    try:
        params = TilingParams(
            target_mpp=mpp, tile_px=tile_px, overlap_px=overlap_px, min_tissue=min_tissue
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    if fill_holes:
        params = replace(params, tissue=replace(params.tissue, fill_holes=True))
    return params


def find_user_mask(masks: Path | None, slide_id: str) -> Path | None:
    """A mask file, or ``<slide_id>.geojson|.json|.png`` inside a mask folder."""
    if masks is None or masks.is_file():
        return masks
    for suffix in (".geojson", ".json", ".png"):
        candidate = masks / f"{slide_id}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _expected_hash(entry: SlideEntry, params: TilingParams, masks: Path | None) -> str:
    user_mask = find_user_mask(masks, entry.slide_id)
    return params.hash(mpp_override=entry.mpp, user_mask=str(user_mask or ""))


def is_finished(entry: SlideEntry, out: Path, params: TilingParams, masks: Path | None) -> bool:
    """True when ``out`` holds this slide's coordinates made with the same parameters."""
    h5_path = tiles_file(out, entry.slide_id)
    if not h5_path.exists():
        return False
    try:
        _, attrs = load_tiles(h5_path)
    except OSError:
        return False
    return attrs.get("params_hash") == _expected_hash(entry, params, masks)


def tile_entry(
    entry: SlideEntry,
    out: Path,
    params: TilingParams,
    overwrite: bool = False,
    backend: str = "auto",
    masks: Path | None = None,
    mask_mode: str = "replace",
    slide: Slide | None = None,
) -> dict:
    """Tile one slide into ``out``; return its summary row (raises ``SlideError``).

    ``slide``: the slide already open (the caller keeps it open), else it is opened here."""
    h5_path = tiles_file(out, entry.slide_id)
    user_mask = find_user_mask(masks, entry.slide_id)
    if not overwrite and is_finished(entry, out, params, masks):
        coords, attrs = load_tiles(h5_path)
        return {
            "n_tiles": len(coords),
            "tissue_mm2": attrs["tissue_mm2"],
            "mpp": attrs["slide_mpp"],
            "mpp_source": attrs["mpp_source"],
            "backend": attrs.get("backend", ""),
            "seconds": attrs["seconds"],
            "reused": True,
            "path": str(entry.path),
        }
    if h5_path.exists() and not overwrite:
        log.info("%s: parameters changed since the last run; tiling again", entry.slide_id)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if slide is None:
            slide = stack.enter_context(Slide(entry.path, mpp=entry.mpp, backend=backend))
        tiles = tile_slide(slide, params, user_mask, mask_mode)
        tiles.slide_id = entry.slide_id
        mask = tiles.mask.mask.astype(np.uint8) * 255
        write_png(under(out, "masks", f"{entry.slide_id}.png"), mask)
        write_png(under(out, "qc", f"{entry.slide_id}.png"), qc_image(tiles, slide))
        seconds = time.perf_counter() - start
        tiles.seconds = seconds
        save_tiles(
            h5_path,
            tiles,
            backend=slide.backend,
            slide_path=str(entry.path),
            mask_downsample=tiles.mask.downsample,
        )
    return {
        "n_tiles": len(tiles),
        "tissue_mm2": tiles.mask.area_mm2,
        "mpp": tiles.slide_mpp,
        "mpp_source": tiles.mpp_source,
        "backend": slide.backend,
        "seconds": seconds,
        "reused": False,
        "path": str(entry.path),
    }


def tile_slides(
    entries: Sequence[SlideEntry],
    out: str | Path,
    params: TilingParams = TilingParams(),
    workers: int = 1,
    overwrite: bool = False,
    backend: str = "auto",
    masks: str | Path | None = None,
    mask_mode: str = "replace",
    progress: bool = True,
) -> list[dict]:
    """Tile ``entries`` into ``out`` and write ``tiling_summary.csv``; return its rows."""
    out = Path(out)
    masks = Path(masks) if masks else None
    if masks is not None and not masks.exists():
        raise UsageError(f"{masks}: mask file or folder not found")
    if masks is not None and masks.is_file() and len(entries) > 1:
        raise UsageError(f"{masks}: a mask file works for one slide; give a folder for several")
    writable_folder(out)
    clean_stale_temps(out)
    # finished slides are summarised here; only the rest go to worker processes
    todo = [e for e in entries if overwrite or not is_finished(e, out, params, masks)]
    rows = run_slides(
        tile_entry,
        todo,
        workers=workers,
        progress=progress,
        desc="tiling",
        out=out,
        params=params,
        overwrite=overwrite,
        backend=backend,
        masks=masks,
        mask_mode=mask_mode,
    )
    done = {row["slide_id"]: row for row in rows}
    rows = []
    for entry in entries:
        row = done.get(entry.slide_id) or {
            "slide_id": entry.slide_id,
            "status": "ok",
            **tile_entry(entry, out, params, backend=backend, masks=masks, mask_mode=mask_mode),
        }
        row.setdefault("path", str(entry.path))
        rows.append(row)
    write_summary(out / "tiling_summary.csv", rows, SUMMARY_COLUMNS)
    return rows
