"""The building blocks on their own: readers, the batch runner, the inference runner, the
per-slide outputs, the result document and the model metadata."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from models.meta import ModelMeta
from pipeline.core.batch import run_slides
from pipeline.core.errors import CorruptSlideError, SlideError, UnsupportedFormatError
from pipeline.prediction.outputs import geojson, heatmap, write_slide_outputs
from pipeline.prediction.result import (
    CallDoc,
    Provenance,
    SlideResult,
    read_result,
    read_results,
    write_result,
)
from pipeline.tiles.engine import plan_engine
from pipeline.tiles.runner import run_tiles
from pipeline.wsi.readers import ImageReader, OpenSlideReader, TiffReader, open_reader

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "result.schema.json").read_text())


# -- readers --------------------------------------------------------------------------------
def test_open_reader_picks_the_fast_path_for_tiled_tiff_and_openslide_on_request(block_tiff):
    fast, slow = open_reader(block_tiff), open_reader(block_tiff, backend="openslide")
    assert isinstance(fast, TiffReader) and isinstance(slow, OpenSlideReader)
    assert fast.level_dimensions == slow.level_dimensions
    a, b = fast.read_region(800, 400, 0, 300, 200), slow.read_region(800, 400, 0, 300, 200)
    assert a.shape == (200, 300, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    fast.close(), slow.close()


def test_image_reader_pads_outside_with_white(tmp_path):
    from PIL import Image

    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path)
    reader = open_reader(path)
    assert isinstance(reader, ImageReader) and reader.level_dimensions == ((20, 10),)
    region = reader.read_region(15, 5, 0, 10, 10)
    assert (
        (region[:5, :5] == 0).all() and (region[5:] == 255).all() and (region[:, 5:] == 255).all()
    )


def test_reader_errors_name_the_file(tmp_path, block_tiff):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(UnsupportedFormatError, match=r"notes\.txt"):
        open_reader(junk)
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(block_tiff.read_bytes()[:300])
    with pytest.raises(CorruptSlideError, match=r"cut\.tiff.*copy it again"):
        open_reader(cut)


# -- batch runner ---------------------------------------------------------------------------
@dataclass
class _Entry:
    slide_id: str
    path: Path


def _job(entry, fail_on: str, scale: int) -> dict:
    if entry.slide_id == fail_on:
        raise SlideError(entry.path, "cannot be read", "copy it again")
    if entry.slide_id == "bug":
        raise ZeroDivisionError("boom")
    return {"value": len(entry.slide_id) * scale, "pid": os.getpid()}


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_runner_isolates_failures_and_keeps_order(workers):
    entries = [_Entry(name, Path(f"/x/{name}.svs")) for name in ("a", "bad", "ccc", "bug", "dd")]
    seen = []
    rows = run_slides(
        _job, entries, workers=workers, progress=False, on_row=lambda e, r: seen.append(e.slide_id),
        fail_on="bad", scale=10,
    )  # fmt: skip
    assert [r["slide_id"] for r in rows] == ["a", "bad", "ccc", "bug", "dd"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error", "ok"]
    assert rows[2]["value"] == 30
    assert rows[1]["error"] == "/x/bad.svs: cannot be read (copy it again)"
    assert (
        "internal error ZeroDivisionError" in rows[3]["error"] and "/x/bug.svs" in rows[3]["error"]
    )
    assert sorted(seen) == sorted(e.slide_id for e in entries)
    pids = {r["pid"] for r in rows if r["status"] == "ok"}
    assert (os.getpid() in pids) == (workers == 1)


# -- inference runner -----------------------------------------------------------------------
class _Tiles(torch.utils.data.Dataset):
    """Tile i is the constant i; tiles listed in ``missing`` cannot be read."""

    def __init__(self, n: int, missing: set[int]):
        self.n, self.missing = n, missing

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i in self.missing:
            return None
        return {"image": torch.full((3, 4, 4), float(i)), "label": 0, "slide": 0}


def _step(images: torch.Tensor) -> dict[str, torch.Tensor]:
    mean = images.mean((1, 2, 3))
    return {
        "features": torch.stack([mean, 2 * mean], 1),
        "probs": torch.softmax(images[:, 0, 0, :2], 1),
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_runner_keeps_dataset_order_and_marks_unreadable_tiles(workers):
    engine = plan_engine("cpu", workers=workers)
    run = run_tiles(_step, _Tiles(23, {0, 5, 6, 7, 22}), ["features"], batch_size=4, engine=engine)
    features = run.outputs["features"]
    assert features.shape == (23, 2) and set(run.outputs) == {"features"}
    assert np.flatnonzero(~run.readable).tolist() == [0, 5, 6, 7, 22]
    assert np.isnan(features[~run.readable]).all()
    np.testing.assert_allclose(features[run.readable, 0], np.flatnonzero(run.readable))
    assert run.read_s >= 0 and run.model_s >= 0


def test_runner_with_every_tile_unreadable():
    run = run_tiles(_step, _Tiles(5, set(range(5))), ["probs"], batch_size=2)
    assert not run.readable.any() and run.outputs["probs"].shape[0] == 5


# -- outputs --------------------------------------------------------------------------------
def test_slide_outputs_on_their_own(tmp_path):
    coords = np.array([[100, 50], [300, 50], [100, 250]])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], np.float32)
    thumb = (np.full((60, 80, 3), 230, np.uint8), 8.0)
    qc = tmp_path / "qc.png"
    from PIL import Image

    Image.fromarray(thumb[0]).save(qc)
    classes = ["a", "b", "c"]
    write_slide_outputs(
        tmp_path / "s", coords, 200, probs, None, classes, (40, 20, 0, 0), thumb, qc
    )
    lines = (tmp_path / "s" / "tiles.csv").read_text().splitlines()
    assert lines[0] == "x,y,width,height,prob_a,prob_b,prob_c"
    assert lines[2] == "300,50,200,200,0.1,0.8,0.1"
    features = json.loads((tmp_path / "s" / "tiles.geojson").read_text())["features"]
    ring = features[1]["geometry"]["coordinates"][0]
    assert ring[0] == [260, 30] and ring[2] == [460, 230], "bounds offset removed for QuPath"
    assert features[1]["properties"]["classification"]["name"] == "b"
    assert (tmp_path / "s" / "heatmap.png").exists() and (tmp_path / "s" / "qc.png").exists()
    assert not list((tmp_path / "s").glob(".*.tmp")), "atomic writes leave no temporaries"
    attention = np.array([0.1, 0.5, 0.4])
    assert (
        "attention"
        in geojson(coords, 200, probs, classes, attention, (0, 0))["features"][0]["properties"][
            "measurements"
        ]
    )
    image = heatmap(thumb, coords, 200, probs, classes, attention)
    assert image.size[0] >= 80 and image.size[1] > 60  # the legend sits below the thumbnail


# -- result document ------------------------------------------------------------------------
def _ok_result() -> SlideResult:
    from pipeline.prediction.result import ImageDoc, QCDoc

    return SlideResult(
        slide_id="s1",
        path="/slides/s1.svs",
        status="ok",
        provenance=Provenance("0.1.0", "abc", model_sha256="0" * 64, timings_s={"total": 1.0}),
        call=CallDoc("leiomyosarcoma", "leiomyosarcoma", "leiomyosarcoma", 0.9, False, []),
        image=ImageDoc({"leiomyosarcoma": 0.9, "meningioma": 0.1}, "mean", 1.0, ["l", "m"], "tile"),
        qc=QCDoc(0.5, "openslide.mpp", 1.2, 40, "tifffile", []),
    )


def test_result_document_round_trips_and_validates(tmp_path):
    import jsonschema

    ok, bad = _ok_result(), SlideResult.failed("s2", "/slides/s2.svs", "s2.svs: truncated", "h")
    for result in (ok, bad):
        path = write_result(tmp_path, result)
        jsonschema.validate(json.loads(path.read_text()), SCHEMA)
        assert read_result(path) == result
    assert [r.slide_id for r in read_results(tmp_path)] == ["s1", "s2"]
    assert list(json.loads(write_result(tmp_path, ok).read_text())) == [
        "schema_version", "slide_id", "path", "status", "error", "call", "image",
        "differential", "ihc", "qc", "provenance",
    ]  # fmt: skip
    (tmp_path / "slides" / "s3").mkdir()
    (tmp_path / "slides" / "s3" / "result.json").write_text("{ half written")
    assert read_result(tmp_path / "slides" / "s3" / "result.json") is None
    assert len(read_results(tmp_path)) == 2


# -- model metadata -------------------------------------------------------------------------
def test_model_meta_refuses_what_it_cannot_use():
    base = _ok_meta()
    with pytest.raises(ValueError, match="lacks tile_px"):
        ModelMeta.from_dict({k: v for k, v in base.items() if k != "tile_px"})
    with pytest.raises(ValueError, match="unknown model kind 'vit'"):
        ModelMeta.from_dict({**base, "kind": "vit"})
    meta = ModelMeta.from_dict(base)
    assert not meta.pools_tiles and ModelMeta.from_dict({**base, "kind": "mil"}).pools_tiles


def _ok_meta() -> dict:
    return {
        "kind": "tile", "classes": ["a", "b"], "target_mpp": 0.5, "tile_px": 224,
        "mean": [0.5] * 3, "std": [0.2] * 3, "backbone": "small_cnn", "aggregator": "mean",
        "temperature": 1.0, "package_version": "0.1.0",
    }  # fmt: skip
