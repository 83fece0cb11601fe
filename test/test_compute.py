"""Where training runs: ``--device`` on every training command, a GPU when there is one.

This machine and CI have no GPU, so here the tests check the choice and its errors, and that
the CPU path is what it was; the GPU tests run where torch sees a CUDA device (``make test``
on a researcher's machine) and are skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from resilient_perception.cli import main
from resilient_perception.compute import compute_device, describe
from resilient_perception.datasets import load_cifar10
from resilient_perception.paper.paper_budget import DeviceRecipe, train_device_run
from resilient_perception.perception.checkpoint import load_checkpoint
from resilient_perception.placement.resnet_recipe import ResNetRecipe, train_resnet_recipe
from resilient_perception.run_state import read_state_meta
from test.conftest import DATA_ROOT, needs_data

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="torch sees no CUDA GPU here")


def test_auto_is_the_gpu_when_there_is_one_and_named_devices_are_kept():
    assert compute_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert compute_device("cpu") == torch.device("cpu")
    assert describe(torch.device("cpu")) == "cpu"
    for bad in ("tpu", "gpu0", "mps", ""):
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            compute_device(bad)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error of a machine without a GPU")
def test_asking_for_a_gpu_this_machine_lacks_says_what_to_do(capsys):
    with pytest.raises(ValueError, match="torch sees no CUDA GPU here.*--device cpu"):
        compute_device("cuda:0")
    # Every training command checks the device before it loads any data.
    for command in (["train", "--limit", "10"], ["train-budget-devices", "--out", "r"],
                    ["train-resnet-recipe", "--out", "r"], ["train-resnet"],
                    ["drop-study", "--untrained-width", "2", "--out", "r"],
                    ["reproduce", "--quick"]):
        assert main([*command, "--device", "cuda"]) == 2, command
        assert "--device cpu" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() > 8, reason="needs 1-8 GPUs")
def test_a_gpu_index_past_the_last_is_refused():
    with pytest.raises(ValueError, match="CUDA device"):
        compute_device("cuda:9")


@needs_cuda
@needs_data
def test_a_device_run_trained_on_the_gpu_continues_and_scores_on_the_cpu(tmp_path):
    train, test = load_cifar10(DATA_ROOT, "train"), load_cifar10(DATA_ROOT, "test")
    recipe = DeviceRecipe(method="ours", epochs=2, batch_size=64, precision="fp32",
                          val_size=32, train_limit=256, test_limit=100)
    train_device_run(tmp_path, recipe, train, test, progress=False, max_epochs=1,
                     device=torch.device("cuda"))
    assert read_state_meta(tmp_path)["epoch"] == 1
    result = train_device_run(tmp_path, recipe, train, test, progress=False,
                              device=torch.device("cpu"))
    assert len(result["log"]) == 2 and result["log"][0]["utilisation"] > 0
    model, _ = load_checkpoint(tmp_path / "model.safetensors")
    assert all(p.device.type == "cpu" for p in model.parameters())


@needs_cuda
@needs_data
def test_the_resnet_recipe_trains_on_the_gpu(tmp_path):
    train, test = load_cifar10(DATA_ROOT, "train"), load_cifar10(DATA_ROOT, "test")
    recipe = ResNetRecipe(base_width=2, epochs=1, batch_size=64, precision="bf16",
                          train_limit=256, test_limit=100)
    log = train_resnet_recipe(tmp_path, recipe, train, test, progress=False,
                              device=torch.device("cuda"))
    assert len(log) == 1 and 0.0 <= log[0]["test_acc"] <= 1.0
    assert (tmp_path / "checkpoint.safetensors").exists()
