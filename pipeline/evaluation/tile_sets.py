"""Evaluation on a held-out tile dataset (``fascicle evaluate --tiles labels.csv``): the CI
gate on image tiles as they usually arrive, a folder or a CSV with a label and a patient.

Each tile is resampled to the model's µm/px and cut into crops; the model scores every crop,
the crops of a tile are aggregated as a slide's tiles are (the model's aggregator and
temperature), and the tiles of a patient are averaged for the patient level (patients whose
tiles carry one label). The gate reads the tile level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.atomic import write_text
from pipeline.core.batch import csv_text
from pipeline.core.errors import UsageError
from pipeline.evaluation.metrics_report import report_level
from pipeline.tiles.engine import Engine
from pipeline.tiles.tileset import CropDataset, read_tile_set


def evaluate_tile_set(
    source: Path,
    model,
    meta,
    out: Path,
    n_boot: int,
    tile_mpp: float | None,
    batch_size: int,
    engine: Engine | None = None,
) -> dict:
    """Tile- and patient-level reports of ``model`` on the tile set at ``source``."""
    from pipeline.tiles.aggregate import aggregate, apply_temperature
    from pipeline.tiles.augment import AugmentConfig, build_transform
    from pipeline.tiles.runner import run_tiles

    tiles = read_tile_set(source, tile_mpp)
    scheme = meta.scheme()
    unknown = sorted({r.label for r in tiles.records if scheme.class_of(r.label) is None})
    if unknown:
        raise UsageError(
            f"{source}: labels {', '.join(unknown)} unknown to the model "
            f"({scheme.describe_labels()})"
        )
    transform = build_transform(AugmentConfig(), meta.mean, meta.std, False, meta.macenko)
    dataset = CropDataset(tiles.records, meta.target_mpp, meta.tile_px, transform)
    run = run_tiles(model.forward_tiles, dataset, ["probs"], batch_size, engine)
    owner = dataset.items[:, 0]
    probs = np.stack(
        [
            apply_temperature(
                aggregate(run.outputs["probs"][owner == i], meta.aggregator), meta.temperature
            )
            for i in range(len(tiles.records))
        ]
    )
    y = np.array([scheme.index_of(r.label) for r in tiles.records])
    patients = np.array([r.patient_id for r in tiles.records])
    classes, pos = list(meta.classes), scheme.positive_index
    levels = {"tile": report_level(out, "tile", probs, y, patients, classes, None, n_boot, pos)}
    single = [p for p in np.unique(patients) if len(np.unique(y[patients == p])) == 1]
    if len(single) >= 2:
        patient_probs = np.stack([probs[patients == p].mean(0) for p in single])
        patient_y = np.array([y[patients == p][0] for p in single])
        levels["patient"] = report_level(out, "patient", patient_probs, patient_y,
                                         np.array(single), classes, None, n_boot, pos)  # fmt: skip
    rows = [
        {
            "path": str(r.path),
            "label": r.label,
            "patient_id": r.patient_id,
            "crops": int((owner == i).sum()),
            "predicted": classes[int(probs[i].argmax())],
            **{f"prob_{c}": round(float(v), 6) for c, v in zip(classes, probs[i], strict=True)},
        }
        for i, r in enumerate(tiles.records)
    ]
    columns = ["path", "label", "patient_id", "crops", "predicted", *[f"prob_{c}" for c in classes]]
    write_text(out / "predictions.csv", csv_text(rows, columns))
    return levels
