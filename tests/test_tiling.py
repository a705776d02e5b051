import h5py
import numpy as np
import pytest

from pipeline.core.errors import EmptySlideError
from pipeline.wsi.slide import Slide
from pipeline.wsi.tiling import (
    TileSpec,
    TilingParams,
    load_tiles,
    read_tile,
    save_tiles,
    tile_slide,
    tissue_fraction,
)
from pipeline.wsi.tissue import TissueMask

from .conftest import BLOCK
from .slides import tissue_image, write_pyramid


def test_exact_tile_count_on_a_known_tissue_block(block_tiff):
    with Slide(block_tiff) as slide:
        tiles = tile_slide(slide, TilingParams(target_mpp=0.5, tile_px=224))
    assert tiles.spec.level == 0 and tiles.spec.patch_size_level0 == 448
    x, y, w, h = BLOCK
    expected = {(x + 448 * i, y + 448 * j) for i in range(4) for j in range(3)}
    assert set(map(tuple, tiles.coords.tolist())) == expected
    assert tiles.tissue_fraction.min() > 0.95
    assert tiles.mask.area_mm2 == pytest.approx(w * h * 0.25**2 / 1e6, rel=0.05)


def test_half_tile_shift_uses_the_tissue_fraction_threshold(tmp_path):
    x, y, w, h = 896 + 224, 448, 4 * 448, 3 * 448  # block shifted by half a tile in x
    path = write_pyramid(tmp_path / "shift.tiff", tissue_image(4096, 3072, [(x, y, w, h)]))
    with Slide(path) as slide:
        half = tile_slide(slide, TilingParams(min_tissue=0.4))
        strict = tile_slide(slide, TilingParams(min_tissue=0.6))
    assert len(half) == 5 * 3  # 3 whole + 2 half tiles per row
    assert len(strict) == 3 * 3
    assert sorted(set(np.round(half.tissue_fraction, 1))) == [0.5, 1.0]


def test_overlap_and_lower_resolution_levels(block_tiff):
    with Slide(block_tiff) as slide:
        spec = TileSpec.for_slide(slide, TilingParams(target_mpp=2.0, tile_px=112, overlap_px=56))
        assert (spec.level, spec.patch_size, spec.patch_size_level0) == (1, 224, 896)
        assert spec.stride_level0 == 448
        tiles = tile_slide(slide, TilingParams(target_mpp=2.0, tile_px=112, overlap_px=56))
        assert np.all(tiles.coords % 4 == 0), "level-1 tiles start on level-1 pixels"
        tile = read_tile(slide, *tiles.coords[0], tiles.spec)
    assert tile.shape == (112, 112, 3) and tile.dtype == np.uint8


def test_vectorised_fraction_equals_brute_force():
    rng = np.random.default_rng(3)
    mask = TissueMask(mask=rng.random((60, 80)) > 0.6, downsample=16.0, mpp=4.0)
    coords = rng.integers(-100, 1300, size=(300, 2))
    size = 37.0
    got = tissue_fraction(mask, coords, size)
    fine = np.kron(mask.mask, np.ones((16, 16), bool))  # level-0 resolution
    for (x, y), value in zip(coords, got, strict=True):
        x0, y0 = max(x, 0), max(y, 0)
        covered = fine[y0 : max(y0, y + 37), x0 : max(x0, x + 37)].sum()
        assert value == pytest.approx(covered / size**2, abs=1e-9)


def test_blank_slide_is_an_empty_slide_error(tmp_path):
    path = write_pyramid(tmp_path / "glass.tiff", tissue_image(2048, 1024, []))
    with Slide(path) as slide, pytest.raises(EmptySlideError) as err:
        tile_slide(slide)
    assert str(path) in str(err.value) and "QC image" in str(err.value)


def test_h5_layout_readable_with_plain_h5py_as_clam_reads_it(block_tiff, tmp_path):
    with Slide(block_tiff) as slide:
        tiles = tile_slide(slide)
    out = tmp_path / "tiles" / "block.h5"
    save_tiles(out, tiles)
    with h5py.File(out, "r") as f:
        coords = f["coords"]
        assert coords.dtype == np.int64 and coords.shape == (12, 2)
        assert coords.attrs["patch_level"] == 0
        assert coords.attrs["patch_size"] == 448
        assert coords.attrs["patch_size_level0"] == 448
        assert f.attrs["target_mpp"] == 0.5 and f.attrs["tile_px"] == 224
        assert f.attrs["slide_mpp"] == pytest.approx(0.25)
        assert f.attrs["mpp_source"] == "openslide"
        assert len(f.attrs["params_hash"]) == 16
        assert f["tissue_fraction"].shape == (12,)
    coords, attrs = load_tiles(out)
    assert attrs["patch_size_level0"] == 448
    np.testing.assert_array_equal(coords, tiles.coords)
    assert list(tmp_path.joinpath("tiles").iterdir()) == [out], "no temporary files left"


def test_cmu_svs_tiles_sensibly(cmu_svs):
    with Slide(cmu_svs) as slide:
        tiles = tile_slide(slide, TilingParams(target_mpp=0.5, tile_px=224))
        tile = read_tile(slide, *tiles.coords[0], tiles.spec)
    assert 30 <= len(tiles) <= 60  # about 0.57 mm² of tissue, 0.0125 mm² per tile
    assert tiles.spec.patch_size_level0 == 224  # 0.499 µm/px is within tolerance of 0.5
    assert tile.shape == (224, 224, 3) and tile.mean() < 220  # tissue, not glass


def test_params_hash_tracks_parameters():
    a, b = TilingParams(), TilingParams(min_tissue=0.6)
    assert a.hash() == TilingParams().hash() != b.hash()
    assert a.hash(mpp_override=0.25) != a.hash()
    with pytest.raises(ValueError):
        TilingParams(overlap_px=224)
