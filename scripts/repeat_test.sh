#!/usr/bin/env bash
# Run one test (or any pytest selection) N times in a row, each in a fresh pytest process,
# to tell a fixed flake from a lucky run. Prints one line per run and a closing
# "N passed, M failed" line; each run's full output goes to OUT/run-<i>.txt and its test
# files (the nodes' logs) to OUT/tmp-<i>/.
#
# Usage: scripts/repeat_test.sh N OUT PYTEST_ARGS...
#   e.g. scripts/repeat_test.sh 20 runs/flake -s test/test_distributed.py -k throttled_link
set -uo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 N OUT PYTEST_ARGS..." >&2
  exit 2
fi
runs=$1 out=$2
shift 2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST PATH="${VENV:-$root/.venv}/bin:$PATH"
mkdir -p "$out"
passed=0 failed=0
for i in $(seq 1 "$runs"); do
  log="$out/run-$i.txt"
  if (cd "$root" && pytest -p no:cacheprovider -q --basetemp="$out/tmp-$i" "$@") >"$log" 2>&1
  then
    passed=$((passed + 1)) verdict=passed
  else
    failed=$((failed + 1)) verdict=FAILED
  fi
  echo "run $i: $verdict ($(tail -n 1 "$log"))"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
