"""The CLI's start-up imports, and the CLI without the ``[onnx]`` extra (``pip install .``).

Each check runs the CLI's ``main`` in a fresh interpreter outside the source tree (a test
process imported torch long ago) and looks at ``sys.modules``; nothing is timed here (the
timing is in the README, from hyperfine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from resilient_perception.cli import build_parser
from test.conftest import DATA_ROOT, ROOT, needs_data

HEAVY = ("torch", "onnx", "onnxruntime", "scipy", "ortools", "pymoo", "rclpy")


def run_mains(argvs: list[list[str]], cwd: Path, block: tuple[str, ...] = ()) -> dict:
    """``main(argv)`` for each argv in one new Python with ``block`` unimportable.

    Returns each run's status, stdout and stderr, and which of :data:`HEAVY` were imported
    by the end. A module set to None in ``sys.modules`` cannot be imported
    (ModuleNotFoundError) and ``importlib.util.find_spec`` does not find it: what a machine
    without it looks like.
    """
    code = f"""
import contextlib, io, json, sys
for name in {block!r}:
    sys.modules[name] = None
from resilient_perception.cli import main
runs = []
for argv in {argvs!r}:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # --help, --version, usage errors
            status = exc.code
    runs.append({{"status": status, "out": out.getvalue(), "err": err.getvalue()}})
print(json.dumps({{"runs": runs,
                  "heavy": [m for m in {HEAVY!r} if sys.modules.get(m) is not None]}}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, timeout=600,
                            env={**os.environ, "RESILIENT_PERCEPTION_DATA": str(DATA_ROOT)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_main(argv: list[str], cwd: Path, block: tuple[str, ...] = ()) -> dict:
    """One run of :func:`run_mains`: its status, out and err, and the heavy modules."""
    result = run_mains([argv], cwd, block)
    return {**result["runs"][0], "heavy": result["heavy"]}


def subcommands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(sub.choices)


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_import_no_heavy_module(args, tmp_path):
    result = run_main(args, tmp_path)
    assert result["status"] == 0
    assert result["heavy"] == []
    if args == ["--version"]:
        from resilient_perception import __version__

        assert result["out"].strip() == f"resilient-perception {__version__}"


def test_every_subcommand_help_imports_no_heavy_module(tmp_path):
    names = subcommands()
    result = run_mains([[name, "--help"] for name in names], tmp_path)
    assert [run["status"] for run in result["runs"]] == [0] * len(names)
    assert result["heavy"] == []


@needs_data
def test_torch_workflow_runs_without_onnx_and_onnx_commands_say_how_to_get_it(tmp_path):
    """train, evaluate and plan work with onnx and onnxruntime missing; export exits 2."""
    block = ("onnx", "onnxruntime")
    trained = run_main(["train", "--limit", "300", "--epochs", "1", "--threads", "1",
                        "--out", "m"], tmp_path, block)
    assert trained["status"] == 0, trained["err"]
    evaluated = run_main(["evaluate", "m/model.safetensors", "--limit", "200"], tmp_path, block)
    assert evaluated["status"] == 0, evaluated["err"]
    # the untrained profile's accuracy is chance level: the example's threshold, lowered
    fleet = yaml.safe_load((ROOT / "config/fleet_example.yaml").read_text())
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump({**fleet, "accuracy_threshold": 0.05}))
    planned = run_main([
        "plan", "fleet.yaml", "--profile",
        str(ROOT / "docs/results/resnet/untrained-profile.json"), "--time-limit", "5",
        "--out", "plan.json"], tmp_path, block)
    assert planned["status"] == 0, planned["err"]
    assert (tmp_path / "plan.json").is_file()
    for args in (["export", "m/model.safetensors", "--out", "onnx"],
                 ["bench-cost", "m/model.safetensors", "--out", "cost"]):
        refused = run_main(args, tmp_path, block)
        assert refused["status"] == 2
        assert "onnx and onnxruntime" in refused["err"]
        assert "pip install '.[onnx]'" in refused["err"]
        assert "Traceback" not in refused["err"]
    assert not (tmp_path / "onnx").exists()


def test_bag_commands_without_rosbags_say_how_to_get_it(tmp_path):
    refused = run_main(["check-bag", "any.bag"], tmp_path, ("rosbags",))
    assert refused["status"] == 2
    assert "needs rosbags" in refused["err"] and "pip install '.[bags]'" in refused["err"]
    assert "Traceback" not in refused["err"]
