"""End-to-end training on a tile dataset: each tile image plays the part a slide plays in
slide training (its crops are its tiles; validation metrics aggregate a tile's crops), splits
group patients, and every epoch draws class-balanced crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from pipeline.core.errors import ManifestError
from pipeline.tiles.tileset import CropDataset, TileRecord, read_tile_set
from pipeline.training.config import RunConfig
from pipeline.training.datamodule import TileDataModule, assign_splits, split_problems
from pipeline.wsi.manifest import SlideEntry


@dataclass
class TileGroup:
    """One tile image in training: its record, class index and split."""

    record: TileRecord
    label: int
    split: str


def prepare_tile_groups(config: RunConfig) -> list[TileGroup]:
    """The tile set's tiles with their classes and patient-grouped splits (the CSV's split
    column when every row has one); every problem reported at once."""
    d, scheme = config.data, config.scheme()
    tiles = read_tile_set(d.tiles, d.tile_mpp)
    entries = [
        SlideEntry(str(i), r.path, r.label, r.patient_id, r.split)
        for i, r in enumerate(tiles.records)
    ]
    splits = assign_splits(entries, scheme.classes, d.val_fraction, d.test_fraction, config.seed)
    groups = [
        TileGroup(r, scheme.index_of(r.label), splits[str(i)]) for i, r in enumerate(tiles.records)
    ]
    problems = [f"{g.record.path}: label {g.record.label!r} is no class" for g in groups
                if g.label < 0]  # fmt: skip
    problems += split_problems(groups, scheme, "tile")
    if problems:
        raise ManifestError(Path(d.tiles), problems)
    return groups


class TileSetDataModule(TileDataModule):
    """Train / val loaders over a tile set's crops: ``TileDataModule`` with tiles for slides."""

    def __init__(self, config: RunConfig, groups: list[TileGroup], train_transform, eval_transform):
        super().__init__(config, groups, train_transform, eval_transform)
        self.records = [g.record for g in groups]
        self.labels = [g.label for g in groups]

    def _crops(self, split: str, transform, most_per_tile: int | None = None) -> CropDataset:
        d = self.config.data
        return CropDataset(self.records, d.target_mpp, d.tile_px, transform, self.labels,
                           self.indices(split), most_per_tile)  # fmt: skip

    def eval_dataset(self, split: str) -> CropDataset:
        return self._crops(split, self.eval_transform)

    def ood_train_dataset(self, per_slide: int) -> CropDataset:
        return self._crops("train", self.eval_transform, per_slide)

    def train_dataloader(self) -> DataLoader:
        dataset = self._crops("train", self.train_transform)
        labels = np.array([self.labels[i] for i in dataset.items[:, 0]])
        weights = 1.0 / np.bincount(labels)[labels]
        generator = torch.Generator().manual_seed(self.config.seed)  # fresh draws each epoch
        sampler = WeightedRandomSampler(weights.tolist(), len(dataset), generator=generator)
        return self._loader(dataset, sampler)
