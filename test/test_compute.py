"""Where training runs: ``--device`` on every training command, a GPU when there is one.

This machine and CI have no GPU. Here the tests check the choice and its errors, and run
every training and scoring loop with its model on torch's ``meta`` device (shapes without
data): a host tensor mixed into a step there raises a device mismatch, as it would on a GPU,
while a loop that keeps its tensors on the model's device gets as far as its first read of a
result (``.item()``, ``.cpu()``), which meta cannot answer. The GPU tests themselves run where
torch sees a CUDA device (``make test`` on a researcher's machine) and are skipped elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resilient_perception.cli import main
from resilient_perception.compute import compute_device, describe
from resilient_perception.datasets import load_cifar10
from resilient_perception.paper.paper_budget import DeviceRecipe, train_device_run
from resilient_perception.perception.checkpoint import load_checkpoint
from resilient_perception.perception.evaluation import device_outputs
from resilient_perception.perception.model import MultiDeviceCNN
from resilient_perception.perception.training import TrainConfig, train
from resilient_perception.placement.drop_study import run_drop_study
from resilient_perception.placement.resnet import ResNet
from resilient_perception.placement.resnet_recipe import (
    ResNetRecipe,
    evaluate_tta,
    train_resnet_recipe,
)
from resilient_perception.run_state import read_state_meta
from test.conftest import DATA_ROOT, needs_data

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="torch sees no CUDA GPU here")
META = torch.device("meta")
# Where a loop on the meta device stops when all its tensors are on the model's device.
READS_A_RESULT = r"cannot be called on meta tensors|Cannot copy out of meta tensor"


@pytest.fixture(scope="module")
def cifar():
    """CIFAR-10 train and test splits."""
    return load_cifar10(DATA_ROOT, "train"), load_cifar10(DATA_ROOT, "test")


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


@needs_data
def test_the_training_loops_keep_every_step_on_the_models_device(tmp_path, cifar, mnist_views):
    train_data, test_data = cifar
    views, labels = mnist_views
    runs = {
        "train-budget-devices": lambda: train_device_run(
            tmp_path / "devices", DeviceRecipe(epochs=1, batch_size=16, precision="fp32",
                                               val_size=8, train_limit=64, test_limit=32),
            train_data, test_data, progress=False, device=META),
        "train-resnet-recipe": lambda: train_resnet_recipe(
            tmp_path / "resnet", ResNetRecipe(base_width=2, epochs=1, batch_size=16,
                                              precision="fp32", compile=False,
                                              train_limit=64, test_limit=32),
            train_data, test_data, progress=False, device=META),
        "train": lambda: train(MultiDeviceCNN(6, 1, 10).to(META), views[:64], labels[:64],
                               TrainConfig(epochs=1, batch_size=16), progress=False),
        # the baselines' options: failout, feature dropout, views some cameras lack
        "train baselines": lambda: train(
            MultiDeviceCNN(6, 1, 10).to(META), views[:64], labels[:64],
            TrainConfig(epochs=1, batch_size=16, failout=0.2, feature_dropout=0.1),
            available=np.arange(64 * 6).reshape(64, 6) % 7 != 0, progress=False),
    }
    for name, run in runs.items():
        with pytest.raises(RuntimeError, match=READS_A_RESULT):
            run()
        print(f"{name}: a whole step on the model's device")


@needs_data
def test_the_scoring_loops_run_where_the_model_is(cifar, mnist_views):
    _, test_data = cifar
    images, labels = test_data.images[:8], test_data.labels[:8]
    resnet = ResNet(base_width=2).to(META)
    for score in (lambda: device_outputs(MultiDeviceCNN(6, 1, 10).to(META), mnist_views[0][:8]),
                  lambda: evaluate_tta(resnet, images, labels),
                  lambda: run_drop_study(resnet, images, labels, progress=False)):
        with pytest.raises(RuntimeError, match=READS_A_RESULT):
            score()
