"""Slide calls that follow the evidence: the probability model, any class set, calibration for
small cohorts, prediction sets, and tissue unlike the training data."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.classes import ClassScheme
from pipeline.core.errors import UsageError
from pipeline.ihc.image import ImageEvidence, kb_class_of
from pipeline.ihc.knowledge import load_knowledge
from pipeline.ihc.panel import parse_panel
from pipeline.prediction import conformal
from pipeline.prediction.call import CallConfig, make_call
from pipeline.training.calibration import calibrate
from pipeline.training.config import load_config

KB = load_knowledge()
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _evidence(probs, classes=None, balance=None, label_map=None):
    classes = classes or list(KB.image_classes)
    scheme = ClassScheme(classes, label_map or {})
    class_of = kb_class_of(KB, classes, lambda label: scheme.class_of(label, rest=False))
    return ImageEvidence.build(probs, classes, class_of, balance)


# -- the probability model ------------------------------------------------------------------
def test_an_image_only_call_is_the_calibrated_image_call():
    image = _evidence({"leiomyosarcoma": 0.95, "meningioma": 0.03, "other_sarcoma": 0.02})
    made = make_call(KB, CallConfig(), None, image)
    assert made.call.label == "leiomyosarcoma" and not made.call.indeterminate
    assert made.call.probability == pytest.approx(0.95)
    unsure = make_call(
        KB, CallConfig(), None, _evidence({"leiomyosarcoma": 0.6, "meningioma": 0.4})
    )
    assert unsure.call.indeterminate and "0.60 < 0.7" in unsure.call.reasons[0]


def test_the_training_balance_is_divided_out_once_and_the_prior_is_the_users():
    # trained at 20/80 (as a sampler that did not balance would): q = balance means no evidence
    image = _evidence(
        {"leiomyosarcoma": 0.2, "meningioma": 0.0, "other_sarcoma": 0.8},
        balance={"leiomyosarcoma": 0.2, "meningioma": 0.0001, "other_sarcoma": 0.7999},
    )
    uniform = image.posterior(dict.fromkeys(image.classes, 1 / 3))
    assert uniform["leiomyosarcoma"] == pytest.approx(uniform["other_sarcoma"], rel=1e-3)
    neutral = image.posterior(image.class_prior(KB, None))
    assert neutral["other_sarcoma"] == pytest.approx(0.8, abs=1e-3)
    named = image.class_prior(KB, "dural_any")
    assert named["meningioma"] > 0.9  # a named prior is summed over each class's entities


def test_classes_a_model_lacks_are_unknown_not_zero():
    binary = ["leiomyosarcoma", "other_sarcoma"]
    image = _evidence({"leiomyosarcoma": 0.0002, "other_sarcoma": 0.9998}, classes=binary)
    assert image.class_of["meningioma_g1_2"] is None
    alone = make_call(KB, CallConfig(), None, image, prior="dural_any")
    assert alone.call.label == "other_sarcoma"  # without IHC: the image call, whatever the prior
    panel = parse_panel("EMA+ PR+ SSTR2A+ STAT6- desmin- S100-", KB)
    fused = make_call(KB, CallConfig(), panel, image)
    ranked = [e for e, _ in fused.differential.ranked()]
    assert ranked[0].startswith("meningioma")  # the model cannot see it; the IHC can
    assert fused.call.outside_scope


def test_image_evidence_never_promotes_entities_the_model_cannot_see():
    image = _evidence({"leiomyosarcoma": 0.9, "meningioma": 0.05, "other_sarcoma": 0.05})
    made = make_call(KB, CallConfig(), parse_panel("vimentin+", KB), image)
    top = [e for e, _ in made.differential.ranked()[:3]]
    assert top[0] == "leiomyosarcoma"
    assert all(made.differential.class_of(e) is not None for e in top[:1])


@pytest.mark.parametrize(
    ("panel", "settled", "entity"),
    [
        ("desmin+ h-caldesmon+ SMA+ EMA- PR- S100- STAT6- EBER-", True, "leiomyosarcoma"),
        ("desmin+ h-caldesmon+ SMA+ EMA- PR- S100- STAT6-", False, None),  # EBV-SMT fits too
        ("STAT6 nuclear positive, CD34+, EMA-", True, "solitary_fibrous_tumor"),
        ("EMA positive, vimentin positive", False, None),  # IHC does not grade meningioma
        ("vimentin+ CD99+ BCL2+ CD34-", False, None),  # several sarcomas fit
    ],
)
def test_the_entity_within_a_called_class_is_settled_only_on_evidence(panel, settled, entity):
    kb, config = load_knowledge(), CallConfig.load()
    call = make_call(kb, config, parse_panel(panel, kb), None, "uniform").call
    doc = call.doc()
    assert doc["entity_settled"] is settled and bool(doc["entity_note"]) is not settled
    assert 0 < doc["entity_probability"] <= doc["probability"] + 1e-9
    if settled:
        assert call.entity == entity
    else:
        assert f"not settled within {call.label}" in call.entity_note


def test_a_panel_read_only_in_part_is_never_called():
    """An unread fragment may hold the decisive result (a held-out PEComa's "Human Melanoma
    Black-45" was once unread, and vimentin alone called it metastatic carcinoma 0.79)."""
    kb, config = load_knowledge(), CallConfig.load()
    clean = "desmin+ h-caldesmon+ SMA+ EMA- PR- S100- STAT6- HMB45-"
    assert not make_call(kb, config, parse_panel(clean, kb), None, "uniform").call.indeterminate
    call = make_call(kb, config, parse_panel(clean + ", XQ-77 positive", kb), None, "uniform").call
    assert call.indeterminate and any(
        "could not be read ('XQ-77 positive')" in r for r in call.reasons
    )
    noted = parse_panel(clean + ", CD10 negative, E-cadherin negative, nestin -", kb)
    assert not noted.unknown and len(noted.noted) == 3  # known markers, recorded and unused
    read = parse_panel(
        "stained positively for Human Melanoma Black-45, but negatively for CKpan", kb
    )
    assert read.results["HMB45"].state == "positive"
    assert read.results["panCK_AE1AE3"].state == "negative"


def test_a_lead_the_prior_gives_over_a_barely_separated_rival_is_not_a_call():
    """A held-out schwannoma ("S-100 and GFAP positive, EMA negative") came out glioblastoma
    0.95 under the dural prior: the evidence favours it only ~2-fold, the prior 17-fold."""
    kb, config = load_knowledge(), CallConfig.load()
    panel = parse_panel("positivity for S-100 protein and GFAP and negativity for EMA", kb)
    dural = make_call(kb, config, panel, None, "dural_high_grade").call
    assert dural.entity == "glioblastoma_gliosarcoma" and dural.probability > 0.9
    assert dural.indeterminate
    assert any("Schwannoma" in r and "the prior decides" in r for r in dural.reasons)
    flat = make_call(kb, config, panel, None, "uniform").call  # equal priors: no such reason
    assert not any("the prior decides" in r for r in flat.reasons)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MALT lymphoma expressing CD20, CD52 and CD38", {"CD20": "positive"}),
        ("tumour cells not expressing desmin or SMA", {"desmin": "negative", "SMA": "negative"}),
        (
            "cells expressed desmin and h-caldesmon",
            {"desmin": "positive", "h_caldesmon": "positive"},
        ),
    ],
)
def test_expressing_reads_as_a_result_for_the_markers_after_it(text, expected):
    panel = parse_panel(text, KB)
    assert {k: r.state for k, r in panel.results.items()} == expected and not panel.unknown


