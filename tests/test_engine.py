"""The inference engine: its plan, decode threads, and the batched JPEG path that a GPU runs
(tested here on the CPU with libjpeg-turbo: byte extraction, tile assembly, resize, checks)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.core.errors import UsageError
from pipeline.tiles.augment import AugmentConfig, build_transform
from pipeline.tiles.dataset import SlideTiles, TileDataset, all_items
from pipeline.tiles.engine import cpu_count, plan_engine
from pipeline.tiles.jpeg_batches import box_weights, device_batches
from pipeline.tiles.runner import run_tiles, threaded_batches
from pipeline.wsi.jpeg_tiles import TileGrid
from pipeline.wsi.manifest import SlideEntry
from pipeline.wsi.slide import Slide
from pipeline.wsi.tiling import TileSpec, TilingParams, tile_slide

MEAN, STD = [0.7, 0.5, 0.6], [0.2, 0.25, 0.2]


# -- the plan -------------------------------------------------------------------------------
def test_plan_on_cpu_uses_every_core_and_refuses_bad_values():
    engine = plan_engine("cpu")
    assert engine.device == "cpu" and engine.threads == cpu_count() and engine.workers >= 1
    assert engine.decode == "cpu" and engine.precision in ("bf16", "fp32")
    fixed = plan_engine("cpu", precision="fp32", workers=0, threads=1, decode="device")
    assert (fixed.precision, fixed.workers, fixed.threads, fixed.decode) == ("fp32", 0, 1, "device")
    for bad in (
        {"precision": "fp8"},
        {"precision": "fp16"},  # CUDA only
        {"decode": "gpu"},
        {"workers": -1},
        {"threads": 0},
    ):
        with pytest.raises(UsageError):
            plan_engine("cpu", **bad)


def test_bf16_engine_keeps_probabilities_close_to_fp32():
    from models.backbones import build_backbone

    torch.manual_seed(0)
    net = torch.nn.Sequential(build_backbone("small_cnn", False, None, False)[0])
    x = torch.rand(8, 3, 64, 64)
    outs = {}
    for precision in ("fp32", "bf16"):
        engine = plan_engine("cpu", precision=precision)
        model = engine.prepare(net)
        with torch.no_grad(), engine.autocast():
            outs[precision] = model(engine.inputs(x)).float()
    assert torch.allclose(outs["bf16"], outs["fp32"], rtol=0.05, atol=0.05)


# -- decode threads ---------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_threaded_batches_keep_order(workers):
    data = [{"image": torch.full((3, 2, 2), float(i)), "label": 0, "slide": 0} for i in range(10)]
    data[4] = None
    batches = list(threaded_batches(data, 3, workers))
    assert [len(m) for _, m in batches] == [3, 3, 3, 1]
    assert np.concatenate([m for _, m in batches]).tolist() == [i != 4 for i in range(10)]
    values = torch.cat([images[:, 0, 0, 0] for images, _ in batches]).tolist()
    assert values == [0, 1, 2, 3, 5, 6, 7, 8, 9]


# -- geometry -------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from([16, 32, 48]),
    st.integers(-40, 320),
    st.integers(-40, 320),
    st.integers(1, 120),
    st.integers(1, 120),
)
def test_pieces_cover_the_region_inside_the_level_exactly_once(lw, lh, t, x, y, w, h):
    grid = TileGrid(lw, lh, t, t)
    level = np.arange(lw * lh).reshape(lh, lw)
    tiles = {}
    for ty in range(-(-lh // t)):
        for tx in range(grid.tiles_across):
            block = np.full((t, t), -1)
            part = level[ty * t : ty * t + t, tx * t : tx * t + t]
            block[: part.shape[0], : part.shape[1]] = part
            tiles[ty * grid.tiles_across + tx] = block
    region = np.full((h, w), -1)
    hits = np.zeros((h, w), int)
    for p in grid.pieces(x, y, w, h):
        region[p.dst] = tiles[p.index][p.src]
        hits[p.dst] += 1
    expected = np.full((h, w), -1)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
    if x1 > x0 and y1 > y0:
        expected[y0 - y : y1 - y, x0 - x : x1 - x] = level[y0:y1, x0:x1]
    assert (region == expected).all() and hits.max() <= 1


@pytest.mark.parametrize(("size_in", "size_out"), [(448, 224), (96, 96), (300, 224), (200, 224)])
def test_box_weights_resize_like_pillow(size_in, size_out):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size_in, size_in, 3), dtype=np.uint8)
    w = box_weights(size_in, size_out)
    ours = np.stack([w @ image[..., c].astype(float) @ w.T for c in range(3)], -1)
    pillow = np.asarray(Image.fromarray(image).resize((size_out, size_out), Image.Resampling.BOX))
    assert np.abs(ours - pillow).max() <= 1.0  # Pillow rounds to uint8 between its two passes


# -- JPEG streams ----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["generic", "aperio"])
def test_tile_streams_decode_to_the_readers_pixels(which, block_tiff, cmu_svs):
    """YCbCr tiles with shared tables (tifffile) and Aperio's RGB-coded JPEG tiles, which a
    decoder would read as YCbCr without the Adobe marker the stream adds."""
    path = block_tiff if which == "generic" else cmu_svs
    with Slide(path) as slide:
        jpeg = slide.jpeg_level(0)
        assert jpeg is not None and jpeg.rgb == (which == "aperio")
        reader = slide._reader
        for index in (0, 3, jpeg.grid.tiles_across + 1):
            data = slide.tile_bytes(0, index)
            stream = torch.frombuffer(bytearray(jpeg.stream(data)), dtype=torch.uint8)
            ours = decode_jpeg(stream, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
            assert np.array_equal(ours, reader._tile(0, index))


def test_slides_without_jpeg_tiles_have_no_jpeg_level(dicom_wsi, tmp_path):
    from tests.slides import tissue_image, write_pyramid

    lzw = write_pyramid(tmp_path / "lzw.tiff", tissue_image(600, 400, []), compression="lzw")
    for path in (dicom_wsi, lzw):
        with Slide(path) as slide:
            assert slide.jpeg_level(0) is None


# -- batched decode against the CPU path ------------------------------------------------------
def _dataset(path, mpp: float, tile_px: int, backend: str = "auto") -> TileDataset:
    with Slide(path) as slide:
        tiles = tile_slide(slide, TilingParams(target_mpp=mpp, tile_px=tile_px, min_tissue=0.05))
    entry = SlideEntry(path.stem, path, patient_id=path.stem)
    slides = [SlideTiles(entry, -1, "test", tiles.coords, tiles.spec)]
    transform = build_transform(AugmentConfig(), MEAN, STD, train=False)
    return TileDataset(slides, all_items(slides, [0]), transform, backend)


def _cpu_images(dataset: TileDataset, batch: int) -> torch.Tensor:
    return torch.cat([images for images, _ in threaded_batches(dataset, batch, 0)])


@pytest.mark.parametrize(
    ("which", "mpp", "tile_px"), [("generic", 0.5, 224), ("generic", 1.0, 64), ("aperio", 1.0, 96)]
)
def test_batched_decode_matches_the_cpu_path(which, mpp, tile_px, block_tiff, cmu_svs):
    dataset = _dataset(block_tiff if which == "generic" else cmu_svs, mpp, tile_px)
    assert isinstance(dataset.slides[0].spec, TileSpec) and len(dataset) > 4
    batches = device_batches(dataset, 5, "cpu", MEAN, STD)
    assert batches is not None
    ours = list(batches)
    assert all(m.all() for _, m in ours)
    ours = torch.cat([images for images, _ in ours])
    cpu = _cpu_images(dataset, 5)
    assert ours.shape == cpu.shape
    # within JPEG/rounding tolerance: half a grey level of rounding, in normalised units
    grey = (ours - cpu).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    assert float(grey.mean()) < 0.5 and float(grey.max()) <= 1.01


def test_a_decoder_that_reads_colours_wrong_sends_the_slide_to_the_cpu(cmu_svs, caplog):
    dataset = _dataset(cmu_svs, 1.0, 96)

    def swapped(data):
        return [decode_jpeg(d, mode=ImageReadMode.RGB).flip(0) for d in data]

    images = torch.cat([i for i, _ in device_batches(dataset, 4, "cpu", MEAN, STD, swapped)])
    assert torch.equal(images, _cpu_images(dataset, 4))
    assert "decoded on the CPU" in caplog.text


def test_damaged_tiles_are_read_by_the_cpu_path_which_names_them(block_tiff, tmp_path):
    broken = tmp_path / "broken.tiff"
    shutil.copy(block_tiff, broken)
    with Slide(broken) as slide:
        jpeg, grid = slide.jpeg_level(0), slide._reader.grid(0)
        offset = slide._reader._levels[0].offsets[grid.tiles_across + 3]
    assert jpeg is not None
    with open(broken, "r+b") as fh:  # scribble over one stored tile of the tissue block
        fh.seek(offset + 200)
        fh.write(b"\x00" * 600)
    dataset = _dataset(broken, 0.5, 224)
    engine = plan_engine("cpu", precision="fp32", decode="device")
    run = run_tiles(lambda x: {"m": x.mean((1, 2, 3))}, dataset, ["m"], 4, engine, (MEAN, STD))
    cpu = run_tiles(lambda x: {"m": x.mean((1, 2, 3))}, dataset, ["m"], 4, plan_engine("cpu"))
    assert np.array_equal(run.readable, cpu.readable)
    np.testing.assert_allclose(run.outputs["m"], cpu.outputs["m"], atol=0.01)


def test_run_tiles_decodes_in_batches_only_where_the_slide_allows(block_tiff, dicom_wsi):
    engine = plan_engine("cpu", decode="device")
    step = lambda x: {"m": x.mean((1, 2, 3))}  # noqa: E731
    jpeg = run_tiles(step, _dataset(block_tiff, 0.5, 224), ["m"], 8, engine, (MEAN, STD))
    assert jpeg.decoded_on == "batched on cpu" and jpeg.readable.all()
    with Slide(dicom_wsi) as slide:
        mpp = slide.mpp * 2
    dicom = run_tiles(step, _dataset(dicom_wsi, mpp, 64), ["m"], 8, engine, (MEAN, STD))
    assert dicom.decoded_on == "cpu threads" and dicom.readable.all()
    plain = run_tiles(step, _dataset(block_tiff, 0.5, 224), ["m"], 8, engine)  # no normalise
    assert plain.decoded_on == "cpu threads"


def test_only_the_slides_a_dataset_reads_are_opened(block_tiff, dicom_wsi):
    """``fascicle embed`` gives every dataset all slides and one slide's items: a DICOM slide
    among the others must not send the JPEG one to the CPU."""
    jpeg = _dataset(block_tiff, 0.5, 224)
    with Slide(dicom_wsi) as slide:
        mpp = slide.mpp * 2
    other = _dataset(dicom_wsi, mpp, 64).slides[0]
    both = [jpeg.slides[0], other]
    dataset = TileDataset(both, all_items(both, [0]), jpeg.transform)
    batches = device_batches(dataset, 8, "cpu", MEAN, STD)
    assert batches is not None and sum(len(m) for _, m in batches) == len(jpeg)
    assert device_batches(TileDataset(both, all_items(both, [1]), jpeg.transform), 8, "cpu",
                          MEAN, STD) is None  # fmt: skip
