#!/usr/bin/env bash
# The whole pipeline on a synthetic cohort, on CPU: installs into .venv if needed, generates
# slides, tiles them and prints the IHC differential of the held-out cases.
# Usage: scripts/demo.sh [OUT_DIR]   (default: demo_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_out}
PY=.venv/bin/python

if ! { [ -x "$PY" ] && "$PY" -c "import pipeline.cli" 2>/dev/null; }; then
  echo "== installing fascicle into .venv" >&2
  python3 -m venv .venv
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e .
fi
FASCICLE=.venv/bin/fascicle
start=$(date +%s)

echo "== 1. synthetic cohort (12 slides, 4 x 3 mm at 0.5 µm/px)"
$FASCICLE synth --out "$OUT/cohort" --workers 2

echo "== 2. tissue detection and tiling (224 px at 0.5 µm/px)"
$FASCICLE tile --manifest "$OUT/cohort/manifest.csv" --out "$OUT/tiles" --workers 2

echo "== 3. IHC differential of the held-out (test) cases"
for slide in $(awk -F, 'NR > 1 && $5 == "test" { print $1 }' "$OUT/cohort/manifest.csv"); do
  truth=$(awk -F, -v s="$slide" '$1 == s { print $4 }' "$OUT/cohort/cases.csv")
  echo "-- $slide (synthetic truth: $truth)"
  $FASCICLE ihc --ihc "$OUT/cohort/ihc.csv" --slide "$slide" --top 3 | sed 's/^/   /'
done

echo
echo "done in $(( $(date +%s) - start )) s"
echo "  cohort preview:  $OUT/cohort/preview.png"
echo "  tiling summary:  $OUT/tiles/tiling_summary.csv (QC images in $OUT/tiles/qc/)"
