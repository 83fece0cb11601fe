#!/usr/bin/env bash
# The same MNIST test digits from the player and from six free-running camera drivers
# (640x480 YUYV best effort, own phases and jitter, one JPEG), side by side:
# bench-pipeline --free-running on the soak's small model (scripts/small_model.sh).
# Raw output: docs/results/free_running/free_running.json, the table free_running.md, the
# command's output output.txt (OUT=folder for another). Arguments go to the command, e.g.
#   OUT=docs/results/free_running/busy2 scripts/reproduce_free_running.sh --busy 2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/small_model.sh"
out=${OUT:-docs/results/free_running}
mkdir -p runs/free_running "$out"
cp "$small_model" runs/free_running/model.safetensors
command=(resilient-perception bench-pipeline runs/free_running/model.safetensors --free-running
  --out "$out" --log-dir runs/free_running/logs "$@")
{ echo "\$ ${command[*]}"; "${command[@]}"; } | tee "$out/output.txt"
