#!/usr/bin/env bash
# Produce docs/results/placement/: the adaptive-ResNet paper's Section V sweeps (weights,
# battery, request rate, compute capacity) and solve time vs fleet size, each with the
# exact CP-SAT solver, the paper's relaxation + Algorithm 1 and its genetic algorithm, two
# seeds; then tables.md, summary/instance CSVs and PNG figures.
# Resumable: one result file per (experiment, point, solver, seed), skipped when present.
# About 30 min of one CPU core (niced; CP-SAT with one worker, torch with one thread).
# Usage: scripts/reproduce_placement.sh [PROFILE]
#        (after scripts/setup.sh; default: the current ResNet's drop-study profile,
#        docs/results/resnet/recipe-w16/profile.json, made by scripts/reproduce_resnet.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
profile="${1:-docs/results/resnet/recipe-w16/profile.json}"
nice -n 10 resilient-perception placement-sweep --profile "$profile" \
  --out docs/results/placement --seeds 0 1 --work-limit 2 --ga-generations 500
