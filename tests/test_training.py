import csv
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.backbones import TORCHVISION, build_backbone
from models.checkpoint import ModelError, load_model, read_model_file, save_model
from models.meta import ModelMeta
from pipeline.core.errors import ManifestError, UsageError
from pipeline.tiles.augment import AugmentConfig, build_transform
from pipeline.tiles.dataset import TileDataset, all_items, collate, thread_handles
from pipeline.training.config import load_config
from pipeline.training.datamodule import BalancedEpochSampler, assign_splits, prepare_slides
from pipeline.wsi.manifest import SlideEntry


def _config(cohort, run, *extra):
    return load_config(
        "configs/demo.yaml",
        [
            f"--data.manifest={cohort / 'manifest.csv'}",
            f"--out={run}",
            "--data.num_workers=0",
            "--data.tiling_workers=1",
            "--data.tiles_per_slide=32",
            "--data.eval_tiles_per_slide=32",
            "--data.batch_size=32",
            "--trainer.max_epochs=1",
            *extra,
        ],
    )


def test_config_overrides_and_unknown_keys(tmp_path):
    config = load_config(
        "configs/demo.yaml", ["--trainer.max_epochs=3", "--data.tile_px=64", "--out=x"]
    )
    assert config.trainer.max_epochs == 3 and config.data.tile_px == 64 and config.out == "x"
    with pytest.raises(UsageError, match=r"'trainer\.max_epoch'"):
        load_config("configs/demo.yaml", ["--trainer.max_epoch=3"])
    with pytest.raises(UsageError, match=r"data\.tile_px"):
        load_config("configs/demo.yaml", ["--data.tile_px=big"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  manifest: m.csv\n  tiles_per_slid: 3\n")
    with pytest.raises(UsageError, match="tiles_per_slid"):
        load_config(bad)
    for name in ("demo", "default", "mil"):
        load_config(f"configs/{name}.yaml")  # every shipped config is valid


def test_splits_group_patients_and_stratify_labels():
    classes = ["a", "b", "c"]
    entries = [
        SlideEntry(f"s{i}", path=None, label=classes[i % 3], patient_id=f"p{i // 2}")
        for i in range(60)
    ]
    splits = assign_splits(entries, classes, 0.2, 0.2, seed=0)
    by_patient: dict[str, set] = {}
    for e in entries:
        by_patient.setdefault(e.patient_id, set()).add(splits[e.slide_id])
    assert all(len(s) == 1 for s in by_patient.values())
    for c in classes:
        assert {splits[e.slide_id] for e in entries if e.label == c} == {"train", "val", "test"}
    given = [SlideEntry("x", None, "a", "p", "test"), SlideEntry("y", None, "b", "q", "train")]
    assert assign_splits(given, classes, 0.2, 0.2, 0) == {"x": "test", "y": "train"}


def test_manifest_problems_are_reported_together_before_training(tmp_path, tiny_cohort):
    manifest = tiny_cohort / "broken_manifest.csv"  # beside the slides: paths are relative
    rows = (tiny_cohort / "manifest.csv").read_text().splitlines()
    kept = [r for r in rows[1:] if "leiomyosarcoma" not in r or "test" in r]
    manifest.write_text(
        "\n".join(
            [
                rows[0],
                *kept,
                "ghost,/nope.tiff,meningioma,px,train",
                f"odd,{tiny_cohort}/slides/syn003_000.tiff,glioma,py,train",
            ]
        )
        + "\n"
    )
    with pytest.raises(ManifestError) as err:
        prepare_slides(
            _config(tiny_cohort, tmp_path / "run", f"--data.manifest={manifest}"), tmp_path / "run"
        )
    text = str(err.value)
    assert "/nope.tiff" in text and "'glioma'" in text and "2 problem(s)" in text


def test_classes_without_training_slides_are_reported(tmp_path, tiny_cohort):
    manifest = tiny_cohort / "no_meningioma_training.csv"
    rows = (tiny_cohort / "manifest.csv").read_text().splitlines()
    manifest.write_text(
        "\n".join([rows[0], *[r for r in rows[1:] if not ("meningioma" in r and "train" in r)]])
        + "\n"
    )
    with pytest.raises(ManifestError, match="'meningioma' has no training slide"):
        prepare_slides(
            _config(tiny_cohort, tmp_path / "run", f"--data.manifest={manifest}"), tmp_path / "run"
        )


@pytest.fixture(scope="module")
def tiny_slides(tiny_cohort, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return prepare_slides(_config(tiny_cohort, run), run, progress=False)


def test_transforms_give_normalised_float_tensors():
    tile = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    for train in (True, False):
        out = build_transform(AugmentConfig(), [0.5] * 3, [0.25] * 3, train)(image=tile)["image"]
        assert out.shape == (3, 96, 96) and out.dtype == torch.float32
        assert -3 < float(out.mean()) < 3


def test_two_loader_workers_open_their_own_slide_handles(tiny_slides):
    transform = build_transform(AugmentConfig(), [0.5] * 3, [0.25] * 3, False)
    dataset = TileDataset(tiny_slides, all_items(tiny_slides, [0, 1, 2])[:40], transform)
    pickle.dumps(dataset)  # a Slide handle inside would raise: nothing is open yet
    thread_handles().clear()
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == 40
    assert not thread_handles(), "the parent process must not open slides for its workers"


def test_an_unreadable_slide_is_skipped_not_fatal(tiny_slides, tmp_path):
    from dataclasses import replace

    broken = tmp_path / "broken.tiff"
    broken.write_bytes(tiny_slides[0].entry.path.read_bytes()[:5000])
    slides = [
        replace(
            tiny_slides[0], entry=replace(tiny_slides[0].entry, path=broken, slide_id="broken")
        ),
        tiny_slides[1],
    ]
    transform = build_transform(AugmentConfig(), [0.5] * 3, [0.25] * 3, False)
    dataset = TileDataset(slides, all_items(slides, [0, 1])[: len(slides[0].coords) + 5], transform)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert len(batch["label"]) == 5 and set(batch["slide"].tolist()) == {1}


def test_sampler_balances_classes_and_ranks_cover_one_process(tiny_slides):
    train = [i for i, s in enumerate(tiny_slides) if s.split == "train"]
    single = BalancedEpochSampler(tiny_slides, train, 16, seed=0, rank=0, world_size=1)
    single.set_epoch(2)
    epoch = single.epoch_indices()
    labels = np.concatenate([[tiny_slides[i].label] * len(tiny_slides[i].coords) for i in train])[
        epoch
    ]
    assert len(set(np.bincount(labels).tolist())) == 1  # every class equally represented
    shards = []
    for rank in range(2):
        s = BalancedEpochSampler(tiny_slides, train, 16, seed=0, rank=rank, world_size=2)
        s.set_epoch(2)
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == len(s)
    assert set(shards[0]) | set(shards[1]) == set(epoch.tolist())
    other = BalancedEpochSampler(tiny_slides, train, 16, seed=0, rank=0, world_size=1)
    other.set_epoch(3)
    assert not np.array_equal(other.epoch_indices(), epoch)  # fresh tiles each epoch


@pytest.mark.parametrize("name", ["small_cnn", *TORCHVISION])
def test_every_backbone_builds_and_runs(name):
    model, dim, _, _ = build_backbone(name)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim)


def test_missing_imagenet_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UsageError, match="never downloads"):
        build_backbone("resnet18", pretrained=True)


def test_local_weights_file_is_loaded(tmp_path):
    source, _, _, _ = build_backbone("small_cnn")
    path = tmp_path / "encoder.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded, _, mean, _ = build_backbone("small_cnn", weights_path=str(path))
    x = torch.randn(1, 3, 64, 64)
    source.eval(), loaded.eval()
    assert torch.equal(source(x), loaded(x)) and mean is not None
    with pytest.raises(UsageError, match="no tensor fits"):
        torch.save({"nothing": torch.zeros(1)}, path)
        build_backbone("small_cnn", weights_path=str(path))


def _meta(**changes) -> ModelMeta:
    values = {
        "kind": "tile",
        "classes": ["a", "b", "c"],
        "target_mpp": 1.0,
        "tile_px": 64,
        "mean": [0.5] * 3,
        "std": [0.2] * 3,
        "backbone": "small_cnn",
        "aggregator": "mean",
        "temperature": 1.0,
        "package_version": "0",
        "lr": 1e-3,
        "weight_decay": 0.0,
    }
    return ModelMeta(**{**values, **changes})


def test_model_file_round_trip_is_bit_exact_and_weights_only(tmp_path):
    from models.tile_classifier import TileClassifier

    model = TileClassifier(_meta()).eval()
    path = save_model(tmp_path / "model.ckpt", model, _meta())
    torch.load(path, weights_only=True)  # loads without unpickling any code
    loaded, meta = load_model(path)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta == _meta()
    assert type(loaded).__name__ == "TileNet"  # inference without Lightning
    code = (
        "import sys, torch; from models.checkpoint import load_model; "
        f"m, _ = load_model({str(path)!r}); m.forward_tiles(torch.zeros(1, 3, 64, 64)); "
        "assert 'pytorch_lightning' not in sys.modules, 'loading a model imported Lightning'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_version_1_model_files_written_before_model_meta_still_load(tmp_path):
    """A model file as fascicle 0.1.0 wrote it: a flat dict with keys this version may not
    know; they are kept on a round trip."""
    from models.tile_classifier import TileClassifier

    model = TileClassifier(_meta()).eval()
    old = {k: v for k, v in _meta().to_dict().items() if v is not None}
    old["future_key"] = [1, 2]
    path = tmp_path / "old.ckpt"
    torch.save(
        {"format": "fascicle-model", "format_version": 1, "hyper_parameters": old,
         "state_dict": model.state_dict()},
        path,
    )  # fmt: skip
    _, meta = load_model(path)
    assert meta.classes == ["a", "b", "c"] and meta.extra == {"future_key": [1, 2]}
    assert meta.to_dict()["future_key"] == [1, 2]


class _Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_bad_model_files_are_rejected(tmp_path):
    pickled = tmp_path / "evil.ckpt"
    torch.save({"format": "fascicle-model", "x": _Payload()}, pickled)
    with pytest.raises(ModelError, match="run code"):
        read_model_file(pickled)
    partial = tmp_path / "partial.ckpt"
    torch.save(
        {
            "format": "fascicle-model",
            "format_version": 1,
            "hyper_parameters": {"kind": "tile"},
            "state_dict": {},
        },
        partial,
    )
    with pytest.raises(ModelError, match="lacks classes"):
        read_model_file(partial)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ModelError, match="not a fascicle model"):
        read_model_file(other)
    with pytest.raises(ModelError, match="not found"):
        read_model_file(tmp_path / "none.ckpt")


@pytest.mark.slow
def test_a_short_fit_beats_chance_on_held_out_slides(tiny_cohort, tmp_path):
    from pipeline.training.train import train

    result = train(
        _config(
            tiny_cohort,
            tmp_path / "run",
            "--trainer.max_epochs=6",
            "--data.tiles_per_slide=96",
            "--optim.lr=0.003",
        ),
        progress=False,
    )
    assert result.model_path.exists()
    assert result.metrics["val"]["balanced_accuracy"] > 1 / 3 + 0.2
    _, meta = load_model(result.model_path)
    assert meta.manifest_sha256 and meta.tile_px == 96 and meta.target_mpp == 1.0
    for name in ("splits.csv", "config.yaml", "metrics.json"):
        assert (tmp_path / "run" / name).exists()
    assert list((tmp_path / "run" / "logs").rglob("metrics.csv"))
    assert list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))
    # the kept epoch is the best balanced accuracy, ties going to the lower validation loss
    with open(next((tmp_path / "run" / "logs").rglob("metrics.csv"))) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/loss")]
    scores = [
        (float(r["val/slide_balanced_accuracy"]), -float(r["val/loss"]), int(r["epoch"]))
        for r in rows
    ]
    best_epoch = max(scores)[2]
    assert f"best-epoch={best_epoch:03d}" in result.metrics["best_checkpoint"]


