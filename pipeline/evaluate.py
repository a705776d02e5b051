"""``fascicle evaluate`` and ``fascicle export-tiles``: metrics with CIs and a CI gate.

Slide level: held-out slides of a manifest are predicted (``fascicle predict``, resumable)
and compared with their labels. Tile level: a *tile bank* (``export-tiles``: labelled tiles
of held-out slides in one ``.h5``) lets CI evaluate without the slides; its tiles are also
aggregated per slide. Every metric gets a patient-level bootstrap 95% interval. Gates:
``--min-balanced-accuracy`` / ``--min-auroc`` fail the run (exit 1) naming each metric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text
from .batch import csv_text
from .errors import UsageError
from .manifest import SlideEntry, read_manifest


@dataclass
class Gate:
    min_balanced_accuracy: float | None = None
    min_auroc: float | None = None

    def failures(self, metrics: dict) -> list[str]:
        out = []
        for name, key, threshold in (
            ("balanced accuracy", "balanced_accuracy", self.min_balanced_accuracy),
            ("macro AUROC", "auroc_macro", self.min_auroc),
        ):
            if threshold is None:
                continue
            value = metrics.get(key, float("nan"))
            if not value >= threshold:  # NaN fails too
                out.append(f"{name} {value:.3f} is below the gate {threshold:.3f}")
        return out


def held_out(entries: list[SlideEntry], split: str | None) -> list[SlideEntry]:
    labelled = [e for e in entries if e.label]
    if split and any(e.split for e in labelled):
        return [e for e in labelled if e.split == split]
    return labelled


def _report(out: Path, level: str, probs, labels, groups, classes, decided, n_boot) -> dict:
    from .metrics_report import bootstrap, confusion, point_metrics, save_plots

    metrics = point_metrics(probs, labels, classes, decided)
    intervals = bootstrap(probs, labels, groups, classes, decided, n=n_boot) if n_boot else {}
    plots = save_plots(out, probs, labels, classes, level)
    return {
        "n": len(labels),
        "n_patients": len(np.unique(groups)),
        "metrics": metrics,
        "ci95": intervals,
        "confusion_matrix": {
            "classes": classes,
            "rows_true_columns_predicted": confusion(probs, labels, len(classes)),
        },
        "plots": plots,
    }


def evaluate_slides(
    manifest: Path,
    model: Path,
    out: Path,
    split: str | None,
    n_boot: int,
    ihc: Path | None = None,
    workers: int = 2,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Predict the held-out slides of ``manifest`` and score them."""
    from models.checkpoint import read_model_file

    from .predict import PredictOptions, predict_slides

    classes = read_model_file(model)["hyper_parameters"]["classes"]
    entries = held_out(read_manifest(manifest, labels=classes), split)
    if not entries:
        raise UsageError(
            f"{manifest}: no labelled slides{f' in split {split}' if split else ''} to evaluate"
        )
    options = PredictOptions(workers=workers, device=device, progress=progress)
    held = [
        {
            "slide_id": e.slide_id,
            "path": str(Path(e.path).resolve()),
            "label": e.label,
            "patient_id": e.patient_id,
            "split": e.split or "",
        }
        for e in entries
    ]
    write_text(
        out / "held_out.csv", csv_text(held, ["slide_id", "path", "label", "patient_id", "split"])
    )
    predict_slides(entries, model, out / "predictions", options, ihc)
    rows, probs, labels, groups, decided = [], [], [], [], []
    for e in entries:
        result = json.loads(
            (out / "predictions" / "slides" / e.slide_id / "result.json").read_text()
        )
        row = {
            "slide_id": e.slide_id,
            "patient_id": e.patient_id,
            "label": e.label,
            "status": result["status"],
        }
        if result["status"] != "ok":
            rows.append({**row, "error": result["error"]})
            continue
        p = [result["image"]["probabilities"][c] for c in classes]
        call = result["call"]
        rows.append(
            {
                **row,
                "predicted": classes[int(np.argmax(p))],
                "call": call["label"],
                **{f"prob_{c}": round(v, 6) for c, v in zip(classes, p, strict=True)},
            }
        )
        probs.append(p)
        labels.append(classes.index(e.label))
        groups.append(e.patient_id)
        decided.append(not call["indeterminate"])
    columns = [
        "slide_id",
        "patient_id",
        "label",
        "status",
        "predicted",
        "call",
        *[f"prob_{c}" for c in classes],
        "error",
    ]
    write_text(out / "predictions.csv", csv_text(rows, columns))
    if not probs:
        raise UsageError("every held-out slide failed; see predictions.csv")
    report = _report(
        out,
        "slide",
        np.array(probs),
        np.array(labels),
        np.array(groups),
        classes,
        np.array(decided),
        n_boot,
    )
    report["failed_slides"] = [r["slide_id"] for r in rows if r["status"] != "ok"]
    return report


