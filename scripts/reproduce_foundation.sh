#!/usr/bin/env bash
# Produce every number of docs/results/foundation/ (the package-foundation results):
# MNIST, 6 devices, 3x2 grid; five training variants, seed 0; their failure evaluation on
# the 10k test set; and the training-throughput benchmark (vectorised vs a naive loop).
# Resumable: a finished run (its model or summary exists) is not redone.
# Usage: scripts/reproduce_foundation.sh [EPOCHS]      (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
epochs="${1:-4}"
runs=runs/foundation
out=docs/results/foundation
mkdir -p "$out"

variant() {  # name, extra train options...
  local name="$1"; shift
  [ -f "$runs/$name/model.safetensors" ] ||
    resilient-perception train --epochs "$epochs" --seed 0 --threads 2 --out "$runs/$name" "$@"
  cp "$runs/$name/history.csv" "$out/$name-history.csv"
  [ -f "$out/$name/summary.json" ] ||
    resilient-perception evaluate "$runs/$name/model.safetensors" --out "$out/$name"
}

variant fail-sim-fused                              # ours: fail-simulation + fused-output loss
variant fail-sim-paper --fused-weight 0             # the paper's Algorithm 2 loss
variant no-fail-sim-paper --fused-weight 0 --no-fail-sim   # the paper's baseline
# Two attempts past the paper (run side by side, one thread each):
variant fail-sim-fused-overlap50 --overlap 0.5 --threads 1  # grid views overlapping by 50%
variant fail-sim-fused4 --fused-weight 4 --threads 1        # a heavier fused-output loss
variant fail-sim-fused4-overlap50 --overlap 0.5 --fused-weight 4 --threads 2  # both together
variant fail-sim-fused-bf16 --precision bf16  # ours, forward pass in bfloat16 autocast
# Both attempts together, trained three times longer (a later --epochs replaces the first).
variant fail-sim-fused4-overlap50-12ep --overlap 0.5 --fused-weight 4 --precision bf16 \
  --threads 1 --epochs 12

[ -f "$out/training_throughput.json" ] ||
  resilient-perception bench-train --threads 2 --naive-batches 100 \
    --out "$out/training_throughput.json"
[ -f "$out/training_throughput_bf16.json" ] ||
  resilient-perception bench-train --threads 2 --naive-batches 100 --precision bf16 \
    --out "$out/training_throughput_bf16.json"

resilient-perception report \
  "fail-sim + fused loss (ours)=$out/fail-sim-fused/summary.json" \
  "fail-sim, paper loss=$out/fail-sim-paper/summary.json" \
  "no fail-sim, paper loss=$out/no-fail-sim-paper/summary.json" \
  "fail-sim + fused loss, 50% overlap=$out/fail-sim-fused-overlap50/summary.json" \
  "fail-sim + fused loss x4=$out/fail-sim-fused4/summary.json" \
  "fail-sim + fused loss x4, 50% overlap=$out/fail-sim-fused4-overlap50/summary.json" \
  "fail-sim + fused loss, bf16=$out/fail-sim-fused-bf16/summary.json" \
  "fail-sim + fused loss x4, 50% overlap, bf16, 12 epochs=$out/fail-sim-fused4-overlap50-12ep/summary.json" \
  --throughput "$out/training_throughput.json" "$out/training_throughput_bf16.json" \
  --out "$out/tables.md"
