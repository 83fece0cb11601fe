"""int8 and fp16 device exports on real MNIST: files, metadata, outputs, `export --int8`."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest

from resilient_perception.cli import main
from resilient_perception.paper.device_cost import onnx_size_kb
from resilient_perception.perception.reduced_precision import (
    convert_fp16,
    precision_path,
    quantize_int8,
    runner_outputs,
)
from resilient_perception.perception.runtime import DeviceRunner, parse_provider_options
from test.conftest import DATA_ROOT, needs_data

N_DEVICES = 6


@pytest.fixture(scope="module")
def variants(briefly_trained_onnx, mnist_views, tmp_path_factory) -> dict[str, str]:
    """Device file patterns per precision: int8 calibrated on test views 1500..1999.

    Those views are never scored below (the agreement uses the first 500).
    """
    views, _ = mnist_views
    folder = tmp_path_factory.mktemp("variants")
    for i in range(N_DEVICES):
        quantize_int8(briefly_trained_onnx.format(i), folder / f"device_{i}.int8.onnx",
                      views[1500:, i])
        convert_fp16(briefly_trained_onnx.format(i), folder / f"device_{i}.fp16.onnx")
    return {"fp32": briefly_trained_onnx, "int8": str(folder / "device_{}.int8.onnx"),
            "fp16": str(folder / "device_{}.fp16.onnx")}


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_variants_are_smaller_valid_and_keep_the_metadata(variants, precision):
    for i in range(N_DEVICES):
        fp32, small = variants["fp32"].format(i), variants[precision].format(i)
        fp32_size, small_size = onnx_size_kb(fp32), onnx_size_kb(small)
        # int8 weights (+ int32 biases and float scales) are about a quarter of float32,
        # fp16 weights half
        bound = {"int8": 0.35, "fp16": 0.55}[precision]
        assert small_size["weights_kb"] < bound * fp32_size["weights_kb"]
        onnx.checker.check_model(onnx.load(small), full_check=True)  # nodes in order too
        fp32_runner, small_runner = DeviceRunner.from_onnx(fp32), DeviceRunner.from_onnx(small)
        assert small_runner.metadata == fp32_runner.metadata
        for a, b in zip(small_runner.head(), fp32_runner.head(), strict=True):
            np.testing.assert_array_equal(a, b)  # the Modifier's head stays float


def test_variant_outputs_agree_with_fp32(variants, mnist_views):
    views, _ = mnist_views
    probs = {}
    for name, pattern in variants.items():
        runners = [DeviceRunner.from_onnx(pattern.format(i)) for i in range(N_DEVICES)]
        probs[name], _ = runner_outputs(runners, views[:500])
    for name, floor in (("int8", 0.9), ("fp16", 0.99)):
        devices = (probs[name].argmax(2) == probs["fp32"].argmax(2)).mean(axis=0)
        fused = (probs[name].mean(1).argmax(1) == probs["fp32"].mean(1).argmax(1)).mean()
        assert fused >= 0.95 and devices.min() >= floor, (name, fused, devices)
    np.testing.assert_allclose(probs["fp16"], probs["fp32"], atol=2e-2)


def test_precision_path_names_the_variant_beside_the_float_file(tmp_path):
    assert precision_path(tmp_path / "device_3.onnx", "int8") == tmp_path / "device_3.int8.onnx"
    with pytest.raises(ValueError, match="int8"):
        precision_path(tmp_path / "device_3.onnx", "int4")


def test_provider_options_are_parsed_per_provider_and_bad_ones_named():
    providers = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert parse_provider_options([""], providers) == {}
    parsed = parse_provider_options(
        ["TensorrtExecutionProvider:trt_fp16_enable=True",
         "TensorrtExecutionProvider: trt_engine_cache_path = /var/cache/trt"], providers)
    assert parsed == {"TensorrtExecutionProvider": {
        "trt_fp16_enable": "True", "trt_engine_cache_path": "/var/cache/trt"}}
    for entry, reason in (("trt_fp16_enable=True", "not PROVIDER:OPTION=VALUE"),
                          ("TensorrtExecutionProvider:trt_fp16_enable", "not PROVIDER"),
                          ("CUDAExecutionProvider:device_id=0", "not in providers")):
        with pytest.raises(ValueError, match=reason):
            parse_provider_options([entry], providers)


def test_an_unavailable_provider_falls_back_to_cpu_with_one_warning(variants, caplog):
    with caplog.at_level(logging.WARNING):
        runner = DeviceRunner.from_onnx(
            variants["int8"].format(0), ["TensorrtExecutionProvider", "CPUExecutionProvider"],
            threads=1, provider_options={"TensorrtExecutionProvider": {"trt_fp16_enable": "1"}})
    assert runner.provider == "CPUExecutionProvider"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TensorrtExecutionProvider" in warnings[0], warnings


@needs_data
def test_export_int8_fp16_writes_the_variants_and_their_accuracy(briefly_trained_checkpoint,
                                                                 tmp_path, capsys):
    out = tmp_path / "onnx"
    status = main(["export", str(briefly_trained_checkpoint), "--out", str(out), "--int8",
                   "--fp16", "--calibration-samples", "64", "--limit", "300",
                   "--data-root", str(DATA_ROOT)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    for precision in ("int8", "fp16"):
        assert len(list(out.glob(f"device_*.{precision}.onnx"))) == N_DEVICES
    result = json.loads((out / "precision.json").read_text())
    assert set(result["accuracy"]) == {"fp32", "int8", "fp16"}
    assert result["test_samples"] == 300 and result["calibration_samples"] == 64
    fp32 = result["accuracy"]["fp32"]["by_n_failed"]
    for scores in result["accuracy"].values():
        by_n = scores["by_n_failed"]
        assert len(by_n) == N_DEVICES and by_n[0] == scores["no_failure"]
        # the variants' fused outputs agree with fp32's (above): so do their accuracies
        assert all(abs(a - b) <= 0.05 for a, b in zip(by_n, fp32, strict=True)), by_n
    assert "| 5 |" in printed.out and "fp16 (vs fp32)" in (out / "precision.md").read_text()


def test_export_int8_with_a_device_subset_exits_2(briefly_trained_checkpoint, tmp_path, capsys):
    status = main(["export", str(briefly_trained_checkpoint), "--out", str(tmp_path / "o"),
                   "--int8", "--devices", "1"])
    assert status == 2 and "leave out --devices" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
