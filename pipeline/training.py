"""``fascicle train``: fit a tile classifier (or attention MIL) from a YAML config.

Writes to ``config.out``: ``config.yaml`` (resolved), ``splits.csv``, ``tiles/`` (coords,
resumable), ``logs/`` (CSV) and ``tb/`` (TensorBoard), ``checkpoints/`` (Lightning, for
resuming), ``model.ckpt`` (the exported model predict uses) and ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .atomic import write_text
from .config import RunConfig

log = logging.getLogger(__name__)
MIN_SLIDES_FOR_TEMPERATURE = 10


@dataclass
class TrainResult:
    model_path: Path
    metrics: dict


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _trainer(config: RunConfig, run_dir: Path, monitor: str, progress: bool):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    t = config.trainer
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        monitor=monitor,
        mode="max",
        save_last=True,
        filename="best-{epoch:03d}",
    )
    trainer = pl.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tb")],
        callbacks=[checkpoint],
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        default_root_dir=run_dir,
    )
    return trainer, checkpoint


def _best_state(checkpoint, model) -> dict:
    """Weights of the best checkpoint (or the current ones if none was kept)."""
    import torch

    path = checkpoint.best_model_path or checkpoint.last_model_path
    if not path:
        return model.state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def train(config: RunConfig, progress: bool = True) -> TrainResult | None:
    """Train per ``config``; returns the exported model on rank 0 (None on other ranks)."""
    import pytorch_lightning as pl

    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if config.model.kind == "mil":
        from .mil_training import train_mil

        return train_mil(config, run_dir, progress)
    return _train_tiles(config, run_dir, progress)


def _train_tiles(config: RunConfig, run_dir: Path, progress: bool) -> TrainResult | None:
    from models.backbones import build_backbone
    from models.tile_classifier import TileClassifier

    from .augment import Macenko, build_transform
    from .data import TileDataModule, prepare_slides, sample_tiles, write_splits

    d, m, o = config.data, config.model, config.optim
    slides = prepare_slides(config, run_dir, progress)
    write_splits(run_dir / "splits.csv", slides)
    _, _, mean, std = build_backbone(m.backbone, m.pretrained, m.weights_path)
    sample = sample_tiles(slides, 256, config.seed, d.backend)
    macenko = (
        Macenko().fit(sample).state() if config.augment.stain_normalisation == "macenko" else None
    )
    if mean is None:  # trained from scratch: statistics of the training tiles
        pixels = np.concatenate([t.reshape(-1, 3) for t in sample]) / 255.0
        mean, std = pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()
    train_counts = np.bincount(
        [s.label for s in slides if s.split == "train"], minlength=len(d.classes)
    )
    hparams = {
        "kind": "tile",
        "classes": list(d.classes),
        "target_mpp": d.target_mpp,
        "tile_px": d.tile_px,
        "min_tissue": d.min_tissue,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "macenko": macenko,
        "backbone": m.backbone,
        "pretrained": m.pretrained,
        "weights_path": m.weights_path,
        "dropout": m.dropout,
        "aggregator": m.aggregator,
        "temperature": 1.0,
        "train_class_priors": (train_counts / train_counts.sum()).tolist(),
        "class_weights": (
            train_counts.sum() / (len(train_counts) * np.maximum(train_counts, 1))
        ).tolist()
        if o.class_weights
        else None,
        "label_smoothing": o.label_smoothing,
        "lr": o.lr,
        "weight_decay": o.weight_decay,
        "warmup_epochs": o.warmup_epochs,
        "manifest_sha256": file_sha256(d.manifest),
        "package_version": __version__,
        "seed": config.seed,
    }
    model = TileClassifier(hparams)
    datamodule = TileDataModule(
        config,
        slides,
        build_transform(
            config.augment, hparams["mean"], hparams["std"], True, macenko, config.seed
        ),
        build_transform(config.augment, hparams["mean"], hparams["std"], False, macenko),
    )
    trainer, checkpoint = _trainer(config, run_dir, "val/slide_balanced_accuracy", progress)
    trainer.fit(model, datamodule)
    if trainer.global_rank != 0:
        return None
    model.load_state_dict(_best_state(checkpoint, model))
    return _export(model, hparams, datamodule, run_dir, config, checkpoint)


def _export(
    model, hparams: dict, datamodule, run_dir: Path, config: RunConfig, checkpoint
) -> TrainResult:
    """Calibrate on validation slides, then write ``model.ckpt`` and ``metrics.json``."""
    from models.checkpoint import save_model
    from models.metrics import slide_metrics

    from .aggregate import aggregate, apply_temperature, fit_temperature
    from .inference import predict_items

    val = datamodule.eval_dataset("val")
    tile_probs = predict_items(model, val, config.data.batch_size)
    slide_ids = sorted(set(val.items[:, 0].tolist()))
    probs = np.array(
        [aggregate(tile_probs[val.items[:, 0] == s], hparams["aggregator"]) for s in slide_ids]
    )
    labels = np.array([datamodule.slides[s].label for s in slide_ids])
    fitted = len(slide_ids) >= MIN_SLIDES_FOR_TEMPERATURE
    if fitted:
        hparams["temperature"] = fit_temperature(probs, labels)
    metrics = {
        "val_slides": len(slide_ids),
        "val": slide_metrics(
            apply_temperature(probs, hparams["temperature"]), labels, hparams["classes"]
        ),
        "temperature": hparams["temperature"],
        "temperature_fitted": fitted,
        "temperature_note": ""
        if fitted
        else f"fewer than {MIN_SLIDES_FOR_TEMPERATURE} validation slides: temperature left at 1",
        "best_checkpoint": str(checkpoint.best_model_path),
        "best_score": None
        if checkpoint.best_model_score is None
        else float(checkpoint.best_model_score),
    }
    hparams["val_slide_metrics"] = metrics["val"]
    path = save_model(run_dir / "model.ckpt", model, hparams)
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    log.info("model written to %s", path)
    return TrainResult(path, metrics)
