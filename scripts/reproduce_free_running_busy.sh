#!/usr/bin/env bash
# Free-running cameras on a machine with other work: RUNS runs (default 4) of
# scripts/reproduce_free_running.sh with BUSY busy-looping processes beside the pipeline
# (default 2) and, if STARVE (a camera index) is given, those processes on one CPU with
# that camera node's main thread. Each run compares the cameras skipping images that waited
# over max_image_wait with working through every image; then one table of all runs with a
# paired t-test.
# Output: docs/results/free_running/<case>-run<k>/ (each run's raw JSON and table) and
# docs/results/free_running/<case>.md, <case> = busy<BUSY>[-starve<STARVE>]. Runs already
# there are kept, not redone.
#   scripts/reproduce_free_running_busy.sh 8 2      # other work on the machine
#   scripts/reproduce_free_running_busy.sh 8 3 2    # camera 2 short of CPU
set -euo pipefail
runs=${1:-4} busy=${2:-2} starve=${3:-}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
base=docs/results/free_running
case=busy$busy${starve:+-starve$starve}
for k in $(seq 1 "$runs"); do
  out=$base/$case-run$k
  [ -f "$out/free_running.json" ] ||
    OUT=$out scripts/reproduce_free_running.sh --busy "$busy" ${starve:+--starve-camera "$starve"}
done
.venv/bin/python -P - "$base" "$case" "$runs" "$*" <<'PY'
import json
import sys
from pathlib import Path

from resilient_perception.bench.free_running_bench import skip_comparison

base, case, runs, arguments = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
results = {f"{case}-run{k}": json.loads((base / f"{case}-run{k}" / "free_running.json")
                                        .read_text()) for k in range(1, runs + 1)}
text = (f"# Free-running cameras, {case}: skipping late images or not\n\n"
        f"`scripts/reproduce_free_running_busy.sh {arguments}`\n\n" + skip_comparison(results))
(base / f"{case}.md").write_text(text)
print(text, end="")
PY
