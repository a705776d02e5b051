"""Benchmark synthetic cohort generation: slides per minute and MB/s written.

Usage: python scripts/bench_synth.py [--n-slides 12] [--workers 2] [--out DIR]
Generates the default cohort (4 x 3 mm per slide at 0.5 µm/px) from scratch and prints the
wall time per stage. The baseline for MB/s is a bare tifffile write of the same number of
tiles of constant content (JPEG encoding and file I/O only), measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.synth.cohort import CohortParams, make_cohort  # noqa: E402


def bare_write_rate(path: Path, width: int, height: int) -> float:
    """MB/s of writing a JPEG-tiled TIFF of noise-free flat tiles (encoding + I/O only)."""
    import tifffile

    tile = np.full((256, 256, 3), 200, np.uint8)
    tile[::7] = 120  # some content so the encoder works
    n = (-(-width // 256)) * (-(-height // 256))
    start = time.perf_counter()
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            (tile for _ in range(n)),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(256, 256),
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": 90},
        )
    seconds = time.perf_counter() - start
    return path.stat().st_size / 1e6 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-slides", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fascicle-synth-bench-"))
    if out.exists():
        shutil.rmtree(out)
    params = CohortParams(n_slides=args.n_slides)
    start = time.perf_counter()
    make_cohort(out, params, workers=args.workers, progress=False)
    seconds = time.perf_counter() - start
    size_mb = sum(p.stat().st_size for p in (out / "slides").glob("*.tiff")) / 1e6
    w, h = (round(v / params.mpp) for v in params.slide_size_um)
    bare = bare_write_rate(out / "bare.tiff", w, h)
    print(f"cohort: {args.n_slides} slides of {w} x {h} px, {args.workers} worker(s)")
    print(f"  wall time            {seconds:8.1f} s")
    print(f"  slides per minute    {args.n_slides / seconds * 60:8.1f}")
    print(f"  written              {size_mb:8.1f} MB  ({size_mb / seconds:.2f} MB/s)")
    print(f"  bare JPEG TIFF write {bare:8.2f} MB/s on one core (encode + I/O baseline)")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
