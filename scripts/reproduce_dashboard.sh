#!/usr/bin/env bash
# The dashboard's screenshot in the README and its with/without benchmark in
# docs/results/dashboard: the live demo with the dashboard open in headless Chromium (the
# screenshot one second before the end: camera 1 restarted, camera 4 dead), then
# bench-pipeline with --dashboard (its steady stream without the dashboard, with the page
# open, and without again). On the soak's small model (scripts/small_model.sh): these
# measure liveness, latency and the page, not accuracy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/small_model.sh"
mkdir -p runs/dashboard
cp "$small_model" runs/dashboard/model.safetensors
resilient-perception demo --out runs/dashboard --dashboard 0 \
  --screenshot docs/images/dashboard.png
# The demo's report beside the benchmark: the run the screenshot shows.
mkdir -p docs/results/dashboard/demo
cp runs/dashboard/live/report.json runs/dashboard/live/report.md runs/dashboard/live/live.csv \
  docs/results/dashboard/demo/
resilient-perception bench-pipeline runs/dashboard/model.safetensors --dashboard \
  --out docs/results/dashboard --log-dir runs/dashboard/bench-logs
# Once more on the same model: the spread between two runs is the noise the with/without
# difference is judged against.
resilient-perception bench-pipeline runs/dashboard/model.safetensors --dashboard \
  --out docs/results/dashboard/repeat --log-dir runs/dashboard/bench-logs
