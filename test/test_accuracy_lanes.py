"""scripts/accuracy_lanes.sh carries unfinished runs' resume states across machines.

``carry`` copies each unfinished run's ``state.safetensors`` under 1 MB into the carry
folder (committed with the repository), ``restore`` puts them back on a machine that has
none; finished runs and states too big for the repository stay behind. ``next`` says what
``start`` would train here: runs under way first, and no ResNet run where it cannot finish.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from resilient_perception.throughput import has_amx_class_bf16

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "accuracy_lanes.sh"


def lanes(command: str, runs: Path, carry: Path) -> str:
    """Run the lane script's ``command`` on ``runs``; its stdout (it must exit 0)."""
    env = {**os.environ, "ACCURACY_CARRY": str(carry)}
    done = subprocess.run(["bash", str(SCRIPT), command, str(runs)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def state(runs: Path, name: str, size: int, finished: bool = False) -> bytes:
    """A run folder with a state of ``size`` bytes (and a final file when ``finished``)."""
    folder = runs / name
    folder.mkdir(parents=True)
    payload = os.urandom(size)
    (folder / "state.safetensors").write_bytes(payload)
    if finished:
        (folder / "evaluation.json").write_text("{}")
    return payload


def test_carry_takes_unfinished_small_states_and_restore_puts_them_back(tmp_path):
    runs, carry = tmp_path / "runs", tmp_path / "carry"
    running = state(runs, "devices-running", 925_352)
    state(runs, "devices-finished", 1000, finished=True)
    state(runs, "resnet-running", 1_000_001)

    said = lanes("carry", runs, carry)
    assert sorted(p.name for p in carry.iterdir()) == ["devices-running.safetensors"]
    assert (carry / "devices-running.safetensors").read_bytes() == running
    assert "not carried: resnet-running" in said

    new_machine = tmp_path / "new"
    new_machine.mkdir()
    (new_machine / "devices-other").mkdir()
    lanes("restore", new_machine, carry)
    assert (new_machine / "devices-running" / "state.safetensors").read_bytes() == running
    assert not (new_machine / "devices-other" / "state.safetensors").exists()


def test_restore_keeps_a_newer_local_state_and_carry_drops_finished_runs(tmp_path):
    runs, carry = tmp_path / "runs", tmp_path / "carry"
    state(runs, "devices-a", 100)
    lanes("carry", runs, carry)

    local = (runs / "devices-a" / "state.safetensors")
    local.write_bytes(b"a later epoch")
    lanes("restore", runs, carry)
    assert local.read_bytes() == b"a later epoch"

    (runs / "devices-a" / "evaluation.json").write_text("{}")
    said = lanes("carry", runs, carry)
    assert "no longer carried: devices-a" in said
    assert list(carry.iterdir()) == []


def test_a_recorded_run_is_never_restored(tmp_path):
    """A state left in the carry folder after its run finished must not train it again."""
    recorded = "devices-ours-s0"  # its record is in docs/results/accuracy/records
    carry, new_machine = tmp_path / "carry", tmp_path / "new"
    carry.mkdir()
    (carry / f"{recorded}.safetensors").write_bytes(b"a stale state")
    lanes("restore", new_machine, carry)
    assert not (new_machine / recorded).exists()
    assert "no longer carried" in lanes("carry", new_machine, carry)
    assert list(carry.iterdir()) == []


def test_next_starts_runs_under_way_first_and_leaves_a_resnet_where_it_cannot_finish(tmp_path):
    runs, carry = tmp_path / "runs", tmp_path / "carry"
    carry.mkdir()
    state(runs, "devices-ours-s0", 100)  # a run under way here (its record notwithstanding)
    plan = lanes("next", runs, carry).splitlines()
    assert plan[0].startswith("devices-ours-s0 train-budget-devices ")
    assert len(plan) == len(set(plan))
    # A ResNet run's state is too big to carry: it must finish in one session, which takes
    # a CUDA GPU or an AMX-class CPU.
    fits = torch.cuda.is_available() or has_amx_class_bf16()
    resnets = [line for line in plan if line.lstrip("# ").startswith("resnet-")]
    for line in resnets:
        assert line.startswith("# ") == (not fits), line
    assert all(line.startswith("# resnet-") for line in plan if line.startswith("#"))
