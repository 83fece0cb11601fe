"""ONNX export of device CNNs and DeviceRunner (ONNX Runtime vs torch) on real MNIST views."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resilient_perception.datasets import load_mnist
from resilient_perception.perception.checkpoint import save_checkpoint
from resilient_perception.perception.export import (
    CPU_PROVIDER,
    DeviceRunner,
    ExportError,
    export_onnx,
    view_hw,
)
from resilient_perception.perception.model import MultiDeviceCNN
from resilient_perception.perception.views import ViewSpec, crop_views
from test.conftest import DATA_ROOT, needs_cli, needs_data, run_cli_process

SPEC = ViewSpec(kind="grid")  # the paper's 3x2 grid: 10x14 views of 28x28 digits
CLASSES = [str(k) for k in range(10)]
DEVICE = 3

pytestmark = needs_data


@pytest.fixture(scope="module")
def views_labels() -> tuple[np.ndarray, np.ndarray]:
    """The first 256 MNIST test images cut 3x2: uint8 (256, 6, 1, 10, 14) and labels."""
    data = load_mnist(DATA_ROOT, "test")
    views = crop_views(data.images[:256], SPEC.boxes(28, 28))
    return views, data.labels[:256]


@pytest.fixture(scope="module")
def model(briefly_trained_model) -> MultiDeviceCNN:
    """Six devices after a few SGD steps, so BN running statistics are not the defaults."""
    return briefly_trained_model


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / f"device_{DEVICE}.onnx"
    return export_onnx(model.device(DEVICE), path, (10, 14), device_id=DEVICE,
                       classes=CLASSES, view_spec=SPEC.to_dict())


def test_bn_statistics_were_trained(model):
    bn = model.device(DEVICE).trunk.blocks[0].bn1
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_graph_contract_and_metadata(onnx_path):
    graph = onnx.load(onnx_path).graph
    assert [i.name for i in graph.input] == ["views"]
    assert [o.name for o in graph.output] == ["logits", "features"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 10, 14]
    runner = DeviceRunner.from_onnx(onnx_path, threads=1)
    assert runner.metadata["device_id"] == DEVICE
    assert runner.metadata["classes"] == CLASSES
    assert ViewSpec.from_dict(runner.metadata["view_spec"]) == SPEC
    assert runner.input_hw == (10, 14) and runner.in_channels == 1
    assert not list(onnx_path.parent.glob("*.tmp"))  # atomic write left nothing behind


@pytest.mark.parametrize("batch", [1, 32])
def test_onnx_runtime_matches_torch_on_real_views(model, onnx_path, views_labels, batch):
    views = np.ascontiguousarray(views_labels[0][100 : 100 + batch, DEVICE])  # uint8
    onnx_probs, onnx_features = DeviceRunner.from_onnx(onnx_path, threads=1).run(views)
    torch_probs, torch_features = DeviceRunner.from_torch(model.device(DEVICE)).run(views)
    for a in (onnx_probs, onnx_features, torch_probs, torch_features):
        assert a.dtype == np.float32
    assert onnx_probs.shape == (batch, 10) and onnx_features.shape == (batch, 16)
    np.testing.assert_allclose(onnx_probs.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    assert np.abs(onnx_features - torch_features).max() < 1e-4
    # The runner is the grouped training model's device: same numbers as its forward.
    with torch.no_grad():
        logits, features = model(torch.from_numpy(views_labels[0][100 : 100 + batch]) / 255.0)
    np.testing.assert_allclose(torch_features, features[:, DEVICE].numpy(), atol=1e-5)
    np.testing.assert_allclose(torch_probs, logits[:, DEVICE].softmax(1).numpy(), atol=1e-5)


def test_float_and_uint8_inputs_agree(onnx_path, views_labels):
    views = views_labels[0][:4, DEVICE]
    runner = DeviceRunner.from_onnx(onnx_path, threads=1)
    np.testing.assert_array_equal(runner.run(views)[0], runner.run(views / 255.0)[0])


def test_heads_are_equal_and_match_the_graph(model, onnx_path, views_labels):
    runner = DeviceRunner.from_onnx(onnx_path, threads=1)
    weight, bias = runner.head()
    torch_weight, torch_bias = DeviceRunner.from_torch(model.device(DEVICE)).head()
    assert weight.dtype == np.float32 and weight.shape == (10, 16) and bias.shape == (10,)
    np.testing.assert_array_equal(weight, torch_weight)
    np.testing.assert_array_equal(bias, torch_bias)
    np.testing.assert_array_equal(weight, model.head_weight[DEVICE].detach().numpy())
    # The head published for the Modifier reproduces the graph's own probabilities.
    probs, features = runner.run(views_labels[0][:16, DEVICE])
    logits = features @ weight.T + bias
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-5)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="CUDA is available here, so there is no fallback to test")
def test_missing_provider_falls_back_to_cpu(onnx_path, caplog):
    with caplog.at_level(logging.WARNING, logger="resilient_perception.perception.export"):
        runner = DeviceRunner.from_onnx(onnx_path, providers=["CUDAExecutionProvider"])
    assert runner.provider == CPU_PROVIDER
    assert "CUDAExecutionProvider" in caplog.text and "not available" in caplog.text
    assert DeviceRunner.from_onnx(onnx_path).provider == CPU_PROVIDER


def test_export_leaves_the_callers_module_alone(model, tmp_path):
    device = model.device(0).train()
    export_onnx(device, tmp_path / "d.onnx", (10, 14))
    assert device.training


def test_run_rejects_wrong_view_shapes(onnx_path, model, views_labels):
    runner = DeviceRunner.from_onnx(onnx_path, threads=1)
    with pytest.raises(ValueError, match=r"views must be \(B, 1, 10, 14\), got \(1, 1, 14, 10\)"):
        runner.run(np.zeros((1, 1, 14, 10), np.uint8))
    with pytest.raises(ValueError, match=r"views must be \(B, 1, h, w\), got \(1, 10, 14\)"):
        DeviceRunner.from_torch(model.device(0)).run(views_labels[0][0, 0])


def test_bad_model_files_raise_export_error_naming_the_file(onnx_path, tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ExportError, match="nope.onnx: no such model file"):
        DeviceRunner.from_onnx(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_path.read_bytes()[:2000])  # a truncated download
    with pytest.raises(ExportError, match="corrupt.onnx: not a loadable ONNX model"):
        DeviceRunner.from_onnx(corrupt)
    foreign = onnx.load(onnx_path)
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ExportError, match="foreign.onnx: no 'resilient_perception' metadata"):
        DeviceRunner.from_onnx(tmp_path / "foreign.onnx")
    assert issubclass(ExportError, ValueError)


def test_view_size_from_checkpoint_metadata():
    assert view_hw({"dataset": "mnist", "view_spec": SPEC.to_dict()}) == (10, 14)
    assert view_hw({"dataset": "mvmc", "view_spec": {"kind": "cameras"}}) == (32, 32)
    assert view_hw({"dataset": "idx:a:b", "view_spec": SPEC.to_dict()}, (56, 56)) == (19, 28)
    with pytest.raises(ExportError, match="image size of dataset 'idx:a:b' is unknown"):
        view_hw({"dataset": "idx:a:b", "view_spec": SPEC.to_dict()})


@needs_cli
def test_cli_export(model, tmp_path, views_labels):
    save_checkpoint(tmp_path / "model.safetensors", model,
                    {"view_spec": SPEC.to_dict(), "classes": CLASSES, "dataset": "mnist"})

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_cli_process("export", *args, cwd=tmp_path, timeout=300)

    done = run("model.safetensors", "--out", "onnx", "--devices", "1", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["onnx/device_1.onnx", "onnx/device_4.onnx"]
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "device_1.onnx", "device_4.onnx"]
    runner = DeviceRunner.from_onnx(tmp_path / "onnx" / "device_4.onnx", threads=1)
    assert runner.metadata["device_id"] == 4 and runner.input_hw == (10, 14)
    views = views_labels[0][:8, 4]
    expected = DeviceRunner.from_torch(model.device(4)).run(views)[0]
    assert np.abs(runner.run(views)[0] - expected).max() < 1e-4

    for args, message in (
        (("model.safetensors", "--out", "o", "--devices", "6"), "devices [6] out of range"),
        (("missing.safetensors", "--out", "o"), "missing.safetensors"),
        (("model.safetensors", "--out", "o", "--image-size", "28"), "expected HxW"),
    ):
        failed = run(*args)
        assert failed.returncode == 2, failed.stdout
        assert message in failed.stderr
