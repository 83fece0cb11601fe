#!/usr/bin/env bash
# Produce docs/results/fuzz/: the live fuzz (issue 15 item 3), 10,000 malformed messages by
# default, against the pipeline with the soak's small MNIST model (1 epoch on 6,000 images:
# the fuzz checks counts, output and memory, not accuracy; trained here unless present).
# Usage: scripts/reproduce_fuzz.sh [MESSAGES]      (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
messages="${1:-10000}"
model_dir=runs/soak/model
[ -f "$model_dir/model.safetensors" ] ||
  resilient-perception train --epochs 1 --limit 6000 --threads 1 --out "$model_dir"
# The nodes' logs stay in runs/fuzz; the report, its CSVs and the output go to the docs.
resilient-perception fuzz "$model_dir/model.safetensors" --messages "$messages" \
  --out runs/fuzz --no-progress | tee runs/fuzz-output.txt
mkdir -p docs/results/fuzz
cp runs/fuzz/fuzz.json runs/fuzz/counts.csv runs/fuzz/rss.csv docs/results/fuzz/
mv runs/fuzz-output.txt docs/results/fuzz/output.txt
