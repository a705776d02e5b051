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

from pipeline.core.atomic import writable_folder, write_text
from pipeline.core.batch import csv_text
from pipeline.core.errors import UsageError
from pipeline.evaluation.metrics_report import report_level
from pipeline.prediction.session import PredictOptions
from pipeline.wsi.manifest import held_out, read_manifest


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


def evaluate_slides(
    manifest: Path,
    model: Path,
    out: Path,
    split: str | None,
    n_boot: int,
    ihc: Path | None = None,
    options: PredictOptions | None = None,
) -> dict:
    """Predict the held-out slides of ``manifest`` and score them (labels mapped to the
    model's classes by its class scheme)."""
    from models.checkpoint import read_meta
    from pipeline.prediction.predict import predict_slides
    from pipeline.prediction.result import read_result, result_path

    meta = read_meta(model)
    scheme, classes = meta.scheme(), meta.classes
    known = None if scheme.rest else [*classes, *scheme.label_map]
    entries = held_out(read_manifest(manifest, labels=known), split)
    if not entries:
        raise UsageError(
            f"{manifest}: no labelled slides{f' in split {split}' if split else ''} to evaluate"
        )
    options = options or PredictOptions()
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
        result = read_result(result_path(out / "predictions", e.slide_id))
        row = {
            "slide_id": e.slide_id,
            "patient_id": e.patient_id,
            "label": e.label,
            "status": result.status if result else "error",
        }
        if result is None or not result.ok:
            rows.append({**row, "error": result.error if result else "no result written"})
            continue
        p = [result.image.probabilities[c] for c in classes]
        rows.append(
            {
                **row,
                "predicted": classes[int(np.argmax(p))],
                "call": result.call.label,
                **{f"prob_{c}": round(v, 6) for c, v in zip(classes, p, strict=True)},
            }
        )
        probs.append(p)
        labels.append(scheme.index_of(e.label))
        groups.append(e.patient_id)
        decided.append(not result.call.indeterminate)
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
    report = report_level(
        out,
        "slide",
        np.array(probs),
        np.array(labels),
        np.array(groups),
        classes,
        np.array(decided),
        n_boot,
        scheme.positive_index,
    )
    report["failed_slides"] = [r["slide_id"] for r in rows if r["status"] != "ok"]
    return report


def run_evaluation(
    model: Path,
    out: Path,
    gate: Gate,
    manifest: Path | None = None,
    bank: Path | None = None,
    split: str | None = "test",
    n_boot: int = 1000,
    ihc: Path | None = None,
    options: PredictOptions | None = None,
    tile_mpp: float | None = None,
) -> tuple[dict, list[str]]:
    """Evaluate, write ``metrics.json`` and return it with the gate failures; ``options``
    (engine, prior, coverage, progress) are those of ``fascicle predict``."""
    from pipeline import __version__
    from pipeline.core.hashing import file_sha256
    from pipeline.evaluation.tile_bank import evaluate_tiles

    writable_folder(out)
    options = options or PredictOptions()
    if manifest is not None:
        levels = {"slide": evaluate_slides(manifest, model, out, split, n_boot, ihc, options)}
    else:
        engine = options.engine()
        levels = evaluate_tiles(bank, model, out, n_boot, tile_mpp=tile_mpp, engine=engine)
    gated = levels["tile"] if "tile" in levels else levels["slide"]
    failures = gate.failures(gated["metrics"])
    doc = {
        "model": str(model),
        "model_sha256": file_sha256(model),
        "package_version": __version__,
        "source": str(manifest or bank),
        "split": split,
        "prior": options.prior or "neutral (the training balance)",
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


def format_levels(doc: dict) -> list[str]:
    """One line per evaluated level, with the 95% interval of balanced accuracy."""
    lines = []
    gated = doc["gate"]["level"]
    for level, report in doc["levels"].items():
        m, ci = report["metrics"], report["ci95"]
        bal = ci.get("balanced_accuracy", [float("nan")] * 2)
        lines.append(
            f"{level} level ({report['n']} {level}s, {report['n_patients']} patients): "
            f"balanced accuracy {m['balanced_accuracy']:.3f} [{bal[0]:.3f}, {bal[1]:.3f}], "
            f"macro AUROC {m['auroc_macro']:.3f}"
            + (" (the gate reads this level)" if level == gated else "")
        )
    return lines
