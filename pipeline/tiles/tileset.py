"""Tile datasets: labelled image tiles (PNG, JPEG, TIFF, any size) instead of slides.

Two ways to give one:

- a CSV with ``path,label,patient_id[,split,mpp]`` (``patient``, ``case_id`` or ``case`` also
  name the patient column; paths relative to the CSV's folder);
- a folder tree ``ROOT/<label>/<patient>/<tile>`` (or ``ROOT/<label>/<tile>``, where every
  tile is then its own patient, with a warning: tiles of one patient may land on both sides
  of a split).

Each tile is resampled to the model's µm/px (its ``mpp`` column, or ``data.tile_mpp`` for
all) and cut into a centred grid of ``tile_px`` crops, so a 1024-px tile at 1 µm/px gives 16
crops of 224 px at 1 µm/px. Problems (missing files, unreadable images, a patient in two
splits, missing columns or µm/px) are reported all at once, before any work.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PATIENT_COLUMNS = ("patient_id", "patient", "case_id", "case")
UPSAMPLE_TOLERANCE = 1.05

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileRecord:
    path: Path
    label: str
    patient_id: str
    split: str | None = None
    mpp: float | None = None


@dataclass
class TileSet:
    source: Path
    records: list[TileRecord]

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records})

    def patients_per_label(self) -> dict[str, int]:
        return {
            label: len({r.patient_id for r in self.records if r.label == label})
            for label in self.labels
        }


def is_tile_set(path: str | Path) -> bool:
    """True for a tile CSV (a ``label`` column, no ``slide_id``) or a folder of labelled tiles."""
    path = Path(path)
    if path.is_dir():
        return any(p.is_dir() for p in path.iterdir())
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    return "label" in header and "path" in header and "slide_id" not in header


def read_tile_set(source: str | Path, tile_mpp: float | None = None) -> TileSet:
    """The tiles a CSV or folder tree names (see the module docstring); ``tile_mpp``: µm/px of
    tiles whose row gives none."""
    source = Path(source)
    if not source.exists():
        raise UsageError(f"{source}: no such tile CSV or folder")
    records = _from_folder(source) if source.is_dir() else _from_csv(source)
    if tile_mpp is not None:
        records = [r if r.mpp else TileRecord(**{**r.__dict__, "mpp": tile_mpp}) for r in records]
    problems = [f"{r.path}: file not found" for r in records if not r.path.is_file()]
    splits: dict[str, set[str]] = {}
    for r in records:
        splits.setdefault(r.patient_id, set()).add(r.split or "")
    problems += [
        f"patient {p!r} is in splits {', '.join(sorted(s))}: a patient belongs to one split"
        for p, s in splits.items()
        if len(s) > 1
    ]
    if not records:
        problems.append("no tiles found")
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UsageError(f"{source}: {len(problems)} problem(s) in the tile set:\n{listing}{more}")
    return TileSet(source, records)


def _from_csv(path: Path) -> list[TileRecord]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0]) if rows else set()
    patient = next((c for c in PATIENT_COLUMNS if c in columns), None)
    missing = [c for c in ("path", "label") if c not in columns]
    if missing or patient is None:
        need = [*missing, *(["patient_id"] if patient is None else [])]
        raise UsageError(
            f"{path}: tile CSV needs columns path, label, patient_id (missing: {', '.join(need)});"
            " optional: split, mpp"
        )
    records, bad = [], []
    for i, row in enumerate(rows, start=2):
        try:
            mpp = float(row["mpp"]) if row.get("mpp") else None
            if mpp is not None and not mpp > 0:
                raise ValueError
        except ValueError:
            bad.append(f"line {i}: mpp {row['mpp']!r} is not a positive number")
            continue
        if not row["label"] or not row[patient]:
            bad.append(f"line {i}: empty label or {patient}")
            continue
        file = Path(row["path"])
        records.append(
            TileRecord(
                file if file.is_absolute() else path.parent / file,
                row["label"],
                row[patient],
                row.get("split") or None,
                mpp,
            )
        )
    if bad:
        raise UsageError(f"{path}: " + "; ".join(bad[:10]))
    return records


def _from_folder(root: Path) -> list[TileRecord]:
    records, flat = [], 0
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(label_dir.rglob("*")):
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                continue
            inner = file.relative_to(label_dir).parts
            if len(inner) > 1:
                patient = inner[0]
            else:
                patient, flat = f"{label_dir.name}/{file.stem}", flat + 1
            records.append(TileRecord(file, label_dir.name, patient))
    if flat:
        log.warning(
            "%s: %d tile(s) directly under their label folder count as their own patient; put "
            "them in ROOT/<label>/<patient>/ or give a CSV with patient_id, or tiles of one "
            "patient may land on both sides of a split",
            root,
            flat,
        )
    return records


def crop_layout(
    width: int, height: int, mpp: float | None, target_mpp: float | None, tile_px: int, name: str
) -> tuple[int, int, int, int]:
    """``(resampled width, height, crops across, crops down)`` of a ``width x height`` tile at
    ``mpp`` cut into ``tile_px`` crops at ``target_mpp`` (None: one crop of the whole tile)."""
    if target_mpp is None:
        return tile_px, tile_px, 1, 1
    if mpp is None:
        raise UsageError(
            f"{name}: the tile's µm/px is unknown and the model works at {target_mpp} µm/px; add "
            "an mpp column to the tile CSV, or set data.tile_mpp (evaluate: --tile-mpp)"
        )
    scale = mpp / target_mpp
    if scale > UPSAMPLE_TOLERANCE:
        raise UsageError(
            f"{name}: tiles at {mpp:g} µm/px are coarser than the model's {target_mpp:g} µm/px "
            f"(they would be up-sampled); use data.target_mpp: {mpp:g} or coarser"
        )
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if w < tile_px or h < tile_px:
        need = math.ceil(tile_px / scale)
        raise UsageError(
            f"{name}: {width} x {height} px at {mpp:g} µm/px is smaller than one {tile_px}-px tile"
            f" at {target_mpp:g} µm/px (needs {need} px); lower data.tile_px"
        )
    return w, h, w // tile_px, h // tile_px


def crop_grid(
    image: np.ndarray, mpp: float | None, target_mpp: float | None, tile_px: int, name: str
) -> np.ndarray:
    """``image`` resampled from ``mpp`` to ``target_mpp`` and cut into a centred grid of
    ``tile_px`` crops, (N, tile_px, tile_px, 3). ``target_mpp`` None: the whole image resized
    to ``tile_px`` (resolution not controlled)."""
    h, w = image.shape[:2]
    width, height, nx, ny = crop_layout(w, h, mpp, target_mpp, tile_px, name)
    if (width, height) != (w, h):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BOX))
    x0, y0 = (width - nx * tile_px) // 2, (height - ny * tile_px) // 2
    crops = [
        image[y0 + j * tile_px : y0 + (j + 1) * tile_px, x0 + i * tile_px : x0 + (i + 1) * tile_px]
        for j in range(ny)
        for i in range(nx)
    ]
    return np.stack(crops)


def crop_count(record: TileRecord, target_mpp: float | None, tile_px: int) -> int:
    """How many crops a tile gives, from its header only (no pixels decoded)."""
    try:
        with Image.open(record.path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise _unreadable(record.path, err) from None
    _, _, nx, ny = crop_layout(width, height, record.mpp, target_mpp, tile_px, str(record.path))
    return nx * ny


def read_image(path: Path) -> np.ndarray:
    """RGB pixels of a tile image; a clear error for an unreadable file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: Exception) -> UsageError:
    return UsageError(f"{path}: cannot read the image ({err}); re-export or remove it")


