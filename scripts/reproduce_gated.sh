#!/usr/bin/env bash
# The gated Modifier per dataset: devices trained with a validation split
# held out of training (`train --holdout`), then `evaluate --gated` fits the gate on it and
# scores no Modifier / plain Modifier / gated on the test split; `gated-report` writes
# docs/results/gated/tables.md (means and 95% CIs over seeds, paired t-tests).
#   mnist  the protocol's 4 epochs, bf16, `paper` and `ours`, 6,000 of 60,000 held out
#   mvmc   12 epochs at batch 32, 110 of 1,115 frames held out
#   idx    a user's IDX pair (MNIST's files by path) trained as a new user would: `train`
#          defaults and 3 epochs, scored on the held-out t10k pair
# CIFAR-10's gated results come from the 40-epoch runs of scripts/accuracy_lanes.sh (5,000
# images held out): the lanes run `evaluate --gated` on each finished run.
# Resumable: a finished step (its output file present) is skipped, a killed training
# resumes. Each seed's gated.json is kept in docs/results/gated/raw/ (the run folders are
# outside the repository and go with their machine), the table is made from there, and a
# seed recorded there is not run again: delete its folder in raw/ to redo it (e.g. after
# the gate changes). One torch thread, nice 19; pause the second accuracy lane while this
# runs (LANE=2 scripts/accuracy_lanes.sh pause).
# Usage: scripts/reproduce_gated.sh [RUNS]      (default ../runs/gated; seeds 0..2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-../runs/gated}"
repo=$PWD
raw=docs/results/gated/raw
mkdir -p "$raw"
data="${RESILIENT_PERCEPTION_DATA:-../shared/datasets}"
# One thread for every command, evaluate included: beside other jobs on a 2-core machine
# torch's default two threads wait on each other: scoring and gating one MNIST seed in three
# poolings had not finished after 17 minutes on two threads; on one it takes about 2.
rp() { OMP_NUM_THREADS=1 nice -n 19 .venv/bin/resilient-perception "$@"; }
mnist_idx="idx:$data/mnist/train-images-idx3-ubyte.gz:$data/mnist/train-labels-idx1-ubyte.gz"
heldout_idx="idx:$data/mnist/t10k-images-idx3-ubyte.gz:$data/mnist/t10k-labels-idx1-ubyte.gz"

run() {  # dataset method seed train-options... -- evaluate-options...
  local dataset="$1" method="$2" seed="$3"; shift 3
  local dir="$runs/$dataset/$method/seed$seed" train=() evaluate=()
  if ls "$raw/$dataset/$method/seed$seed"/eval-*/gated.json >/dev/null 2>&1; then return; fi
  while [ "$1" != "--" ]; do train+=("$1"); shift; done; shift
  evaluate=("$@")
  mkdir -p "$dir"
  [ -f "$dir/model.safetensors" ] ||
    rp train "${train[@]}" --seed "$seed" --threads 1 --resume --out "$dir" \
      >>"$dir/log.txt" 2>&1
  ls "$dir"/eval-*/gated.json >/dev/null 2>&1 ||
    rp evaluate "$dir/model.safetensors" --gated "${evaluate[@]}" >>"$dir/log.txt" 2>&1
  (cd "$runs" && cp --parents "$dataset/$method/seed$seed"/eval-*/gated.json "$repo/$raw/")
}

for seed in 0 1 2; do
  for method in paper ours; do
    weight=$([ "$method" = ours ] && echo 1 || echo 0)
    run mnist "$method" "$seed" --dataset mnist --epochs 4 --precision bf16 \
      --fused-weight "$weight" --holdout 6000 --
    run mvmc "$method" "$seed" --dataset mvmc --epochs 12 --batch-size 32 --precision bf16 \
      --fused-weight "$weight" --holdout 110 --
  done
  run idx defaults "$seed" --dataset "$mnist_idx" --epochs 3 --holdout 6000 -- \
    --dataset "$heldout_idx"
done
.venv/bin/resilient-perception gated-report --runs "$raw" --out docs/results/gated/tables.md
