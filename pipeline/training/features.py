"""Frozen-encoder features of a tile set, computed once and cached per tile image.

The cache key of a folder is the encoder (backbone name, the sha256 of its weights file or
"imagenet" / "random-init"), the resolution and the crop size; the file of a tile is keyed by
its resolved path, size and modification time. Each tile's ``(crops, D)`` array is written
atomically, so an interrupted run resumes where it stopped and a rerun computes nothing.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.backbones import build_backbone
from pipeline.core.atomic import atomic_path
from pipeline.core.hashing import file_sha256, params_digest
from pipeline.tiles.tileset import TileRecord, TileSet, tile_crops
from pipeline.training.config import ModelConfig

RANDOM_INIT_SEED = 0


@dataclass
class TileFeatures:
    features: np.ndarray
    """(crops, D) float32, crops of all tiles in tile-set order."""
    tile_index: np.ndarray
    """(crops,) index of each crop's tile in ``TileSet.records``."""
    encoder: dict
    mean: list[float]
    std: list[float]
    cache: Path


def encoder_identity(m: ModelConfig) -> dict:
    """What the features depend on: the encoder and where its weights came from."""
    from models.weights import resolve_source

    if m.weights_path:
        weights = "sha256:" + file_sha256(resolve_source(m.weights_path))
    else:
        weights = "imagenet" if m.pretrained else f"random-init-seed-{RANDOM_INIT_SEED}"
    return {"encoder": m.encoder, "weights": weights, "source": m.weights_path}


def _tile_key(record: TileRecord) -> str:
    stat = record.path.stat()
    text = f"{record.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{record.mpp}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def embed_tile_set(
    tiles: TileSet,
    m: ModelConfig,
    target_mpp: float | None,
    tile_px: int,
    cache_dir: Path,
    batch_size: int = 32,
    progress: bool = False,
) -> TileFeatures:
    """Features of every crop of every tile, from the cache where present."""
    identity = encoder_identity(m)
    torch.manual_seed(RANDOM_INIT_SEED)  # a random-init encoder is the same one every time
    encoder, dim, mean, std = build_backbone(
        m.encoder, m.pretrained, m.weights_path, m.weights_partial
    )
    if mean is None:  # random-init encoder (tests, baselines): neutral statistics
        mean, std = [0.5] * 3, [0.25] * 3
    folder = Path(cache_dir) / params_digest(
        {**identity, "target_mpp": target_mpp, "tile_px": tile_px, "mean": mean, "std": std}
    )
    folder.mkdir(parents=True, exist_ok=True)
    encoder.eval()
    shift = torch.tensor(mean).view(1, 3, 1, 1)
    scale = torch.tensor(std).view(1, 3, 1, 1)
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        batch = np.concatenate([crops for _, crops in pending])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
        with torch.inference_mode():
            out = np.concatenate(
                [encoder((chunk - shift) / scale).float().numpy() for chunk in x.split(batch_size)]
            )
        start = 0
        for path, crops in pending:
            _save(path, out[start : start + len(crops)].astype(np.float32))
            start += len(crops)
        pending.clear()

    files = [folder / f"{_tile_key(r)}.npy" for r in tiles.records]
    todo = [(r, f) for r, f in zip(tiles.records, files, strict=True) if not f.exists()]
    from tqdm.auto import tqdm

    for record, file in tqdm(todo, desc="embed tiles", unit="tile", disable=not progress):
        pending.append((file, tile_crops(record, target_mpp, tile_px)))
        if sum(len(c) for _, c in pending) >= batch_size:
            flush()
    if pending:
        flush()
    arrays = [np.load(f) for f in files]
    features = np.concatenate(arrays).reshape(-1, dim)
    index = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    return TileFeatures(features, index, identity, list(mean), list(std), folder)


def _save(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
