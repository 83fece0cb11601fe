#!/usr/bin/env bash
# Produce docs/results/resnet/: the current ResNets and their drop studies.
#   recipe-w16/     ResNet-50's 3-4-6-3 bottleneck blocks at base width 16, trained with the
#                   fast recipe for 24 epochs (`train-resnet-recipe`, EMA weights, seed 0)
#   recipe-w16-sd/  the same with stochastic depth 0.5 (Huang et al.'s linear decay)
#   recipe-w16-e40/ the width-16 recipe for 40 epochs instead of 24
#   tables.md, dc_drop_accuracy.png   `drop-report` of the models whose study is done
# Each model is the accuracy lanes' run of that name (`scripts/accuracy_lanes.sh run`: the
# same folder, $ACCURACY_RUNS/resnet-w16[-sd], default ../runs/accuracy, the same lock and
# the drop study after training), so a model the lanes trained (or are training) is never
# trained twice. Training is resumable per epoch; a run held by a lane is skipped with a
# note, and the report then has the finished models only: run this script again once the
# lane is done (`scripts/accuracy_lanes.sh status`) to add the missing one. About 2 CPU
# hours per model for training plus 35 min per drop study on one niced core.
#
# Usage: scripts/reproduce_resnet.sh            the current models (above)
#        scripts/reproduce_resnet.sh baseline-w8 [EPOCHS]
#             the earlier baseline in docs/results/resnet/baseline-w8/: base width 8, plain and
#             stochastic depth, `train-resnet` for EPOCHS (default 6) in runs/resnet/, and
#             untrained-profile.json (the width-8 layer numbers at chance accuracy, which
#             the planners' tests read)
# (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"

baseline_w8() {  # the earlier width-8, 6-epoch models
  local epochs="${1:-6}" runs=runs/resnet out=docs/results/resnet/baseline-w8 status=0
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
  if [ ! -f docs/results/resnet/untrained-profile.json ]; then
    nice -n 10 resilient-perception drop-study --untrained-width 8 --limit 500 --threads 1 \
      --out "$runs/untrained" >"$runs/untrained.log" 2>&1
    cp "$runs/untrained/profile.json" docs/results/resnet/untrained-profile.json
  fi
  train plain & local plain=$!
  train stochastic-depth --stochastic-depth 0.5 & local sd=$!
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
}

if [ "${1:-}" = baseline-w8 ]; then
  baseline_w8 "${2:-6}"
  exit 0
fi

runs="${ACCURACY_RUNS:-../runs/accuracy}"
out=docs/results/resnet

model() {  # lanes' run name, docs folder; 1 when a lane holds it (or it failed)
  local name="$1" folder="$2" dir="$runs/$1"
  if [ ! -d "$dir" ] && [ -f "$out/$folder/drop_study.json" ]; then
    # Trained on an earlier machine (its record is in docs/results/accuracy/records): the
    # docs copy is the result; a run folder is needed only to redo it.
    echo "$name: kept $out/$folder ($dir is not on this machine)"
    return 0
  fi
  if ! scripts/accuracy_lanes.sh run "$name" "$runs"; then
    echo "$name: $dir is not done (an accuracy lane is training or studying it, or it" \
         "failed: see $dir/train.log); left out of the report, run again when it is done" >&2
    return 1
  fi
  mkdir -p "$out/$folder"
  cp "$dir"/drop-study/{drop_study.json,profile.json,table1.csv,table2.csv,tables.md} \
     "$out/$folder/"
  cp "$dir/metrics.json" "$out/$folder/metrics.json"  # settings and per-epoch log
}

studies=()
# One after the other: two trainings side by side would share the lanes' two cores.
if model resnet-w16 recipe-w16; then studies+=("plain=$out/recipe-w16"); fi
if model resnet-w16-sd recipe-w16-sd; then
  studies+=("stochastic-depth=$out/recipe-w16-sd")
fi
if model resnet-w16-e40 recipe-w16-e40; then studies+=("plain-40-epochs=$out/recipe-w16-e40"); fi
[ "${#studies[@]}" -gt 0 ] || { echo "no finished model to report" >&2; exit 1; }
resilient-perception drop-report "${studies[@]}" --out "$out/tables.md"
