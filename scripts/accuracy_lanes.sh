#!/usr/bin/env bash
# The long accuracy training runs in background lanes (docs/results.md, "Accuracy at the
# papers' budget"): the six CIFAR-10 device CNNs at the paper's 40 epochs (`paper` and
# `ours`, seeds 0..2, 50%-overlapping views, flip + translate before cutting), 10-epoch
# pilots of changes to that recipe, and the fast ResNet recipe (plain and stochastic depth).
#
# Usage: scripts/accuracy_lanes.sh start|stop|pause|resume|status|next|report|carry|restore [OUT]
#   OUT defaults to $ACCURACY_RUNS or ../runs/accuracy (outside the repository, so runs
#   survive branch changes). LANES (default 2) lanes, THREADS (default 1) torch threads
#   each, nice 19.
#   start   snapshot the committed HEAD (git archive into OUT/code/<commit>) and start the
#           lanes on it; every lane walks the same queue, runs under way (here or carried)
#           first, skips finished runs and runs held by another lane (flock), and continues
#           an interrupted run from its last epoch.
#           After a run finishes: `evaluate --gated` for a device run (RUN/eval-test/), the
#           drop study for a ResNet (RUN/drop-study/: Tables I/II, profile.json).
#           Run it again after a session restart: it continues where the lanes stopped.
#   pause   SIGSTOP every lane's (LANE=n: only lane n's) process group (e.g. while the
#           test suite or a benchmark runs); resume sends SIGCONT. stop sends SIGTERM (a
#           run loses its current epoch).
#   status  lanes' state and every run's progress (epochs done, last test accuracy).
#   next    the runs `start` would train on this machine, in order, and those it leaves to
#           another (an unfinished ResNet run where there is neither a CUDA GPU nor native
#           bf16: its state is too big to carry, so it must finish within one session).
#   report  docs/results/accuracy/ (tables.md, epochs.csv, curves.png) from the runs so far.
#   run NAME [OUT]  one run of the queue in the foreground, as a lane runs it (its lock,
#           code snapshot and step after); exit 1 when another process holds it or it
#           failed (scripts/reproduce_resnet.sh uses it).
#   carry   copy every unfinished run's resume state that is under 1 MB (a device run's:
#           six CNNs and their momentum, ~0.9 MB) into CARRY, to be committed, so a run
#           continues on the next machine; a ResNet's state is too big and stays behind.
#           Carried states of runs that have finished are removed.
#   restore put CARRY's states into OUT where OUT has none for that run (a lane does this
#           before it starts a run, so `start` on a new machine continues them).
#   CARRY defaults to $ACCURACY_CARRY or docs/results/accuracy/inflight.
# Budget (measured by the pilots, one thread, bf16, shared machine): see docs/results.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
out_arg=$([ "${1:-}" = run ] && echo "${3:-}" || echo "${2:-}")  # run's OUT comes third
out="${out_arg:-${ACCURACY_RUNS:-$repo/../runs/accuracy}}"
mkdir -p "$out/lanes"
out="$(cd "$out" && pwd)"
lanes="${LANES:-2}"
carried="${ACCURACY_CARRY:-$repo/docs/results/accuracy/inflight}"
carry_limit=1000000  # bytes: no file over 1 MB goes into the repository

