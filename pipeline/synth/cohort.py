"""A synthetic cohort: slides, manifest, IHC panels, case truth and a contact sheet.

``DIR/slides/<slide_id>.tiff`` (pyramidal JPEG TIFF), ``DIR/manifest.csv`` (DESIGN manifest,
patient-grouped splits), ``DIR/ihc.csv`` (long form, sampled from the knowledge base for
each case's entity), ``DIR/cases.csv`` (entity and seed of every slide), ``DIR/cohort.json``
(parameters) and ``DIR/preview.png``. Same parameters → byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.core.atomic import write_text
from pipeline.core.batch import csv_text
from pipeline.core.errors import UsageError
from pipeline.ihc.knowledge import KnowledgeBase, load_knowledge
from pipeline.synth.layout import MAP_UM, make_layout
from pipeline.synth.morphology import morphology_for
from pipeline.synth.pyramid import write_pyramid
from pipeline.synth.render import SlideRenderer
from pipeline.synth.stain import Stain

CLASSES = ("leiomyosarcoma", "meningioma", "other_sarcoma")
ENTITY_CHOICES = {
    "leiomyosarcoma": ("leiomyosarcoma",),
    "meningioma": ("meningioma_g1_2", "meningioma_g3_anaplastic"),
    "other_sarcoma": (
        "solitary_fibrous_tumor",
        "synovial_sarcoma",
        "undiff_pleomorphic_sarcoma",
        "mpnst",
    ),
}
BASE_PANEL = ("desmin", "SMA", "EMA", "S100", "CD34")
EXTRA_MARKERS = {
    "h_caldesmon": 0.6,
    "STAT6_nuclear": 0.6,
    "SSTR2A": 0.5,
    "PR": 0.6,
    "vimentin": 0.5,
    "SOX10": 0.35,
    "calponin": 0.3,
    "myogenin": 0.25,
    "MyoD1_nuclear": 0.2,
    "CD31": 0.25,
    "ERG": 0.2,
    "GFAP": 0.3,
    "panCK_AE1AE3": 0.35,
    "TLE1": 0.2,
    "H3K27me3_loss": 0.2,
}
"""Markers beyond the base panel and how often each is ordered."""


@dataclass(frozen=True)
class CohortParams:
    n_slides: int = 12
    seed: int = 0
    classes: tuple[str, ...] = CLASSES
    slide_size_um: tuple[float, float] = (4000.0, 3000.0)
    mpp: float = 0.5
    difficulty: float = 0.5
    artefacts: bool = True
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in ENTITY_CHOICES]
        if unknown:
            raise UsageError(
                f"unknown class(es) {', '.join(unknown)}; choose from {', '.join(CLASSES)}"
            )
        if self.n_slides < len(self.classes):
            raise UsageError(
                f"--n-slides must be at least the number of classes ({len(self.classes)})"
            )
        if not 0 <= self.difficulty <= 1:
            raise UsageError(f"--difficulty must be within [0, 1], got {self.difficulty}")
        if min(self.slide_size_um) < 500 or not 0.1 <= self.mpp <= 4:
            raise UsageError("slides must be at least 500 µm a side, at 0.1-4 µm/px")


@dataclass(frozen=True)
class SlidePlan:
    """Everything needed to render one slide, independent of the others."""

    slide_id: str
    patient_id: str
    label: str
    entity: str
    split: str
    seed: int
    path: Path = field(compare=False)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def plan_cohort(params: CohortParams, out: Path) -> list[SlidePlan]:
    """Balanced classes, some two-slide patients, patient-grouped train/val/test splits."""
    rng = np.random.default_rng(_seed(params.seed, 1))
    by_class: dict[str, list[int]] = {c: [] for c in params.classes}
    for i in range(params.n_slides):
        by_class[params.classes[i % len(params.classes)]].append(i)
    plans: list[SlidePlan] = []
    patient = 0
    for label, slides in by_class.items():
        n_pairs = max(0, min(len(slides) // 4, len(slides) - 3))
        groups = [slides[2 * k : 2 * k + 2] for k in range(n_pairs)]
        groups += [[s] for s in slides[2 * n_pairs :]]
        order = rng.permutation(len(groups))
        n_test = max(1, int(len(groups) * 0.2)) if len(groups) >= 3 else 0
        n_val = max(1, int(len(groups) * 0.2)) if len(groups) >= 2 else 0  # train needs one
        choices = ENTITY_CHOICES[label]
        offset = int(rng.integers(len(choices)))
        for rank, g in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            entity = choices[(offset + int(g)) % len(choices)]
            patient_id = f"pt{patient:03d}"
            patient += 1
            for i in groups[g]:
                slide_id = f"syn{params.seed:03d}_{i:03d}"
                plans.append(
                    SlidePlan(
                        slide_id=slide_id,
                        patient_id=patient_id,
                        label=label,
                        entity=entity,
                        split=split,
                        seed=_seed(params.seed, 2, i),
                        path=out / "slides" / f"{slide_id}.tiff",
                    )
                )
    return sorted(plans, key=lambda p: p.slide_id)


def renderer_for(plan: SlidePlan, params: CohortParams) -> SlideRenderer:
    """The renderer of one planned slide (layout, stain, morphology), deterministic."""
    rng = np.random.default_rng(plan.seed)
    morph = morphology_for(plan.entity, params.difficulty)
    w_um, h_um = params.slide_size_um
    layout = make_layout(rng, w_um, h_um, morph, params.difficulty, params.artefacts)
    return SlideRenderer(layout, morph, Stain.random(rng), params.mpp, plan.seed)


def render_slide(plan: SlidePlan, params: CohortParams, overwrite: bool = False) -> dict:
    """Write one slide (skipped if it exists and not ``overwrite``); return a summary row."""
    if plan.path.exists() and not overwrite:
        return {"path": str(plan.path), "reused": True}
    renderer = renderer_for(plan, params)
    w_px = round(params.slide_size_um[0] / params.mpp)
    h_px = round(params.slide_size_um[1] / params.mpp)
    write_pyramid(
        plan.path,
        w_px,
        h_px,
        params.mpp,
        renderer.render,
        quality=params.jpeg_quality,
        description=f"fascicle synthetic slide {plan.slide_id}",
    )
    return {"path": str(plan.path), "reused": False}


def sample_ihc(plan: SlidePlan, kb: KnowledgeBase, rng: np.random.Generator) -> list[dict]:
    """A realistic panel for the plan's entity: base markers plus a random subset of extras."""
    markers = list(BASE_PANEL) + [m for m, p in EXTRA_MARKERS.items() if rng.random() < p]
    rows = []
    for marker in markers:
        loss = kb.markers[marker].loss_marker
        if rng.random() < 0.03:
            result, percent = "equivocal", ""
        elif rng.random() < kb.p(plan.entity, marker):
            focal = rng.random() < 0.25
            result = "lost" if loss else "focal" if focal else "positive"
            percent = int(rng.integers(5, 31) if focal else rng.integers(40, 101))
        else:
            result = "retained" if loss else "negative"
            percent = int(rng.integers(0, 5))
        if loss:
            percent = ""
        rows.append({"marker": kb.markers[marker].display, "result": result, "percent": percent})
    return rows


