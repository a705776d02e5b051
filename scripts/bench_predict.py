"""Benchmark batch prediction end to end against limits measured in the same run.

On a large synthetic JPEG slide (``bench_tiling.make_slide``, cached), prints tiles/s for
(a) the read limit: the engine's tile batches with no model (decode threads on every core;
    on a GPU also the batched on-device JPEG decode);
(b) the model limit: the model alone on ready tensors, in the engine's precision and layout;
(c) ``fascicle predict`` end to end (tiling done beforehand), and (c) / min(a, b); on a CPU,
    where reading and the model share the cores, also (c) / (1 / (1/a + 1/b));
(d) a baseline in the same run: the previous engine (DataLoader worker processes, fp32, 2
    workers), end to end;
then the largest difference in tile probabilities between the engine's precision and fp32,
and (CPU) the peak memory (RSS and PSS) of whole ``fascicle predict`` runs on slides of two
areas.

Usage: python scripts/bench_predict.py [--backbone small_cnn --tile-px 96 --mpp 1.0]
       [--size 40000x30000 --slide-mpp 0.25] [--device auto] [--precision auto]
       [--workers N] [--threads N] [--batch-size 64] [--quick] [--no-rss] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def read_rate(dataset, engine, batch: int, on_device: bool) -> float:
    from models.backbones import IMAGENET_MEAN, IMAGENET_STD

    """Tiles/s of the engine's batches alone, moved to the device as the model would get them."""
    from pipeline.tiles.dataset import close_handles
    from pipeline.tiles.jpeg_batches import device_batches
    from pipeline.tiles.runner import threaded_batches

    start, n = time.perf_counter(), 0
    if on_device:
        batches = device_batches(dataset, batch, engine.device, IMAGENET_MEAN, IMAGENET_STD)
        if batches is None:
            return float("nan")
    else:
        batches = threaded_batches(dataset, batch, engine.workers, pin=engine.cuda)
    for images, readable in batches:
        engine.inputs(images)
        n += int(readable.sum())
    _sync(engine.device)
    close_handles()
    return n / (time.perf_counter() - start)


def pixel_difference(dataset, engine, batch: int, batches: int = 4) -> tuple[float, float]:
    """Mean and largest |device - CPU| of the first batches, in grey levels."""
    from models.backbones import IMAGENET_MEAN, IMAGENET_STD
    from pipeline.tiles.dataset import close_handles
    from pipeline.tiles.jpeg_batches import device_batches
    from pipeline.tiles.runner import threaded_batches

    device = device_batches(dataset, batch, engine.device, IMAGENET_MEAN, IMAGENET_STD)
    cpu = threaded_batches(dataset, batch, 0)
    grey = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    diffs = []
    for _, (a, _), (b, _) in zip(range(batches), device, cpu, strict=False):
        diffs.append(((a.float().cpu() - b) * grey).abs())
    close_handles()
    d = torch.cat(diffs)
    return float(d.mean()), float(d.max())


def model_rate(model, engine, tile_px: int, batch: int, seconds: float = 3.0) -> float:
    x = engine.inputs(torch.randn(batch, 3, tile_px, tile_px))
    with torch.no_grad(), engine.autocast():
        for _ in range(3):
            model.forward_tiles(x)
        _sync(engine.device)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds or n < 5:
            {k: v.float().cpu() for k, v in model.forward_tiles(x).items()}
            n += 1
        _sync(engine.device)
    return n * batch / (time.perf_counter() - start)