# The queue: NAME COMMAND-ARGS. Interleaved so the two lanes split the ResNets and devices.
queue() {
  echo "resnet-w16 train-resnet-recipe --base-width 16 --epochs 24"
  echo "devices-paper-s0 train-budget-devices --method paper --seed 0"
  echo "resnet-w16-sd train-resnet-recipe --base-width 16 --epochs 24 --stochastic-depth 0.5"
  echo "devices-ours-s0 train-budget-devices --method ours --seed 0"
  echo "devices-paper-s1 train-budget-devices --method paper --seed 1"
  echo "devices-ours-s1 train-budget-devices --method ours --seed 1"
  # Pilots of what might lift the devices, which plateau near 75% (docs/results.md): the
  # 10-epoch reference, larger views, a higher learning rate. A pilot has no step after.
  local pilot="train-budget-devices --method ours --seed 0 --epochs 10"
  echo "devices-pilot-e10 $pilot"
  echo "devices-pilot-e10-overlap0.9 $pilot --overlap 0.9"
  # The third seed (a paired test over seeds needs it) goes before the last pilot.
  echo "devices-paper-s2 train-budget-devices --method paper --seed 2"
  echo "devices-ours-s2 train-budget-devices --method ours --seed 2"
  echo "devices-pilot-e10-lr0.05 $pilot --lr 0.05"
  # Width 16 stopped at 86.25% after 24 epochs; a one-cycle run gains most late, so longer.
  echo "resnet-w16-e40 train-resnet-recipe --base-width 16 --epochs 40"
  # The 10-epoch learning-rate pilot gained 2.3 points: does the gain hold at 40 epochs?
  echo "devices-ours-lr0.05-s0 train-budget-devices --method ours --seed 0 --lr 0.05"
  # Seed 0 gained 0.8 / 1.2 points at 40 epochs; a second seed tells a gain from seed noise.
  echo "devices-ours-lr0.05-s1 train-budget-devices --method ours --seed 1 --lr 0.05"
  # The devices score no higher on their augmented training batches than on the test split:
  # do they fit better, and test better, without flip and translate?
  echo "devices-pilot-e10-noaug $pilot --pad 0 --no-flip"
  # The pilot without augmentation gained 1.8 / 1.9 points at 10 epochs: at 40 epochs, alone
  # and with the higher learning rate?
  echo "devices-ours-noaug-s0 train-budget-devices --method ours --seed 0 --pad 0 --no-flip"
  echo "devices-ours-noaug-lr0.05-s0 train-budget-devices --method ours --seed 0 --lr 0.05 --pad 0 --no-flip"
  # Pooled by geometric mean the same devices score 0.4-0.8 points more: does scoring the
  # fused-output loss in that pooling too add more? Beside devices-pilot-e10-noaug.
  echo "devices-pilot-e10-noaug-geo train-budget-devices --method ours-geo --seed 0 --epochs 10 --pad 0 --no-flip"
  # That pilot gained 1.0 / 0.7 points pooled by geo over its ours twin: at 40 epochs, on the
  # best recipe so far (no augmentation, lr 0.05), beside devices-ours-noaug-lr0.05-s0.
  echo "devices-ours-geo-noaug-lr0.05-s0 train-budget-devices --method ours-geo --seed 0 --lr 0.05 --pad 0 --no-flip"
  # It gained 1.1 / 1.0 points pooled by geo at 40 epochs, one seed; runs of one recipe differ
  # by up to 0.55: a second seed tells the gain from seed noise.
  echo "devices-ours-geo-noaug-lr0.05-s1 train-budget-devices --method ours-geo --seed 1 --lr 0.05 --pad 0 --no-flip"
  # Its twin trained for avg pooling: seed 1 of devices-ours-noaug-lr0.05-s0, so the geo
  # loss's gain is paired seed by seed, not set against one seed of the reference.
  echo "devices-ours-noaug-lr0.05-s1 train-budget-devices --method ours --seed 1 --lr 0.05 --pad 0 --no-flip"
}

# A finished run's record (settings, every epoch, final evaluation) is kept in the repository
# by `report`, so a run finished on an earlier machine is not trained again on a new one.
recorded() { [ -f "$repo/docs/results/accuracy/records/$1.json" ]; }

finished() {  # a run folder holds its final file
  [ -f "$1/evaluation.json" ] || [ -f "$1/checkpoint.safetensors" ]
}

after_done() {  # name, run folder: the step after training has its result
  case "$1" in
    devices-pilot-*) true ;;
    devices-*) [ -f "$2/eval-test/gated.json" ] ;;
    resnet-*) [ -f "$2/drop-study/drop_study.json" ] ;;
  esac
}

after() {  # the step after training: the gated Modifier / the drop study
  after_done "$1" "$2" && return 0
  case "$1" in
    devices-*) OMP_NUM_THREADS=1 nice -n 19 "$python" -m resilient_perception.cli evaluate \
        "$2/model.safetensors" --gated --out "$2/eval-test" ;;
    resnet-*) nice -n 19 "$python" -m resilient_perception.cli drop-study "$2" --threads 1 \
        --out "$2/drop-study" ;;
  esac
}

restore_one() {  # run name: its carried state into OUT unless OUT has one or it is recorded
  local dir="$out/$1" state="$carried/$1.safetensors"
  if [ -f "$state" ] && [ ! -f "$dir/state.safetensors" ] && ! finished "$dir" &&
     ! recorded "$1"; then
    mkdir -p "$dir"
    cp "$state" "$dir/state.safetensors"
    echo "restored $1 from $state"
  fi
}

