#!/usr/bin/env bash
# Produce docs/results/soak/: the soak with chaos, 30 minutes by default,
# with the small MNIST model of scripts/small_model.sh.
# Usage: scripts/reproduce_soak.sh [MINUTES]      (after scripts/setup.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/small_model.sh"
minutes="${1:-30}"
mkdir -p docs/results/soak
resilient-perception soak "$small_model" --minutes "$minutes" \
  --out docs/results/soak --log-dir runs/soak/logs | tee docs/results/soak/output.txt