def tile_crops(record: TileRecord, target_mpp: float | None, tile_px: int) -> np.ndarray:
    """The crops of one tile at the model's resolution and size."""
    return crop_grid(read_image(record.path), record.mpp, target_mpp, tile_px, str(record.path))


class CropDataset:
    """Every crop of the given tiles, as the inference runner and training loaders take them:
    items ``(tile index, crop index)``; ``slide`` is the tile's index and ``label`` its class
    (``labels``, or 0). The crops of the last few tiles read are kept, so walking a tile's
    crops in order decodes it once."""

    keep_tiles = 8

    def __init__(
        self,
        records: list[TileRecord],
        target_mpp: float | None,
        tile_px: int,
        transform,
        labels: list[int] | None = None,
        tiles: list[int] | None = None,
        most_per_tile: int | None = None,
    ):
        self.records, self.target_mpp, self.tile_px = records, target_mpp, tile_px
        self.transform, self.labels = transform, labels
        chosen = range(len(records)) if tiles is None else tiles
        pairs = [
            (i, j)
            for i in chosen
            for j in range(crop_count(records[i], target_mpp, tile_px))[:most_per_tile]
        ]
        self.items = np.array(pairs, np.int64).reshape(-1, 2)
        self._held: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # decode threads share the cache

    def __len__(self) -> int:
        return len(self.items)

    def crops(self, i: int) -> np.ndarray:
        with self._lock:
            held = self._held.get(i)
        if held is None:
            held = tile_crops(self.records[i], self.target_mpp, self.tile_px)
            with self._lock:
                if len(self._held) >= self.keep_tiles:
                    self._held.pop(next(iter(self._held)))
                self._held[i] = held
        return held

    def __getitem__(self, n: int) -> dict:
        i, j = (int(v) for v in self.items[n])
        image = self.transform(image=self.crops(i)[j])["image"]
        return {"image": image, "label": self.labels[i] if self.labels else 0, "slide": i}
