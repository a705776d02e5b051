"""``fascicle train``: fit a tile classifier (or attention MIL) from a YAML config.

Writes to ``config.out``: ``config.yaml`` (resolved), ``splits.csv``, ``tiles/`` (coords,
resumable), ``logs/`` (CSV) and ``tb/`` (TensorBoard), ``checkpoints/`` (Lightning, for
resuming), ``model.ckpt`` (the exported model predict uses) and ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from models.meta import ModelMeta
from pipeline import __version__
from pipeline.core.atomic import writable_folder, write_text
from pipeline.core.hashing import file_sha256
from pipeline.training.calibration import finish_tile_model
from pipeline.training.config import RunConfig
from pipeline.training.trainer import (
    TrainResult,
    best_state,
    check_accelerator,
    make_trainer,
    scheme_fields,
    write_model,
)


def train(config: RunConfig, progress: bool = True) -> TrainResult | None:
    """Train per ``config``; returns the exported model on rank 0 (None on other ranks)."""
    import pytorch_lightning as pl

    run_dir = Path(config.out)
    check_accelerator(config)
    writable_folder(run_dir)
    write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if config.model.kind == "mil":
        from pipeline.training.mil import train_mil

        return train_mil(config, run_dir, progress)
    return _train_tiles(config, run_dir, progress)


def _train_tiles(config: RunConfig, run_dir: Path, progress: bool) -> TrainResult | None:
    """A tile classifier, end to end, on slides (``data.manifest``) or on a tile dataset
    (``data.tiles``: each tile image plays a slide's part)."""
    from models.backbones import build_backbone
    from models.tile_classifier import TileClassifier
    from pipeline.tiles.augment import Macenko, build_transform

    d, m, o, scheme = config.data, config.model, config.optim, config.scheme()
    if d.tiles:
        from pipeline.training.tileset_data import TileSetDataModule, prepare_tile_groups

        groups = prepare_tile_groups(config)
        source, labels = d.tiles, [g.record.label for g in groups]
        sample = _tile_set_sample(groups, config)
    else:
        from pipeline.tiles.dataset import sample_tiles
        from pipeline.training.datamodule import TileDataModule, prepare_slides, write_splits

        groups = prepare_slides(config, run_dir, progress)
        write_splits(run_dir / "splits.csv", groups)
        source, labels = d.manifest, [s.entry.label for s in groups]
        sample = sample_tiles(groups, 256, config.seed, d.backend)
    _, _, mean, std = build_backbone(m.backbone, m.pretrained, m.weights_path, m.weights_partial)
    macenko = (
        Macenko().fit(sample).state() if config.augment.stain_normalisation == "macenko" else None
    )
    if mean is None:  # trained from scratch: statistics of the training tiles
        pixels = np.concatenate([t.reshape(-1, 3) for t in sample]) / 255.0
        mean, std = pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()
    train_counts = np.bincount(
        [g.label for g in groups if g.split == "train"], minlength=len(scheme.classes)
    )
    meta = ModelMeta(
        kind="tile",
        **scheme_fields(scheme, labels),
        target_mpp=d.target_mpp,
        tile_px=d.tile_px,
        min_tissue=d.min_tissue,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        macenko=macenko,
        backbone=m.backbone,
        pretrained=m.pretrained,
        weights_path=m.weights_path,
        weights_partial=m.weights_partial,
        dropout=m.dropout,
        aggregator=m.aggregator,
        temperature=1.0,
        train_class_priors=(train_counts / train_counts.sum()).tolist(),
        class_weights=(
            train_counts.sum() / (len(train_counts) * np.maximum(train_counts, 1))
        ).tolist()
        if o.class_weights
        else None,
        label_smoothing=o.label_smoothing,
        lr=o.lr,
        weight_decay=o.weight_decay,
        warmup_epochs=o.warmup_epochs,
        manifest_sha256=file_sha256(source) if Path(source).is_file() else None,
        package_version=__version__,
        seed=config.seed,
    )
    model = TileClassifier(meta)
    module = TileSetDataModule if d.tiles else TileDataModule
    datamodule = module(
        config,
        groups,
        build_transform(config.augment, meta.mean, meta.std, True, macenko, config.seed),
        build_transform(config.augment, meta.mean, meta.std, False, macenko),
    )
    trainer, checkpoint = make_trainer(config, run_dir, progress)
    trainer.fit(model, datamodule)
    if trainer.global_rank != 0:
        return None
    model.load_state_dict(best_state(checkpoint, model))
    metrics = finish_tile_model(model, meta, datamodule, config)
    return write_model(run_dir, model, meta, metrics, checkpoint)


def _tile_set_sample(groups, config: RunConfig, n: int = 256) -> list[np.ndarray]:
    """Up to ``n`` training crops (statistics and stain reference), spread over the tiles."""
    from pipeline.tiles.tileset import tile_crops

    d = config.data
    train = [g.record for g in groups if g.split == "train"]
    rng = np.random.default_rng(config.seed)
    crops: list[np.ndarray] = []
    for i in rng.permutation(len(train)):
        crops += list(tile_crops(train[i], d.target_mpp, d.tile_px))
        if len(crops) >= n:
            break
    return crops[:n]