def test_partial_or_unknown_image_probabilities_are_errors():
    with pytest.raises(UsageError, match=r"sum to 0\.90"):
        _evidence({"leiomyosarcoma": 0.9})
    with pytest.raises(UsageError, match="unknown"):
        _evidence({"glioma": 1.0})
    assert main(["ihc", "--panel", "desmin+", "--image-probs", "leiomyosarcoma=0.9"]) == 2


# -- class schemes --------------------------------------------------------------------------
def test_class_schemes():
    ovr = ClassScheme.build([], one_vs_rest="leiomyosarcoma")
    assert ovr.classes == ["leiomyosarcoma", "not_leiomyosarcoma"] and ovr.positive_index == 0
    assert ovr.class_of("meningioma") == "not_leiomyosarcoma"
    assert ovr.class_of("meningioma", rest=False) is None
    folded = ClassScheme.build(["a", "b"], label_map={"c": "b"})
    assert folded.index_of("c") == 1 and folded.index_of("d") == -1 and folded.positive == "a"
    with pytest.raises(UsageError, match="label_map"):
        ClassScheme.build(["a", "b"], label_map={"c": "z"})
    with pytest.raises(UsageError, match="two or more"):
        ClassScheme.build(["a"])


# -- calibration and prediction sets --------------------------------------------------------
def test_small_cohorts_calibrate_on_tile_groups_and_say_so():
    rng = np.random.default_rng(0)
    tiles_per_slide, slides = 64, [0, 1, 2]
    labels = np.array([0, 1, 2])
    tile_slide = np.repeat(slides, tiles_per_slide)
    truth = labels[tile_slide]
    logits = rng.normal(0, 1, (len(tile_slide), 3)) + 0.8 * np.eye(3)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # underconfident tiles
    slide_probs = np.array([probs[tile_slide == s].mean(0) for s in slides])
    t, info = calibrate(slide_probs, labels, probs, tile_slide, slides, "mean")
    assert info["method"] == "tile_groups_of_8" and info["n_groups"] == 24
    assert t < 1 and info["ece_groups_after"] < info["ece_groups_before"]
    many = np.arange(12) % 3
    t, info = calibrate(np.eye(3)[many] * 0.5 + 0.5 / 3, many, probs, tile_slide, slides, "mean")
    assert info["method"] == "slides"


