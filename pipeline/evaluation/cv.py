"""Patient-level cross-validation of a linear probe on a tile dataset (``fascicle train --cv K``).

Folds are stratified by label and grouped by patient (scikit-learn's StratifiedGroupKFold,
seeded, so deterministic): no patient is on both sides. The probe's regularisation is chosen
inside each outer training part by an inner grouped CV (**nested**), so the out-of-fold
figures are not tuned on the patients they score. Every tile gets an out-of-fold prediction
(the mean over its crops); metrics are pooled over all tiles and per fold, at tile level and
per patient, each with a 95% interval from resampling patients. A temperature fitted on the
out-of-fold predictions calibrates the final model, which is fitted on every tile with the
regularisation chosen the same way (inner grouped CV on all patients).

Writes ``<out>/cv/metrics.json``, ``<out>/cv/oof_predictions.csv``, ROC / confusion /
reliability plots, and ``<out>/model.ckpt``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.core.atomic import write_text
from pipeline.core.batch import csv_text
from pipeline.core.errors import UsageError
from pipeline.evaluation.metrics_report import point_metrics, report_level
from pipeline.tiles.aggregate import apply_temperature, fit_temperature
from pipeline.tiles.tileset import TileSet, read_tile_set
from pipeline.training.config import RunConfig
from pipeline.training.features import embed_tile_set
from pipeline.training.probe import export_probe, fit_probe

FEW_PATIENTS = 3


@dataclass
class CVResult:
    model_path: Path
    metrics_path: Path
    summary: dict

    def describe(self) -> str:
        s = self.summary
        lines = [f"model: {self.model_path}", f"cross-validation: {self.metrics_path}"]
        for level in ("tile", "patient"):
            doc = s.get(level)
            if not doc:
                continue
            m, ci = doc["metrics"], doc["ci95"]
            name = "AUROC" if len(s["classes"]) == 2 else "macro AUROC"
            auc, lo_hi = m["auroc_macro"], ci.get("auroc_macro", [math.nan] * 2)
            lines.append(
                f"  out-of-fold, {level} level (n={doc['n']}, {doc['n_patients']} patients): "
                f"{name} {auc:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}], balanced accuracy "
                f"{m['balanced_accuracy']:.3f}"
            )
        lines += [f"  warning: {w}" for w in s["warnings"]]
        return "\n".join(lines)


def cohort_warnings(tiles: TileSet, scheme, folds: int) -> list[str]:
    """What a tiny cohort's numbers can and cannot mean."""
    per_class: dict[str, set[str]] = {}
    for r in tiles.records:
        per_class.setdefault(scheme.class_of(r.label), set()).add(r.patient_id)
    out = []
    for c, patients in sorted(per_class.items()):
        n = len(patients)
        if n == 1:
            out.append(
                f"class {c} has 1 patient: in the fold that holds it out the probe has never seen "
                "the class, so its out-of-fold predictions there cannot be right"
            )
        elif n < FEW_PATIENTS:
            out.append(
                f"class {c} has {n} patients: the estimate says how these few patients' tiles "
                "separate, not how the model will do on new patients; the interval cannot "
                "capture between-patient variation"
            )
        if n < folds:
            out.append(f"class {c}: {n} patient(s) for {folds} folds, so some folds lack it")
    return out


