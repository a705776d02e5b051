"""``fascicle embed``: frozen-encoder features of every tile, one ``features/<slide_id>.h5``
per slide (datasets ``features`` (N, D) float32 and ``coords`` (N, 2)), resumable.

The encoder is a backbone name (``resnet18``, ``timm:...``; ImageNet or ``weights_path``
weights) or a fascicle ``model.ckpt``, whose trained backbone is then reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import UsageError
from pipeline.core.hashing import params_digest
from pipeline.core.paths import under
from pipeline.training.config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class Encoder:
    module: nn.Module
    dim: int
    spec: dict
    """backbone, mean, std and where the weights came from: enough to rebuild it."""


def build_encoder(config: RunConfig) -> Encoder:
    from models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
    from models.checkpoint import load_model

    m = config.model
    if m.encoder.endswith((".ckpt", ".pt")) and Path(m.encoder).exists():
        model, meta = load_model(m.encoder)
        if meta.pools_tiles:
            raise UsageError(f"{m.encoder}: an encoder must be a tile model, not {meta.kind}")
        module = model.backbone
        dim = model.head[-1].in_features
        spec = {"backbone": meta.backbone, "mean": meta.mean, "std": meta.std, "source": m.encoder}
    else:
        module, dim, mean, std = build_backbone(
            m.encoder, m.pretrained, m.weights_path, m.weights_partial
        )
        spec = {
            "backbone": m.encoder,
            "mean": mean or IMAGENET_MEAN,
            "std": std or IMAGENET_STD,
            "source": m.weights_path or ("imagenet" if m.pretrained else "random-init"),
        }
    for p in module.parameters():
        p.requires_grad_(False)
    return Encoder(module.eval(), dim, spec)


def _hash(encoder: Encoder, spec, n: int) -> str:
    return params_digest(
        {"encoder": encoder.spec, "tile": [spec.level, spec.patch_size, spec.tile_px], "n": n}
    )


def embed_slides(
    config: RunConfig,
    slides: list,
    out_dir: Path,
    encoder: Encoder,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Path]:
    """Features for every tile of every slide; slides already embedded alike are kept."""
    import h5py
    from tqdm import tqdm

    from pipeline.tiles.augment import build_transform
    from pipeline.tiles.dataset import TileDataset, all_items
    from pipeline.tiles.engine import plan_engine
    from pipeline.tiles.runner import run_tiles

    out_dir.mkdir(parents=True, exist_ok=True)
    mean, std = encoder.spec["mean"], encoder.spec["std"]
    transform = build_transform(config.augment, mean, std, train=False)
    engine = plan_engine(device, workers=config.data.num_workers)
    module = engine.prepare(encoder.module)

    def step(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": module(images)}

    paths = {}
    for i, slide in enumerate(tqdm(slides, desc="embedding", unit="slide", disable=not progress)):
        path = under(out_dir, f"{slide.entry.slide_id}.h5")
        paths[slide.entry.slide_id] = path
        digest = _hash(encoder, slide.spec, len(slide.coords))
        if path.exists():
            with h5py.File(path, "r") as f:
                if f.attrs.get("params_hash") == digest:
                    continue
        dataset = TileDataset(slides, all_items(slides, [i]), transform, config.data.backend)
        run = run_tiles(step, dataset, ["features"], config.data.batch_size, engine, (mean, std))
        features = run.outputs["features"][run.readable]
        if not len(features):
            features = np.zeros((0, encoder.dim), np.float32)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features.astype(np.float32))
            f.create_dataset("coords", data=slide.coords)
            f.attrs["params_hash"] = digest
            f.attrs["encoder"] = json.dumps(encoder.spec)
            f.attrs["slide_id"] = slide.entry.slide_id
    return paths


def embed_run(config: RunConfig, progress: bool = True) -> dict[str, Path]:
    """``fascicle embed``: tile the config's slides (resumable) and embed them into
    ``config.features_dir()``; or, with ``data.tiles``, cache the features of a tile dataset
    there (as ``fascicle train`` with ``model.kind: probe`` reads them)."""
    from pipeline.training.datamodule import prepare_slides

    d = config.data
    if d.tiles:
        from pipeline.tiles.tileset import read_tile_set
        from pipeline.training.features import embed_tile_set

        tiles = read_tile_set(d.tiles, d.tile_mpp)
        found = embed_tile_set(
            tiles, config.model, d.target_mpp, d.tile_px, config.features_dir(), d.batch_size,
            progress,
        )  # fmt: skip
        return {str(r.path): found.cache for r in tiles.records}

    slides = prepare_slides(config, Path(config.out), progress=progress)
    encoder = build_encoder(config)
    return embed_slides(config, slides, config.features_dir(), encoder, progress=progress)


def load_features(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f["features"][:]
