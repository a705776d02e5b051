"""After fitting: calibrate the slide probabilities, fit the out-of-distribution detector,
and keep the nonconformity scores that prediction sets need.

Temperature: with at least ``MIN_SLIDES`` validation slides it is fitted on their aggregated
probabilities. With fewer (rare tumours), fitting on a handful of slides would drive it to
an extreme, so each validation slide's tiles are split into random groups of
``GROUP_TILES`` and every group is aggregated like a small slide: many slide-like
calibration points, grouped by slide. The method and the ECE before and after are recorded.
"""

from __future__ import annotations

import numpy as np

from models.meta import ModelMeta
from pipeline.tiles.aggregate import (
    aggregate,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)

MIN_SLIDES = 10
GROUP_TILES = 8
OOD_TRAIN_TILES_PER_SLIDE = 64


def tile_groups(
    tile_probs: np.ndarray, tile_slide: np.ndarray, slide_label: dict[int, int], aggregator: str
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated probabilities and labels of random groups of each slide's tiles."""
    rng = np.random.default_rng(0)
    probs, labels = [], []
    for s in sorted(slide_label):
        idx = rng.permutation(np.flatnonzero(tile_slide == s))
        for start in range(0, len(idx) - GROUP_TILES + 1, GROUP_TILES):
            probs.append(aggregate(tile_probs[idx[start : start + GROUP_TILES]], aggregator))
            labels.append(slide_label[s])
    k = tile_probs.shape[1]
    return np.array(probs).reshape(-1, k), np.array(labels, int)


def calibrate(
    slide_probs: np.ndarray,
    slide_labels: np.ndarray,
    tile_probs: np.ndarray,
    tile_slide: np.ndarray,
    slide_index: list[int],
    aggregator: str,
) -> tuple[float, dict]:
    """(temperature, what was done and the ECE before/after)."""
    info: dict = {"n_slides": len(slide_labels)}
    info["ece_slides_before"] = expected_calibration_error(slide_probs, slide_labels)
    if len(slide_labels) >= MIN_SLIDES:
        info["method"] = "slides"
        t = fit_temperature(slide_probs, slide_labels)
    else:
        labels = dict(zip(slide_index, slide_labels.tolist(), strict=True))
        gp, gl = tile_groups(tile_probs, tile_slide, labels, aggregator)
        info["n_groups"] = len(gl)
        if len(gl) < 2 or len(np.unique(gl)) < 2:
            info["method"] = "none"
            info["note"] = "too few validation tiles of two or more classes: temperature 1"
            t = 1.0
        else:
            info["method"] = f"tile_groups_of_{GROUP_TILES}"
            t = fit_temperature(gp, gl)
            info["ece_groups_before"] = expected_calibration_error(gp, gl)
            info["ece_groups_after"] = expected_calibration_error(apply_temperature(gp, t), gl)
    info["temperature"] = t
    info["ece_slides_after"] = expected_calibration_error(
        apply_temperature(slide_probs, t), slide_labels
    )
    return t, info


def conformal_scores(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Nonconformity 1 − p(true class) of calibrated calibration slides."""
    return [float(1 - probs[i, y]) for i, y in enumerate(labels)]


def finish_tile_model(model, meta: ModelMeta, datamodule, config) -> dict:
    """Calibrate, fit the OOD detector and keep conformal scores (sets them on ``meta`` and
    ``model``); returns the validation metrics."""
    from models.metrics import slide_metrics
    from models.ood import fit_detector
    from pipeline.tiles.runner import run_tiles

    d = config.data
    model.cpu().eval()
    val = datamodule.eval_dataset("val")
    run = run_tiles(model.forward_tiles, val, ["probs", "features"], d.batch_size)
    ok = run.readable
    tile_probs, tile_slide = run.outputs["probs"], val.items[:, 0]
    slide_index = sorted(set(tile_slide[ok].tolist()))
    slide_probs = np.array(
        [aggregate(tile_probs[ok & (tile_slide == s)], meta.aggregator) for s in slide_index]
    )
    labels = np.array([datamodule.slides[s].label for s in slide_index])
    meta.temperature, meta.calibration = calibrate(
        slide_probs, labels, tile_probs[ok], tile_slide[ok], slide_index, meta.aggregator
    )
    calibrated = apply_temperature(slide_probs, meta.temperature)
    meta.conformal_scores = conformal_scores(calibrated, labels)
    train_set = datamodule.ood_train_dataset(OOD_TRAIN_TILES_PER_SLIDE)
    train_run = run_tiles(model.forward_tiles, train_set, ["features"], d.batch_size)
    train_labels = np.array([datamodule.slides[s].label for s in train_set.items[:, 0]])
    model.ood, meta.ood = fit_detector(
        train_run.outputs["features"][train_run.readable],
        train_labels[train_run.readable],
        run.outputs["features"][ok],
        len(meta.classes),
        config.model.ood_quantile,
    )
    positive = meta.scheme().positive_index
    return {
        "val_slides": len(slide_index),
        "val": slide_metrics(calibrated, labels, meta.classes, positive),
        "temperature": meta.temperature,
        "temperature_fitted": meta.calibration["method"] != "none",
        "calibration": meta.calibration,
        "ood": meta.ood,
    }
