"""``fascicle predict``: batch inference over slides, one folder of results per slide.

For each slide: tile at the model's resolution (reusing coordinates from an earlier
``fascicle tile`` when the parameters match), stream tiles through the model with
DataLoader workers, aggregate and calibrate, fuse with the slide's IHC, and write
``slides/<slide_id>/`` (``tiles.csv``, ``tiles.geojson``, ``heatmap.png``, then
``result.json`` last, every file atomically). A slide that fails gets a ``result.json``
with status ``error`` and the batch goes on. Finished slides are skipped on rerun unless
``overwrite``; a lock file keeps two processes off the same slide.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import write_text
from .errors import FascicleError, UsageError
from .manifest import SlideEntry

SCHEMA_VERSION = 1


@dataclass
class PredictOptions:
    """Everything that shapes a prediction (hashed into each result for provenance)."""

    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    prior: str | None = None
    tiles_dir: str | None = None
    overwrite: bool = False
    progress: bool = True
    knowledge: str | None = None
    calls: str | None = None


@dataclass
class LoadedModel:
    """A model file, checked and ready, plus what it implies for tiling."""

    path: Path
    sha256: str
    model: object
    hparams: dict
    kb: object
    call_config: object
    extra: dict = field(default_factory=dict)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")
    return device


def load_for_prediction(model_path: str | Path, options: PredictOptions) -> LoadedModel:
    """Load and check the model, knowledge base and call settings before any slide."""
    from models.checkpoint import load_model

    from .aggregate import CallConfig
    from .knowledge import load_knowledge
    from .training import file_sha256

    model, h = load_model(model_path)
    kb = load_knowledge(options.knowledge)
    unknown = [c for c in h["classes"] if c not in kb.image_classes]
    if unknown:
        raise UsageError(
            f"{model_path}: model classes {', '.join(unknown)} are not image classes of the IHC "
            f"knowledge base ({kb.path}); map them there or use a matching model"
        )
    return LoadedModel(
        Path(model_path), file_sha256(model_path), model, h, kb, CallConfig.load(options.calls)
    )


def shard(entries: Sequence[SlideEntry], index: int, count: int) -> list[SlideEntry]:
    """The ``index``-th of ``count`` deterministic, disjoint shares (by sorted slide id)."""
    if not 0 <= index < count:
        raise UsageError(f"--shard {index}/{count}: need 0 <= I < N")
    ordered = sorted(entries, key=lambda e: e.slide_id)
    return [e for i, e in enumerate(ordered) if i % count == index]


# -- locking --------------------------------------------------------------------------------
class SlideLock:
    """``slides/<id>/.lock`` held while a process works on a slide; stale locks are taken over."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            return True
        return False

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True
        if host != socket.gethostname():
            return False  # cannot tell for another machine: respect it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# -- one slide ------------------------------------------------------------------------------
