#!/usr/bin/env bash
# Produce docs/results/soak/: the soak with chaos (issue 15 item 4), 30 minutes by default,
# with a small MNIST model (1 epoch on 6,000 images: the soak measures losses, memory and
# reactions, not accuracy; trained here unless present).
# Usage: scripts/reproduce_soak.sh [MINUTES]      (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
minutes="${1:-30}"
model_dir=runs/soak/model
[ -f "$model_dir/model.safetensors" ] ||
  resilient-perception train --epochs 1 --limit 6000 --threads 1 --out "$model_dir"
mkdir -p docs/results/soak
resilient-perception soak "$model_dir/model.safetensors" --minutes "$minutes" \
  --out docs/results/soak --log-dir runs/soak/logs | tee docs/results/soak/output.txt
