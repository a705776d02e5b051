"""Benchmark tiling and tile extraction against baselines measured in the same run.

Figures (printed as a table):
  (a)  tissue detection + grid time for the large slide
  (b)  fascicle tile extraction (tiles/s at 0.5 µm/px, 224 px)
  (c1) bare ``OpenSlide.read_region`` loop over the same coordinates
  (c2) bare tifffile/imagecodecs decode of the JPEG tiles each region touches + the resize
and the ratios (b)/(c1), (b)/(c2), single process and with 2 worker processes; peak RSS of
tiling + extracting every tile of slides of two areas (must not grow with area).

Usage: python scripts/bench_tiling.py [--quick] [--cache DIR]
The large slide (40,000 x 30,000 px at 0.25 µm/px, JPEG tiles, levels 1/4/16/64: no 2x level)
is generated once into the cache.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.wsi.slide import Slide, resize  # noqa: E402
from pipeline.wsi.tiling import TileSpec, TilingParams, read_tile, tile_slide  # noqa: E402

GLASS = np.array([243, 241, 245], np.uint8)


def _texture_bank(rng: np.random.Generator, n: int = 24, size: int = 256) -> np.ndarray:
    """Tissue-like textures (pink stroma with purple nuclei) that compress like H&E."""
    from scipy import ndimage

    bank = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        base = np.array([215, 140, 180]) + rng.normal(0, 8, 3)
        field = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3)
        nuclei = ndimage.gaussian_filter((rng.random((size, size)) > 0.995).astype(float), 2.5)
        nuclei = np.clip(nuclei * 25, 0, 1)
        img = base + field[..., None] * 60
        img = img * (1 - nuclei[..., None]) + np.array([90, 60, 150]) * nuclei[..., None]
        bank[i] = np.clip(img, 0, 255)
    return bank


def make_slide(path: Path, width: int, height: int, seed: int = 0, mpp: float = 0.25) -> Path:
    """Pyramidal JPEG TIFF at ``mpp`` µm/px written tile by tile (never the whole level in
    memory)."""
    import tifffile

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    bank = _texture_bank(rng)
    # tissue map at 1/64 scale: a few overlapping ellipses (~45% of the area)
    mh, mw = -(-height // 64), -(-width // 64)
    yy, xx = np.mgrid[0:mh, 0:mw]
    tissue = np.zeros((mh, mw), bool)
    for _ in range(5):
        cy, cx = rng.uniform(0.2, 0.8) * mh, rng.uniform(0.2, 0.8) * mw
        ry, rx = rng.uniform(0.12, 0.3) * mh, rng.uniform(0.12, 0.3) * mw
        tissue |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    tile = 256

    def tiles(ds: int):
        lw, lh = width // ds, height // ds
        f = 64 // ds  # level pixels per tissue-map pixel (tiles align with map pixels)
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                sub = tissue[ty // f : (ty + tile) // f + 1, tx // f : (tx + tile) // f + 1]
                m = sub.repeat(f, 0).repeat(f, 1)[:tile, :tile]
                m = np.pad(m, ((0, tile - m.shape[0]), (0, tile - m.shape[1])), mode="edge")
                texture = bank[(tx // tile * 7 + ty // tile * 13 + ds) % len(bank)]
                yield np.where(m[..., None], texture, GLASS)

    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, ds in enumerate((1, 4, 16, 64)):
            extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
            tif.write(
                tiles(ds),
                shape=(height // ds, width // ds, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                subfiletype=1 if i else 0,
                **(extra if i == 0 else {}),
            )
    tmp.replace(path)
    return path


# --- extraction loops ----------------------------------------------------------------------
def run_fascicle(path: str, coords: np.ndarray, spec: TileSpec, backend: str = "auto") -> float:
    with Slide(path, backend=backend) as slide:
        start = time.perf_counter()
        for x, y in coords:
            read_tile(slide, int(x), int(y), spec)
        return time.perf_counter() - start


def run_openslide(path: str, coords: np.ndarray, spec: TileSpec) -> float:
    import openslide

    slide = openslide.OpenSlide(path)
    size = (spec.patch_size, spec.patch_size)
    start = time.perf_counter()
    for x, y in coords:
        slide.read_region((int(x), int(y)), spec.level, size)
    elapsed = time.perf_counter() - start
    slide.close()
    return elapsed


def run_tifffile(path: str, coords: np.ndarray, spec: TileSpec) -> float:
    """Decode every JPEG tile a region touches (no cache), assemble, resize."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = next(p for p in tif.pages if p.is_tiled)
        level_pages = [p for p in tif.pages if p.is_tiled]
        page = level_pages[spec.level]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        offsets, counts = page.dataoffsets, page.databytecounts
        fd = os.open(path, os.O_RDONLY)
        n = spec.patch_size
        start = time.perf_counter()
        for x, y in coords:
            x, y = int(x), int(y)
            out = np.empty((n, n, 3), np.uint8)
            for ty in range(y // th, (y + n - 1) // th + 1):
                for tx in range(x // tw, (x + n - 1) // tw + 1):
                    i = ty * across + tx
                    seg, _, _ = page.decode(
                        os.pread(fd, counts[i], offsets[i]), i, jpegtables=page.jpegtables
                    )
                    seg = seg[0, :, :, :3]
                    sx0, sy0 = max(x, tx * tw), max(y, ty * th)
                    sx1, sy1 = min(x + n, tx * tw + tw), min(y + n, ty * th + th)
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = seg[
                        sy0 - ty * th : sy1 - ty * th, sx0 - tx * tw : sx1 - tx * tw
                    ]
            resize(out, spec.tile_px, spec.tile_px)
        elapsed = time.perf_counter() - start
        os.close(fd)
    return elapsed


RUNNERS = {"fascicle": run_fascicle, "openslide": run_openslide, "tifffile": run_tifffile}


_barrier = None


def _init(barrier) -> None:
    global _barrier
    _barrier = barrier


def _worker(args: tuple) -> tuple[float, float]:
    name, path, coords, spec = args
    _barrier.wait()  # all workers start together, after their imports
    start = time.time()
    RUNNERS[name](path, coords, spec)
    return start, time.time()


def throughput(name: str, path: str, coords: np.ndarray, spec: TileSpec, workers: int) -> float:
    """Tiles per second; with workers, each process takes a contiguous share of the grid."""
    if workers == 1:
        return len(coords) / RUNNERS[name](path, coords, spec)
    chunks = np.array_split(coords, workers)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(ctx.Barrier(workers),)) as pool:
        spans = pool.map(_worker, [(name, path, c, spec) for c in chunks], chunksize=1)
    return len(coords) / (max(e for _, e in spans) - min(s for s, _ in spans))


def peak_rss(path: Path) -> float:
    """Peak RSS (MB) of a fresh process that tiles ``path`` and reads every tile."""
    code = (
        f"import resource, sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.wsi.slide import Slide\n"
        "from pipeline.wsi.tiling import tile_slide, read_tile\n"
        f"with Slide({str(path)!r}) as s:\n"
        "    t = tile_slide(s)\n"
        "    for x, y in t.coords: read_tile(s, int(x), int(y), t.spec)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_slide(
    label: str, path: Path, params: TilingParams, limit: int, workers: bool, repeats: int
) -> dict:
    """Best of ``repeats`` for each figure, the runners interleaved so they share the noise."""
    times = []
    for _ in range(repeats):
        with Slide(path) as slide:
            start = time.perf_counter()
            tiles = tile_slide(slide, params)
            times.append(time.perf_counter() - start)
    coords = tiles.coords[:limit]
    path_s = str(path)
    fast_path = Slide(path).backend == "tifffile"
    row: dict = {"slide": label, "tiles": len(coords), "tissue+grid s": min(times)}
    names = ["fascicle", "openslide"] + (["tifffile"] if fast_path else [])
    modes = [(n, 1) for n in names] + ([(n, 2) for n in names] if workers else [])
    for _ in range(repeats):
        for name, n in modes:
            key = name if n == 1 else f"{name} x2"
            row[key] = max(row.get(key, 0.0), throughput(name, path_s, coords, tiles.spec, n))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--quick", action="store_true", help="smaller slide, fewer tiles")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    w, h = (20000, 15000) if args.quick else (40000, 30000)
    start = time.perf_counter()
    large = make_slide(args.cache / f"large_{w}x{h}.tiff", w, h)
    half = make_slide(
        args.cache / f"half_{w // 1.414:.0f}.tiff", round(w / 1.414), round(h / 1.414)
    )
    print(f"slides ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    limit, repeats = (600, 2) if args.quick else (2000, 3)
    rows = [bench_slide("large TIFF", large, TilingParams(), limit, True, repeats)]
    cmu = ROOT / ".cache" / "cmu_small_region.svs"
    if cmu.exists():
        params = TilingParams(min_tissue=0.0)
        rows.append(bench_slide("CMU-1-Small-Region.svs", cmu, params, 10**6, False, repeats))
    dicom = ROOT.parent / "shared" / "data" / "slides" / "camelyon_lowres_dicom_wsi.dcm"
    if dicom.exists():
        params = TilingParams(target_mpp=29.0, tile_px=128, overlap_px=96, min_tissue=0.0)
        rows.append(bench_slide("DICOM (OpenSlide path)", dicom, params, 10**6, False, repeats))
    rss = {"half area": peak_rss(half), "full area": peak_rss(large)}

    print(
        f"\n{'slide':26} {'tiles':>6} {'tissue+grid':>12} {'fascicle':>9} {'openslide':>10} "
        f"{'tifffile':>9} {'b/c1':>6} {'b/c2':>6}"
    )
    nan = float("nan")
    for r in rows:
        b, c1, c2 = r["fascicle"], r["openslide"], r.get("tifffile", nan)
        print(
            f"{r['slide']:26} {r['tiles']:>6} {r['tissue+grid s']:>11.3f}s {b:>9.0f} "
            f"{c1:>10.0f} {c2:>9.0f} {b / c1:>6.2f} {b / c2:>6.2f}"
        )
        if "fascicle x2" in r:
            b2, c12, c22 = r["fascicle x2"], r["openslide x2"], r["tifffile x2"]
            print(
                f"{'  ... with 2 workers':26} {'':>6} {'':>12} {b2:>9.0f} {c12:>10.0f} "
                f"{c22:>9.0f} {b2 / c12:>6.2f} {b2 / c22:>6.2f}"
            )
            print(f"{'  2-worker speed-up':26} {'':>6} {'':>12} {b2 / b:>8.2f}x")
    print(
        f"\npeak RSS tiling + reading every tile: {rss['half area']:.0f} MB (half area), "
        f"{rss['full area']:.0f} MB (full area)"
    )
    print(
        "tiles/s: higher is better; b = fascicle, c1 = bare OpenSlide.read_region, "
        "c2 = bare tifffile decode + resize"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "peak_rss_mb": rss}, indent=2))


if __name__ == "__main__":
    main()
