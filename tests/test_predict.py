import csv
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.prediction.locks import SlideLock
from pipeline.wsi.slide import Slide

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "result.schema.json").read_text())


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def batch(tiny_cohort, tmp_path_factory):
    """Three cohort slides, one truncated slide, and an IHC table with a stray slide."""
    folder = tmp_path_factory.mktemp("batch")
    slides = sorted((tiny_cohort / "slides").glob("*.tiff"))[:3]
    for s in slides:
        shutil.copy(s, folder / s.name)
    (folder / "broken.tiff").write_bytes(slides[0].read_bytes()[:4000])
    ihc = folder / "ihc.csv"
    rows = [r for r in _rows(tiny_cohort / "ihc.csv") if r["slide_id"] in {s.stem for s in slides}]
    rows.append(
        {"slide_id": "not_in_batch", "marker": "desmin", "result": "positive", "percent": ""}
    )
    with open(ihc, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide_id", "marker", "result", "percent"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _predict(batch, model, out, *extra):
    return main(["-q", "predict", str(batch), "--model", str(model), "--out", str(out),
                 "--ihc", str(batch / "ihc.csv"), "--workers", "0", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def predicted(batch, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    assert _predict(batch, tiny_model, out) == 1  # the broken slide fails, the rest go on
    return out


def test_every_output_exists_and_validates(predicted, batch, tiny_model):
    summary = {r["slide_id"]: r for r in _rows(predicted / "summary.csv")}
    assert set(summary) == {p.stem for p in batch.glob("*.tiff")}
    assert summary["broken"]["status"] == "error" and "broken.tiff" in summary["broken"]["error"]
    ok = [s for s, r in summary.items() if r["status"] == "ok"]
    assert len(ok) == 3
    for slide_id in [*ok, "broken"]:
        result = json.loads((predicted / "slides" / slide_id / "result.json").read_text())
        jsonschema.validate(result, SCHEMA)
    for slide_id in ok:
        folder = predicted / "slides" / slide_id
        result = json.loads((folder / "result.json").read_text())
        probs = result["image"]["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0)
        assert result["differential"] is not None  # IHC was given for these slides
        assert result["provenance"]["model_sha256"] and set(result["provenance"]["timings_s"]) >= {
            "tile",
            "read_decode",
            "model",
            "aggregate",
            "write",
        }
        tiles = _rows(folder / "tiles.csv")
        assert list(tiles[0])[:4] == ["x", "y", "width", "height"]
        sums = [sum(float(v) for k, v in t.items() if k.startswith("prob_")) for t in tiles]
        np.testing.assert_allclose(sums, 1.0, atol=1e-4)
        assert Image.open(folder / "heatmap.png").size[0] >= 360
        _check_geojson(folder / "tiles.geojson", batch / f"{slide_id}.tiff", predicted, len(tiles))


def _check_geojson(path, slide_path, out, n_tiles):
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == n_tiles
    mask = np.asarray(Image.open(out / "tiles" / "masks" / f"{slide_path.stem}.png")) > 0
    with Slide(slide_path) as slide:
        w, h = slide.dimensions
    ds = w / mask.shape[1]
    for feature in doc["features"]:
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and (ring[0] == ring[-1]).all()
        assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= w and ring[:, 1].max() <= h
        x0, y0 = (ring[:4].min(0) / ds).astype(int)
        x1, y1 = np.ceil(ring[:4].max(0) / ds).astype(int)
        assert mask[y0:y1, x0:x1].mean() >= 0.4  # kept tiles are mostly tissue (min 0.5)
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"]
        assert sum(props["measurements"].values()) == pytest.approx(1.0, abs=1e-4)


def test_stray_ihc_rows_are_reported(predicted):
    assert "not_in_batch" in (predicted / "report.html").read_text()


def test_rerun_after_a_crash_finishes_with_identical_results(
    batch, tiny_model, predicted, tmp_path
):
    out = tmp_path / "resume"
    shutil.copytree(predicted, out)
    ok = [r["slide_id"] for r in _rows(out / "summary.csv") if r["status"] == "ok"]
    victim = out / "slides" / ok[0]
    reference = json.loads((victim / "result.json").read_text())
    (victim / "result.json").unlink()  # killed before its last write
    (victim / "heatmap.png").unlink()
    others = {
        p: p.stat().st_mtime_ns
        for p in (out / "slides").glob("*/result.json")
        if json.loads(p.read_text())["status"] == "ok"
    }  # errors are retried on a rerun; finished slides are not
    assert _predict(batch, tiny_model, out) == 1
    again = json.loads((victim / "result.json").read_text())
    for doc in (reference, again):
        doc["provenance"].pop("timings_s", None)
    assert again == reference
    assert all(p.stat().st_mtime_ns == t for p, t in others.items()), "finished slides are kept"


def test_shards_together_equal_the_full_run(batch, tiny_model, predicted, tmp_path):
    out = tmp_path / "sharded"
    for i in range(2):
        _predict(batch, tiny_model, out, "--shard", f"{i}/2")
    full = {r["slide_id"]: r for r in _rows(predicted / "summary.csv")}
    sharded = {r["slide_id"]: r for r in _rows(out / "summary.csv")}
    assert sharded.keys() == full.keys()
    for key, row in full.items():
        assert (
            sharded[key]["call"] == row["call"]
            and sharded[key]["probability"] == row["probability"]
        )


def test_bad_models_stop_before_any_slide(batch, tiny_cohort, tmp_path):
    out = tmp_path / "out"
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a model")
    assert _predict(batch, junk, out) == 2
    assert not (out / "slides").exists()
    import torch

    path = next(Path(tiny_cohort).parent.glob("tiny_run*/model.ckpt"))
    payload = torch.load(path, weights_only=True)
    payload["hyper_parameters"]["classes"] = ["leiomyosarcoma", "glioma", "other_sarcoma"]
    mismatch = tmp_path / "mismatch.ckpt"
    torch.save(payload, mismatch)
    assert _predict(batch, mismatch, out) == 2
    assert not (out / "slides").exists()


def test_a_live_lock_keeps_other_processes_off_a_slide(tmp_path):
    folder = tmp_path / "slides" / "s1"
    first, second = SlideLock(folder), SlideLock(folder)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
    (folder / ".lock").write_text(f"{__import__('socket').gethostname()} 999999999")  # dead pid
    assert SlideLock(folder).acquire(), "a stale lock is taken over"


def test_report_renders_in_headless_chromium(predicted, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    url = (predicted / "report.html").as_uri()
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for row in _rows(predicted / "summary.csv"):
        assert (
            f'data-slide="{row["slide_id"]}"' in dom.stdout
            or f"data-slide='{row['slide_id']}'" in dom.stdout
        )
        assert f'id="{row["slide_id"]}"' in dom.stdout
    assert "Research use only" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.exists() and Image.open(shot).size == (1280, 2000)


def test_one_process_per_device_matches_one_process(batch, tiny_model, predicted, tmp_path):
    out = tmp_path / "devices"
    assert _predict(batch, tiny_model, out, "--devices", "2", "--device", "cpu") == 1
    full = {r["slide_id"]: r for r in _rows(predicted / "summary.csv")}
    parallel = {r["slide_id"]: r for r in _rows(out / "summary.csv")}
    assert {k: r["probability"] for k, r in parallel.items()} == {
        k: r["probability"] for k, r in full.items()
    }
