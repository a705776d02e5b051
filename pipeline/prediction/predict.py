"""``fascicle predict``: batch inference over slides, one folder of results per slide.

For each slide (opened once): tile at the model's resolution (reusing coordinates from an
earlier ``fascicle tile`` when the parameters match), stream tiles through the model with
the inference runner, let the model pool them (MIL) or aggregate, calibrate, make the call
with the slide's IHC, and write ``slides/<slide_id>/`` (``tiles.csv``, ``tiles.geojson``,
``heatmap.png``, then ``result.json`` last, every file atomically). Slides run through the
batch runner: one that fails gets a ``result.json`` with status ``error`` and the batch goes
on. Finished slides are skipped on rerun unless ``overwrite``; a lock file keeps two
processes off the same slide.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.core.atomic import clean_stale_temps, writable_folder
from pipeline.core.batch import run_slides
from pipeline.core.errors import FascicleError, SlideBusyError
from pipeline.ihc.results import Panel
from pipeline.prediction.call import make_call
from pipeline.prediction.locks import SlideLock
from pipeline.prediction.result import (
    CallDoc,
    IHCDoc,
    ImageDoc,
    Provenance,
    QCDoc,
    SlideResult,
    slide_folder,
    write_result,
)
from pipeline.prediction.session import (
    LoadedModel,
    PredictOptions,
    is_done,
    load_for_prediction,
    ood_tiles,
    params_hash,
    pre_call_reasons,
    qc_flags,
    shard,
)
from pipeline.wsi.manifest import SlideEntry


# -- one slide ------------------------------------------------------------------------------
def _tiles(entry: SlideEntry, slide, loaded: LoadedModel, options: PredictOptions, out: Path):
    """Coordinates and attributes of the slide's tiles at the model's resolution, and the
    folder they came from."""
    from pipeline.wsi.tile_run import is_finished, tile_entry
    from pipeline.wsi.tiling import TilingParams, load_tiles

    m = loaded.meta
    params = TilingParams(target_mpp=m.target_mpp, tile_px=m.tile_px, min_tissue=m.min_tissue)
    source = Path(options.tiles_dir) if options.tiles_dir else None
    if source is None or not is_finished(entry, source, params, None):
        source = out / "tiles"
        tile_entry(entry, source, params, overwrite=False, slide=slide)
    coords, attrs = load_tiles(source / "tiles" / f"{entry.slide_id}.h5")
    return coords, attrs, params, source


def _model_outputs(entry, coords, spec, loaded: LoadedModel, options: PredictOptions, timings):
    """The model's ``SlideOutput`` for the slide's tiles, through the inference runner."""
    from pipeline.tiles.augment import AugmentConfig, build_transform
    from pipeline.tiles.dataset import SlideTiles, TileDataset, all_items
    from pipeline.tiles.runner import run_tiles

    m, model, engine = loaded.meta, loaded.model, loaded.engine
    slides = [SlideTiles(entry, -1, "test", coords, spec)]
    transform = build_transform(AugmentConfig(), m.mean, m.std, train=False, macenko=m.macenko)
    dataset = TileDataset(slides, all_items(slides, [0]), transform)
    plain = None if m.macenko else (m.mean, m.std)
    run = run_tiles(
        model.forward_tiles, dataset, model.slide_inputs, options.batch_size, engine, plain
    )
    timings["read_decode"] = run.read_s
    if not run.readable.any():
        raise FascicleError(f"{entry.path}: no tile could be read")
    if not run.readable.all():
        raise FascicleError(f"{entry.path}: some tiles could not be read; the slide is damaged")
    t = time.perf_counter()
    output = model.forward_slide(run.outputs)
    timings["model"] = run.model_s + time.perf_counter() - t
    return output, run.decoded_on


def predict_slide(
    entry: SlideEntry, loaded: LoadedModel, options: PredictOptions, out: Path, panel: Panel | None
) -> SlideResult:
    """Predict one slide and write its folder; returns the result document."""
    from pipeline.prediction.outputs import heatmap_thumbnail, write_slide_outputs
    from pipeline.tiles.aggregate import aggregate, apply_temperature
    from pipeline.wsi.slide import Slide
    from pipeline.wsi.tiling import TileSpec

    m, config = loaded.meta, loaded.call_config
    ihc_text = panel.describe() if panel else ""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with Slide(entry.path, mpp=entry.mpp) as slide:
        coords, attrs, params, source = _tiles(entry, slide, loaded, options, out)
        timings["tile"] = time.perf_counter() - started
        bounds, thumbnail = slide.bounds, heatmap_thumbnail(slide)
    spec = TileSpec.from_attrs(attrs)
    if len(coords) == 0:
        raise FascicleError(f"{entry.path}: no tissue tiles at {spec.target_mpp} µm/px")
    output, decoded_on = _model_outputs(entry, coords, spec, loaded, options, timings)
    t = time.perf_counter()
    aggregator = m.aggregator if m.pools_tiles else config.aggregator_for(m.aggregator)
    slide_probs = output.slide_probs
    if slide_probs is None:
        slide_probs = aggregate(
            output.tile_probs, aggregator, config.top_k_fraction, config.quantile
        )
    slide_probs = apply_temperature(slide_probs, float(m.temperature))
    image = dict(zip(m.classes, map(float, slide_probs), strict=True))
    evidence = loaded.image_evidence(image)
    ood = ood_tiles(output.ood, m)
    ood_share = None if ood is None else float(ood.mean())
    reasons, chosen = pre_call_reasons(evidence, ood_share, loaded, options)
    made = make_call(loaded.kb, config, panel, evidence, options.prior, len(coords), reasons)
    summary = made.summary()
    timings["aggregate"] = time.perf_counter() - t
    result = SlideResult(
        slide_id=entry.slide_id,
        path=str(entry.path),
        status="ok",
        call=CallDoc(
            **summary["call"],
            prediction_set=chosen,
            coverage=options.coverage,
            entity_name=loaded.kb.entity_names.get(made.call.entity, made.call.entity),
        ),
        image=ImageDoc(image, aggregator, m.temperature, m.classes, m.kind),
        differential=summary if made.has_ihc else None,
        ihc=IHCDoc(
            ihc_text,
            list(panel.warnings) if panel else [],
            list(panel.unknown) if panel else [],
            panel.raw if panel else "",
            list(panel.noted) if panel else [],
            panel.usage() if panel else "",
        ),
        qc=QCDoc(
            mpp=float(attrs["slide_mpp"]),
            mpp_source=str(attrs["mpp_source"]),
            tissue_mm2=float(attrs["tissue_mm2"]),
            n_tiles=len(coords),
            backend=str(attrs.get("backend", "")),
            flags=qc_flags(attrs, len(coords), config),
            ood_fraction=ood_share,
        ),
        provenance=Provenance(
            package_version=__version__,
            params_hash=params_hash(loaded, options, ihc_text),
            model_path=str(loaded.path),
            model_sha256=loaded.sha256,
            model_package_version=m.package_version,
            tiling={
                "target_mpp": spec.target_mpp,
                "tile_px": spec.tile_px,
                "level": spec.level,
                "patch_size": spec.patch_size,
                "min_tissue": params.min_tissue,
                "coords": _relative(source / "tiles" / f"{entry.slide_id}.h5", out),
            },
            timings_s=timings,
            engine={**loaded.engine.doc(), "decoded": decoded_on},
        ),
    )
    t = time.perf_counter()
    write_slide_outputs(
        slide_folder(out, entry.slide_id),
        coords,
        spec.patch_size_level0,
        output.tile_probs,
        output.attention,
        m.classes,
        bounds,
        thumbnail,
        source / "qc" / f"{entry.slide_id}.png",
        ood,
    )
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    write_result(out, result)
    return result


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the output folder when inside it (results move with the folder)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# -- many slides ----------------------------------------------------------------------------
def _predict_job(
    entry: SlideEntry, loaded: LoadedModel, options: PredictOptions, out: Path, panels: dict
) -> dict:
    lock = SlideLock(slide_folder(out, entry.slide_id))
    if options.wait and not options.overwrite:
        lock.wait()
        if is_done(out, entry.slide_id, params_hash(loaded, options, _panel_text(panels, entry))):
            return {"call": "done by another process"}
    if not lock.acquire(force=options.overwrite):
        raise SlideBusyError(
            f"{entry.path}: being predicted by another process ({lock.holder()}, lock "
            f"{lock.path}); rerun when it has finished, or pass --wait"
        )
    try:
        result = predict_slide(entry, loaded, options, out, panels.get(entry.slide_id))
        return {"call": result.call.label}
    finally:
        lock.release()


def predict_slides(
    entries: Sequence[SlideEntry],
    model_path: str | Path,
    out: str | Path,
    options: PredictOptions,
    ihc_csv: str | Path | None = None,
    finalize: bool = True,
) -> list[dict]:
    """Predict every entry into ``out``; returns the summary rows (errors included).

    ``summary.csv`` and ``report.html`` cover every result under ``out`` (all shards)."""
    from pipeline.ihc.tables import read_ihc_csv
    from pipeline.prediction.report import write_report, write_summary_csv

    out = Path(out)
    loaded = load_for_prediction(model_path, options)
    panels = read_ihc_csv(ihc_csv, loaded.kb) if ihc_csv else {}
    ids = {e.slide_id for e in entries}
    stray = sorted(s for s in panels if s not in ids)
    warnings = [f"IHC rows for {len(stray)} slide(s) not in this batch: {', '.join(stray)}"]
    warnings = warnings if stray else []
    writable_folder(out)
    clean_stale_temps(out)
    digests = {e.slide_id: params_hash(loaded, options, _panel_text(panels, e)) for e in entries}
    todo = [
        e for e in entries if options.overwrite or not is_done(out, e.slide_id, digests[e.slide_id])
    ]

    locked: dict[str, str] = {}

    def on_row(entry: SlideEntry, row: dict) -> None:
        if row["status"] == "not_done":
            locked[entry.slide_id] = row["error"]
        elif row["status"] == "error":
            failed = SlideResult.failed(
                entry.slide_id, str(entry.path), row["error"], digests[entry.slide_id]
            )
            write_result(out, failed)

    # in this process (the model is loaded once); tiles are read by the engine's threads
    run_slides(
        _predict_job,
        todo,
        workers=1,
        progress=options.progress,
        desc="predict",
        on_row=on_row,
        loaded=loaded,
        options=options,
        out=out,
        panels=panels,
    )
    if not finalize:
        return []
    rows = write_summary_csv(out, locked)
    write_report(out, loaded.path, loaded.sha256, loaded.meta, warnings)
    return rows


def _panel_text(panels: dict, entry: SlideEntry) -> str:
    panel = panels.get(entry.slide_id)
    return panel.describe() if panel else ""


def _device_worker(args: tuple) -> None:
    entries, model_path, out, options, ihc_csv = args
    predict_slides(entries, model_path, out, options, ihc_csv, finalize=False)


def predict_on_devices(
    entries: Sequence[SlideEntry],
    model_path: str | Path,
    out: str | Path,
    options: PredictOptions,
    devices: int,
    ihc_csv: str | Path | None = None,
) -> list[dict]:
    """One process per device, each taking a disjoint share of the slides (like ``--shard``
    ranks); the summary and report are merged at the end."""
    import multiprocessing
    from dataclasses import replace

    from pipeline.prediction.report import write_report, write_summary_csv

    loaded = load_for_prediction(model_path, options)  # fail early, before any process
    base = loaded.engine.device
    jobs = [
        (
            shard(entries, rank, devices),
            model_path,
            out,
            replace(
                options, device=f"cuda:{rank}" if base.startswith("cuda") else base, progress=False
            ),
            ihc_csv,
        )
        for rank in range(devices)
    ]
    with multiprocessing.get_context("spawn").Pool(devices) as pool:
        pool.map(_device_worker, jobs)
    rows = write_summary_csv(Path(out))
    write_report(Path(out), loaded.path, loaded.sha256, loaded.meta, [])
    return rows
