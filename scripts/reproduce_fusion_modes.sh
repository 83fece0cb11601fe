#!/usr/bin/env bash
# Produce docs/results/fusion_modes/: the paper's avg and max pooling beside geo (the
# renormalised geometric mean of the device probabilities), scored by `evaluate --modes avg
# max geo` on the test split of each dataset. The devices are not retrained: only the rule
# that pools their outputs changes. Resumable: a scored model is not scored again.
#   MNIST: the foundation's fail-sim-fused (4 epochs, seed 0; scripts/reproduce_foundation.sh)
#   MVMC: the protocol's `ours`, seed 0 (12 epochs)
#   CIFAR-10: every finished device run of the accuracy lanes in ../runs/accuracy (their
#   records in docs/results/accuracy/records/ say how each was trained)
# Usage: scripts/reproduce_fusion_modes.sh      (after scripts/setup.sh; MVMC: ~4 CPU minutes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
out=docs/results/fusion_modes
mkdir -p "$out"

score() {  # name, checkpoint
  [ -f "$out/$1/summary.json" ] ||
    resilient-perception evaluate "$2" --modes avg max geo --out "$out/$1" > "$out/$1.txt"
}

mnist=runs/foundation/fail-sim-fused
[ -f "$mnist/model.safetensors" ] ||
  resilient-perception train --epochs 4 --seed 0 --threads 2 --out "$mnist"
score mnist-fail-sim-fused "$mnist/model.safetensors"

resilient-perception reproduce --datasets mvmc --methods ours --seeds 1 \
  --runs runs/fusion-modes --out runs/fusion-modes/report
score mvmc-ours-s0 runs/fusion-modes/mvmc/ours/seed0/model.safetensors

for run in ../runs/accuracy/devices-*; do
  [ -f "$run/model.safetensors" ] && score "cifar10-$(basename "$run")" "$run/model.safetensors"
done
python scripts/fusion_modes_table.py "$out"