def test_conformal_sets_cover_on_exchangeable_data():
    """Coverage is guaranteed on average over calibration sets: 1 − α ≤ E ≤ 1 − α + 1/(n+1)."""
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]

    def draw(n):
        labels = rng.integers(0, 3, n)
        logits = rng.normal(0, 1, (n, 3)) + 1.2 * np.eye(3)[labels]
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), labels

    coverage = []
    for _ in range(200):
        cal_p, cal_y = draw(30)
        q_hat = conformal.threshold([1 - cal_p[i, y] for i, y in enumerate(cal_y)], 0.9)
        test_p, test_y = draw(100)
        sets = [conformal.prediction_set(dict(zip(classes, p, strict=True)), q_hat) for p in test_p]
        coverage.append(np.mean([classes[y] in c for c, y in zip(sets, test_y, strict=True)]))
    assert 0.9 - 0.01 <= np.mean(coverage) <= 0.9 + 1 / 31 + 0.01
    assert conformal.threshold([0.1] * 5, 0.9) is None  # 5 slides cannot give 90%
    reason = conformal.set_reason(classes, 0.9, None, 5)
    assert "5 calibration slides" in reason and "at least 9" in reason


# -- any class set, end to end --------------------------------------------------------------
def _manifest(tiny_cohort, path, relabel):
    rows = sorted(_rows(tiny_cohort / "manifest.csv"), key=lambda r: r["slide_id"])
    out = []
    for r in rows:
        label, split = relabel(r)
        out.append({"slide_id": r["slide_id"], "path": str(tiny_cohort / r["path"]),
                    "label": label, "patient_id": r["slide_id"], "split": split})  # fmt: skip
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    return path


def _train(manifest, run, *extra):
    from pipeline.training.train import train

    config = load_config("demo", [
        f"--data.manifest={manifest}", f"--out={run}", "--data.num_workers=0",
        "--data.tiling_workers=1", "--data.tiles_per_slide=24", "--data.eval_tiles_per_slide=16",
        "--data.batch_size=24", "--trainer.max_epochs=1", *extra])  # fmt: skip
    return train(config, progress=False)


def _end_to_end(tiny_cohort, manifest, model, tmp_path) -> dict:
    out = tmp_path / "eval"
    code = main(["-q", "evaluate", "--model", str(model), "--manifest", str(manifest), "--out",
                 str(out), "--ihc", str(tiny_cohort / "ihc.csv"), "--workers", "0",
                 "--bootstrap", "20", "--coverage", "0.5"])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "metrics.json").read_text())
    results = list((out / "predictions" / "slides").glob("*/result.json"))
    assert results and all(json.loads(r.read_text())["status"] == "ok" for r in results)
    assert (out / "predictions" / "report.html").exists()
    bank = tmp_path / "bank.h5"
    assert main(["-q", "export-tiles", "--manifest", str(manifest), "--out", str(bank),
                 "--model", str(model), "--per-slide", "8"]) == 0  # fmt: skip
    assert main(["-q", "evaluate", "--model", str(model), "--tiles", str(bank), "--out",
                 str(tmp_path / "bank_eval"), "--bootstrap", "0"]) == 0  # fmt: skip
    return doc


def test_a_binary_one_vs_rest_model_trains_predicts_and_evaluates(tiny_cohort, tmp_path):
    manifest = tiny_cohort / "manifest.csv"
    result = _train(manifest, tmp_path / "run", "--data.one_vs_rest=leiomyosarcoma")
    from models.checkpoint import read_meta

    meta = read_meta(result.model_path)
    assert meta.classes == ["leiomyosarcoma", "not_leiomyosarcoma"]
    assert meta.positive_class == "leiomyosarcoma" and meta.rest_class == "not_leiomyosarcoma"
    assert set(meta.label_map) == {"meningioma", "other_sarcoma"}
    assert "sensitivity_at_specificity_90" in result.metrics["val"]
    doc = _end_to_end(tiny_cohort, manifest, result.model_path, tmp_path)
    m = doc["levels"]["slide"]["metrics"]
    assert "sensitivity_at_specificity_95" in m and "auroc_macro" in m


