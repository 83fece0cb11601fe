#!/usr/bin/env bash
# Produce docs/results/resnet/: train the plain and the stochastic-depth ResNet on CIFAR-10
# (side by side, one torch thread each, niced), run both drop studies on the 10k test set,
# and write the comparison report (tables.md + figure).
# Resumable: re-running continues each training after its last finished epoch and redoes a
# drop study only when its checkpoint is newer than its results.
# Usage: scripts/reproduce_resnet.sh [EPOCHS]      (after scripts/setup.sh; default 6)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
epochs="${1:-6}"
runs=runs/resnet
out=docs/results/resnet
mkdir -p "$runs/plain" "$runs/stochastic-depth" "$out"

train() {  # name, extra train-resnet options...
  local name="$1"; shift
  nice -n 10 resilient-perception train-resnet --epochs "$epochs" --seed 0 --threads 1 \
    --resume --out "$runs/$name" "$@" >>"$runs/$name/train.log" 2>&1
}

study() {  # name
  local name="$1"
  if [ ! -f "$out/$name/drop_study.json" ] ||
     [ "$runs/$name/checkpoint.safetensors" -nt "$out/$name/drop_study.json" ]; then
    nice -n 10 resilient-perception drop-study "$runs/$name" --threads 1 --out "$out/$name" \
      >>"$runs/$name/drop_study.log" 2>&1
  fi
  cp "$runs/$name/history.csv" "$out/$name/history.csv"
}

# The layer numbers of the default model before training, for planners' tests (accuracies
# are chance; 500 test images suffice).
if [ ! -f "$out/untrained-profile.json" ]; then
  nice -n 10 resilient-perception drop-study --untrained-width 8 --limit 500 --threads 1 \
    --out "$runs/untrained" >"$runs/untrained.log" 2>&1
  cp "$runs/untrained/profile.json" "$out/untrained-profile.json"
fi

# Huang et al.'s linear decay with 0.5 at the last block.
train plain & plain=$!
train stochastic-depth --stochastic-depth 0.5 & sd=$!
status=0
wait "$plain" || status=$?
wait "$sd" || status=$?
[ "$status" -eq 0 ] || { echo "training failed: see $runs/*/train.log" >&2; exit "$status"; }

study plain & plain=$!
study stochastic-depth & sd=$!
wait "$plain" || status=$?
wait "$sd" || status=$?
[ "$status" -eq 0 ] || { echo "drop study failed: see $runs/*/drop_study.log" >&2; exit "$status"; }

resilient-perception drop-report "plain=$out/plain" "stochastic-depth=$out/stochastic-depth" \
  --out "$out/tables.md"