def params_hash(loaded: LoadedModel, options: PredictOptions, panel_text: str) -> str:
    import hashlib

    blob = json.dumps(
        {
            "model": loaded.sha256,
            "prior": options.prior,
            "ihc": panel_text,
            "calls": loaded.call_config.__dict__,
            "v": SCHEMA_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_done(folder: Path, digest: str) -> bool:
    result = folder / "result.json"
    if not result.exists():
        return False
    try:
        return json.loads(result.read_text()).get("provenance", {}).get("params_hash") == digest
    except (OSError, ValueError):
        return False


def _tiles_for(entry: SlideEntry, loaded: LoadedModel, options: PredictOptions, out: Path, timings):
    from .slide import Slide
    from .tiling import TileSpec, TilingParams, load_tiles
    from .tiling_run import is_finished, tile_entry

    h = loaded.hparams
    params = TilingParams(
        target_mpp=h["target_mpp"], tile_px=h["tile_px"], min_tissue=h.get("min_tissue", 0.5)
    )
    start = time.perf_counter()
    source = Path(options.tiles_dir) if options.tiles_dir else None
    if source is None or not is_finished(entry, source, params, None):
        source = out / "tiles"
        tile_entry(entry, source, params, overwrite=False)
    coords, attrs = load_tiles(source / "tiles" / f"{entry.slide_id}.h5")
    timings["tile"] = time.perf_counter() - start
    spec = TileSpec.from_attrs(attrs)
    with Slide(entry.path, mpp=entry.mpp) as slide:
        bounds = slide.bounds
    return coords, spec, attrs, params, source, bounds


def _tile_probabilities(entry, coords, spec, loaded: LoadedModel, options: PredictOptions, timings):
    """(probabilities (N, K), attention (N,) or None) streamed through DataLoader workers."""
    import torch
    from torch.utils.data import DataLoader, SequentialSampler

    from .augment import build_transform
    from .config import AugmentConfig
    from .data import SlideTiles, TileDataset, all_items, collate, worker_init

    h = loaded.hparams
    device = resolve_device(options.device)
    slides = [SlideTiles(entry, -1, "test", coords, spec)]
    transform = build_transform(
        AugmentConfig(), h["mean"], h["std"], train=False, macenko=h.get("macenko")
    )
    dataset = TileDataset(slides, all_items(slides, [0]), transform)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        sampler=SequentialSampler(dataset),
        num_workers=options.workers,
        collate_fn=collate,
        worker_init_fn=worker_init,
        pin_memory=device.startswith("cuda"),
    )
    model = loaded.model.to(device).eval()
    amp = torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda") else _null()
    outputs, model_s, loop_start = [], 0.0, time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            if not len(batch["image"]):
                continue
            t = time.perf_counter()
            with amp:
                images = batch["image"].to(device, non_blocking=True)
                if h["kind"] == "mil":
                    outputs.append(model.encoder(images).float().cpu())
                else:
                    outputs.append(model(images).float().softmax(1).cpu())
            model_s += time.perf_counter() - t
    timings["read_decode"] = time.perf_counter() - loop_start - model_s
    if not outputs:
        raise FascicleError(f"{entry.path}: no tile could be read")
    if len(torch.cat(outputs)) < len(dataset):
        raise FascicleError(f"{entry.path}: some tiles could not be read; the slide is damaged")
    t = time.perf_counter()
    attention = None
    if h["kind"] == "mil":
        features = torch.cat(outputs).to(device).unsqueeze(0)
        with torch.no_grad():
            weights, _ = model.mil.attention(
                features, torch.ones(features.shape[:2], dtype=torch.bool, device=device)
            )
            slide_probs = model.mil(features).float().softmax(1).cpu().numpy()[0]
        attention = weights[0].float().cpu().numpy()
        probs = np.repeat(slide_probs[None], len(dataset), axis=0)
    else:
        probs = torch.cat(outputs).numpy()
    timings["model"] = model_s + time.perf_counter() - t
    return probs, attention


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def predict_slide(
    entry: SlideEntry, loaded: LoadedModel, options: PredictOptions, out: Path, panel, ihc_text: str
) -> dict:
    """Predict one slide and write its folder; returns the result document."""
    from .aggregate import aggregate, apply_temperature, decide
    from .differential import fuse, next_stains, summarise
    from .outputs import write_slide_outputs

    folder = out / "slides" / entry.slide_id
    h = loaded.hparams
    timings: dict[str, float] = {}
    started = time.perf_counter()
    coords, spec, attrs, params, tiles_source, bounds = _tiles_for(
        entry, loaded, options, out, timings
    )
    if len(coords) == 0:
        raise FascicleError(f"{entry.path}: no tissue tiles at {spec.target_mpp} µm/px")
    probs, attention = _tile_probabilities(entry, coords, spec, loaded, options, timings)
    t = time.perf_counter()
    if h["kind"] == "mil":
        slide_probs = probs[0]
    else:
        slide_probs = aggregate(
            probs, h["aggregator"], loaded.call_config.top_k_fraction, loaded.call_config.quantile
        )
    slide_probs = apply_temperature(slide_probs, float(h["temperature"]))
    image = dict(zip(h["classes"], map(float, slide_probs), strict=True))
    train_priors = dict(zip(h["classes"], h.get("train_class_priors") or [], strict=False)) or None
    fuse_args = {
        "prior": options.prior,
        "kb": loaded.kb,
        "train_priors": train_priors,
        "image_floor": loaded.call_config.image_prob_floor,
    }
    diff = fuse(panel, image, **fuse_args)
    ihc_only = fuse(panel, None, **fuse_args) if panel and panel.performed else None
    call = decide(
        diff, loaded.call_config, n_tiles=len(coords), image_probs=image, ihc_only=ihc_only
    )
    stains = next_stains(diff) if panel and panel.performed else []
    timings["aggregate"] = time.perf_counter() - t
    result = {
        "schema_version": SCHEMA_VERSION,
        "slide_id": entry.slide_id,
        "path": str(entry.path),
        "status": "ok",
        "error": None,
        "call": summarise(diff, stains, call)["call"],
        "image": {
            "probabilities": image,
            "aggregator": h["aggregator"],
            "temperature": h["temperature"],
            "classes": h["classes"],
            "model_kind": h["kind"],
        },
        "differential": summarise(diff, stains, call) if panel and panel.performed else None,
        "ihc": {
            "panel": ihc_text,
            "warnings": list(panel.warnings) if panel else [],
            "unknown_markers": list(panel.unknown) if panel else [],
        },
        "qc": {
            "mpp": float(attrs["slide_mpp"]),
            "mpp_source": str(attrs["mpp_source"]),
            "tissue_mm2": float(attrs["tissue_mm2"]),
            "n_tiles": len(coords),
            "backend": str(attrs.get("backend", "")),
            "flags": qc_flags(attrs, len(coords), loaded),
        },
        "provenance": {
            "model_path": str(loaded.path),
            "model_sha256": loaded.sha256,
            "package_version": __version__,
            "model_package_version": h.get("package_version"),
            "tiling": {
                "target_mpp": spec.target_mpp,
                "tile_px": spec.tile_px,
                "level": spec.level,
                "patch_size": spec.patch_size,
                "min_tissue": params.min_tissue,
                "coords": _relative(tiles_source / "tiles" / f"{entry.slide_id}.h5", out),
            },
            "params_hash": params_hash(loaded, options, ihc_text),
            "timings_s": timings,
        },
    }
    t = time.perf_counter()
    write_slide_outputs(folder, entry, coords, spec, probs, attention, h, bounds, tiles_source)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    write_text(folder / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the output folder when inside it (results move with the folder)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def qc_flags(attrs: dict, n_tiles: int, loaded: LoadedModel) -> list[str]:
    flags = []
    if attrs["mpp_source"] == "objective-power":
        flags.append("resolution assumed from objective power")
    if n_tiles < loaded.call_config.min_tiles:
        flags.append(f"few tissue tiles ({n_tiles})")
    return flags


def error_result(entry: SlideEntry, error: str, digest: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "slide_id": entry.slide_id,
        "path": str(entry.path),
        "status": "error",
        "error": error,
        "call": None,
        "image": None,
        "differential": None,
        "ihc": None,
        "qc": None,
        "provenance": {"package_version": __version__, "params_hash": digest},
    }


def predict_slides(
    entries: Sequence[SlideEntry],
    model_path: str | Path,
    out: str | Path,
    options: PredictOptions,
    ihc_csv: str | Path | None = None,
    finalize: bool = True,
) -> list[dict]:
    """Predict every entry into ``out``; returns the summary rows (errors included).

    ``summary.csv`` and ``report.html`` cover every result under ``out`` (all shards)."""
    from tqdm import tqdm

    from .ihc import read_ihc_csv
    from .outputs import write_report, write_summary_csv

    out = Path(out)
    loaded = load_for_prediction(model_path, options)
    panels = read_ihc_csv(ihc_csv, loaded.kb) if ihc_csv else {}
    ids = {e.slide_id for e in entries}
    warnings = [
        f"IHC rows for slide {s!r}, which is not in this batch"
        for s in sorted(panels)
        if s not in ids
    ]
    out.mkdir(parents=True, exist_ok=True)
    for entry in tqdm(entries, desc="predict", unit="slide", disable=not options.progress):
        panel = panels.get(entry.slide_id)
        ihc_text = panel.describe() if panel else ""
        digest = params_hash(loaded, options, ihc_text)
        folder = out / "slides" / entry.slide_id
        if not options.overwrite and is_done(folder, digest):
            continue
        lock = SlideLock(folder)
        if not lock.acquire():
            warnings.append(f"{entry.slide_id}: locked by another process ({lock.path}); skipped")
            continue
        try:
            predict_slide(entry, loaded, options, out, panel, ihc_text)
        except FascicleError as err:
            write_text(
                folder / "result.json", json.dumps(error_result(entry, str(err), digest), indent=2)
            )
        except Exception as err:  # a bug on one slide must not lose the batch
            message = f"{entry.path}: internal error {type(err).__name__}: {err}"
            write_text(
                folder / "result.json", json.dumps(error_result(entry, message, digest), indent=2)
            )
        finally:
            lock.release()
    if not finalize:
        return []
    rows = write_summary_csv(out)
    write_report(out, loaded, warnings)
    return rows


def _device_worker(args: tuple) -> None:
    entries, model_path, out, options, ihc_csv = args
    predict_slides(entries, model_path, out, options, ihc_csv, finalize=False)


def predict_on_devices(
    entries: Sequence[SlideEntry],
    model_path: str | Path,
    out: str | Path,
    options: PredictOptions,
    devices: int,
    ihc_csv=None,
) -> list[dict]:
    """One process per device, each taking a disjoint share of the slides (like ``--shard``
    ranks); the summary and report are merged at the end."""
    import multiprocessing
    from dataclasses import replace

    from .outputs import write_report, write_summary_csv

    loaded = load_for_prediction(model_path, options)  # fail early, before any process
    base = resolve_device(options.device)
    jobs = []
    for rank in range(devices):
        device = f"cuda:{rank}" if base.startswith("cuda") else base
        jobs.append(
            (
                shard(entries, rank, devices),
                model_path,
                out,
                replace(options, device=device, progress=False),
                ihc_csv,
            )
        )
    with multiprocessing.get_context("spawn").Pool(devices) as pool:
        pool.map(_device_worker, jobs)
    rows = write_summary_csv(Path(out))
    write_report(Path(out), loaded, [])
    return rows
