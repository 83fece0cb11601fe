#!/usr/bin/env bash
# Produce docs/results/pipeline/: the live pipeline benchmark (6 camera processes + fusion at
# 30 Hz over DDS on loopback) and one run of the live demo, and docs/results/paper/cost/
# (the paper's Table 3 analogue: one device's size, int8 vs float, latency vs the
# Modifier), all with the foundation's
# default model (MNIST, 3x2 grid, fail-simulation + fused loss, 4 epochs, seed 0; trained
# here if scripts/reproduce_foundation.sh has not made it). Run it on an otherwise idle
# machine: the benchmark measures latency and CPU.
# Usage: scripts/reproduce_pipeline.sh      (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
model_dir=runs/foundation/fail-sim-fused
out=docs/results/pipeline
[ -f "$model_dir/model.safetensors" ] ||
  resilient-perception train --epochs 4 --seed 0 --threads 2 --out "$model_dir"

resilient-perception bench-pipeline "$model_dir/model.safetensors" --out "$out"
resilient-perception bench-cost "$model_dir/model.safetensors" --out docs/results/paper/cost

# The demo reuses the model it finds in its output folder.
mkdir -p runs/pipeline-demo "$out/demo"
cp "$model_dir/model.safetensors" runs/pipeline-demo/model.safetensors
resilient-perception demo --out runs/pipeline-demo | tee "$out/demo/output.txt"
cp runs/pipeline-demo/live/report.md runs/pipeline-demo/live/report.json \
  runs/pipeline-demo/live/live.csv "$out/demo/"
