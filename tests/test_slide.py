import numpy as np
import openslide
import pytest
from PIL import Image

from pipeline.core.errors import (
    CorruptSlideError,
    InvalidResolutionError,
    MissingResolutionError,
    SlideError,
    SlideNotFoundError,
    UnsupportedFormatError,
)
from pipeline.wsi.slide import Slide

from .slides import tissue_image, write_pyramid


def test_svs_reads_with_fast_path_and_metadata(cmu_svs):
    with Slide(cmu_svs) as slide:
        assert slide.backend == "tifffile"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.resolution.source == "openslide"
        assert slide.slide_id == "cmu_small_region"


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize(
    "x, y, w, h",
    [(0, 0, 240, 240), (100, 130, 448, 300), (2000, 2800, 400, 400), (-50, -20, 120, 90)],
)
def test_fast_path_pixels_equal_openslide_on_svs(cmu_svs, x, y, w, h):
    fast = Slide(cmu_svs, backend="tifffile").read_region(x, y, 0, w, h)
    ref = Slide(cmu_svs, backend="openslide").read_region(x, y, 0, w, h)
    assert fast.shape == ref.shape == (h, w, 3)
    assert _max_diff(fast, ref) <= 1  # same libjpeg-turbo decoder: at most rounding


@pytest.mark.parametrize("level", [0, 1, 2])
def test_fast_path_pixels_equal_openslide_on_pyramid_levels(textured_even_tiff, level, monkeypatch):
    fast, ref = Slide(textured_even_tiff), Slide(textured_even_tiff, backend="openslide")
    assert fast.backend == "tifffile" and ref.backend == "openslide"
    assert fast.level_downsamples == (1.0, 2.0, 4.0)
    # the fast path must decode these itself, not defer to OpenSlide
    monkeypatch.setattr(fast._reader, "_base", None)
    ds = round(fast.level_downsamples[level])
    for x, y in [(0, 0), (ds * 300, ds * 77), (1300, 1000)]:  # the last crosses the edge
        a = fast.read_region(x, y, level, 200, 150)
        b = ref.read_region(x, y, level, 200, 150)
        assert _max_diff(a, b) <= 1


@pytest.mark.parametrize("level", [1, 2])
def test_subpixel_level_origins_defer_to_openslide(textured_tiff, level):
    fast, ref = Slide(textured_tiff), Slide(textured_tiff, backend="openslide")
    assert fast.level_downsamples[level] not in (2.0, 4.0)
    for x, y in [(0, 0), (600, 154), (7, 3)]:
        a = fast.read_region(x, y, level, 64, 64)
        assert _max_diff(a, ref.read_region(x, y, level, 64, 64)) <= 1


def test_outside_the_image_is_white(textured_tiff):
    with Slide(textured_tiff) as slide:
        region = slide.read_region(1300, 1000, 0, 100, 100)
    assert (region[60:, :] == 255).all() and (region[:, 60:] == 255).all()


def test_dicom_wsi_reads_through_openslide(dicom_wsi):
    with Slide(dicom_wsi) as slide:
        assert slide.backend == "openslide"
        assert slide.properties["openslide.vendor"] == "dicom"
        assert slide.mpp == pytest.approx(28.97, abs=0.01)
        thumb, ds = slide.thumbnail(mpp=60)
        assert ds == pytest.approx(60 / slide.mpp)
        assert thumb.shape[1] == pytest.approx(slide.dimensions[0] / ds, abs=1)
        assert 50 < thumb.mean() < 250


def test_level_selection_never_upsamples(block_tiff):
    with Slide(block_tiff) as slide:  # levels at 0.25, 1.0, 4.0 µm/px
        assert slide.level_downsamples == (1.0, 4.0, 16.0)
        assert slide.best_level_for_mpp(0.5) == 0
        assert slide.best_level_for_mpp(1.0) == 1
        assert slide.best_level_for_mpp(1.02) == 1  # within tolerance of the level's 1.0
        assert slide.best_level_for_mpp(3.9) == 1
        assert slide.best_level_for_mpp(8.0) == 2
        with pytest.raises(InvalidResolutionError, match="up-sampled"):
            slide.best_level_for_mpp(0.2)


def test_chunked_thumbnail_matches_direct_read(block_tiff, monkeypatch):
    import pipeline.wsi.slide as slide_module

    with Slide(block_tiff) as slide:
        whole, ds = slide.thumbnail(mpp=2.0)
        monkeypatch.setattr(slide_module, "THUMBNAIL_CHUNK", 300)  # many chunks
        chunked, ds2 = slide.thumbnail(mpp=2.0)
    assert ds == ds2 == 8.0
    assert whole.shape == chunked.shape == (384, 512, 3)
    assert _max_diff(whole, chunked) <= 1


def test_override_resolution(tmp_path):
    path = write_pyramid(tmp_path / "nores.tiff", tissue_image(600, 400, []), mpp=None)
    with pytest.raises(MissingResolutionError) as err:
        Slide(path)
    assert str(path) in str(err.value) and "--slide-mpp" in str(err.value)
    with Slide(path, mpp=0.5) as slide:
        assert (slide.mpp, slide.resolution.source) == (0.5, "override")


def test_png_needs_an_explicit_resolution(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(tissue_image(300, 200, [(50, 50, 100, 100)])).save(path)
    with pytest.raises(MissingResolutionError):
        Slide(path)
    with Slide(path, mpp=1.0) as slide:
        assert slide.backend == "image"
        assert slide.read_region(50, 50, 0, 10, 10).mean() < 200


def test_missing_file(tmp_path):
    with pytest.raises(SlideNotFoundError, match="not found"):
        Slide(tmp_path / "nope.svs")


def test_garbage_file_is_unsupported(tmp_path):
    path = tmp_path / "junk.svs"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(UnsupportedFormatError) as err:
        Slide(path)
    assert str(path) in str(err.value) and "pyramidal" in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tiff"
    path.touch()
    with pytest.raises(CorruptSlideError, match="empty"):
        Slide(path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_tiff_is_reported_as_corrupt(tmp_path, textured_tiff, keep):
    data = textured_tiff.read_bytes()
    path = tmp_path / "truncated.tiff"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SlideError) as err, Slide(path, mpp=0.25) as slide:
        for level in range(len(slide.level_dimensions)):
            w, h = slide.level_dimensions[level]
            slide.read_region(0, 0, level, w, h)
    assert isinstance(err.value, CorruptSlideError | MissingResolutionError)
    assert str(path) in str(err.value)


def test_truncated_svs_reads_fail_cleanly_in_both_backends(tmp_path, cmu_svs):
    data = cmu_svs.read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: len(data) // 3])
    for backend in ("auto", "openslide"):
        with pytest.raises(SlideError) as err, Slide(path, backend=backend) as slide:
            slide.thumbnail(mpp=4.0)
            slide.read_region(0, 0, 0, *slide.dimensions)
        assert str(path) in str(err.value)
        assert not isinstance(err.value, openslide.OpenSlideError)


def test_slides_cannot_be_pickled(block_tiff):
    import pickle

    with Slide(block_tiff) as slide, pytest.raises(TypeError, match="each worker"):
        pickle.dumps(slide)
