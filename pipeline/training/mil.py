"""Attention-MIL training on frozen features: seconds per epoch.

Slides are tiled and embedded (``fascicle embed``, resumable), then ABMIL trains on bags of
up to ``model.max_bag`` random tiles per slide, classes balanced by slide sampling. The
exported ``model.ckpt`` holds the encoder too, so predict can embed new slides alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from models.meta import ModelMeta
from pipeline import __version__
from pipeline.core.hashing import file_sha256
from pipeline.training.config import RunConfig
from pipeline.training.trainer import (
    TrainResult,
    best_state,
    make_trainer,
    scheme_fields,
    write_model,
)

OOD_TILES_PER_SLIDE = 64


class BagDataset(Dataset):
    def __init__(self, bags: list[np.ndarray], labels: list[int], max_bag: int, train: bool):
        self.bags, self.labels, self.max_bag, self.train = bags, labels, max_bag, train

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        bag = self.bags[i]
        if self.train and len(bag) > self.max_bag:
            bag = bag[np.random.choice(len(bag), self.max_bag, replace=False)]
        return bag, self.labels[i]


def collate_bags(batch: list[tuple[np.ndarray, int]]) -> dict:
    from models.mil import pad_bags

    features, mask = pad_bags([b for b, _ in batch])
    return {"features": features, "mask": mask, "label": torch.tensor([y for _, y in batch])}


def train_mil(config: RunConfig, run_dir: Path, progress: bool = True) -> TrainResult | None:
    from models.mil import ABMIL, MILBundle
    from pipeline.training.datamodule import prepare_slides, write_splits
    from pipeline.training.embed import build_encoder, embed_slides, load_features

    d, m, o = config.data, config.model, config.optim
    slides = prepare_slides(config, run_dir, progress)
    write_splits(run_dir / "splits.csv", slides)
    encoder = build_encoder(config)
    paths = embed_slides(config, slides, config.features_dir(), encoder, progress=progress)

    def bags(split: str) -> tuple[list[np.ndarray], list[int]]:
        chosen = [s for s in slides if s.split == split]
        return [load_features(paths[s.entry.slide_id]) for s in chosen], [s.label for s in chosen]

    train_bags, train_labels = bags("train")
    val_bags, val_labels = bags("val")
    counts = np.bincount(train_labels, minlength=len(config.scheme().classes))
    weights = [1.0 / counts[y] for y in train_labels]
    batch = max(1, min(d.batch_size, len(train_bags)))
    train_loader = DataLoader(
        BagDataset(train_bags, train_labels, m.max_bag, train=True),
        batch_size=batch,
        sampler=WeightedRandomSampler(weights, len(train_bags), replacement=True),
        collate_fn=collate_bags,
    )
    val_loader = DataLoader(
        BagDataset(val_bags, val_labels, m.max_bag, train=False),
        batch_size=batch,
        collate_fn=collate_bags,
    )
    meta = ModelMeta(
        kind="mil",
        **scheme_fields(config.scheme(), [s.entry.label for s in slides]),
        target_mpp=d.target_mpp,
        tile_px=d.tile_px,
        min_tissue=d.min_tissue,
        mean=encoder.spec["mean"],
        std=encoder.spec["std"],
        backbone=encoder.spec["backbone"],
        encoder_source=encoder.spec["source"],
        feature_dim=encoder.dim,
        attention_dim=m.attention_dim,
        dropout=m.dropout,
        aggregator="attention",
        temperature=1.0,
        lr=o.lr,
        weight_decay=o.weight_decay,
        label_smoothing=o.label_smoothing,
        max_bag=m.max_bag,
        train_class_priors=(counts / counts.sum()).tolist(),
        manifest_sha256=file_sha256(d.manifest),
        package_version=__version__,
        seed=config.seed,
    )
    model = ABMIL(meta)
    trainer, checkpoint = make_trainer(config, run_dir, progress)
    trainer.fit(model, train_loader, val_loader)
    if trainer.global_rank != 0:
        return None
    model.load_state_dict(best_state(checkpoint, model))
    bundle = MILBundle(meta, encoder.module)
    bundle.mil.load_state_dict(model.state_dict())
    train, val = (train_bags, train_labels), (val_bags, val_labels)
    metrics = _finish_mil(bundle, meta, train, val, m.ood_quantile)
    return write_model(run_dir, bundle, meta, metrics, checkpoint)


def _finish_mil(bundle, meta: ModelMeta, train: tuple, val: tuple, quantile: float) -> dict:
    """Calibrate on validation slides (when there are enough), keep conformal scores and fit
    the OOD detector on the cached training features."""
    from models.metrics import slide_metrics
    from models.mil import pad_bags
    from models.ood import fit_detector
    from pipeline.tiles.aggregate import apply_temperature
    from pipeline.training.calibration import calibrate, conformal_scores

    (train_bags, train_labels), (val_bags, val_labels) = train, val
    model = bundle.mil.eval()
    with torch.no_grad():
        probs = (
            np.concatenate([model(*pad_bags([bag])).softmax(1).numpy() for bag in val_bags])
            if val_bags
            else np.zeros((0, len(meta.classes)))
        )
    labels = np.array(val_labels, int)
    empty = np.zeros((0, len(meta.classes)))  # MIL has no tile probabilities to group
    meta.temperature, meta.calibration = calibrate(probs, labels, empty, np.zeros(0), [], "mean")
    calibrated = apply_temperature(probs, meta.temperature) if len(probs) else probs
    meta.conformal_scores = conformal_scores(calibrated, labels)
    rng = np.random.default_rng(0)
    picks = [rng.permutation(len(b))[:OOD_TILES_PER_SLIDE] for b in train_bags]
    features = np.concatenate([b[p] for b, p in zip(train_bags, picks, strict=True)])
    tile_labels = np.concatenate(
        [np.full(len(p), y) for p, y in zip(picks, train_labels, strict=True)]
    )
    bundle.ood, meta.ood = fit_detector(
        features, tile_labels, np.concatenate(val_bags), len(meta.classes), quantile
    )
    return {
        "val_slides": len(val_bags),
        "val": slide_metrics(calibrated, labels, meta.classes, meta.scheme().positive_index),
        "temperature": meta.temperature,
        "temperature_fitted": meta.calibration["method"] != "none",
        "calibration": meta.calibration,
        "ood": meta.ood,
    }
