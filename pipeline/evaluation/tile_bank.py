"""Tile banks: labelled tiles of held-out slides in one ``.h5`` (``fascicle export-tiles``),
so CI can evaluate a model without the slides; and their evaluation, per tile and per slide.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from pipeline.core.atomic import atomic_path, write_text
from pipeline.core.batch import csv_text
from pipeline.core.errors import UsageError
from pipeline.evaluation.metrics_report import report_level as _report
from pipeline.evaluation.tile_sets import evaluate_tile_set
from pipeline.tiles.engine import Engine
from pipeline.tiles.tileset import is_tile_set
from pipeline.wsi.manifest import held_out, read_manifest


class _BankWriter:
    """Appends labelled tiles to an open ``.h5`` tile bank, block by block."""

    def __init__(self, f, tile_px: int):
        self.f = f
        self.images = f.create_dataset(
            "images",
            (0, tile_px, tile_px, 3),
            np.uint8,
            maxshape=(None, tile_px, tile_px, 3),
            chunks=(16, tile_px, tile_px, 3),
        )
        self.meta: dict[str, list] = {"label": [], "slide_id": [], "patient_id": [], "xy": []}

    def add(self, block: np.ndarray, label: int, slide_id: str, patient_id: str, xy) -> None:
        start = self.images.shape[0]
        self.images.resize(start + len(block), axis=0)
        self.images[start:] = block
        self.meta["label"] += [label] * len(block)
        self.meta["slide_id"] += [slide_id] * len(block)
        self.meta["patient_id"] += [patient_id] * len(block)
        self.meta["xy"] += [list(v) for v in xy]

    def finish(self, attrs: dict) -> None:
        import h5py

        self.f.create_dataset("labels", data=np.array(self.meta["label"], np.int64))
        for key in ("slide_id", "patient_id"):
            data = np.array(self.meta[key], dtype=object)
            self.f.create_dataset(key, data=data, dtype=h5py.string_dtype())
        xy = np.array(self.meta["xy"], np.int64).reshape(-1, 2)
        self.f.create_dataset("coords", data=xy)
        self.f.attrs.update({**attrs, "format": "fascicle-tile-bank"})


def export_tiles(
    manifest: Path,
    out: Path,
    tile_px: int = 224,
    target_mpp: float = 0.5,
    per_slide: int = 64,
    split: str | None = "test",
    min_tissue: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    model: Path | None = None,
    tile_mpp: float | None = None,
) -> Path:
    """Write labelled tiles of held-out slides to one ``.h5`` tile bank (bounded memory:
    tiles are written slide by slide). With ``model``, its tile px, mpp and min tissue win.
    ``manifest`` may also be a tile dataset (CSV or folder; ``tile_mpp`` for tiles without an
    mpp column): its tiles' crops at the bank's resolution, a tile standing for a slide."""
    import h5py
    from tqdm import tqdm

    if model is not None:
        from models.checkpoint import read_meta

        meta = read_meta(model)
        tile_px, target_mpp, min_tissue = meta.tile_px, meta.target_mpp, meta.min_tissue
    attrs = {"tile_px": tile_px, "target_mpp": target_mpp, "manifest": str(manifest)}
    attrs["split"] = split or ""
    if is_tile_set(manifest):
        return _export_tile_set(manifest, out, tile_px, target_mpp, per_slide, split,
                                tile_mpp, attrs, progress)  # fmt: skip
    from pipeline.wsi.slide import Slide
    from pipeline.wsi.tile_run import tile_slides
    from pipeline.wsi.tiling import TileSpec, TilingParams, load_tiles, read_tile

    entries = held_out(read_manifest(manifest), split)
    classes = sorted({e.label for e in entries})
    if not entries:
        raise UsageError(f"{manifest}: no labelled slides to export")
    params = TilingParams(target_mpp=target_mpp, tile_px=tile_px, min_tissue=min_tissue)
    work = out.parent / f".{out.stem}_tiles"
    rows = tile_slides(entries, work, params, progress=progress)
    bad = [r["error"] for r in rows if r["status"] != "ok"]
    if bad:
        raise UsageError("cannot tile held-out slides:\n" + "\n".join(bad))
    rng = np.random.default_rng(seed)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        bank = _BankWriter(f, tile_px)
        for e in tqdm(entries, desc="export", unit="slide", disable=not progress):
            coords, tiling = load_tiles(work / "tiles" / f"{e.slide_id}.h5")
            spec = TileSpec.from_attrs(tiling)
            pick = np.sort(rng.choice(len(coords), min(per_slide, len(coords)), replace=False))
            with Slide(e.path, mpp=e.mpp) as slide:
                block = np.stack([read_tile(slide, int(x), int(y), spec) for x, y in coords[pick]])
            bank.add(block, classes.index(e.label), e.slide_id, e.patient_id, coords[pick])
        bank.finish({**attrs, "classes": json.dumps(classes)})
    return out


def _export_tile_set(source, out, tile_px, target_mpp, per_tile, split, tile_mpp, attrs, progress):
    import h5py
    from tqdm import tqdm

    from pipeline.tiles.tileset import read_tile_set, tile_crops

    records = read_tile_set(source, tile_mpp).records
    if split and any(r.split for r in records):
        records = [r for r in records if r.split == split]
    if not records:
        raise UsageError(f"{source}: no tiles of split {split!r} to export")
    classes = sorted({r.label for r in records})
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        bank = _BankWriter(f, tile_px)
        for r in tqdm(records, desc="export", unit="tile", disable=not progress):
            block = tile_crops(r, target_mpp, tile_px)[:per_tile]
            bank.add(block, classes.index(r.label), str(r.path.name), r.patient_id,
                     [(0, 0)] * len(block))  # fmt: skip
        bank.finish({**attrs, "classes": json.dumps(classes)})
    return out


def read_tile_bank(path: Path):
    import h5py

    f = h5py.File(path, "r")
    if f.attrs.get("format") != "fascicle-tile-bank":
        f.close()
        raise UsageError(f"{path}: not a fascicle tile bank (make one with fascicle export-tiles)")
    return f


class BankDataset(Dataset):
    """The tiles of an open tile bank, transformed, as the inference runner takes them."""

    def __init__(self, f, transform):
        self.images, self.transform = f["images"], transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.transform(image=self.images[index])["image"]
        return {"image": image, "label": 0, "slide": 0}


def evaluate_tiles(
    bank: Path,
    model_path: Path,
    out: Path,
    n_boot: int,
    batch_size: int = 64,
    tile_mpp: float | None = None,
    engine: Engine | None = None,
) -> dict:
    """Score the model on a tile bank, per tile and per slide (its tiles aggregated), or on a
    tile dataset (CSV or folder, ``tile_sets``), per tile and per patient."""
    from models.checkpoint import load_model
    from pipeline.tiles.aggregate import aggregate, apply_temperature
    from pipeline.tiles.augment import AugmentConfig, build_transform
    from pipeline.tiles.runner import run_tiles

    model, m = load_model(model_path)
    model = engine.prepare(model) if engine else model
    if m.pools_tiles:
        raise UsageError(f"{model_path}: tile banks evaluate tile models (this one is {m.kind})")
    if is_tile_set(bank):
        return evaluate_tile_set(bank, model, m, out, n_boot, tile_mpp, batch_size, engine)
    with read_tile_bank(bank) as f:
        classes = json.loads(f.attrs["classes"])
        if (
            int(f.attrs["tile_px"]) != m.tile_px
            or abs(float(f.attrs["target_mpp"]) - m.target_mpp) > 1e-6
        ):
            raise UsageError(
                f"{bank}: tiles are {f.attrs['tile_px']} px at {f.attrs['target_mpp']} µm/px but "
                f"the model wants {m.tile_px} px at {m.target_mpp} µm/px; export the bank again"
            )
        scheme = m.scheme()
        missing = [c for c in classes if scheme.class_of(c) is None]
        if missing:
            raise UsageError(
                f"{bank}: labels {', '.join(missing)} unknown to the model "
                f"({scheme.describe_labels()})"
            )
        remap = np.array([scheme.index_of(c) for c in classes])
        labels = remap[f["labels"][:]]
        slides = f["slide_id"].asstr()[:]
        patients = f["patient_id"].asstr()[:]
        transform = build_transform(AugmentConfig(), m.mean, m.std, False, m.macenko)
        dataset = BankDataset(f, transform)
        run = run_tiles(model.forward_tiles, dataset, ["probs"], batch_size, engine)
    probs, k = run.outputs["probs"], m.classes
    pos = scheme.positive_index
    tile_report = _report(out, "tile", probs, labels, patients, k, None, n_boot, pos)
    ids = sorted(set(slides))
    slide_probs = np.array(
        [apply_temperature(aggregate(probs[slides == s], m.aggregator), m.temperature) for s in ids]
    )
    slide_labels = np.array([labels[slides == s][0] for s in ids])
    slide_groups = np.array([patients[slides == s][0] for s in ids])
    slide_report = _report(
        out, "slide", slide_probs, slide_labels, slide_groups, k, None, n_boot, pos
    )
    rows = [
        {
            "slide_id": s,
            "label": k[y],
            "predicted": k[int(p.argmax())],
            **{f"prob_{c}": round(float(v), 6) for c, v in zip(k, p, strict=True)},
        }
        for s, y, p in zip(ids, slide_labels, slide_probs, strict=True)
    ]
    write_text(
        out / "predictions.csv",
        csv_text(rows, ["slide_id", "label", "predicted", *[f"prob_{c}" for c in k]]),
    )
    return {"tile": tile_report, "slide": slide_report}