run_one() {  # run name, command args...: train it (resumable), then the step after
  local name="$1" dir="$out/$1"; shift
  restore_one "$name"
  mkdir -p "$dir"
  # -n: a run another process holds is skipped; the lock goes with the process.
  if ! finished "$dir"; then
    flock -n "$dir/.lock" nice -n 19 "$python" -m resilient_perception.cli "$@" \
      --threads "${THREADS:-1}" --out "$dir" >>"$dir/train.log" 2>&1 || true
  fi
  if finished "$dir"; then
    flock -n "$dir/.lock" bash -c "$(declare -f after_done after); python='$python'; after $name $dir" \
      >>"$dir/after.log" 2>&1 || true
  fi
}

# A ResNet run has to finish within its session (its state, 18 MB at width 16, is too big to
# carry). An AMX machine (bf16 matmul peak about 1,400 GFLOP/s on one thread) trained width 16
# at 271 CPU s an epoch. An AVX-512 BF16 one (about 220 on one thread) took 152 s of wall time
# an epoch on two threads with the machine to itself (329 s the first, compiling): 40 epochs
# need its two cores for about two hours, so beside another lane and the session's test suite
# they outlast the session. There the lanes leave the run; `run NAME` at the start of a
# session, with nothing else running, still trains it.
resnet_fits() {  # exit 0 where a CUDA GPU or an AMX-class CPU core is here
  "$python" -c 'import sys, torch
from resilient_perception.throughput import has_amx_class_bf16
sys.exit(0 if torch.cuda.is_available() or has_amx_class_bf16() else 1)'
}

left_here() {  # run name: why the lanes leave it to another machine, or nothing
  case "$1" in
    resnet-*) if ! finished "$out/$1" && [ "$resnet_fits_here" != yes ]; then
        echo "a ResNet run has to finish within a session: needs a CUDA GPU or AMX"
      fi ;;
  esac
}

plan() {  # the runs a lane takes, in order ("NAME ARGS"; "# NAME: why" for one left here)
  local pass name args why
  # Runs already under way first (here or carried from another machine): a run carried in
  # should not wait behind queued runs that cannot finish in this session.
  for pass in under-way all; do
    while read -r name args; do
      if recorded "$name" && ! [ -d "$out/$name" ]; then continue; fi
      if [ "$pass" = under-way ] && ! [ -f "$out/$name/state.safetensors" ] &&
         ! [ -f "$carried/$name.safetensors" ]; then continue; fi
      why=$(left_here "$name")
      if [ -n "$why" ]; then echo "# $name: left to another machine ($why)"; continue; fi
      echo "$name $args"
    done < <(queue)
  done
}

lane() {  # lane number; runs the queue once over, then exits
  local n="$1" name args
  while read -r name args; do
    if [ "$name" = "#" ]; then echo "lane $n: $args"; continue; fi
    # shellcheck disable=SC2086  # args: the queue's words
    run_one "$name" $args
  done < <(plan)
  echo "lane $n: queue done $(date -Is)" >>"$out/lanes/lane$n.log"
}

snapshot() {  # the committed HEAD's code in OUT/code/<commit>; sets python and the env
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "note: uncommitted changes are not part of the lanes' code (HEAD is)" >&2
  fi
  commit=$(git rev-parse HEAD)
  local code="$out/code/$commit"
  if [ ! -d "$code" ]; then
    mkdir -p "$code"
    git archive HEAD resilient_perception | tar -x -C "$code"
  fi
  python="$repo/.venv/bin/python"
  export PYTHONPATH="$code" RESILIENT_PERCEPTION_COMMIT="$commit" PYTHONUNBUFFERED=1
}

pgids() { cat "$out"/lanes/lane${LANE:-*}.pid 2>/dev/null || true; }  # unquoted: the * globs