def test_selection_score_breaks_ties_by_loss_and_follows_the_monitor(tiny_cohort, tmp_path):
    from pipeline.training.trainer import make_trainer, selection_score

    tie = [{"val/slide_balanced_accuracy": 1.0, "val/loss": loss} for loss in (0.44, 0.22)]
    scores = [selection_score(m, "val/slide_balanced_accuracy", "max") for m in tie]
    assert scores[1] > scores[0] and 0 < scores[1] - scores[0] < 1e-3
    better = selection_score({"val/slide_balanced_accuracy": 0.75, "val/loss": 0.01}, *
                             ("val/slide_balanced_accuracy", "max"))  # fmt: skip
    assert better < scores[0]  # a lower metric never wins on loss
    assert selection_score({"val/loss": 0.3}, "val/loss", "min") == -0.3
    assert selection_score({"val/loss": 0.3}, "val/slide_auroc_macro", "max") is None
    config = _config(tiny_cohort, tmp_path / "run", "--trainer.early_stopping_patience=2")
    trainer, _ = make_trainer(config, tmp_path / "run", progress=False)
    stopper = next(c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping")
    assert stopper.patience == 2 and stopper.monitor == "val/selection"
    with pytest.raises(UsageError, match="monitor must be a val/"):
        _config(tiny_cohort, tmp_path / "run", "--trainer.monitor=loss")


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny_cohort, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "-q",
        "train",
        "--config",
        "configs/demo.yaml",
        f"--data.manifest={tiny_cohort / 'manifest.csv'}",
        f"--out={run}",
        "--data.num_workers=0",
        "--data.tiles_per_slide=16",
        "--data.eval_tiles_per_slide=16",
        "--data.batch_size=16",
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "model.ckpt").exists()
    load_model(run / "model.ckpt")


