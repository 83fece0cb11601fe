#!/usr/bin/env bash
# Produce docs/results/placement_scale/: the example fleet (config/fleet_example.yaml, 10
# devices x 16 blocks) solved 5 times and generated fleets of 10, 25, 50 and 100 robots
# (seeds 0 and 1) solved once, each by the exact solver, the paper's relaxation +
# Algorithm 1 and its GA under the same 1 s wall-clock limit (one thread each); then
# results.csv/json, scale.png and tables.md. A few minutes of one core (the heuristic's
# program for 100 robots alone takes tens of seconds to build). Solve times depend on how
# loaded the machine is: the 1-minute load average is stored beside every row. Then the
# example alone to its proven optimum, and the planner node's re-planning for 50 robots.
# Usage: scripts/reproduce_placement_scale.sh [PROFILE]  (after scripts/setup.sh)
#   The committed results were made with the width-8 baseline's profile (the default here);
#   they were not re-run on the current ResNet (recipe-w16/profile.json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
profile="${1:-docs/results/resnet/baseline-w8/plain/profile.json}"
resilient-perception bench-placement-scale --profile "$profile" \
  --out docs/results/placement_scale --sizes 10 25 50 100 --seeds 0 1 --time-limit 1 --repeats 5
# The example's time to a proven optimum: the exact solver alone, 10 times, 10 s limit.
resilient-perception bench-placement-scale --profile "$profile" \
  --out docs/results/placement_scale/example --sizes --solvers cpsat --time-limit 10 --repeats 10
# Robot loss -> new plan with the real planner node and 50 simulated robots.
resilient-perception bench-replan --profile "$profile" --robots 50 --losses 30 \
  --out docs/results/placement_scale/replan