# -- tile bank ------------------------------------------------------------------------------
def export_tiles(
    manifest: Path,
    out: Path,
    tile_px: int,
    target_mpp: float,
    per_slide: int,
    split: str | None,
    min_tissue: float = 0.5,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write labelled tiles of held-out slides to one ``.h5`` tile bank (bounded memory:
    tiles are written slide by slide)."""
    import h5py
    from tqdm import tqdm

    from .slide import Slide
    from .tiling import TileSpec, TilingParams, load_tiles, read_tile
    from .tiling_run import tile_slides

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
    from .data import SlideTiles  # noqa: F401  (documented pairing with training tiles)

    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        images = f.create_dataset(
            "images",
            (0, tile_px, tile_px, 3),
            np.uint8,
            maxshape=(None, tile_px, tile_px, 3),
            chunks=(16, tile_px, tile_px, 3),
        )
        meta: dict[str, list] = {"label": [], "slide_id": [], "patient_id": [], "x": [], "y": []}
        for e in tqdm(entries, desc="export", unit="slide", disable=not progress):
            coords, attrs = load_tiles(work / "tiles" / f"{e.slide_id}.h5")
            spec = TileSpec.from_attrs(attrs)
            pick = np.sort(rng.choice(len(coords), min(per_slide, len(coords)), replace=False))
            with Slide(e.path, mpp=e.mpp) as slide:
                block = np.stack([read_tile(slide, int(x), int(y), spec) for x, y in coords[pick]])
            start = images.shape[0]
            images.resize(start + len(block), axis=0)
            images[start:] = block
            meta["label"] += [classes.index(e.label)] * len(block)
            meta["slide_id"] += [e.slide_id] * len(block)
            meta["patient_id"] += [e.patient_id] * len(block)
            meta["x"] += coords[pick, 0].tolist()
            meta["y"] += coords[pick, 1].tolist()
        f.create_dataset("labels", data=np.array(meta["label"], np.int64))
        for key in ("slide_id", "patient_id"):
            f.create_dataset(key, data=np.array(meta[key], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("coords", data=np.column_stack([meta["x"], meta["y"]]).astype(np.int64))
        f.attrs.update(
            {
                "classes": json.dumps(classes),
                "tile_px": tile_px,
                "target_mpp": target_mpp,
                "manifest": str(manifest),
                "split": split or "",
                "format": "fascicle-tile-bank",
            }
        )
    return out


def read_tile_bank(path: Path):
    import h5py

    f = h5py.File(path, "r")
    if f.attrs.get("format") != "fascicle-tile-bank":
        f.close()
        raise UsageError(f"{path}: not a fascicle tile bank (make one with fascicle export-tiles)")
    return f


def evaluate_tiles(
    bank: Path, model_path: Path, out: Path, n_boot: int, batch_size: int = 64
) -> dict:
    """Score the model on a tile bank, per tile and per slide (mean of its tiles)."""
    import torch

    from models.checkpoint import load_model

    from .aggregate import aggregate, apply_temperature
    from .augment import build_transform
    from .config import AugmentConfig

    model, h = load_model(model_path)
    if h["kind"] != "tile":
        raise UsageError(f"{model_path}: tile banks evaluate tile models (this one is {h['kind']})")
    with read_tile_bank(bank) as f:
        classes = json.loads(f.attrs["classes"])
        if (
            int(f.attrs["tile_px"]) != h["tile_px"]
            or abs(float(f.attrs["target_mpp"]) - h["target_mpp"]) > 1e-6
        ):
            raise UsageError(
                f"{bank}: tiles are {f.attrs['tile_px']} px at {f.attrs['target_mpp']} µm/px but "
                f"the model wants {h['tile_px']} px at {h['target_mpp']} µm/px; "
                "export the bank again"
            )
        missing = [c for c in classes if c not in h["classes"]]
        if missing:
            raise UsageError(f"{bank}: classes {', '.join(missing)} unknown to the model")
        remap = np.array([h["classes"].index(c) for c in classes])
        labels = remap[f["labels"][:]]
        slides = f["slide_id"].asstr()[:]
        patients = f["patient_id"].asstr()[:]
        transform = build_transform(AugmentConfig(), h["mean"], h["std"], False, h.get("macenko"))
        probs = []
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                tiles = f["images"][start : start + batch_size]
                x = torch.stack([transform(image=t)["image"] for t in tiles])
                probs.append(model(x).softmax(1).numpy())
    probs = np.concatenate(probs)
    k = h["classes"]
    tile_report = _report(out, "tile", probs, labels, patients, k, None, n_boot)
    ids = sorted(set(slides))
    slide_probs = np.array(
        [
            apply_temperature(aggregate(probs[slides == s], h["aggregator"]), h["temperature"])
            for s in ids
        ]
    )
    slide_labels = np.array([labels[slides == s][0] for s in ids])
    slide_groups = np.array([patients[slides == s][0] for s in ids])
    slide_report = _report(out, "slide", slide_probs, slide_labels, slide_groups, k, None, n_boot)
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


def run_evaluation(
    model: Path,
    out: Path,
    gate: Gate,
    manifest: Path | None = None,
    bank: Path | None = None,
    split: str | None = "test",
    n_boot: int = 1000,
    ihc: Path | None = None,
    workers: int = 2,
    device: str = "auto",
    progress: bool = True,
) -> tuple[dict, list[str]]:
    """Evaluate, write ``metrics.json`` and return it with the gate failures."""
    from . import __version__
    from .training import file_sha256

    out.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        levels = {
            "slide": evaluate_slides(
                manifest, model, out, split, n_boot, ihc, workers, device, progress
            )
        }
    else:
        levels = evaluate_tiles(bank, model, out, n_boot)
    gated = levels["tile"] if "tile" in levels else levels["slide"]
    failures = gate.failures(gated["metrics"])
    doc = {
        "model": str(model),
        "model_sha256": file_sha256(model),
        "package_version": __version__,
        "source": str(manifest or bank),
        "split": split,
        "bootstrap_resamples": n_boot,
        "levels": levels,
        "gate": {
            "level": "tile" if "tile" in levels else "slide",
            "min_balanced_accuracy": gate.min_balanced_accuracy,
            "min_auroc": gate.min_auroc,
            "passed": not failures,
            "failures": failures,
        },
    }
    write_text(out / "metrics.json", json.dumps(doc, indent=2, default=float) + "\n")
    return doc, failures