def test_mil_learns_a_planted_signal():
    import pytorch_lightning as pl

    from models.mil import ABMIL, pad_bags
    from pipeline.training.mil import BagDataset, collate_bags

    pl.seed_everything(0, verbose=False)
    rng = np.random.default_rng(0)

    def bag(label):
        x = rng.normal(0, 1, (rng.integers(20, 60), 16)).astype(np.float32)
        x[:4, label] += 4.0  # four informative tiles per bag, the rest noise
        return x

    labels = [i % 3 for i in range(90)]
    bags = [bag(y) for y in labels]
    meta = _meta(kind="mil", feature_dim=16, attention_dim=32, dropout=0.0, lr=3e-3)
    model = ABMIL(meta)
    loader = torch.utils.data.DataLoader(
        BagDataset(bags[:60], labels[:60], 64, True),
        batch_size=8,
        shuffle=True,
        collate_fn=collate_bags,
    )
    trainer = pl.Trainer(
        max_epochs=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    model.eval()
    with torch.no_grad():
        features, mask = pad_bags(bags[60:])
        pred = model(features, mask).argmax(1).numpy()
        weights, _ = model.attention(features, mask)
    assert (pred == np.array(labels[60:])).mean() > 0.9
    assert float(weights[:, :4].sum(1).mean()) > 0.5  # attention finds the planted tiles
