#!/usr/bin/env bash
# Produce docs/results/fusion_modes/: the paper's avg and max pooling beside geo (the
# renormalised geometric mean of the device probabilities), on the test split.
#
# 1. Over seeds (raw/, gated.md): MNIST (the protocol's 4 epochs, 6,000 of 60,000 held out)
#    and MVMC (12 epochs at batch 32, 110 of 1,115 frames held out), method `ours` (the
#    fused-output loss scored in avg) and `ours-geo` (the same loss scored in geo), seeds
#    0..2. Each checkpoint is scored by `evaluate --modes avg max geo --gated avg max geo`:
#    every pooling of the same devices, each with a gate of its own fitted on the held-out
#    split; `gated-report` pairs the poolings over seeds (gated.md).
# 2. Per model (tables.md): every finished CIFAR-10 device run of the accuracy lanes in
#    ../runs/accuracy (their records in docs/results/accuracy/records/ say how each was
#    trained), scored and gated by `evaluate --modes avg max geo --gated avg max geo`
#    (gated-*.json beside each summary.json). The devices are not retrained.
#
# Resumable: a seed recorded in raw/ and a model scored in tables.md's folders are not
# redone; a killed training resumes. One torch thread, nice 19, fp32 (the precision every
# machine has; bf16 is emulated on AVX2). A second instance started beside the first takes
# the runs the first has not claimed (a lock per run), so two use two cores; the last to
# finish writes the complete report. Pause the accuracy lanes while this runs if they
# share the cores (scripts/accuracy_lanes.sh pause).
# Usage: scripts/reproduce_fusion_modes.sh [RUNS]     (default ../runs/fusion-modes; after
#        scripts/setup.sh; about 15 CPU minutes per MNIST seed and 5 per MVMC seed on AVX2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-../runs/fusion-modes}"
repo=$PWD
out=docs/results/fusion_modes
raw=$out/raw
mkdir -p "$raw"
# One thread for every command, evaluate included: beside other jobs on a 2-core machine
# torch's default two threads wait on each other: scoring and gating one MNIST seed in three
# poolings had not finished after 17 minutes on two threads; on one it takes about 2.
rp() { OMP_NUM_THREADS=1 nice -n 19 .venv/bin/resilient-perception "$@"; }

seeded() {  # dataset method seed train-options...
  local dataset="$1" method="$2" seed="$3"; shift 3
  local dir="$runs/$dataset/$method/seed$seed"
  if [ -f "$raw/$dataset/$method/seed$seed/eval-test/gated-geo.json" ]; then return; fi
  mkdir -p "$dir"
  exec {lock}>"$dir/lock"
  flock -n "$lock" || return 0  # another instance trains it
  [ -f "$dir/model.safetensors" ] ||
    rp train "$@" --seed "$seed" --threads 1 --resume --out "$dir" >>"$dir/log.txt" 2>&1
  rp evaluate "$dir/model.safetensors" --modes avg max geo --gated avg max geo \
    --out "$dir/eval-test" >>"$dir/log.txt" 2>&1
  mkdir -p "$raw/$dataset/$method/seed$seed/eval-test"
  cp "$dir"/eval-test/{summary.json,gated.json,gated-max.json,gated-geo.json} \
    "$raw/$dataset/$method/seed$seed/eval-test/"
  exec {lock}>&-
}

for seed in 0 1 2; do
  for fused in avg geo; do
    method=$([ "$fused" = avg ] && echo ours || echo ours-geo)
    seeded mnist "$method" "$seed" --dataset mnist --epochs 4 --holdout 6000 \
      --fused-mode "$fused"
    seeded mvmc "$method" "$seed" --dataset mvmc --epochs 12 --batch-size 32 --holdout 110 \
      --fused-mode "$fused"
  done
done
rp gated-report --runs "$raw" --out "$out/gated.md"

score() {  # name, checkpoint
  [ -f "$out/$1/summary.json" ] ||
    rp evaluate "$2" --modes avg max geo --gated avg max geo --out "$out/$1" > "$out/$1.txt"
}
for run in ../runs/accuracy/devices-*; do
  [ -f "$run/model.safetensors" ] && score "cifar10-$(basename "$run")" "$run/model.safetensors"
done
.venv/bin/python scripts/fusion_modes_table.py "$out"
