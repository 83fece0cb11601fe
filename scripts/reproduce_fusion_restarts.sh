#!/usr/bin/env bash
# Produce docs/results/soak/restarts-{shm,udp}/: the soak with the fusion node killed -9 and
# restarted every 20 s for MINUTES (default 4), once with the fusion node's samples over
# Fast DDS's shared memory and once over UDP (`soak --fusion-transport`), to compare how soon
# a restarted fusion node has its classifier heads and fuses complete frames again.
# Usage: scripts/reproduce_fusion_restarts.sh [MINUTES]      (after scripts/setup.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/small_model.sh"
minutes="${1:-4}"
events=()
for t in $(seq 10 20 $((minutes * 60 - 15))); do
  events+=("$t:kill:fusion" "$((t + 1)):restart:fusion")
done
schedule=$(IFS=,; echo "${events[*]}")
for transport in shm udp; do
  out=docs/results/soak/restarts-$transport
  mkdir -p "$out"
  # exit status 1 (a target missed) is a result here, not a failure of the script
  resilient-perception soak "$small_model" --minutes "$minutes" --schedule "$schedule" \
    --fusion-transport "$transport" --out "$out" --log-dir "runs/soak/restarts-$transport" \
    | tee "$out/output.txt" || true
done
