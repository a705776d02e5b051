"""Training data: slide splits, prepared slides, class-balanced epochs, the data module.

Every epoch draws up to ``tiles_per_slide`` fresh tiles per training slide and balances the
classes; the draw is a function of (seed, epoch) alone and is split across ranks, so
distributed training sees the same tiles as one process would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.core.errors import ManifestError
from pipeline.tiles.dataset import (
    SlideTiles,
    TileDataset,
    all_items,
    collate,
    eval_items,
    worker_init,
)
from pipeline.training.config import RunConfig
from pipeline.wsi.manifest import SlideEntry, read_manifest
from pipeline.wsi.tiling import TileSpec, TilingParams, load_tiles


def assign_splits(
    entries: list[SlideEntry], classes: list[str], val: float, test: float, seed: int
) -> dict[str, str]:
    """Manifest splits if every slide has one; otherwise patient-grouped and label-stratified.

    Patients are shuffled within each label (their first slide's; ``classes`` first, then
    other labels) and cut into test / val / train so every label is represented in each split
    when it has ≥ 3 patients.
    """
    if all(e.split for e in entries):
        return {e.slide_id: e.split for e in entries}
    rng = np.random.default_rng(seed)
    patients: dict[str, list[SlideEntry]] = {}
    for e in entries:
        patients.setdefault(e.patient_id, []).append(e)
    splits: dict[str, str] = {}
    labels = list(classes) + sorted({e.label for e in entries if e.label} - set(classes))
    for c in labels:
        ids = sorted(p for p, es in patients.items() if es[0].label == c)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n_test = max(1, round(len(ids) * test)) if len(ids) >= 3 and test > 0 else 0
        n_val = max(1, round(len(ids) * val)) if len(ids) >= 3 and val > 0 else 0
        for rank, pid in enumerate(ids):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            splits.update({e.slide_id: split for e in patients[pid]})
    return splits


def write_splits(path: Path, slides: list[SlideTiles]) -> None:
    from pipeline.core.batch import write_summary

    rows = [
        {
            "slide_id": s.entry.slide_id,
            "patient_id": s.entry.patient_id,
            "label": s.entry.label,
            "split": s.split,
            "n_tiles": len(s.coords),
        }
        for s in slides
    ]
    write_summary(path, rows, ["slide_id", "patient_id", "label", "split", "n_tiles"])


def prepare_slides(config: RunConfig, run_dir: Path, progress: bool = True) -> list[SlideTiles]:
    """Validate the manifest, tile what is missing, and report every problem at once."""
    from pipeline.wsi.tile_run import tile_slides

    d, scheme = config.data, config.scheme()
    known = None if scheme.rest else [*scheme.classes, *scheme.label_map]
    entries = read_manifest(d.manifest, labels=known)
    problems = [f"{e.slide_id}: no label" for e in entries if e.label is None]
    splits = assign_splits(entries, scheme.classes, d.val_fraction, d.test_fraction, config.seed)
    tiles_dir = Path(d.tiles_dir) if d.tiles_dir else run_dir / "tiles"
    params = TilingParams(target_mpp=d.target_mpp, tile_px=d.tile_px, min_tissue=d.min_tissue)
    rows = tile_slides(
        entries, tiles_dir, params, workers=d.tiling_workers, backend=d.backend, progress=progress
    )
    slides = []
    for entry, row in zip(entries, rows, strict=True):
        if row["status"] != "ok":
            problems.append(f"{entry.slide_id}: {row['error']}")
            continue
        coords, attrs = load_tiles(tiles_dir / "tiles" / f"{entry.slide_id}.h5")
        if len(coords) == 0:
            problems.append(
                f"{entry.slide_id}: no tiles after tiling (check qc/{entry.slide_id}.png)"
            )
            continue
        spec = TileSpec.from_attrs(attrs)
        label = scheme.index_of(entry.label)
        slides.append(SlideTiles(entry, label, splits[entry.slide_id], coords, spec))
    problems += split_problems(slides, scheme, "slide")
    if problems:
        raise ManifestError(d.manifest, problems)
    return slides


def split_problems(groups, scheme, unit: str) -> list[str]:
    """A class without a training ``unit`` (slide or tile), or no validation one."""
    problems = [
        f"class {c!r} has no training {unit} ({scheme.describe_labels()}; set data.classes, "
        "data.label_map or data.one_vs_rest to match the labels)"
        for i, c in enumerate(scheme.classes)
        if not any(g.label == i and g.split == "train" for g in groups)
    ]
    if not any(g.split == "val" for g in groups):
        problems.append(f"no validation {unit} (give some split=val, or set data.val_fraction > 0)")
    return problems


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BalancedEpochSampler(Sampler[int]):
    """Each epoch: up to ``per_slide`` random tiles per slide, classes balanced by
    over-sampling the smaller ones; the same global draw on every rank, split by rank."""

    def __init__(
        self,
        slides: list[SlideTiles],
        indices: list[int],
        per_slide: int,
        seed: int,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.per_slide, self.seed, self.epoch = per_slide, seed, 0
        self.rank, self.world_size = rank, world_size
        self.offsets, self.counts, self.labels = [], [], []
        start = 0
        for i in indices:
            n = len(slides[i].coords)
            self.offsets.append(start)
            self.counts.append(n)
            self.labels.append(slides[i].label)
            start += n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """Dataset indices of the whole epoch (all ranks), in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        by_class: dict[int, list[np.ndarray]] = {}
        for offset, n, label in zip(self.offsets, self.counts, self.labels, strict=True):
            take = rng.choice(n, min(n, self.per_slide), replace=False)
            by_class.setdefault(label, []).append(offset + take)
        pools = {c: np.concatenate(v) for c, v in by_class.items()}
        target = max(len(v) for v in pools.values())
        parts = [
            np.concatenate([pool, rng.choice(pool, target - len(pool), replace=True)])
            for _, pool in sorted(pools.items())
        ]
        return rng.permutation(np.concatenate(parts))

    def _rank_world(self) -> tuple[int, int]:
        rank, world = _dist()
        return (
            self.rank if self.rank is not None else rank,
            self.world_size if self.world_size is not None else world,
        )

    def __iter__(self):
        indices = self.epoch_indices()
        rank, world = self._rank_world()
        if world > 1:
            pad = (-len(indices)) % world
            indices = np.concatenate([indices, indices[:pad]])
            indices = indices[rank::world]
        return iter(indices.tolist())

    def __len__(self) -> int:
        target = max(
            sum(
                min(n, self.per_slide)
                for n, lab in zip(self.counts, self.labels, strict=True)
                if lab == c
            )
            for c in set(self.labels)
        )
        total = target * len(set(self.labels))
        _, world = self._rank_world()
        return -(-total // world)


class ShardSampler(Sampler[int]):
    """Evaluation: every index once, ranks taking interleaved shares (no padding)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        rank, world = _dist()
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        rank, world = _dist()
        return len(range(rank, self.n, world))


class TileDataModule(pl.LightningDataModule):
    """Train / val / test loaders over prepared slides."""

    def __init__(
        self, config: RunConfig, slides: list[SlideTiles], train_transform, eval_transform
    ):
        super().__init__()
        self.config, self.slides = config, slides
        self.train_transform, self.eval_transform = train_transform, eval_transform

    def indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.slides) if s.split == split]

    def _loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        d = self.config.data
        return DataLoader(
            dataset,
            batch_size=d.batch_size,
            sampler=sampler,
            num_workers=d.num_workers,
            collate_fn=collate,
            worker_init_fn=worker_init,
            persistent_workers=d.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        d = self.config.data
        idx = self.indices("train")
        dataset = TileDataset(
            self.slides, all_items(self.slides, idx), self.train_transform, d.backend
        )
        sampler = BalancedEpochSampler(self.slides, idx, d.tiles_per_slide, self.config.seed)
        return self._loader(dataset, sampler)

    def eval_dataset(self, split: str) -> TileDataset:
        d = self.config.data
        items = eval_items(self.slides, self.indices(split), d.eval_tiles_per_slide)
        return TileDataset(self.slides, items, self.eval_transform, d.backend)

    def ood_train_dataset(self, per_slide: int) -> TileDataset:
        """Training tiles the out-of-distribution detector is fitted on."""
        items = eval_items(self.slides, self.indices("train"), per_slide)
        return TileDataset(self.slides, items, self.eval_transform, self.config.data.backend)

    def val_dataloader(self) -> DataLoader:
        dataset = self.eval_dataset("val")
        return self._loader(dataset, ShardSampler(len(dataset)))