def representative_tile(plan: SlidePlan, params: CohortParams, size_px: int = 384) -> np.ndarray:
    """A tumour-only region of the slide at its native resolution, for the contact sheet."""
    renderer = renderer_for(plan, params)
    lay = renderer.layout
    tumour = (lay.tissue > 0.95) & (lay.stroma + lay.necrosis + lay.haemorrhage < 0.05)
    for x0, y0, x1, y1, r in lay.vessels:  # keep vessels out of the picture
        for vx, vy in ((x0, y0), (x1, y1)):
            i, j = int(vy / MAP_UM), int(vx / MAP_UM)
            k = int(r / MAP_UM) + 2
            tumour[max(0, i - k) : i + k + 1, max(0, j - k) : j + k + 1] = False
    depth = ndimage.distance_transform_edt(tumour if tumour.any() else lay.tissue > 0.5)
    i, j = np.unravel_index(int(np.argmax(depth)), depth.shape)
    scale = MAP_UM / params.mpp
    x = max(0, int((j + 0.5) * scale) - size_px // 2)
    y = max(0, int((i + 0.5) * scale) - size_px // 2)
    return renderer.render(x, y, size_px, size_px)


def contact_sheet(plans: list[SlidePlan], params: CohortParams) -> np.ndarray:
    """One representative tile per class, then every slide's thumbnail with its label."""
    from PIL import Image, ImageDraw

    from pipeline.wsi.slide import Slide

    font_h = 14
    tiles = []
    for label in params.classes:
        plan = next(p for p in plans if p.label == label)
        tiles.append((f"{label} ({plan.entity})", representative_tile(plan, params)))
    thumbs = []
    for plan in plans:
        with Slide(plan.path) as slide:
            thumb, _ = slide.thumbnail(mpp=max(16.0, params.slide_size_um[0] / 240))
        thumbs.append((f"{plan.slide_id} {plan.label} [{plan.split}]", thumb))
    tile_w = tiles[0][1].shape[1]
    width = max(len(tiles) * (tile_w + 10), 4 * 250) + 10
    th_w = max(t.shape[1] for _, t in thumbs)
    th_h = max(t.shape[0] for _, t in thumbs)
    per_row = max(1, (width - 10) // (th_w + 10))
    rows = -(-len(thumbs) // per_row)
    height = 10 + tiles[0][1].shape[0] + font_h + 20 + rows * (th_h + font_h + 10)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (text, tile) in enumerate(tiles):
        x = 10 + i * (tile_w + 10)
        sheet.paste(Image.fromarray(tile), (x, 10))
        draw.text((x, 12 + tile.shape[0]), text, fill=(0, 0, 0))
    top = 30 + tiles[0][1].shape[0] + font_h
    for i, (text, thumb) in enumerate(thumbs):
        x = 10 + (i % per_row) * (th_w + 10)
        y = top + (i // per_row) * (th_h + font_h + 10)
        sheet.paste(Image.fromarray(thumb), (x, y))
        draw.text((x, y + thumb.shape[0] + 1), text, fill=(0, 0, 0))
    return np.asarray(sheet)


def _check_existing(out: Path, params: CohortParams, overwrite: bool) -> None:
    meta = out / "cohort.json"
    if meta.exists() and not overwrite:
        previous = json.loads(meta.read_text()).get("params")
        if previous != json.loads(json.dumps(asdict(params))):
            raise UsageError(
                f"{out} holds a cohort made with other parameters ({meta}); "
                "choose another --out or pass --overwrite"
            )


def make_cohort(
    out: str | Path,
    params: CohortParams = CohortParams(),
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    knowledge: KnowledgeBase | None = None,
) -> list[SlidePlan]:
    """Generate a cohort into ``out``; finished slides are kept on rerun unless ``overwrite``."""
    from pipeline.core.atomic import write_png
    from pipeline.core.batch import run_slides

    out = Path(out)
    _check_existing(out, params, overwrite)
    kb = knowledge or load_knowledge()
    plans = plan_cohort(params, out)
    write_text(out / "cohort.json", json.dumps({"params": asdict(params)}, indent=2) + "\n")
    rows = run_slides(
        render_slide,
        plans,
        workers=workers,
        progress=progress,
        desc="synth",
        params=params,
        overwrite=overwrite,
    )
    failed = [r for r in rows if r["status"] == "error"]
    if failed:
        raise UsageError("could not write slides:\n" + "\n".join(r["error"] for r in failed))
    manifest = [
        {
            "slide_id": p.slide_id,
            "path": f"slides/{p.path.name}",
            "label": p.label,
            "patient_id": p.patient_id,
            "split": p.split,
        }
        for p in plans
    ]
    write_text(
        out / "manifest.csv",
        csv_text(manifest, ["slide_id", "path", "label", "patient_id", "split"]),
    )
    ihc_rows: list[dict] = []
    panels: dict[str, list[dict]] = {}
    for p in plans:  # one IHC work-up per patient, reported for each of its slides
        if p.patient_id not in panels:
            rng = np.random.default_rng(_seed(params.seed, 3, int(p.patient_id[2:])))
            panels[p.patient_id] = sample_ihc(p, kb, rng)
        ihc_rows += [{"slide_id": p.slide_id, **row} for row in panels[p.patient_id]]
    write_text(out / "ihc.csv", csv_text(ihc_rows, ["slide_id", "marker", "result", "percent"]))
    cases = [
        {
            "slide_id": p.slide_id,
            "patient_id": p.patient_id,
            "label": p.label,
            "entity": p.entity,
            "split": p.split,
            "seed": p.seed,
        }
        for p in plans
    ]
    columns = ["slide_id", "patient_id", "label", "entity", "split", "seed"]
    write_text(out / "cases.csv", csv_text(cases, columns))
    write_png(out / "preview.png", contact_sheet(plans, params))
    return plans
