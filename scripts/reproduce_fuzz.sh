#!/usr/bin/env bash
# Produce docs/results/fuzz/: the live fuzz, 10,000 malformed messages by
# default, with the small MNIST model of scripts/small_model.sh.
# Usage: scripts/reproduce_fuzz.sh [MESSAGES]      (after scripts/setup.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/small_model.sh"
messages="${1:-10000}"
# The nodes' logs stay in runs/fuzz; the report, its CSVs and the output go to the docs.
resilient-perception fuzz "$small_model" --messages "$messages" --out runs/fuzz \
  --no-progress | tee runs/fuzz-output.txt
mkdir -p docs/results/fuzz
cp runs/fuzz/fuzz.json runs/fuzz/counts.csv runs/fuzz/rss.csv docs/results/fuzz/
mv runs/fuzz-output.txt docs/results/fuzz/output.txt
