# Sourced by the live benchmarks' reproduce scripts (soak, fuzz): the installed package's
# environment and the small MNIST model they run (1 epoch on 6,000 images: they measure
# losses, counts, reactions and memory, not accuracy), trained here unless present.
# Leaves the shell in the repository root with small_model set to the checkpoint's path.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
small_model=runs/soak/model/model.safetensors
[ -f "$small_model" ] || resilient-perception train --epochs 1 --limit 6000 --threads 1 \
  --out "$(dirname "$small_model")"
