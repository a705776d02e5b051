"""Benchmark the training data path against limits measured in the same run.

Prints tiles/s for: the bare OpenSlide ``read_region`` loop over the same tiles (the raw read
limit), fascicle's DataLoader with 0, 1 and 2 workers (reading + augmentation + collation),
the demo model's training step alone, and loader + training step together. The loader is
not the bottleneck when loader tiles/s exceeds training-step tiles/s.

Usage: python scripts/bench_loader.py [--tiles 1536] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.meta import ModelMeta  # noqa: E402
from pipeline.core.resources import builtin_config  # noqa: E402
from pipeline.synth.cohort import CohortParams, make_cohort  # noqa: E402
from pipeline.tiles.augment import Macenko, build_transform  # noqa: E402
from pipeline.tiles.dataset import (  # noqa: E402
    TileDataset,
    all_items,
    collate,
    sample_tiles,
    worker_init,
)
from pipeline.training.config import load_config  # noqa: E402
from pipeline.training.datamodule import BalancedEpochSampler, prepare_slides  # noqa: E402


def openslide_rate(slides, items: np.ndarray) -> float:
    import openslide

    handles = {i: openslide.OpenSlide(str(s.entry.path)) for i, s in enumerate(slides)}
    start = time.perf_counter()
    for s, x, y in items:
        spec = slides[s].spec
        handles[s].read_region((int(x), int(y)), spec.level, (spec.patch_size, spec.patch_size))
    return len(items) / (time.perf_counter() - start)


def make_loader(dataset, sampler, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init,
    )


def train_step(model, opt, images: torch.Tensor, labels: torch.Tensor) -> None:
    loss = model.loss(model(images), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()


def loader_rate(dataset, sampler, batch_size: int, workers: int, model=None) -> float:
    """Tiles/s through the loader, and through a training step too when ``model`` is given."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3) if model is not None else None
    it = iter(make_loader(dataset, sampler, batch_size, workers))
    next(it)  # worker start-up and slide opening are not throughput
    start, n = time.perf_counter(), 0
    for batch in it:
        if model is not None:
            train_step(model, opt, batch["image"], batch["label"])
        n += len(batch["label"])
    return n / (time.perf_counter() - start)


def step_rate(model, batch_size: int, tile_px: int, steps: int = 10) -> float:
    x = torch.randn(batch_size, 3, tile_px, tile_px)
    y = torch.randint(0, 3, (batch_size,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    train_step(model, opt, x, y)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, x, y)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    from models.tile_classifier import TileClassifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench" / "loader")
    parser.add_argument("--tiles", type=int, default=1536)
    args = parser.parse_args()
    cohort = args.cache / "cohort"
    make_cohort(
        cohort,
        CohortParams(n_slides=9, seed=11, slide_size_um=(3000.0, 2000.0)),
        workers=2,
        progress=False,
    )
    config = load_config(
        builtin_config("demo.yaml"),
        [f"--data.manifest={cohort / 'manifest.csv'}", f"--out={args.cache / 'run'}"],
    )
    slides = prepare_slides(config, args.cache / "run", progress=False)
    for s in slides:
        s.split = "train"
    d = config.data
    idx = list(range(len(slides)))
    per_slide = max(1, args.tiles // len(slides))
    sampler = BalancedEpochSampler(slides, idx, per_slide, seed=0)
    items = all_items(slides, idx)
    mac = Macenko().fit(sample_tiles(slides, 64, 0)).state()
    transform = build_transform(config.augment, [0.5] * 3, [0.2] * 3, True, mac)
    dataset = TileDataset(slides, items, transform)
    raw = openslide_rate(slides, items[list(sampler)])
    meta = ModelMeta(
        kind="tile",
        classes=d.classes,
        target_mpp=d.target_mpp,
        tile_px=d.tile_px,
        mean=[0.5] * 3,
        std=[0.2] * 3,
        backbone=config.model.backbone,
        aggregator="mean",
        temperature=1.0,
        package_version="bench",
    )
    model = TileClassifier(meta)
    rows = [("bare OpenSlide read_region (raw read limit)", raw)]
    for workers in (0, 1, 2):
        rows.append(
            (
                f"DataLoader, {workers} worker(s), with augmentation",
                loader_rate(dataset, sampler, d.batch_size, workers),
            )
        )
    step = step_rate(model, d.batch_size, d.tile_px)
    rows.append(
        (
            f"training step only ({config.model.backbone}, {d.tile_px} px, batch {d.batch_size})",
            step,
        )
    )
    rows.append(
        (
            "loader (2 workers) + training step",
            loader_rate(dataset, sampler, d.batch_size, 2, model),
        )
    )
    print(
        f"\n{len(sampler)} tiles of {d.tile_px} px at {d.target_mpp} µm/px; "
        f"torch threads {torch.get_num_threads()}"
    )
    for name, rate in rows:
        print(f"  {name:<58} {rate:8.0f} tiles/s  ({rate / raw:5.2f} x raw read)")
    best_loader = max(r for n, r in rows if n.startswith("DataLoader"))
    print(
        f"  loader / training step: {best_loader / step:.2f} "
        "(> 1: the loader is not the bottleneck)"
    )


if __name__ == "__main__":
    main()
