"""Device cost: int8 quantisation of exported devices and `bench-cost`, on real MNIST.

Nothing here times anything: the timings are only written, never asserted.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from resilient_perception.cli import main
from resilient_perception.paper.device_cost import (
    onnx_size_kb,
    quantize_device_onnx,
    runner_outputs,
)
from resilient_perception.perception.export import DeviceRunner
from test.conftest import DATA_ROOT

N_DEVICES = 6


@pytest.fixture(scope="module")
def int8_onnx(briefly_trained_onnx, mnist_views, tmp_path_factory) -> str:
    """The briefly trained devices quantised to int8, calibrated on test views 1500..1999.

    Those views are never scored below (the agreement uses the first 500).
    """
    views, _ = mnist_views
    folder = tmp_path_factory.mktemp("int8")
    for i in range(N_DEVICES):
        quantize_device_onnx(briefly_trained_onnx.format(i), folder / f"device_{i}.onnx",
                             views[1500:, i])
    return str(folder / "device_{}.onnx")


def test_int8_model_is_smaller_and_keeps_the_metadata(briefly_trained_onnx, int8_onnx):
    for i in range(N_DEVICES):
        fp32, int8 = briefly_trained_onnx.format(i), int8_onnx.format(i)
        fp32_size, int8_size = onnx_size_kb(fp32), onnx_size_kb(int8)
        assert int8_size["file_kb"] < fp32_size["file_kb"]
        # int8 weights (+ int32 biases and float scales) are about a quarter of float32
        assert int8_size["weights_kb"] < 0.35 * fp32_size["weights_kb"]
        fp32_runner, int8_runner = DeviceRunner.from_onnx(fp32), DeviceRunner.from_onnx(int8)
        assert int8_runner.metadata == fp32_runner.metadata
        for a, b in zip(int8_runner.head(), fp32_runner.head(), strict=True):
            np.testing.assert_array_equal(a, b)  # the Modifier's head stays float


def test_int8_outputs_agree_with_fp32(briefly_trained_onnx, int8_onnx, mnist_views):
    views, _ = mnist_views
    outputs = {}
    for name, pattern in (("fp32", briefly_trained_onnx), ("int8", int8_onnx)):
        runners = [DeviceRunner.from_onnx(pattern.format(i)) for i in range(N_DEVICES)]
        outputs[name], _ = runner_outputs(runners, views[:500])
    device_agreement = (outputs["int8"].argmax(2) == outputs["fp32"].argmax(2)).mean(axis=0)
    fused_agreement = (outputs["int8"].mean(1).argmax(1)
                       == outputs["fp32"].mean(1).argmax(1)).mean()
    assert fused_agreement >= 0.95, fused_agreement
    assert device_agreement.min() >= 0.9, device_agreement


def test_bench_cost_writes_cost_json(briefly_trained_checkpoint, tmp_path, capsys):
    checkpoint = tmp_path / "model" / "model.safetensors"
    checkpoint.parent.mkdir()
    shutil.copy(briefly_trained_checkpoint, checkpoint)  # onnx/ and onnx-int8/ go beside it
    out = tmp_path / "cost"
    status = main(["bench-cost", str(checkpoint), "--out", str(out), "--repeats", "20",
                   "--calibration-samples", "64", "--limit", "300",
                   "--data-root", str(DATA_ROOT)])
    assert status == 0, capsys.readouterr().err
    result = json.loads((out / "cost.json").read_text())
    assert {"size", "latency", "modifier", "accuracy", "int8_vs_fp32_agreement", "machine",
            "quantization", "paper", "seed", "repeats"} <= set(result)
    assert set(result["accuracy"]) == {"torch_fp32", "ort_fp32", "ort_int8"}
    assert result["test_samples"] == 300 and result["size"]["parameters"] == 18_530
    assert {"device_forward_ort_int8", "fuse_frame_with_modifier",
            "synthesize_surrogate_torch"} <= set(result["latency"])
    assert result["latency"]["device_forward_ort_fp32"]["repeats"] == 20
    assert len(result["machine"]["load_average_start"]) == 3
    assert {"onnxruntime", "torch"} <= set(result["machine"])
    # same device outputs (torch vs ORT fp32) give the same fused accuracy
    assert result["accuracy"]["torch_fp32"]["no_failure"] == pytest.approx(
        result["accuracy"]["ort_fp32"]["no_failure"], abs=1 / 300 + 1e-9)
    assert len(list((checkpoint.parent / "onnx-int8").glob("device_*.onnx"))) == N_DEVICES
    table = (out / "cost.md").read_text()
    assert "| 14.72 |" in table and "ONNX Runtime int8" in table


def test_bench_cost_rejects_a_missing_or_invalid_checkpoint(tmp_path, capsys):
    status = main(["bench-cost", str(tmp_path / "missing.safetensors"),
                   "--out", str(tmp_path / "cost")])
    assert status == 2
    assert "no such checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    assert main(["bench-cost", str(bad), "--out", str(tmp_path / "cost")]) == 2
    assert "bench-cost: error:" in capsys.readouterr().err
    assert not (tmp_path / "cost").exists()
