"""Tests of safetensors checkpoints."""

import pytest
import torch

from resilient_perception.checkpoints import CheckpointError
from resilient_perception.perception.checkpoint import (
    load_checkpoint,
    load_device_checkpoint,
    save_checkpoint,
    save_device_checkpoint,
)
from resilient_perception.perception.model import MultiDeviceCNN, views_to_float


def test_round_trip(tmp_path, mnist_views):
    views, _ = mnist_views
    torch.manual_seed(3)
    model = MultiDeviceCNN(6, 1, 10)
    model.train()
    with torch.no_grad():
        model(views_to_float(views[:32]))  # non-default BN buffers
    model.eval()
    meta = {"dataset": "mnist", "classes": [str(i) for i in range(10)],
            "history": [{"epoch": 1, "loss": 1.5}], "view_spec": {"grid": [3, 2]}}
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    loaded, got = load_checkpoint(path)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)
    x = views_to_float(views[:16])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], atol=0, rtol=0)
    assert got["dataset"] == "mnist" and got["history"] == meta["history"]
    assert got["model"] == model.kwargs() and got["format_version"] == 1 and "created" in got
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp left over

    dpath = save_device_checkpoint(tmp_path / "d2.safetensors", model.device(2), {"id": 2})
    dev, dmeta = load_device_checkpoint(dpath)
    with torch.no_grad():
        torch.testing.assert_close(dev(x[:, 2])[0], model(x)[0][:, 2], atol=1e-5, rtol=0)
    assert dmeta["id"] == 2
    with pytest.raises(CheckpointError, match="kind"):
        load_checkpoint(dpath)


def test_corrupt_files_raise(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", MultiDeviceCNN(2, 1, 10), {})
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint")
    for bad in (truncated, garbage, tmp_path / "missing.safetensors"):
        with pytest.raises(CheckpointError, match=bad.name):
            load_checkpoint(bad)
    from safetensors.torch import save_file
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(plain)
    assert issubclass(CheckpointError, ValueError)
