#!/usr/bin/env bash
# The GPU figures of the README in one run (a few minutes on one H100/H200 with 16 cores):
# bench_predict.py for ResNet-50 at 224 px on a slide of over 20,000 tiles scanned at 0.5 µm/px,
# the same model on a 0.25 µm/px scan (every tile a 448-px region box-resized on the GPU), and
# the small CNN. Each writes OUT/<name>.log and OUT/<name>.json.
# Usage: scripts/bench_device.sh [OUT]   (PYTHON=python3 by default)
set -uo pipefail
out=${1:-bench_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
nproc | tee -a "$out/gpu.txt"

run() {
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$py" scripts/bench_predict.py --device cuda --no-rss "$@" \
    --json "$out/$name.json" 2>&1 | grep -v -i warning | tee "$out/$name.log"
}

run resnet50_20x 300 --backbone resnet50 --tile-px 224 --mpp 0.5 --size 56000x42000 \
  --slide-mpp 0.5 --batch-size 256
run resnet50_40x 150 --backbone resnet50 --tile-px 224 --mpp 0.5 --size 40000x30000 \
  --batch-size 256 --no-baseline
run small_cnn 120 --quick --batch-size 256 --no-baseline
