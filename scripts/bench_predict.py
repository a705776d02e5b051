"""Benchmark batch prediction end to end against limits measured in the same run.

On a large synthetic slide (the one ``bench_tiling.py`` generates, cached), prints tiles/s for
(a) the read-only limit: the same DataLoader (workers, decode, resize, normalise) without a
model; (b) the model-only limit: the model on ready tensors; (c) ``fascicle predict`` end to
end, with its per-stage timings, and the ratio (c) / min(a, b) (target ≥ 0.8). Then peak RSS
of whole ``fascicle predict`` runs on slides of two areas (must not grow with area).

Usage: python scripts/bench_predict.py [--backbone small_cnn --tile-px 96 --mpp 1.0]
       [--device auto] [--workers 2] [--batch-size 64] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_gpu import gpu_utilisation  # noqa: E402
from bench_tiling import make_slide  # noqa: E402

from pipeline.wsi.manifest import SlideEntry  # noqa: E402


def make_model(path: Path, backbone: str, tile_px: int, mpp: float) -> Path:
    from models.backbones import IMAGENET_MEAN, IMAGENET_STD
    from models.checkpoint import save_model
    from models.meta import ModelMeta
    from models.tile_classifier import TileClassifier

    meta = ModelMeta(
        kind="tile",
        classes=["leiomyosarcoma", "meningioma", "other_sarcoma"],
        target_mpp=mpp,
        tile_px=tile_px,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        backbone=backbone,
        aggregator="mean",
        temperature=1.0,
        package_version="bench",
    )
    return save_model(path, TileClassifier(meta), meta)


def read_only_rate(entry, coords, spec, meta, workers: int, batch: int) -> float:
    from torch.utils.data import DataLoader, SequentialSampler

    from pipeline.tiles.augment import AugmentConfig, build_transform
    from pipeline.tiles.dataset import SlideTiles, TileDataset, all_items, collate, worker_init

    slides = [SlideTiles(entry, -1, "test", coords, spec)]
    ds = TileDataset(
        slides, all_items(slides, [0]), build_transform(AugmentConfig(), meta.mean, meta.std, False)
    )
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=SequentialSampler(ds),
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init,
    )
    start, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["label"])
    return n / (time.perf_counter() - start)


def model_only_rate(model, tile_px: int, batch: int, device: str, n_batches: int = 20) -> float:
    x = torch.randn(batch, 3, tile_px, tile_px, device=device)
    model = model.to(device).eval()
    amp = (
        torch.autocast("cuda", dtype=torch.float16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    with torch.no_grad(), amp:
        for _ in range(3):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n_batches):
            model(x).float().softmax(1).cpu()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return n_batches * batch / (time.perf_counter() - start)


def peak_rss(slide: Path, model: Path, out: Path, args) -> float:
    command = [
        "-q",
        "predict",
        str(slide),
        "--model",
        str(model),
        "--out",
        str(out),
        "--workers",
        str(args.workers),
        "--device",
        args.device,
    ]
    code = (
        f"import resource, sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.cli import main\n"
        f"main({command!r})\n"
        "usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "usage += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(usage / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from models.checkpoint import load_model
    from pipeline.prediction.predict import predict_slide
    from pipeline.prediction.session import PredictOptions, load_for_prediction
    from pipeline.tiles.runner import resolve_device

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--tile-px", type=int, default=96)
    p.add_argument("--mpp", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.device = resolve_device(args.device)
    w, h = (20000, 15000) if args.quick else (40000, 30000)
    args.cache.mkdir(parents=True, exist_ok=True)
    large = make_slide(args.cache / f"large_{w}x{h}.tiff", w, h)
    half = make_slide(
        args.cache / f"half_{w // 1.414:.0f}.tiff", round(w / 1.414), round(h / 1.414)
    )
    work = Path(tempfile.mkdtemp(prefix="fascicle-bench-predict-"))
    model_path = make_model(work / "model.ckpt", args.backbone, args.tile_px, args.mpp)
    options = PredictOptions(
        batch_size=args.batch_size, workers=args.workers, device=args.device, progress=False
    )
    loaded = load_for_prediction(model_path, options)
    entry = SlideEntry(large.stem, large, patient_id=large.stem)
    result = predict_slide(entry, loaded, options, work / "out", None)  # also tiles the slide
    t = result.provenance.timings_s
    n = result.qc.n_tiles
    from pipeline.wsi.tiling import TileSpec, load_tiles

    coords, attrs = load_tiles(work / "out" / "tiles" / "tiles" / f"{entry.slide_id}.h5")
    spec = TileSpec.from_attrs(attrs)
    read = read_only_rate(entry, coords, spec, loaded.meta, args.workers, args.batch_size)
    model, _ = load_model(model_path)
    compute = model_only_rate(model, args.tile_px, args.batch_size, args.device)
    # end to end without the one-off tiling (done above) and output writing
    sampler = gpu_utilisation() if args.device.startswith("cuda") else contextlib.nullcontext([])
    with sampler as util:
        again = predict_slide(entry, loaded, options, work / "out2", None)
    t2 = again.provenance.timings_s
    e2e = n / (t2["read_decode"] + t2["model"])
    rss = {
        "half": peak_rss(half, model_path, work / "rss_half", args),
        "full": peak_rss(large, model_path, work / "rss_full", args),
    }
    print(
        f"\n{n} tiles of {args.tile_px} px at {args.mpp} µm/px, {args.backbone}, "
        f"device {args.device}, {args.workers} loader workers, batch {args.batch_size}"
    )
    print(f"  (a) read-only limit        {read:8.0f} tiles/s")
    print(f"  (b) model-only limit       {compute:8.0f} tiles/s")
    ratio = e2e / min(read, compute)
    print(f"  (c) predict end to end     {e2e:8.0f} tiles/s   (c)/min(a,b) = {ratio:.2f}")
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
    print(f"  stages, first run (tiling included): {stages}")
    print(
        f"  peak RSS of a whole predict run: {rss['half']:.0f} MB (half area), "
        f"{rss['full']:.0f} MB (full area)"
    )
    if args.device.startswith("cuda"):
        print(f"  GPU: {torch.cuda.get_device_name()}")
        if util:
            median = sorted(util)[len(util) // 2]
            print(f"  GPU utilisation during predict: median {median}%, max {max(util)}%")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "read": read,
                    "model": compute,
                    "e2e": e2e,
                    "stages": t,
                    "rss_mb": rss,
                    "n_tiles": n,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