case "${1:-status}" in
  start)
    snapshot
    resnet_fits_here=$(resnet_fits && echo yes || echo no)
    for n in $(seq 1 "$lanes"); do
      pidfile="$out/lanes/lane$n.pid"
      if [ -f "$pidfile" ] && kill -0 -- "-$(cat "$pidfile")" 2>/dev/null; then
        echo "lane $n already running (process group $(cat "$pidfile"))"; continue
      fi
      # setsid: each lane is its own process group, so pause/stop reach its children. It
      # is also its own session, and so its own scheduler autogroup where the kernel has
      # them (sched_autogroup_enabled): nice then ranks a process only within its
      # autogroup, and the lane's nice 19 would leave it an equal share of the CPU against
      # the test suite. Niceing the lane's autogroup makes it yield to everything else.
      setsid bash -c "echo 19 >/proc/self/autogroup 2>/dev/null || true; $(declare -f queue recorded finished after_done after restore_one run_one left_here plan lane); out='$out' repo='$repo' python='$python' carried='$carried' resnet_fits_here='$resnet_fits_here'; lane $n" \
        >>"$out/lanes/lane$n.log" 2>&1 < /dev/null &
      echo $! >"$pidfile"
      echo "lane $n started (process group $!) on $commit"
      sleep 20  # the lanes claim different first runs
    done ;;
  run)
    # One queued run in the foreground, with the lanes' code, lock and step after; exit 0
    # when it is finished and its step after is done, 1 when another process holds it.
    name="${2:?usage: $0 run NAME [OUT]}"
    args=$(queue | awk -v n="$name" '$1 == n {$1 = ""; print}')
    [ -n "$args" ] || { echo "no run named $name in the queue" >&2; exit 2; }
    snapshot
    # shellcheck disable=SC2086
    run_one "$name" $args
    finished "$out/$name" && after_done "$name" "$out/$name" ;;
  carry)
    mkdir -p "$carried"
    for state in "$out"/*/state.safetensors; do
      [ -f "$state" ] || continue
      dir=$(dirname "$state"); name=$(basename "$dir")
      if finished "$dir"; then continue; fi
      size=$(stat -c %s "$state")
      if [ "$size" -gt "$carry_limit" ]; then
        echo "not carried: $name ($size bytes, over $carry_limit)"; continue
      fi
      cp "$state" "$carried/$name.safetensors"
      echo "carried: $name ($size bytes)"
    done
    for state in "$carried"/*.safetensors; do
      [ -f "$state" ] || continue
      name=$(basename "$state" .safetensors)
      if recorded "$name" || finished "$out/$name"; then
        rm "$state"; echo "finished, no longer carried: $name"
      fi
    done ;;
  restore)
    for state in "$carried"/*.safetensors; do
      if [ -f "$state" ]; then restore_one "$(basename "$state" .safetensors)"; fi
    done ;;
  stop|pause|resume)
    signal=$([ "$1" = stop ] && echo TERM || { [ "$1" = pause ] && echo STOP || echo CONT; })
    for g in $(pgids); do kill -"$signal" -- "-$g" 2>/dev/null && echo "SIG$signal -> $g"; done
    if [ "$1" = stop ]; then rm -f "$out"/lanes/lane${LANE:-*}.pid; fi ;;
  next)
    # What `start` would train here, in order, and which runs it leaves to another machine.
    python="$repo/.venv/bin/python"
    resnet_fits_here=$(resnet_fits && echo yes || echo no)
    plan | awk '!seen[$0]++' ;;
  status)
    for f in "$out"/lanes/lane*.pid; do
      [ -f "$f" ] || continue
      g=$(cat "$f")
      state=$(ps -o stat= -p "$g" 2>/dev/null || echo gone)
      echo "$(basename "$f" .pid): process group $g, state $state"
    done
    "$repo/.venv/bin/python" - "$out" <<'EOF'
import json, sys
from pathlib import Path
for d in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "train.log").exists()):
    m = d / "metrics.json"
    if not m.exists():
        print(f"{d.name:22s} started, no epoch finished yet"); continue
    meta = json.loads(m.read_text())
    log, epochs = meta["log"], meta["settings"]["recipe"]["epochs"]
    e = log[-1]
    acc = e.get("test_acc", e.get("test_no_failure"))
    done = "done" if (d / "evaluation.json").exists() or (d / "checkpoint.safetensors").exists() else ""
    print(f"{d.name:22s} epoch {e['epoch']:2d}/{epochs} test {100 * acc:.2f}%  "
          f"{e['seconds']:.0f} s/epoch ({e['cpu_seconds']:.0f} CPU s) {done}")
EOF
    ;;
  report)
    # Tables, epochs.csv and learning curves of every run so far into docs/results/accuracy
    # (this checkout's code; seconds of CPU).
    "$repo/.venv/bin/resilient-perception" accuracy-report --runs "$out" \
      --out docs/results/accuracy ;;
  *) echo "usage: $0 start|stop|pause|resume|status|next|report|carry|restore [OUT] | run NAME [OUT]" >&2
     exit 2 ;;
esac