def test_a_four_class_model_trains_predicts_and_evaluates(tiny_cohort, tmp_path):
    seen: dict[str, int] = {}
    plan = {  # per label, in slide order: (class, split)
        "leiomyosarcoma": [("leiomyosarcoma", s) for s in ("train", "val", "test")],
        "meningioma": [("meningioma", s) for s in ("train", "val", "test")],
        "other_sarcoma": [
            ("solitary_fibrous_tumor", "train"),
            ("other_sarcoma", "train"),
            ("other_sarcoma", "test"),
        ],
    }

    def relabel(row):
        i = seen[row["label"]] = seen.get(row["label"], -1) + 1
        return plan[row["label"]][i]

    manifest = _manifest(tiny_cohort, tmp_path / "four.csv", relabel)
    classes = "[leiomyosarcoma,meningioma,solitary_fibrous_tumor,other_sarcoma]"
    result = _train(manifest, tmp_path / "run", f"--data.classes={classes}")
    assert len(result.metrics["val"]) and result.metrics["ood"]["dim"] > 0
    doc = _end_to_end(tiny_cohort, manifest, result.model_path, tmp_path)
    assert doc["levels"]["slide"]["confusion_matrix"]["classes"][2] == "solitary_fibrous_tumor"


# -- tissue unlike the training data --------------------------------------------------------
def _ood_share(out: Path, slide_id: str) -> tuple[float, dict]:
    result = json.loads((out / "slides" / slide_id / "result.json").read_text())
    return result["qc"]["ood_fraction"], result["call"]


def test_real_images_are_unlike_a_synthetic_training_set(
    tiny_model, tiny_cohort, cmu_svs, tmp_path
):
    from skimage import data as skdata

    real = tmp_path / "real"
    real.mkdir()
    for name in ("astronaut.png", "rocket.jpg"):
        shutil.copy(Path(skdata.__file__).parent / name, real / name)
    osteo = sorted((SHARED / "data" / "tiles" / "osteosarcoma_ut" / "images").glob("*.jpg"))
    for path in osteo[::15]:
        shutil.copy(path, real / path.name)
    out = tmp_path / "out"
    main(["-q", "predict", str(real), "--model", str(tiny_model), "--out", str(out),
          "--slide-mpp", "1.0", "--workers", "0"])  # fmt: skip
    main(["-q", "predict", str(cmu_svs), "--model", str(tiny_model), "--out", str(out),
          "--workers", "0"])  # fmt: skip
    flagged = {}
    for folder in (out / "slides").iterdir():
        share, call = _ood_share(out, folder.name)
        flagged[folder.name] = share > CallConfig.load().max_ood_fraction
        if flagged[folder.name]:
            assert call["indeterminate"] and "unlike the training data" in " ".join(call["reasons"])
    assert flagged.pop("cmu_small_region"), "the real Aperio slide must be flagged"
    assert sum(flagged.values()) >= len(flagged) - 1, flagged
    held_out = [r for r in _rows(tiny_cohort / "manifest.csv") if r["split"] == "test"]
    main(["-q", "predict", "--manifest", str(tiny_cohort / "manifest.csv"), "--model",
          str(tiny_model), "--out", str(tmp_path / "synth"), "--workers", "0"])  # fmt: skip
    for r in held_out:
        share, _ = _ood_share(tmp_path / "synth", r["slide_id"])
        assert share <= CallConfig.load().max_ood_fraction, (r["slide_id"], share)
    assert not math.isnan(share)


@pytest.mark.parametrize("prior", ["dural_high_grade", "uniform", "dural_any"])
def test_published_cases_are_read_whole_and_never_confidently_wrong(prior):
    """The 41 published panels of docs/ (tuning and held-out): every one is read (no unknown
    marker, no error) and no call settles on a wrong entity; misses are indeterminate or open."""
    import csv
    from pathlib import Path

    kb, config = load_knowledge(), CallConfig.load()
    docs = Path(__file__).parent.parent / "docs"
    cases = [
        row
        for name in ("ihc_literature_cases.csv", "ihc_literature_cases_heldout.csv")
        for row in csv.DictReader((docs / name).read_text().splitlines())
    ]
    assert len(cases) >= 41
    for case in cases:
        panel = parse_panel(case["panel"], kb)
        assert not panel.unknown, case["case_id"]
        call = make_call(kb, config, panel, None, prior).call
        settled = not call.indeterminate and not call.entity_note
        assert not settled or call.entity == case["expected"], (case["case_id"], call.entity)
