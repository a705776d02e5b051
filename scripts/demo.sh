#!/usr/bin/env bash
# The whole pipeline on a synthetic cohort, on CPU: installs into .venv if needed, then
# `fascicle demo`: synthetic cohort -> tiles -> training -> evaluation of the held-out slides
# (fascicle predict with the cohort's IHC) -> where the report and the metrics are.
# Usage: scripts/demo.sh [OUT_DIR]   (default: demo_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_out}
PY=.venv/bin/python

if ! { [ -x "$PY" ] && "$PY" -c "import pipeline.cli, torch, pytorch_lightning" 2>/dev/null; }; then
  echo "== installing fascicle into .venv (first run only)" >&2
  python3 -m venv .venv
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e .
fi
exec .venv/bin/fascicle demo --out "$OUT"
