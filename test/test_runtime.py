"""The nodes' runtime path imports neither torch nor onnx; the numpy runtime equals torch.

Imports are checked in fresh interpreters (a test process has imported torch long ago), run
outside the source tree so they import the installed package, which has the messages.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resilient_perception.perception.frame_assembly import ClassifierHeads, Frame, fuse_frame
from resilient_perception.perception.model import DeviceCNN, views_to_float
from resilient_perception.perception.modes import FUSION_MODES
from resilient_perception.perception.modifier import fuse_with_failures
from resilient_perception.perception.runtime import DeviceRunner, softmax, views_to_float32
from test.conftest import domain_id, needs_data

NOT_ON_THE_RUNTIME_PATH = ("torch", "onnx")
NODE_MODULES = ("camera_node", "fusion_node", "player_node", "replay_node", "recorder_node",
                "dashboard_node")
TOLERANCE = 1e-6  # max abs difference between the numpy runtime and torch


def fresh_interpreter(code: str, cwd: Path) -> dict:
    """Run ``code`` in a new Python; it prints one JSON object, which is returned."""
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


LOADED = ("print(json.dumps({'loaded': [m for m in ('torch', 'onnx', 'onnxruntime') "
          "if m in sys.modules], **out}))")


@pytest.mark.ros
@pytest.mark.parametrize("node", NODE_MODULES)
def test_node_module_imports_neither_torch_nor_onnx(node, tmp_path):
    pytest.importorskip("resilient_perception.msg", reason="messages not built")
    out = fresh_interpreter(f"import json, sys\nimport resilient_perception.ros.{node}\n"
                            f"out = {{}}\n{LOADED}", tmp_path)
    assert not set(out["loaded"]) & set(NOT_ON_THE_RUNTIME_PATH)


@pytest.mark.ros
@needs_data
def test_camera_with_onnx_backend_and_fusion_node_run_without_torch(briefly_trained_onnx,
                                                                    tmp_path):
    """Configure and activate a camera node on an exported model, run it, build a fusion node."""
    pytest.importorskip("resilient_perception.msg", reason="messages not built")
    code = f"""
import json, sys
import numpy as np
import rclpy
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from resilient_perception.perception.frame_assembly import ClassifierHeads, Frame, fuse_frame
from resilient_perception.ros.camera_node import CameraNode
from resilient_perception.ros.fusion_node import FusionNode

rclpy.init(domain_id={domain_id()})
camera = CameraNode("camera_2", parameter_overrides=[
    Parameter("model_path", value={briefly_trained_onnx.format(2)!r}),
    Parameter("device_id", value=2), Parameter("autostart", value=False)])
ok = TransitionCallbackReturn.SUCCESS
out = {{"active": camera.trigger_configure() == ok and camera.trigger_activate() == ok}}
runner = camera._model.runner
probs, features = runner.run(np.zeros((1, 1, 10, 14), np.uint8))
out["provider"], out["probs_sum"] = runner.provider, float(probs.sum())
fusion = FusionNode("fusion", parameter_overrides=[Parameter("num_devices", value=2)])
heads = ClassifierHeads.empty(2, 10, features.shape[1])
for device in range(2):
    heads.set_head(device, *runner.head())
frame = Frame(stamp_ns=1, probs=np.vstack([probs, probs]), features=np.vstack([features] * 2),
              present=np.array([True, False]), first_arrival=0.0)
out["surrogates"] = fuse_frame(frame, heads, "avg")[1]
camera.destroy_node()
fusion.destroy_node()
rclpy.shutdown()
{LOADED}
"""
    out = fresh_interpreter(code, tmp_path)
    assert out["active"] and out["provider"] == "CPUExecutionProvider"
    assert out["probs_sum"] == pytest.approx(1.0, abs=1e-5) and out["surrogates"] == [1]
    assert "onnxruntime" in out["loaded"]  # the backend really ran
    assert not set(out["loaded"]) & set(NOT_ON_THE_RUNTIME_PATH)


def test_pixel_scaling_and_softmax_equal_torch():
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, size=(64, 1, 10, 14), dtype=np.uint8)
    torch_views = views_to_float(torch.from_numpy(views))  # the tensor branch: torch's division
    assert np.abs(views_to_float32(views) - torch_views.numpy()).max() <= TOLERANCE
    logits = rng.normal(scale=20.0, size=(256, 10)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert np.abs(softmax(logits) - expected).max() <= TOLERANCE


def test_device_runner_equals_the_torch_module():
    """The runner's numpy pre- and post-processing around torch's forward pass = torch alone."""
    torch.manual_seed(3)
    device = DeviceCNN(1, 10).eval()
    views = np.random.default_rng(1).integers(0, 256, size=(32, 1, 10, 14), dtype=np.uint8)
    probs, features = DeviceRunner.from_torch(device).run(views)
    with torch.inference_mode():
        logits, expected_features = device(views_to_float(torch.from_numpy(views)))
    assert np.abs(probs - torch.softmax(logits, -1).numpy()).max() <= TOLERANCE
    assert np.abs(features - expected_features.numpy()).max() <= TOLERANCE


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_numpy_fusion_equals_torch_modifier_for_every_live_set(mode):
    """fuse_frame (the fusion node's numpy path) against fuse_with_failures (torch)."""
    n, k, d = 4, 10, 16
    rng = np.random.default_rng(5)
    heads = ClassifierHeads.empty(n, k, d)
    for device in range(n):
        heads.set_head(device, rng.normal(size=(k, d)).astype(np.float32),
                       rng.normal(size=k).astype(np.float32))
    worst = 0.0
    for present in itertools.product([False, True], repeat=n):
        present = np.array(present)
        probs = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
        features = rng.normal(scale=3.0, size=(n, d)).astype(np.float32)
        fused, _ = fuse_frame(Frame(1, probs, features, present, 0.0), heads, mode)
        expected = fuse_with_failures(
            torch.from_numpy(probs)[None], torch.from_numpy(features)[None],
            torch.from_numpy(heads.weights), torch.from_numpy(heads.biases),
            torch.from_numpy(present)[None], mode=mode)[0].numpy()
        worst = max(worst, float(np.abs(fused - expected).max()))
    assert worst <= TOLERANCE
