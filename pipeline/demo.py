"""``fascicle demo``: synth → tile → train → evaluate (predict with IHC), on CPU."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.synth.cohort import CohortParams

DEMO_COHORT = CohortParams(n_slides=30, seed=0, slide_size_um=(2400.0, 1800.0))
"""30 small slides: enough patients per class for a held-out split, quick to render."""


def run_demo(out: Path, progress: bool = True) -> int:
    from pipeline.core.resources import builtin_config
    from pipeline.evaluation.evaluate import Gate, run_evaluation
    from pipeline.prediction.session import PredictOptions
    from pipeline.synth.cohort import make_cohort
    from pipeline.training.config import load_config
    from pipeline.training.train import train
    from pipeline.wsi.manifest import read_manifest
    from pipeline.wsi.tile_run import tile_slides, tiling_params

    start = time.perf_counter()
    cohort, run = out / "cohort", out / "run"
    print("== 1/4 synthetic cohort")
    make_cohort(cohort, DEMO_COHORT, workers=2, progress=progress)
    print("== 2/4 tissue detection and tiling")
    entries = read_manifest(cohort / "manifest.csv")
    rows = tile_slides(entries, run / "tiles", tiling_params(1.0, 96), workers=2, progress=progress)
    done = sum(r["status"] == "ok" for r in rows)
    print(f"{done}/{len(rows)} slide(s) done; summary: {run / 'tiles' / 'tiling_summary.csv'}")
    print("== 3/4 training configs/demo.yaml")
    config = load_config(
        builtin_config("demo.yaml"),
        [f"--data.manifest={cohort / 'manifest.csv'}", f"--out={run}"],
    )
    result = train(config, progress=progress)
    print("== 4/4 evaluation on the held-out (test) slides: fascicle predict with the cohort's IHC")
    doc, _ = run_evaluation(
        result.model_path,
        out / "evaluation",
        Gate(),
        cohort / "manifest.csv",
        split="test",
        n_boot=500,
        ihc=cohort / "ihc.csv",
        options=PredictOptions(progress=progress),
    )
    m = doc["levels"]["slide"]["metrics"]
    ci = doc["levels"]["slide"]["ci95"].get("balanced_accuracy", [float("nan")] * 2)
    print(
        f"   slide balanced accuracy {m['balanced_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], "
        f"macro AUROC {m['auroc_macro']:.3f}, indeterminate {m['indeterminate_rate']:.2f}"
    )
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    print(f"  report:   {out / 'evaluation' / 'predictions' / 'report.html'}")
    print(f"  viewer:   fascicle view {out / 'evaluation' / 'predictions'}")
    print(f"  metrics:  {out / 'evaluation' / 'metrics.json'}")
    print(f"  preview:  {cohort / 'preview.png'}")
    return 0
