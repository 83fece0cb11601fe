#!/usr/bin/env bash
# Produce docs/results/edge/: resident memory and exec-to-ready time of the fusion
# node and two camera nodes (ONNX Runtime backend) streaming at 30 Hz, and the wall time of
# `resilient-perception --help` / `--version`. LABEL names the run (footprint-LABEL.json,
# help-LABEL.json); footprint.md puts every labelled run side by side. The model only has to
# load and run (1 epoch on 3,000 MNIST images, seed 0): memory and start-up do not depend on
# its accuracy. Run it on an otherwise idle machine.
# Usage: scripts/reproduce_edge.sh [LABEL]      (after scripts/setup.sh; needs hyperfine)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
label="${1:-current}"
model_dir=runs/edge
out=docs/results/edge
[ -f "$model_dir/model.safetensors" ] ||
  resilient-perception train --epochs 1 --limit 3000 --seed 0 --threads 1 --out "$model_dir"

resilient-perception bench-footprint "$model_dir/model.safetensors" --label "$label" --out "$out"
hyperfine --warmup 2 --runs 10 --export-json "$out/help-$label.json" \
  'resilient-perception --help' 'resilient-perception --version'
# Wall times follow the machine's load; keep it beside them (1, 5, 15 min averages).
cut -d' ' -f1-3 /proc/loadavg > "$out/help-$label.loadavg"
