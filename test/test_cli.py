"""The `resilient-perception` command end to end on real MNIST, and its error handling."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from test.conftest import CLI, DATA_ROOT, needs_cli, needs_data, run_cli_process

pytestmark = [needs_cli, needs_data]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli_process(*args, cwd=cwd,
                           env={**os.environ, "RESILIENT_PERCEPTION_DATA": str(DATA_ROOT)})


def test_train_then_evaluate_writes_results(tmp_path):
    trained = run("train", "--limit", "1500", "--epochs", "1", "--seed", "3", "--out", "m",
                  cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    for name in ("model.safetensors", "history.json", "history.csv"):
        assert (tmp_path / "m" / name).is_file()
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(history) == 1 and history[0]["images"] == 1500

    evaluated = run("evaluate", "m/model.safetensors", "--limit", "500", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((tmp_path / "m" / "eval-test" / "summary.json").read_text())
    assert summary["samples"] == 500 and summary["train_seed"] == 3
    assert set(summary["summary"]) == {"avg", "max"}
    rows = (tmp_path / "m" / "eval-test" / "failures.csv").read_text().splitlines()
    # header + 63 failure sets x 2 modes x with/without Modifier
    assert len(rows) == 1 + 63 * 2 * 2
    assert "mean single" in evaluated.stdout

    reported = run("report", "quick=m/eval-test/summary.json", "--out", "tables.md",
                   cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    table = (tmp_path / "tables.md").read_text()
    assert "| paper (mnist) | avg | 96.25 |" in table
    assert table.count("| quick |") == 2  # avg and max rows
    bad = run("report", "no-equals-sign", cwd=tmp_path)
    assert bad.returncode == 2 and "NAME=" in bad.stderr


def test_killed_training_resumes_from_its_last_epoch(tmp_path):
    args = ["train", "--limit", "600", "--seed", "1", "--threads", "1", "--out", "m"]
    env = {**os.environ, "RESILIENT_PERCEPTION_DATA": str(DATA_ROOT)}
    state = tmp_path / "m" / "training-state.safetensors"
    proc = subprocess.Popen([CLI, *args, "--epochs", "3"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not state.exists() and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.kill()  # no clean-up: like a session ending mid-run
        proc.wait()
    assert state.exists() and not (tmp_path / "m" / "model.safetensors").exists()

    again = run(*args, "--epochs", "3", cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    other = run(*args, "--epochs", "4", "--resume", cwd=tmp_path)
    assert other.returncode == 2 and "epochs differ" in other.stderr

    resumed = run(*args, "--epochs", "3", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing" in resumed.stdout
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert not state.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--dataset", "nope"), "unknown dataset"),
        (("train", "--grid", "3by2"), "ROWSxCOLS"),
        (("train", "--grid", "0x2"), "at least 1x1"),
        (("export", "model.safetensors", "--image-size", "28"), "HxW such as 28x28"),
        (("train", "--epochs", "0"), "must be >= 1"),
        (("train-budget-devices", "--out", "r", "--lr", "0"), "--lr: must be > 0"),
        (("train-budget-devices", "--out", "r", "--pad", "-4"), "--pad: must be >= 0"),
        (("train", "--drop-k", "6", "--limit", "10"), "drop_k"),
        (("evaluate", "missing.safetensors"), "missing.safetensors: no such checkpoint"),
        (("train", "--fused-mode", "max"), "invalid choice: 'max'"),
        (("evaluate", "m.safetensors", "--dataset", "idx:images-only"), "idx:<images_path>"),
        (("evaluate", "--noise", "9:gaussian:0.1", "x"), "x"),
        (("bench-pipeline", "m.safetensors", "--busy", "2"), "go with --free-running"),
        (("bench-pipeline", "m.safetensors", "--free-running", "--starve-camera", "2"),
         "--starve-camera needs --busy"),
    ],
)
def test_bad_options_exit_non_zero_with_a_message(tmp_path, args, message):
    for name in ("m.safetensors", "model.safetensors"):  # so the option is what is wrong
        (tmp_path / name).write_bytes(b"")
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_checkpoint_is_rejected(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    result = run("evaluate", "bad.safetensors", cwd=tmp_path)
    assert result.returncode == 2 and "bad.safetensors" in result.stderr


def test_help_documents_every_subcommand(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("train", "evaluate", "bench-train", "demo"):
        assert command in result.stdout
