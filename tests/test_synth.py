import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.errors import UsageError
from pipeline.ihc.knowledge import load_knowledge
from pipeline.synth.cohort import (
    BASE_PANEL,
    ENTITY_CHOICES,
    CohortParams,
    make_cohort,
    plan_cohort,
    renderer_for,
    sample_ihc,
)
from pipeline.synth.layout import MAP_UM, make_layout
from pipeline.synth.morphology import ENTITIES, morphology_for
from pipeline.synth.pyramid import write_pyramid
from pipeline.synth.render import SlideRenderer
from pipeline.synth.stain import Stain
from pipeline.wsi.manifest import read_manifest
from pipeline.wsi.slide import Slide
from pipeline.wsi.tiling import TilingParams, tile_slide

SMALL = CohortParams(n_slides=3, seed=4, slide_size_um=(1200.0, 900.0), mpp=0.5)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    make_cohort(out, SMALL, progress=False)
    return out


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(small_cohort, tmp_path):
    again = tmp_path / "again"
    make_cohort(again, SMALL, workers=2, progress=False)  # parallel must not change bytes
    assert _digest(small_cohort) == _digest(again)
    other = tmp_path / "other"
    make_cohort(other, CohortParams(**{**SMALL.__dict__, "seed": 5}), progress=False)
    a, b = _digest(small_cohort), _digest(other)
    assert not set(a.values()) & set(b.values())


def test_slides_open_with_openslide_at_the_right_resolution(small_cohort):
    for path in sorted((small_cohort / "slides").glob("*.tiff")):
        with Slide(path, backend="openslide") as slide:
            assert slide.dimensions == (2400, 1800)
            assert slide.mpp == pytest.approx(0.5)
            assert slide.resolution.source == "openslide"
            assert slide.level_downsamples == (1.0, 4.0)
            region = slide.read_region(1000, 800, 0, 64, 64)
            assert region.std() > 5  # rendered content, not a blank page