def _tile_means(crop_probs: np.ndarray, crop_tile: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    return np.stack([crop_probs[crop_tile == t].mean(0) for t in tiles])


def run_tile_cv(
    config: RunConfig, folds: int, progress: bool = True, n_boot: int = 1000
) -> CVResult:
    """Cross-validate, calibrate and export a linear probe on ``config.data.tiles``."""
    d, scheme, out = config.data, config.scheme(), Path(config.out)
    if not d.tiles:
        raise UsageError("--cv needs a tile dataset: set data.tiles to a tile CSV or folder")
    if config.model.kind != "probe":
        raise UsageError(
            f"--cv cross-validates the linear probe on frozen features (model.kind: probe); "
            f"model.kind {config.model.kind} trains once on the tile set's splits"
        )
    tiles = read_tile_set(d.tiles, d.tile_mpp)
    unknown = sorted({r.label for r in tiles.records if scheme.class_of(r.label) is None})
    if unknown:
        raise UsageError(
            f"{d.tiles}: labels {', '.join(unknown)} are not classes of the model "
            f"({scheme.describe_labels()}); set data.classes, data.label_map or data.one_vs_rest"
        )
    y = np.array([scheme.index_of(r.label) for r in tiles.records])
    patients = np.array([r.patient_id for r in tiles.records])
    n_patients = len(np.unique(patients))
    if folds and not 2 <= folds <= n_patients:
        raise UsageError(f"--cv {folds}: needs 2 to {n_patients} folds ({n_patients} patients)")
    warnings = cohort_warnings(tiles, scheme, folds)
    features = embed_tile_set(
        tiles, config.model, d.target_mpp, d.tile_px, config.features_dir(), d.batch_size, progress
    )
    x, crop_tile = features.features, features.tile_index
    k, classes, seed = len(scheme.classes), list(scheme.classes), config.seed
    recipe = (config.model.probe, config.model.probe_hidden)
    summary: dict = {"classes": classes, "folds": folds, "nested": True, "warnings": warnings}
    summary["recipe"] = {
        "encoder": features.encoder,
        "probe": f"{config.model.probe} probe (class-balanced) on standardised features, "
        "its regularisation by grouped inner CV",
        "target_mpp": d.target_mpp,
        "tile_px": d.tile_px,
        "crops": len(x),
        "tiles": len(tiles.records),
    }
    temperature, quantile = 1.0, config.model.ood_quantile
    detector, scores = _ood_scores(x, y[crop_tile], x, k)  # in-sample unless CV gives better
    ood_from = "training crops (in-sample: no cross-validation)"
    if folds:
        oof, fold_docs, scores = _cross_validate(x, crop_tile, y, patients, k, folds, seed,
                                                 classes, recipe)  # fmt: skip
        ood_from = "out-of-fold crops"
        temperature = fit_temperature(oof, y)
        calibrated = apply_temperature(oof, temperature)
        pos = scheme.positive_index
        cv_dir = out / "cv"
        summary["tile"] = report_level(cv_dir, "tile", calibrated, y, patients, classes, None,
                                       n_boot, pos)  # fmt: skip
        summary["patient"] = _patient_level(cv_dir, calibrated, y, patients, classes, n_boot, pos)
        summary["per_fold"] = fold_docs
        summary["temperature"] = temperature
        _write_predictions(cv_dir, tiles, y, calibrated, fold_docs, classes)
    final = fit_probe(x, y[crop_tile], patients[crop_tile], k, seed, *recipe)
    summary["final"] = {"regularisation": final.c, "chosen_by": final.chosen_by}
    from models.ood import detector_settings

    ood = detector_settings(detector, scores, quantile, len(x)) | {"threshold_from": ood_from}
    summary["ood"] = ood
    model_path = export_probe(
        out / "model.ckpt", final, config, features, [r.label for r in tiles.records],
        temperature, {"cv_folds": folds}, (detector, ood),
    )  # fmt: skip
    metrics_path = out / ("cv" if folds else "") / "metrics.json"
    write_text(metrics_path, json.dumps(summary, indent=2, default=float) + "\n")
    return CVResult(model_path, metrics_path, summary)


def _ood_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int):
    """Mahalanobis scores of ``test_x`` under a detector fitted on the training crops."""
    import torch

    from models.ood import MahalanobisOOD

    detector = MahalanobisOOD.fit(train_x, train_y, k)
    with torch.no_grad():
        return detector, detector(torch.as_tensor(test_x)).numpy()


def _cross_validate(x, crop_tile, y, patients, k, folds, seed, classes, recipe):
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    oof = np.zeros((len(y), k))
    ood = np.zeros(len(x))
    docs = []
    for fold, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y, patients)):
        in_train = np.isin(crop_tile, train)
        in_test = np.isin(crop_tile, test)
        probe = fit_probe(x[in_train], y[crop_tile[in_train]], patients[crop_tile[in_train]], k,
                          seed, *recipe)  # fmt: skip
        oof[test] = _tile_means(probe.probs(x[in_test]), crop_tile[in_test], test)
        ood[in_test] = _ood_scores(x[in_train], y[crop_tile[in_train]], x[in_test], k)[1]
        docs.append(
            {
                "fold": fold,
                "test_patients": sorted(set(patients[test].tolist())),
                "n_test_tiles": len(test),
                "regularisation": probe.c,
                "chosen_by": probe.chosen_by,
                "metrics": point_metrics(oof[test], y[test], classes),
                "test_tiles": test.tolist(),
            }
        )
    return oof, docs, ood


def _patient_level(out, probs, y, patients, classes, n_boot, pos) -> dict | None:
    """Mean tile prediction per patient, for patients whose tiles share one label."""
    ids = [p for p in np.unique(patients) if len(np.unique(y[patients == p])) == 1]
    if len(ids) < 2:
        return None
    p = np.stack([probs[patients == i].mean(0) for i in ids])
    labels = np.array([y[patients == i][0] for i in ids])
    doc = report_level(out, "patient", p, labels, np.array(ids), classes, None, n_boot, pos)
    doc["patients_with_mixed_labels_left_out"] = int(len(np.unique(patients)) - len(ids))
    return doc


def _write_predictions(out: Path, tiles: TileSet, y, probs, fold_docs, classes) -> None:
    fold_of = {t: f["fold"] for f in fold_docs for t in f.pop("test_tiles")}
    rows = [
        {
            "path": str(r.path),
            "label": r.label,
            "class": classes[y[i]],
            "patient_id": r.patient_id,
            "fold": fold_of[i],
            "predicted": classes[int(probs[i].argmax())],
            **{f"prob_{c}": round(float(v), 6) for c, v in zip(classes, probs[i], strict=True)},
        }
        for i, r in enumerate(tiles.records)
    ]
    columns = ["path", "label", "class", "patient_id", "fold", "predicted"]
    write_text(
        out / "oof_predictions.csv", csv_text(rows, columns + [f"prob_{c}" for c in classes])
    )
