"""Device cost: `bench-cost` (size, latency and int8 accuracy of a device), on real MNIST.

Nothing here times anything: the timings are only written, never asserted.
"""

from __future__ import annotations

import json
import shutil

import pytest

from resilient_perception.cli import main
from test.conftest import DATA_ROOT

N_DEVICES = 6


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
    with pytest.raises(SystemExit) as exited:  # argparse's own check, before ONNX loads
        main(["bench-cost", str(tmp_path / "missing.safetensors"),
              "--out", str(tmp_path / "cost")])
    assert exited.value.code == 2
    assert "no such checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    assert main(["bench-cost", str(bad), "--out", str(tmp_path / "cost")]) == 2
    assert "bench-cost: error:" in capsys.readouterr().err
    assert not (tmp_path / "cost").exists()
