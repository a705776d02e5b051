from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.synth.cohort import CohortParams, make_cohort

from .slides import tissue_image, write_pyramid

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CACHE = Path(os.environ.get("FASCICLE_CACHE", ROOT / ".cache"))


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    path = CACHE / "cmu_small_region.svs"
    if not path.exists():
        pytest.skip("CMU-1-Small-Region.svs not cached: run scripts/fetch_test_data.py")
    return path


@pytest.fixture(scope="session")
def dicom_wsi() -> Path:
    path = SHARED / "data" / "slides" / "camelyon_lowres_dicom_wsi.dcm"
    if not path.exists():
        pytest.skip(f"{path} missing (the shared/ folder beside the repository)")
    return path


# A 4096 x 3072 slide at 0.25 µm/px with one tissue block of exactly 4 x 3 tiles of
# 448 level-0 px (224 px at 0.5 µm/px), aligned to the tile grid, starting at tile (2, 1).
BLOCK = (896, 448, 4 * 448, 3 * 448)


@pytest.fixture(scope="session")
def block_tiff(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "block.tiff"
    return write_pyramid(path, tissue_image(4096, 3072, [BLOCK]), downsamples=(1, 4, 16))


def _textured(path: Path, width: int, height: int) -> Path:
    """Random 8-px blocks everywhere (worst case for JPEG and for any misalignment)."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = np.kron(small, np.ones((8, 8, 1), np.uint8))[:height, :width]
    return write_pyramid(path, image, downsamples=(1, 2, 4))


@pytest.fixture(scope="session")
def textured_tiff(tmp_path_factory) -> Path:
    """Odd size: levels have non-integer downsamples (2.0017, 4.0064) as on real scans."""
    return _textured(tmp_path_factory.mktemp("slides") / "textured.tiff", 1351, 1037)


@pytest.fixture(scope="session")
def textured_even_tiff(tmp_path_factory) -> Path:
    """Size divisible by 4: levels have exact downsamples 2 and 4."""
    return _textured(tmp_path_factory.mktemp("slides") / "even.tiff", 1352, 1040)


TINY = CohortParams(
    n_slides=9, seed=3, slide_size_um=(1400.0, 1000.0), mpp=0.5, difficulty=0.0, artefacts=False
)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    make_cohort(out, TINY, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_cohort, tmp_path_factory) -> Path:
    """A model trained for one short epoch on the tiny cohort (enough to test the plumbing)."""
    from pipeline.training.config import load_config
    from pipeline.training.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    config = load_config(
        "demo",
        [f"--data.manifest={tiny_cohort / 'manifest.csv'}", f"--out={run}",
         "--data.num_workers=0", "--data.tiling_workers=1", "--data.tiles_per_slide=24",
         "--data.eval_tiles_per_slide=16", "--data.batch_size=24", "--trainer.max_epochs=1"],
    )  # fmt: skip
    return train(config, progress=False).model_path
