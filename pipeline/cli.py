"""The ``fascicle`` command line: a thin layer over the Python API.

Exit codes: 0 all done; 1 some inputs failed (the rest were processed, failures listed);
2 bad usage or configuration (nothing processed). Heavy libraries are imported per verb so
the command starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import FascicleError, UsageError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_tile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tile",
        help="find tissue and write tile coordinates + QC images",
        description="Tile slides at a physical resolution over tissue only.",
    )
    p.add_argument("slides", nargs="*", type=Path, help="slide files (or use --manifest)")
    p.add_argument("--manifest", type=Path, help="CSV with slide_id,path[,mpp,...]")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mpp", type=_positive_float, default=0.5, help="target µm/px (0.5)")
    p.add_argument("--tile-px", type=int, default=224, help="tile side in pixels (224)")
    p.add_argument("--overlap", type=int, default=0, help="overlap in target pixels (0)")
    p.add_argument("--min-tissue", type=_fraction, default=0.5, help="tissue fraction (0.5)")
    p.add_argument("--slide-mpp", type=_positive_float, help="override the slides' µm/px")
    p.add_argument("--tissue-mask", type=Path, help="mask PNG/GeoJSON, or a folder of them")
    p.add_argument("--mask-mode", choices=("replace", "restrict"), default="replace")
    p.add_argument("--fill-holes", action="store_true", help="fill holes in tissue")
    p.add_argument("--workers", type=int, default=1, help="parallel slide workers (1)")
    p.add_argument("--backend", choices=("auto", "openslide", "tifffile"), default="auto")
    p.add_argument("--overwrite", action="store_true", help="redo finished slides")
    p.set_defaults(run=_run_tile)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from .synth.cohort import CLASSES

    p = sub.add_parser(
        "synth",
        help="generate a synthetic cohort (slides, manifest, IHC)",
        description="Render a synthetic cohort of spindle-cell tumour slides with IHC panels.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n-slides", type=int, default=12, help="number of slides (12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--classes", nargs="+", default=list(CLASSES), help="image classes")
    p.add_argument(
        "--slide-size-um", type=float, nargs=2, default=(4000.0, 3000.0), metavar=("W", "H")
    )
    p.add_argument("--mpp", type=_positive_float, default=0.5, help="µm/px of level 0 (0.5)")
    p.add_argument("--difficulty", type=_fraction, default=0.5, help="0 easy .. 1 hard (0.5)")
    p.add_argument("--no-artefacts", action="store_true", help="no pen, fold or bubble")
    p.add_argument("--workers", type=int, default=1, help="parallel slide workers (1)")
    p.add_argument("--overwrite", action="store_true", help="regenerate existing slides")
    p.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from .synth.cohort import CohortParams, make_cohort

    params = CohortParams(
        n_slides=args.n_slides,
        seed=args.seed,
        classes=tuple(args.classes),
        slide_size_um=tuple(args.slide_size_um),
        mpp=args.mpp,
        difficulty=args.difficulty,
        artefacts=not args.no_artefacts,
    )
    plans = make_cohort(
        args.out, params, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet
    )
    print(f"{len(plans)} slides in {args.out / 'slides'}")
    for name in ("manifest.csv", "ihc.csv", "cases.csv", "preview.png"):
        print(f"  {args.out / name}")
    return EXIT_OK


def _add_ihc(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ihc",
        help="ranked differential from an IHC panel (and image probabilities)",
        description="Fuse an IHC panel with optional image probabilities into a differential.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--panel", help='e.g. "desmin+ h-caldesmon+ SMA- STAT6 focal"')
    source.add_argument("--ihc", type=Path, help="IHC CSV (long or wide); with --slide")
    p.add_argument("--slide", help="slide_id whose panel to read from --ihc")
    p.add_argument("--image-probs", help="class=p,... e.g. leiomyosarcoma=0.5,meningioma=0.5")
    p.add_argument("--prior", help="named prior from the knowledge base (default: its default)")
    p.add_argument("--knowledge", type=Path, help="knowledge base YAML (default: configs/ihc)")
    p.add_argument("--calls", type=Path, help="call thresholds YAML (default: configs/calls.yaml)")
    p.add_argument("--top", type=int, default=5, help="entities and stains to list (5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run_ihc)


def _parse_probs(text: str) -> dict[str, float]:
    probs = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            probs[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--image-probs: {item!r} is not class=probability") from None
        if not sep or not 0 <= probs[name.strip()] <= 1:
            raise UsageError(f"--image-probs: {item!r} is not class=probability in [0, 1]")
    return probs


def _run_ihc(args: argparse.Namespace) -> int:
    import json

    from .aggregate import CallConfig, decide
    from .differential import format_summary, fuse, next_stains, summarise
    from .ihc import parse_panel, read_ihc_csv
    from .knowledge import load_knowledge

    kb = load_knowledge(args.knowledge)
    config = CallConfig.load(args.calls)
    if args.panel is not None:
        panel = parse_panel(args.panel, kb)
    else:
        panels = read_ihc_csv(args.ihc, kb)
        if args.slide not in panels:
            known = ", ".join(sorted(panels)[:10])
            raise UsageError(f"{args.ihc}: no rows for slide {args.slide!r} (slides: {known}...)")
        panel = panels[args.slide]
    image = _parse_probs(args.image_probs) if args.image_probs else None
    options = {"prior": args.prior, "kb": kb, "image_floor": config.image_prob_floor}
    diff = fuse(panel, image, **options)
    ihc_only = fuse(panel, None, **options)
    call = decide(diff, config, image_probs=image, ihc_only=ihc_only)
    stains = next_stains(diff, top=args.top)
    summary = summarise(diff, stains, call, top=args.top)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK


def _add_config_verb(
    sub: argparse._SubParsersAction, name: str, run, help_: str, example: str
) -> None:
    """A verb driven by a YAML experiment config plus --section.key=value overrides."""
    p = sub.add_parser(
        name, help=help_, description=f"{help_}; override keys with --section.key=value."
    )
    p.add_argument("--config", type=Path, required=True, help=f"e.g. {example}")
    p.set_defaults(run=run, overrides_allowed=True)


def _quiet_lightning(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(level)


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import train

    _quiet_lightning(args.verbose)
    config = load_config(args.config, args.overrides)
    result = train(config, progress=not args.quiet)
    if result is not None:
        val = result.metrics["val"]
        print(f"model: {result.model_path}")
        print(
            f"validation ({result.metrics['val_slides']} slides): slide balanced accuracy "
            f"{val['balanced_accuracy']:.3f}, macro AUROC {val['auroc_macro']:.3f}"
        )
    return EXIT_OK


def _run_embed(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import prepare_slides
    from .embed import build_encoder, embed_slides

    config = load_config(args.config, args.overrides)
    run_dir = Path(config.out)
    slides = prepare_slides(config, run_dir, progress=not args.quiet)
    out = Path(config.model.features_dir) if config.model.features_dir else run_dir / "features"
    paths = embed_slides(config, slides, out, build_encoder(config), progress=not args.quiet)
    print(f"{len(paths)} slide(s) embedded in {out}")
    return EXIT_OK


SLIDE_SUFFIXES = {
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
}


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="batch inference: calls, heatmaps, QuPath overlays and a report",
        description="Predict slides with a trained model, fused with their IHC if given.",
    )
    p.add_argument("slides", nargs="*", type=Path, help="slide files or folders (or --manifest)")
    p.add_argument("--manifest", type=Path, help="CSV with slide_id,path[,mpp,...]")
    p.add_argument("--model", type=Path, required=True, help="model.ckpt from fascicle train")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--ihc", type=Path, help="IHC CSV (long or wide) keyed by slide_id")
    p.add_argument("--prior", help="named prior of the knowledge base")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (2)")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per batch (64)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--devices", type=int, default=1, help="processes, one per device (1)")
    p.add_argument("--shard", default="0/1", help="I/N: this job's share (for array jobs)")
    p.add_argument("--tiles-dir", type=Path, help="reuse coordinates of an earlier fascicle tile")
    p.add_argument("--slide-mpp", type=_positive_float, help="override the slides' µm/px")
    p.add_argument("--overwrite", action="store_true", help="redo finished slides")
    p.set_defaults(run=_run_predict)


def _expand_dirs(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
        else:
            out.append(path)
    return out


def _run_predict(args: argparse.Namespace) -> int:
    from .predict import PredictOptions, predict_on_devices, predict_slides, shard

    args.slides = _expand_dirs(args.slides)
    entries = _slide_entries(args)
    try:
        index, count = (int(v) for v in args.shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard {args.shard!r} must look like 0/4") from None
    entries = shard(entries, index, count)
    options = PredictOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        prior=args.prior,
        tiles_dir=str(args.tiles_dir) if args.tiles_dir else None,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if args.devices > 1:
        rows = predict_on_devices(entries, args.model, args.out, options, args.devices, args.ihc)
    else:
        rows = predict_slides(entries, args.model, args.out, options, args.ihc)
    mine = {e.slide_id for e in entries}
    rows = [r for r in rows if r["slide_id"] in mine]
    print(f"report: {args.out / 'report.html'}")
    return _report(rows, args.out / "summary.csv")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics with bootstrap CIs on held-out slides or a tile bank; a CI gate",
        description="Evaluate a model; exit 1 when a metric is below its gate.",
    )
    p.add_argument("--model", type=Path, required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="held-out slides (split column)")
    source.add_argument("--tiles", type=Path, help="tile bank .h5 from fascicle export-tiles")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="test", help="manifest split to evaluate (test)")
    p.add_argument("--ihc", type=Path, help="IHC CSV, fused into the calls")
    p.add_argument("--min-balanced-accuracy", type=_fraction)
    p.add_argument("--min-auroc", type=_fraction)
    p.add_argument("--bootstrap", type=int, default=1000, help="patient resamples (1000; 0: none)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import Gate, run_evaluation

    doc, failures = run_evaluation(
        args.model,
        args.out,
        Gate(args.min_balanced_accuracy, args.min_auroc),
        args.manifest,
        args.tiles,
        args.split,
        args.bootstrap,
        args.ihc,
        args.workers,
        args.device,
        progress=not args.quiet,
    )
    for level, report in doc["levels"].items():
        m, ci = report["metrics"], report["ci95"]
        bal = ci.get("balanced_accuracy", [float("nan")] * 2)
        print(
            f"{level} level ({report['n']} {level}s, {report['n_patients']} patients): "
            f"balanced accuracy {m['balanced_accuracy']:.3f} [{bal[0]:.3f}, {bal[1]:.3f}], "
            f"macro AUROC {m['auroc_macro']:.3f}"
        )
    print(f"metrics: {args.out / 'metrics.json'}")
    for failure in failures:
        print(f"gate failed: {failure}", file=sys.stderr)
    return EXIT_PARTIAL if failures else EXIT_OK


def _add_export_tiles(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-tiles",
        help="write labelled tiles of held-out slides to a tile bank (.h5) for CI",
        description="Export labelled tiles so CI can evaluate without the slides.",
    )
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="bank file, e.g. bank.h5")
    p.add_argument("--model", type=Path, help="take tile px and mpp from this model")
    p.add_argument("--tile-px", type=int, default=224)
    p.add_argument("--mpp", type=_positive_float, default=0.5)
    p.add_argument("--per-slide", type=int, default=64, help="tiles per slide (64)")
    p.add_argument("--split", default="test")
    p.set_defaults(run=_run_export_tiles)


def _run_export_tiles(args: argparse.Namespace) -> int:
    from .evaluate import export_tiles

    tile_px, mpp = args.tile_px, args.mpp
    if args.model:
        from models.checkpoint import read_model_file

        h = read_model_file(args.model)["hyper_parameters"]
        tile_px, mpp = h["tile_px"], h["target_mpp"]
    path = export_tiles(
        args.manifest, args.out, tile_px, mpp, args.per_slide, args.split, progress=not args.quiet
    )
    print(f"tile bank: {path}")
    return EXIT_OK


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on a synthetic cohort, on CPU, in minutes",
        description="synth -> tile -> train -> evaluate -> predict with IHC, then where to look.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _quiet_lightning(args.verbose)
    return run_demo(args.out, progress=not args.quiet)


def _slide_entries(args: argparse.Namespace):
    from .manifest import entries_from_paths, read_manifest

    if bool(args.manifest) == bool(args.slides):
        raise UsageError("give slide files or --manifest CSV (exactly one of the two)")
    if args.manifest:
        entries = read_manifest(args.manifest)
        if args.slide_mpp is not None:
            entries = [e if e.mpp else _with_mpp(e, args.slide_mpp) for e in entries]
        return entries
    return entries_from_paths(args.slides, mpp=args.slide_mpp)


def _with_mpp(entry, mpp: float):
    from dataclasses import replace

    return replace(entry, mpp=mpp)


def _run_tile(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .tiling import TilingParams
    from .tiling_run import tile_slides

    entries = _slide_entries(args)
    if args.tissue_mask and args.tissue_mask.is_file() and len(entries) > 1:
        raise UsageError("--tissue-mask FILE works for one slide; give a folder for several")
    if args.tissue_mask and not args.tissue_mask.exists():
        raise UsageError(f"{args.tissue_mask}: mask file or folder not found")
    try:
        params = TilingParams(
            target_mpp=args.mpp,
            tile_px=args.tile_px,
            overlap_px=args.overlap,
            min_tissue=args.min_tissue,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.fill_holes:
        params = replace(params, tissue=replace(params.tissue, fill_holes=True))
    rows = tile_slides(
        entries,
        args.out,
        params,
        workers=args.workers,
        overwrite=args.overwrite,
        backend=args.backend,
        masks=args.tissue_mask,
        mask_mode=args.mask_mode,
        progress=not args.quiet,
    )
    return _report(rows, args.out / "tiling_summary.csv")


def _report(rows: Sequence[dict], summary: Path) -> int:
    failed = [r for r in rows if r["status"] == "error"]
    done = len(rows) - len(failed)
    print(f"{done}/{len(rows)} slide(s) done; summary: {summary}")
    for row in failed:
        print(f"error: {row['error']}", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fascicle",
        description="Whole-slide pipeline for dural spindle-cell tumours (research use only).",
    )
    parser.add_argument("--version", action="version", version=f"fascicle {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_synth(sub)
    _add_tile(sub)
    _add_ihc(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_export_tiles(sub)
    _add_demo(sub)
    _add_config_verb(
        sub, "train", _run_train, "train a slide classifier from a YAML config", "configs/demo.yaml"
    )
    _add_config_verb(
        sub,
        "embed",
        _run_embed,
        "frozen-encoder features of every tile (for MIL)",
        "configs/mil.yaml",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.overrides = [a for a in extra if a.startswith("--") and "=" in a]
    unknown = [a for a in extra if a not in args.overrides]
    if unknown or (args.overrides and not getattr(args, "overrides_allowed", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    try:
        return args.run(args)
    except FascicleError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, UsageError) else EXIT_PARTIAL
    except KeyboardInterrupt:
        print("interrupted; finished slides are kept and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