def baseline_rate(dataset, model, device: str, batch: int, most: int = 4000) -> float:
    """The previous engine: DataLoader with 2 worker processes, fp32 (fp16 autocast on CUDA),
    on the first ``most`` tiles."""
    from torch.utils.data import DataLoader, Subset

    from pipeline.tiles.dataset import collate_with_mask, worker_init

    loader = DataLoader(
        Subset(dataset, range(min(most, len(dataset)))),
        batch_size=batch,
        num_workers=2,
        collate_fn=collate_with_mask,
        worker_init_fn=worker_init,
        pin_memory=device.startswith("cuda"),
    )
    model = model.to(device).to(memory_format=torch.contiguous_format)
    cuda = device.startswith("cuda")
    amp = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    start, n = time.perf_counter(), 0
    with torch.no_grad():
        for b, readable in loader:
            with amp:
                model.forward_tiles(b["image"].to(device, non_blocking=True))["probs"].cpu()
            n += int(readable.sum())
    return n / (time.perf_counter() - start)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _pss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def peak_memory(slide: Path, model: Path, out: Path, device: str) -> tuple[float, float]:
    """Peak RSS (main + its largest child, as ``getrusage`` reports them: libraries both map
    count twice) and peak PSS of the whole process tree (shared pages split between the
    processes that map them, sampled every 50 ms) of a whole ``fascicle predict`` run, MB."""
    command = ["-q", "predict", str(slide), "--model", str(model), "--out", str(out)]
    code = (
        f"import resource, sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.cli import main\n"
        f"main({[*command, '--device', device]!r})\n"
        "usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "usage += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(usage / 1024)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pss = 0.0
    while proc.poll() is None:
        pss = max(pss, _pss_mb(_tree(proc.pid)))
        time.sleep(0.05)
    rss = float(proc.stdout.read().strip().splitlines()[-1])
    return rss, pss


def main() -> None:
    from models.backbones import IMAGENET_MEAN, IMAGENET_STD
    from pipeline.prediction.predict import predict_slide
    from pipeline.prediction.session import PredictOptions, load_for_prediction
    from pipeline.tiles.augment import AugmentConfig, build_transform
    from pipeline.tiles.dataset import SlideTiles, TileDataset, all_items
    from pipeline.wsi.tiling import TileSpec, load_tiles

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--tile-px", type=int, default=96)
    p.add_argument("--mpp", type=float, default=1.0, help="the model's µm/px")
    p.add_argument("--size", default=None, help="slide WxH px (40000x30000; --quick 20000x15000)")
    p.add_argument("--slide-mpp", type=float, default=0.25)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--decode", default="auto", help="auto | cpu | device")
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    size = args.size or ("20000x15000" if args.quick else "40000x30000")
    w, h = (int(v) for v in size.split("x"))
    args.cache.mkdir(parents=True, exist_ok=True)
    tag = f"{w}x{h}" + ("" if args.slide_mpp == 0.25 else f"_{args.slide_mpp:g}mpp")
    large = make_slide(args.cache / f"large_{tag}.tiff", w, h, mpp=args.slide_mpp)
    work = Path(tempfile.mkdtemp(prefix="fascicle-bench-predict-"))
    model_path = make_model(work / "model.ckpt", args.backbone, args.tile_px, args.mpp)
    engine_options = ("batch_size", "workers", "threads", "device", "precision", "decode")
    options = PredictOptions(progress=False, **{k: getattr(args, k) for k in engine_options})
    loaded = load_for_prediction(model_path, options)
    engine, model = loaded.engine, loaded.model
    entry = SlideEntry(large.stem, large, patient_id=large.stem)
    first = predict_slide(entry, loaded, options, work / "out", None)  # also tiles the slide
    n = first.qc.n_tiles
    coords, attrs = load_tiles(work / "out" / "tiles" / "tiles" / f"{entry.slide_id}.h5")
    spec = TileSpec.from_attrs(attrs)
    slides = [SlideTiles(entry, -1, "test", coords, spec)]
    transform = build_transform(AugmentConfig(), IMAGENET_MEAN, IMAGENET_STD, train=False)
    dataset = TileDataset(slides, all_items(slides, [0]), transform)
    all_cores = replace(engine, workers=max(engine.workers, engine.threads))
    figures = {
        "n_tiles": n,
        "engine": engine.doc(),
        "read_cpu": read_rate(dataset, all_cores, args.batch_size, False),
    }
    if engine.decode == "device":
        figures["read_device"] = read_rate(dataset, engine, args.batch_size, True)
        figures["grey_diff_mean"], figures["grey_diff_max"] = pixel_difference(
            dataset, engine, args.batch_size
        )
    figures["model"] = model_rate(model, engine, args.tile_px, args.batch_size)
    sampler = gpu_utilisation() if engine.cuda else contextlib.nullcontext([])
    with sampler as util:
        again = predict_slide(entry, loaded, options, work / "out2", None)
    t = again.provenance.timings_s
    figures["e2e"] = n / (t["read_decode"] + t["model"])
    figures["decoded"] = again.provenance.engine["decoded"]
    read = max(v for k, v in figures.items() if k.startswith("read_") and v == v)
    figures["ratio"] = figures["e2e"] / min(read, figures["model"])
    # both limits share the same cores on a CPU: this is the best they can do together
    figures["shared"] = 1 / (1 / read + 1 / figures["model"])
    if not args.no_baseline:
        figures["baseline_e2e"] = baseline_rate(dataset, model, engine.device, args.batch_size)
    fp32 = replace(options, precision="fp32")
    exact = predict_slide(entry, load_for_prediction(model_path, fp32), fp32, work / "fp32", None)
    figures["prob_diff_vs_fp32"] = max(
        abs(again.image.probabilities[c] - exact.image.probabilities[c])
        for c in loaded.meta.classes
    )
    figures["tile_prob_diff_vs_fp32"] = _tile_diff(work / "out2", work / "fp32", entry.slide_id)
    if util:
        figures["gpu_util_median"] = sorted(util)[len(util) // 2]
        figures["gpu_util_max"] = max(util)
    if not args.no_rss and not engine.cuda:
        half = make_slide(
            args.cache / f"half_{w // 1.414:.0f}.tiff", round(w / 1.414), round(h / 1.414)
        )
        device = engine.device
        figures["rss_mb"], figures["pss_mb"] = {}, {}
        for name, path in (("half", half), ("full", large)):
            rss, pss = peak_memory(path, model_path, work / f"mem_{name}", device)
            figures["rss_mb"][name], figures["pss_mb"][name] = rss, pss
    _print(figures, args, engine)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def _tile_diff(a: Path, b: Path, slide_id: str) -> float:
    import csv

    def probs(folder: Path) -> np.ndarray:
        with open(folder / "slides" / slide_id / "tiles.csv") as fh:
            rows = list(csv.DictReader(fh))
        keys = [k for k in rows[0] if k.startswith("prob_")]
        return np.array([[float(r[k]) for k in keys] for r in rows])

    return float(np.abs(probs(a) - probs(b)).max())


def _print(f: dict, args, engine) -> None:
    name = torch.cuda.get_device_name() if engine.cuda else f"{engine.threads}-core CPU"
    print(
        f"\n{f['n_tiles']} tiles of {args.tile_px} px at {args.mpp} µm/px from a "
        f"{args.slide_mpp} µm/px JPEG slide, {args.backbone}, batch {args.batch_size}, {name}"
    )
    print(f"  engine: {json.dumps(f['engine'])}, tiles {f['decoded']}")
    print(f"  (a) read limit, CPU decode threads   {f['read_cpu']:8.0f} tiles/s")
    if "read_device" in f:
        print(f"  (a) read limit, batched JPEG decode  {f['read_device']:8.0f} tiles/s")
        print(
            f"      its pixels vs the CPU path: mean {f['grey_diff_mean']:.2f}, "
            f"max {f['grey_diff_max']:.1f} grey levels"
        )
    print(f"  (b) model limit                      {f['model']:8.0f} tiles/s")
    print(
        f"  (c) predict end to end               {f['e2e']:8.0f} tiles/s   "
        f"(c)/min(a,b) = {f['ratio']:.2f}"
    )
    if not engine.cuda:
        print(
            f"      (a) and (b) on the same cores, at best 1/(1/a + 1/b) = {f['shared']:.0f} "
            f"tiles/s: (c) is {f['e2e'] / f['shared']:.2f} of it"
        )
    if "baseline_e2e" in f:
        print(
            f"  (d) previous engine, end to end      {f['baseline_e2e']:8.0f} tiles/s   "
            f"(c)/(d) = {f['e2e'] / f['baseline_e2e']:.2f}"
        )
    print(
        f"  {engine.precision} vs fp32: slide probabilities differ by at most "
        f"{f['prob_diff_vs_fp32']:.2g}, tile probabilities by {f['tile_prob_diff_vs_fp32']:.2g}"
    )
    if "gpu_util_median" in f:
        print(
            f"  GPU utilisation during predict: median {f['gpu_util_median']}%, "
            f"max {f['gpu_util_max']}%"
        )
    if "rss_mb" in f:
        print(
            f"  peak memory of a whole predict run (main process + slide worker), half / full "
            f"area: RSS {f['rss_mb']['half']:.0f} / {f['rss_mb']['full']:.0f} MB, "
            f"PSS {f['pss_mb']['half']:.0f} / {f['pss_mb']['full']:.0f} MB"
        )


if __name__ == "__main__":
    main()
