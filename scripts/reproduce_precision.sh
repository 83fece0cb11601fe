#!/usr/bin/env bash
# Produce docs/results/edge/precision.{json,md}: the demo's device model (MNIST, 3x2 grid,
# 2 epochs, seed 0) exported in fp32, int8 (static QDQ, 1,000 calibration views per device
# from the training split, seed 0) and fp16, each scored on the whole MNIST test split:
# avg fusion with the Modifier, mean accuracy over every failed set of each size.
# Usage: scripts/reproduce_precision.sh          (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
model_dir=runs/precision
out=docs/results/edge
[ -f "$model_dir/model.safetensors" ] ||
  resilient-perception train --epochs 2 --seed 0 --out "$model_dir"
resilient-perception export "$model_dir/model.safetensors" --out "$model_dir/onnx" \
  --int8 --fp16 --seed 0
cp "$model_dir/onnx/precision.json" "$model_dir/onnx/precision.md" "$out/"