def test_manifest_and_ihc_follow_the_contracts(small_cohort):
    entries = read_manifest(small_cohort / "manifest.csv", labels=ENTITY_CHOICES)
    assert sorted(e.label for e in entries) == sorted(ENTITY_CHOICES)
    kb = load_knowledge()
    with open(small_cohort / "ihc.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"slide_id", "marker", "result", "percent"}
    allowed = {"positive", "negative", "focal", "equivocal", "lost", "retained"}
    for row in rows:
        assert kb.resolve_marker(row["marker"]) is not None
        assert row["result"] in allowed
    for entry in entries:
        markers = {kb.resolve_marker(r["marker"]) for r in rows if r["slide_id"] == entry.slide_id}
        assert set(BASE_PANEL) <= markers
    assert (small_cohort / "preview.png").stat().st_size > 10_000


def test_plan_balances_classes_groups_patients_and_never_splits_a_patient():
    plans = plan_cohort(CohortParams(n_slides=30, seed=2), Path("cohort"))
    labels = [p.label for p in plans]
    assert {labels.count(c) for c in ENTITY_CHOICES} == {10}
    by_patient: dict[str, set[str]] = {}
    for p in plans:
        by_patient.setdefault(p.patient_id, set()).add(p.split)
    assert all(len(s) == 1 for s in by_patient.values())
    sizes = [sum(p.patient_id == pid for p in plans) for pid in by_patient]
    assert 2 in sizes and 1 in sizes
    for c in ENTITY_CHOICES:
        splits = {p.split for p in plans if p.label == c}
        assert splits == {"train", "val", "test"}
        assert {p.entity for p in plans if p.label == c} <= set(ENTITY_CHOICES[c])
    assert len({p.entity for p in plans if p.label == "other_sarcoma"}) >= 3


def test_ihc_sampling_follows_the_knowledge_base():
    kb = load_knowledge()
    plan = plan_cohort(CohortParams(seed=1), Path("cohort"))[0]
    rng = np.random.default_rng(0)
    calls = {"desmin": [], "EMA": []}
    for _ in range(1500):
        for row in sample_ihc(plan, kb, rng):
            key = kb.resolve_marker(row["marker"])
            if key in calls and row["result"] != "equivocal":
                calls[key].append(row["result"] in ("positive", "focal"))
    for marker, seen in calls.items():
        assert np.mean(seen) == pytest.approx(kb.p(plan.entity, marker), abs=0.05)


def test_bad_parameters_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown class"):
        CohortParams(classes=("leiomyosarcoma", "glioma"))
    with pytest.raises(UsageError, match="difficulty"):
        CohortParams(difficulty=2)
    make_cohort(
        tmp_path, CohortParams(n_slides=3, slide_size_um=(600.0, 500.0), mpp=2.0), progress=False
    )
    with pytest.raises(UsageError, match="other parameters"):
        make_cohort(tmp_path, CohortParams(n_slides=4, slide_size_um=(600.0, 500.0), mpp=2.0))


def test_regions_render_the_same_whatever_the_tiling():
    m = morphology_for("leiomyosarcoma", 0.5)
    layout = make_layout(np.random.default_rng(3), 1500, 1200, m, 0.5)
    renderer = SlideRenderer(layout, m, Stain.random(np.random.default_rng(4)), 0.5, 9)
    whole = renderer.render(1000, 1000, 300, 200)
    parts = np.concatenate(
        [renderer.render(1000, 1000, 300, 77), renderer.render(1000, 1077, 300, 123)], axis=0
    )
    np.testing.assert_array_equal(whole, parts)


def test_tissue_detection_finds_pieces_and_ignores_the_pen(tmp_path):
    m = morphology_for("meningioma_g1_2", 0.5)
    rng = np.random.default_rng(11)
    layout = make_layout(rng, 3000, 2200, m, 0.5, artefacts={"pen": 1.0})
    assert layout.ink.max() > 0.9
    renderer = SlideRenderer(layout, m, Stain.random(rng), 1.0, 11)
    path = tmp_path / "pen.tiff"
    write_pyramid(path, 3000, 2200, 1.0, renderer.render)
    with Slide(path) as slide:
        tiles = tile_slide(slide, TilingParams(target_mpp=1.0, tile_px=64))
    mask = tiles.mask.mask  # 8 µm/px, the layout's grid
    truth = layout.tissue[: mask.shape[0], : mask.shape[1]] > 0.5
    ink = layout.ink[: mask.shape[0], : mask.shape[1]] > 0.5
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.85
    assert (mask & ndimage.binary_erosion(ink)).sum() < 0.02 * ink.sum()
    n_truth = ndimage.label(truth)[1]
    assert ndimage.label(mask)[1] == pytest.approx(n_truth, abs=1)


def _texture_features(tile: np.ndarray) -> list[float]:
    """Orientation coherence and dark-blob shape statistics (no colour)."""
    from skimage import measure

    g = tile.astype(np.float32).mean(2)
    gx, gy = ndimage.sobel(g, 1), ndimage.sobel(g, 0)
    jxx, jyy, jxy = (ndimage.gaussian_filter(v, 4) for v in (gx * gx, gy * gy, gx * gy))
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-6)
    blobs = [p for p in measure.regionprops(measure.label(g < np.percentile(g, 25))) if p.area > 8]
    ecc = [p.eccentricity for p in blobs] or [0.0]
    area = [p.area for p in blobs] or [0.0]
    return [
        coherence.mean(),
        np.percentile(coherence, 75),
        np.mean(ecc),
        np.median(area),
        np.std(area) / (np.mean(area) + 1),
        len(area),
    ]


def _colour_features(tile: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.histogram(tile[..., c], 8, (0, 256))[0] / tile[..., 0].size for c in range(3)]
    )


@pytest.mark.slow
def test_classes_differ_in_morphology_not_in_colour():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    params = CohortParams(n_slides=24, seed=5)
    plans = plan_cohort(params, Path("cohort"))
    rng = np.random.default_rng(0)
    tiles = {}
    for plan in plans:
        renderer = renderer_for(plan, params)
        ys, xs = np.nonzero(renderer.layout.tissue > 0.9)
        picks = rng.choice(len(ys), 10, replace=False)
        scale = MAP_UM / params.mpp
        tiles[plan.slide_id] = [
            renderer.render(int(xs[k] * scale), int(ys[k] * scale), 128, 128) for k in picks
        ]
    train = [p for p in plans if p.split != "test"]
    test = [p for p in plans if p.split == "test"]
    scores = {}
    for name, features in (("texture", _texture_features), ("colour", _colour_features)):

        def xy(group, features=features):
            x = [features(t) for p in group for t in tiles[p.slide_id]]
            return np.array(x), [p.label for p in group for _ in tiles[p.slide_id]]

        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(*xy(train))
        scores[name] = model.score(*xy(test))
    assert scores["texture"] > 0.6, scores  # chance is 1/3
    assert scores["colour"] < 0.5, scores


def test_every_entity_renders():
    for entity in ENTITIES:
        m = morphology_for(entity, 0.5)
        layout = make_layout(np.random.default_rng(0), 800, 600, m, 0.5, artefacts=False)
        tile = SlideRenderer(layout, m, Stain.random(np.random.default_rng(1)), 0.5, 0).render(
            600, 500, 128, 128
        )
        assert tile.shape == (128, 128, 3) and tile.dtype == np.uint8
