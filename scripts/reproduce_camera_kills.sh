#!/usr/bin/env bash
# Produce docs/results/soak/camera-kills-{shm,udp}/: the soak with one camera killed -9
# every 4 s (in turn, each restarted 2 s later) for MINUTES (default 4), once with the
# fusion node's samples over Fast DDS's shared memory and once over UDP (`soak
# --fusion-transport`): how soon each kill's frames get the camera's surrogate, whether the
# fusion node keeps hearing the cameras through the churn, and how often Fast DDS holds the
# fusion node itself up (the report's "fusion node stalled" notes, its own_stall_s).
# The reports also say whether the fusion node ever reported a camera it did not hear
# although DDS showed it (`unheard_publishers`).
# Usage: scripts/reproduce_camera_kills.sh [MINUTES [TRANSPORT...]]   (after scripts/setup.sh)
#   e.g. `scripts/reproduce_camera_kills.sh 8 shm`: 8 minutes over shared memory only, into
#   docs/results/soak/camera-kills-shm-8min/ (other lengths than 4 get the suffix).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/small_model.sh"
minutes="${1:-4}"
transports=("${@:2}")
[ ${#transports[@]} -gt 0 ] || transports=(shm udp)
suffix=$([ "$minutes" = 4 ] || echo "-${minutes}min")
events=()
for t in $(seq 8 4 $((minutes * 60 - 6))); do
  camera=$(((t / 4) % 6))
  events+=("$t:kill:camera_$camera" "$((t + 2)):restart:camera_$camera")
done
schedule=$(IFS=,; echo "${events[*]}")
for transport in "${transports[@]}"; do
  out=docs/results/soak/camera-kills-$transport$suffix
  mkdir -p "$out"
  # exit status 1 (a target missed) is a result here, not a failure of the script
  resilient-perception soak "$small_model" --minutes "$minutes" --schedule "$schedule" \
    --fusion-transport "$transport" --out "$out" --log-dir "runs/soak/camera-kills-$transport$suffix" \
    | tee "$out/output.txt" || true
done
