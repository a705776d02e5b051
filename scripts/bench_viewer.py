"""Benchmark the viewer's slide tiles against OpenSlide's DeepZoomGenerator in the same run.

For a large synthetic slide (40,000 x 30,000 px pyramidal JPEG TIFF, cached; ``--quick``:
20,000 x 15,000) and the real Aperio slide CMU-1-Small-Region.svs, prints the median time of
a 256-px tile at full resolution and at the lowest zoom levels, for

- ``viewer``: ``SlidePyramid.jpeg`` (what the server sends: read, resize, JPEG-encode), its
  tile cache emptied before every call, so nothing is served from it;
- ``bare``: ``DeepZoomGenerator.get_tile`` (a PIL image, not encoded) over the same tiles;

and the ratio viewer / bare (goal <= 1.2). Also the median round trip of a tile over HTTP
from the running server, and the one-off cost of the overview image the coarse levels are
cut from. Usage: python scripts/bench_viewer.py [--quick] [--n 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_tiling import make_slide  # noqa: E402


def median_ms(fn, addresses) -> float:
    times = []
    for address in addresses:
        start = time.perf_counter()
        fn(*address)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def bench(path: Path, n: int, rng: np.random.Generator) -> None:
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    from pipeline.viewer.catalogue import Catalogue
    from pipeline.viewer.pyramid import TILE, SlidePyramid
    from pipeline.viewer.server import ViewerServer

    pyramid = SlidePyramid(path, mpp=0.5)
    dz = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size=TILE, overlap=0)
    w, h = pyramid.slide.dimensions
    print(f"\n{path.name}: {w} x {h} px, {len(pyramid.slide.level_dimensions)} stored levels, "
          f"{pyramid.max_level + 1} Deep Zoom levels, reader {pyramid.slide.backend}")  # fmt: skip
    start = time.perf_counter()
    pyramid.overview()
    print(
        f"  overview ({pyramid.overview_level=}) read once in {time.perf_counter() - start:.2f} s"
    )

    def ours(level, col, row):
        pyramid._cache.clear()
        pyramid.jpeg(level, col, row)

    def bare(level, col, row):
        dz.get_tile(level, (col, row))

    top = pyramid.max_level
    fit = max(z for z in range(top + 1) if max(pyramid.tiles_across(z)) <= 4)
    for name, level in (("full resolution", top), ("whole slide in view", fit), ("lowest", 0)):
        cols, rows = pyramid.tiles_across(level)
        picks = rng.integers(0, [cols, rows], size=(n, 2))
        addresses = [(level, int(c), int(r)) for c, r in picks]
        half = len(addresses) // 2  # alternate which goes first, so OS caches favour neither
        a = median_ms(bare, addresses[:half]), median_ms(ours, addresses[:half])
        b = median_ms(ours, addresses[half:]), median_ms(bare, addresses[half:])
        t_bare, t_ours = (a[0] + b[1]) / 2, (a[1] + b[0]) / 2
        ratio = t_ours / t_bare
        print(f"  {name:20s} level {level:2d}: viewer {t_ours:6.2f} ms, "
              f"DeepZoomGenerator.get_tile {t_bare:6.2f} ms, ratio {ratio:.2f}")  # fmt: skip

    server = ViewerServer(Catalogue.from_slide(path))
    server.start()
    sid = path.stem
    server.catalogue.get(sid)._pyramid = pyramid
    cols, rows = pyramid.tiles_across(top)
    picks = rng.integers(0, [cols, rows], size=(n, 2))

    def http(level, col, row):
        pyramid._cache.clear()
        with urllib.request.urlopen(f"{server.url}tiles/{sid}/{level}/{col}_{row}.jpeg") as r:
            r.read()

    t = median_ms(http, [(top, int(c), int(r)) for c, r in picks])
    print(f"  over HTTP, full resolution: {t:.2f} ms per tile (one connection per request)")
    server.shutdown()
    server.server_close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20,000 x 15,000 instead")
    p.add_argument("--n", type=int, default=200, help="tiles per measurement (200)")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = p.parse_args()
    w, h = (20000, 15000) if args.quick else (40000, 30000)
    args.cache.mkdir(parents=True, exist_ok=True)
    slides = [make_slide(args.cache / f"large_{w}x{h}.tiff", w, h)]
    cmu = ROOT / ".cache" / "cmu_small_region.svs"
    slides += [cmu] if cmu.exists() else []
    rng = np.random.default_rng(0)
    for path in slides:
        bench(path, args.n, rng)


if __name__ == "__main__":
    main()
