"""The ``fascicle`` command line: argument parsing and exit codes over the Python API.

Exit codes: 0 all done; 1 some inputs failed (the rest were processed, failures listed);
2 bad usage or configuration (nothing processed). Each verb imports what it needs when it
runs, so the command starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.cli_args import (
    at_least,
    batch_args,
    call_args,
    closed_stdout,
    engine_args,
    fields_of,
    fraction,
    positive_float,
    report_rows,
    slides_args,
    view_args,
)
from pipeline.core.errors import FascicleError, UsageError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


# -- verbs ----------------------------------------------------------------------------------
def _run_synth(args: argparse.Namespace) -> int:
    from pipeline.synth.cohort import CohortParams, make_cohort

    args.classes = tuple(args.classes or CohortParams.classes)
    args.slide_size_um = tuple(args.slide_size_um)
    params = CohortParams(**fields_of(args, CohortParams))
    plans = make_cohort(args.out, params, args.workers, args.overwrite, args.progress)
    print(f"{len(plans)} slides in {args.out / 'slides'}; manifest.csv etc. in {args.out}")
    return EXIT_OK


def _run_tile(args: argparse.Namespace) -> int:
    from pipeline.wsi.manifest import slide_entries
    from pipeline.wsi.tile_run import tile_slides, tiling_params

    entries = slide_entries(args.slides, args.manifest, args.slide_mpp)
    params = tiling_params(args.mpp, args.tile_px, args.overlap, args.min_tissue, args.fill_holes)
    rows = tile_slides(entries, params=params, **fields_of(args, tile_slides))
    return report_rows(rows, args.out / "tiling_summary.csv")


def _run_ihc(args: argparse.Namespace) -> int:
    import json

    from pipeline.ihc.differential import format_summary
    from pipeline.ihc.tables import panel_text
    from pipeline.prediction.call import ihc_summary, parse_image_probs

    if args.explain:
        from pipeline.ihc.explain import explain
        from pipeline.ihc.knowledge import load_knowledge

        print(explain(load_knowledge(args.knowledge), args.explain))
        return EXIT_OK
    args.image_probs = parse_image_probs(args.image_probs) if args.image_probs else None
    args.panel = panel_text(args.panel) if args.panel else None
    summary = ihc_summary(**fields_of(args, ihc_summary))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK


def _run_train(args: argparse.Namespace) -> int:
    from pipeline.training.config import load_config

    config = load_config(args.config, args.overrides)
    if config.model.kind == "probe" or args.cv:  # frozen features, a tile dataset
        from pipeline.evaluation.cv import run_tile_cv

        result = run_tile_cv(config, args.cv, progress=args.progress)
    else:
        from pipeline.training.train import train

        result = train(config, progress=args.progress)
    if result is not None:
        print(result.describe())
    return EXIT_OK


def _run_embed(args: argparse.Namespace) -> int:
    from pipeline.training.config import load_config
    from pipeline.training.embed import embed_run

    config = load_config(args.config, args.overrides)
    paths = embed_run(config, progress=args.progress)
    print(f"{len(paths)} slide(s) or tile(s) embedded in {config.features_dir()}")
    return EXIT_OK


def _run_predict(args: argparse.Namespace) -> int:
    from pipeline.prediction import predict, session
    from pipeline.wsi.manifest import slide_entries

    entries = slide_entries(args.slides, args.manifest, args.slide_mpp)
    entries = session.shard(entries, *session.parse_shard(args.shard))
    options = session.PredictOptions(**fields_of(args, session.PredictOptions))
    if args.devices > 1:
        rows = predict.predict_on_devices(
            entries, args.model, args.out, options, args.devices, args.ihc
        )
    else:
        rows = predict.predict_slides(entries, args.model, args.out, options, args.ihc)
    mine = {e.slide_id for e in entries}
    print(f"report: {args.out / 'report.html'}")
    return report_rows([r for r in rows if r["slide_id"] in mine], args.out / "summary.csv")


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.evaluate import Gate, PredictOptions, format_levels, run_evaluation

    gate = Gate(args.min_balanced_accuracy, args.min_auroc)
    args.options = PredictOptions(**fields_of(args, PredictOptions))
    doc, failures = run_evaluation(gate=gate, **fields_of(args, run_evaluation))
    print("\n".join(format_levels(doc)))
    print(f"metrics: {args.out / 'metrics.json'}")
    for failure in failures:
        print(f"gate failed: {failure}", file=sys.stderr)
    return EXIT_PARTIAL if failures else EXIT_OK


def _run_export_tiles(args: argparse.Namespace) -> int:
    from pipeline.evaluation.tile_bank import export_tiles

    print(f"tile bank: {export_tiles(**fields_of(args, export_tiles))}")
    return EXIT_OK


def _run_view(args: argparse.Namespace) -> int:
    from pipeline.viewer.server import run_viewer

    return run_viewer(**fields_of(args, run_viewer))


def _run_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(args.out, progress=args.progress)


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fascicle",
        description="Whole-slide pipeline for dural spindle-cell tumours (research use only).",
    )
    parser.add_argument("--version", action="version", version=f"fascicle {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--progress", action="store_true", help="progress bars even with -q")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, run, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=run)
        return p

    p = verb("synth", _run_synth, "generate a synthetic cohort (slides, manifest, IHC)")
    batch_args(p, 1, "parallel slide workers")
    p.add_argument("--n-slides", type=at_least(1), default=12, help="number of slides (12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--classes", nargs="+", help="image classes (default: the three built in)")
    p.add_argument("--slide-size-um", type=float, nargs=2, default=(4000, 3000), metavar="UM")
    p.add_argument("--mpp", type=positive_float, default=0.5, help="µm/px of level 0 (0.5)")
    p.add_argument("--difficulty", type=fraction, default=0.5, help="0 easy .. 1 hard (0.5)")
    p.add_argument("--no-artefacts", dest="artefacts", action="store_false", help="no pen etc.")

    p = verb("tile", _run_tile, "find tissue and write tile coordinates + QC images")
    slides_args(p)
    batch_args(p, 1, "parallel slide workers")
    p.add_argument("--mpp", type=positive_float, default=0.5, help="target µm/px (0.5)")
    p.add_argument("--tile-px", type=at_least(16), default=224, help="tile side in pixels (224)")
    p.add_argument("--overlap", type=at_least(0), default=0, help="overlap in target pixels (0)")
    p.add_argument("--min-tissue", type=fraction, default=0.5, help="tissue fraction (0.5)")
    p.add_argument("--tissue-mask", dest="masks", type=Path, help="mask PNG/GeoJSON or folder")
    p.add_argument("--mask-mode", choices=("replace", "restrict"), default="replace")
    p.add_argument("--fill-holes", action="store_true", help="fill holes in tissue")
    p.add_argument("--backend", choices=("auto", "openslide", "tifffile"), default="auto")

    p = verb("ihc", _run_ihc, "ranked differential from an IHC panel (and image probabilities)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--panel", help='"desmin+ h-caldesmon+ SMA-", or @report.txt')
    source.add_argument("--ihc", type=Path, help="IHC CSV (long or wide); with --slide")
    source.add_argument("--explain", help="show a marker's or entity's numbers and sources")
    p.add_argument("--slide", help="slide_id whose panel to read from --ihc")
    p.add_argument("--image-probs", help="class=p,... e.g. leiomyosarcoma=0.5,meningioma=0.5")
    p.add_argument("--prior", help="named prior from the knowledge base (default: its default)")
    p.add_argument("--knowledge", type=Path, help="knowledge base YAML (default: built in)")
    p.add_argument("--calls", type=Path, help="call settings YAML (default: built in)")
    p.add_argument("--top", type=at_least(1), default=5, help="entities and stains to list (5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = verb("predict", _run_predict, "batch inference: calls, heatmaps, QuPath overlays, report")
    slides_args(p)
    batch_args(p, None, "tile-decoding threads")
    p.add_argument("--model", type=Path, required=True, help="model.ckpt from fascicle train")
    p.add_argument("--ihc", type=Path, help="IHC CSV (long or wide) keyed by slide_id")
    call_args(p)
    p.add_argument("--batch-size", type=at_least(1), default=64, help="tiles per batch (64)")
    engine_args(p)
    p.add_argument("--devices", type=at_least(1), default=1, help="processes, one per device (1)")
    p.add_argument("--shard", default="0/1", help="I/N: this job's share, 0 <= I < N (0/1)")
    p.add_argument("--tiles-dir", type=Path, help="reuse coordinates of an earlier fascicle tile")
    p.add_argument("--wait", action="store_true", help="wait for slides other processes hold")

    p = verb("evaluate", _run_evaluate, "metrics with bootstrap CIs and a gate (exit 1 below)")
    p.add_argument("--model", type=Path, required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="held-out slides (split column)")
    source.add_argument("--tiles", dest="bank", type=Path, help="tile bank (.h5), tile CSV/folder")
    p.add_argument("--tile-mpp", type=positive_float, help="µm/px of tiles without an mpp column")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="test", help="manifest split to evaluate (test)")
    p.add_argument("--ihc", type=Path, help="IHC CSV, fused into the calls")
    call_args(p)
    p.add_argument("--min-balanced-accuracy", type=fraction)
    p.add_argument("--min-auroc", type=fraction)
    p.add_argument(
        "--bootstrap", dest="n_boot", type=at_least(0), default=1000, help="resamples (0: none)"
    )
    engine_args(p, workers=True)

    p = verb("export-tiles", _run_export_tiles, "labelled held-out tiles to a tile bank (.h5)")
    p.add_argument("--manifest", type=Path, required=True, help="slide manifest or tile set")
    p.add_argument("--tile-mpp", type=positive_float, help="µm/px of tiles without an mpp")
    p.add_argument("--out", type=Path, required=True, help="bank file, e.g. bank.h5")
    p.add_argument("--model", type=Path, help="take tile px and mpp from this model")
    p.add_argument("--tile-px", type=at_least(16), default=224)
    p.add_argument("--mpp", dest="target_mpp", type=positive_float, default=0.5)
    p.add_argument("--per-slide", type=at_least(1), default=64, help="tiles per slide (64)")
    p.add_argument("--split", default="test")

    view_args(verb("view", _run_view, "zoomable slide viewer with the model's overlays"))

    p = verb("demo", _run_demo, "synth -> tile -> train -> evaluate on CPU, in minutes")
    p.add_argument("--out", type=Path, default=Path("demo_out"))

    for name, run, help_, example in (
        ("train", _run_train, "train a slide classifier from a YAML config", "demo"),
        ("embed", _run_embed, "frozen-encoder features of every tile (for MIL)", "mil"),
    ):
        p = verb(name, run, f"{help_}; override keys with --section.key=value")
        p.add_argument("--config", type=Path, required=True, help=f"YAML, or a built-in: {example}")
        if name == "train":
            p.add_argument("--cv", type=at_least(0), default=0, help="patient-level K-fold CV")
        p.set_defaults(overrides_allowed=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as stop:  # --help, --version or a bad argument (argparse said why)
        return int(stop.code or 0)
    args.overrides = [a for a in extra if a.startswith("--") and "=" in a]
    unknown = [a for a in extra if a not in args.overrides]
    if unknown or (args.overrides and not getattr(args, "overrides_allowed", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    args.progress = args.progress or not args.quiet
    try:
        return args.run(args)
    except FascicleError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, UsageError) else EXIT_PARTIAL
    except KeyboardInterrupt:
        print("interrupted; finished slides are kept and a rerun resumes", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: stop quietly
        return closed_stdout()
    except Exception as err:  # a bug: say so in one line (the traceback with -v)
        if args.verbose:
            raise
        why = f"{type(err).__name__}: {err}"
        print(f"error: internal error {why} (rerun with -v; please report it)", file=sys.stderr)
        return EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
