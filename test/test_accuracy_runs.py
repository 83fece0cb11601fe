"""The long accuracy runs on real CIFAR-10 cuts: per-epoch resume, checkpoints, FLOP/s meter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from resilient_perception.commands.accuracy import DEVICE_METHOD_NAMES
from resilient_perception.datasets import load_cifar10
from resilient_perception.paper.gated_modifier import GATE_AVERAGE
from resilient_perception.paper.paper_budget import (
    DEVICE_METHODS,
    DeviceRecipe,
    train_device_run,
)
from resilient_perception.perception.checkpoint import load_checkpoint
from resilient_perception.perception.model import DeviceCNN, MultiDeviceCNN
from resilient_perception.perception.views import ViewSpec, crop_views
from resilient_perception.placement.resnet import load_resnet_checkpoint
from resilient_perception.placement.resnet_recipe import ResNetRecipe, train_resnet_recipe
from resilient_perception.placement.resnet_training import augment
from resilient_perception.run_state import STATE_NAME, load_state, save_state
from resilient_perception.throughput import (
    AMX_BF16_FLOPS,
    EpochMeter,
    fastest_precision,
    forward_macs,
    has_amx_class_bf16,
    matmul_peak,
)
from test.conftest import DATA_ROOT, needs_data

pytestmark = needs_data


@pytest.fixture(scope="module")
def cifar():
    """CIFAR-10 train and test splits (decoded once, then cached by the loader)."""
    return load_cifar10(DATA_ROOT, "train"), load_cifar10(DATA_ROOT, "test")


def test_state_round_trips_without_pickles(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    save_state(tmp_path, {"model": model}, opt, {"epoch": 1, "log": [{"loss": 1.5}]})
    expected_rng = torch.get_rng_state()
    torch.rand(5)  # moves the RNG on: loading must put it back

    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    meta = load_state(tmp_path, {"model": fresh}, fresh_opt)
    assert meta == {"epoch": 1, "log": [{"loss": 1.5}]}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh_opt.param_groups[0]["lr"] == 0.1
    buffers = [fresh_opt.state[p]["momentum_buffer"] for p in fresh.parameters()]
    assert all(torch.equal(a, opt.state[p]["momentum_buffer"])
               for a, p in zip(buffers, model.parameters(), strict=True))
    assert torch.equal(torch.get_rng_state(), expected_rng)
    # Only tensors and a JSON header: no pickled class can break a moved module's resume.
    with safe_open(str(tmp_path / STATE_NAME), framework="pt") as fh:
        header = json.loads(fh.metadata()["run_state"])
    assert header["epoch"] == 1 and "optimizer" in header
    assert load_state(tmp_path / "none", {"model": fresh}, fresh_opt) is None


def test_resnet_recipe_resumed_equals_straight(tmp_path, cifar):
    train, test = cifar
    # Width 2, not 1: oneDNN's AVX2 convolution backward (torch 2.13) hangs or corrupts the
    # heap on one-channel 1x1 convolutions on CPUs without AVX-512.
    recipe = ResNetRecipe(base_width=2, epochs=2, batch_size=64, precision="fp32",
                          compile=False, train_limit=128, test_limit=100)
    straight = train_resnet_recipe(tmp_path / "a", recipe, train, test, progress=False)
    first = train_resnet_recipe(tmp_path / "b", recipe, train, test, progress=False,
                                max_epochs=1)
    assert len(first) == 1 and not (tmp_path / "b" / "checkpoint.safetensors").exists()
    resumed = train_resnet_recipe(tmp_path / "b", recipe, train, test, progress=False)
    assert [e["train_loss"] for e in resumed] == [e["train_loss"] for e in straight]
    a, meta, _ = load_resnet_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    b, _, _ = load_resnet_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    assert meta["train_config"]["base_width"] == 2 and meta["commit"]
    assert {"gflops", "peak_gflops", "utilisation"} <= set(resumed[-1])
    with pytest.raises(ValueError, match="other settings"):
        other = ResNetRecipe(**{**recipe.asdict(), "lr": 0.1})
        train_resnet_recipe(tmp_path / "b", other, train, test, progress=False)


def test_device_run_resumes_and_writes_a_normal_checkpoint(tmp_path, cifar):
    train, test = cifar
    recipe = DeviceRecipe(method="ours", epochs=2, batch_size=64, precision="fp32",
                          overlap=0.5, val_size=32, train_limit=128, test_limit=100)
    straight = train_device_run(tmp_path / "a", recipe, train, test, progress=False)
    train_device_run(tmp_path / "b", recipe, train, test, progress=False, max_epochs=1)
    assert not (tmp_path / "b" / "evaluation.json").exists()
    resumed = train_device_run(tmp_path / "b", recipe, train, test, progress=False)
    assert [e["train_loss"] for e in resumed["log"]] == [e["train_loss"] for e in straight["log"]]
    assert resumed["summary"] == straight["summary"]
    model, meta = load_checkpoint(tmp_path / "b" / "model.safetensors")
    assert meta["view_spec"] == ViewSpec(overlap=0.5).to_dict()
    assert model.n_devices == 6 and meta["recipe"]["method"] == "ours"
    assert meta["train_samples"] == 128 - 32 and meta["validation"]["size"] == 32
    # 63 failure sets x avg/max x with/without the Modifier
    assert len(resumed["rows"]) == 63 * 2 * 2
    # ours-geo trains the same steps with its fused-output loss scored in the geometric mean
    geo = DeviceRecipe(**{**recipe.asdict(), "method": "ours-geo"})
    first = train_device_run(tmp_path / "geo", geo, train, test, progress=False, max_epochs=1)
    assert first["log"][0]["train_loss"] != straight["log"][0]["train_loss"]


def test_a_device_run_continues_in_another_precision_but_not_other_settings(tmp_path, cifar):
    """A run carried to a machine where bf16 is faster continues there; its log says so."""
    train, test = cifar
    recipe = DeviceRecipe(method="paper", epochs=2, batch_size=8, precision="fp32",
                          val_size=32, train_limit=40, test_limit=50)
    train_device_run(tmp_path, recipe, train, test, progress=False, max_epochs=1)
    with pytest.raises(ValueError, match="other settings"):
        train_device_run(tmp_path, DeviceRecipe(**{**recipe.asdict(), "lr": 0.05}),
                         train, test, progress=False)
    bf16 = DeviceRecipe(**{**recipe.asdict(), "precision": "bf16"})
    result = train_device_run(tmp_path, bf16, train, test, progress=False)
    assert [e["precision"] for e in result["log"]] == ["fp32", "bf16"]
    assert (tmp_path / "evaluation.json").exists()


def test_augmentation_moves_the_whole_image_so_views_agree(cifar):
    images = torch.from_numpy(cifar[1].images[:16])
    shifted = augment(images, np.random.default_rng(0), pad=4)
    assert not torch.equal(shifted, images)
    boxes = ViewSpec(overlap=0.5).boxes(32, 32)
    views = crop_views(shifted.numpy(), boxes)
    # Devices 0 and 1 (top row) overlap in columns [left1, left0 + width): same pixels.
    left0, left1, width = boxes[0].left, boxes[1].left, boxes[0].width
    assert left1 < left0 + width
    np.testing.assert_array_equal(views[:, 0, :, :, left1 - left0:],
                                  views[:, 1, :, :, :left0 + width - left1])
    unchanged = augment(images, np.random.default_rng(0), pad=0, flip=False)
    assert torch.equal(unchanged, images)


def test_meter_counts_flops_and_measures_the_peak():
    conv = nn.Conv2d(6, 12, 3, padding=1, groups=3)
    assert forward_macs(conv, (6, 8, 8)) == 8 * 8 * 12 * 2 * 9
    # The six devices run their convolutions functionally, not through their modules.
    assert forward_macs(MultiDeviceCNN(6, 3, 10), (6, 3, 12, 12)) == 6 * forward_macs(
        DeviceCNN(3, 10), (3, 12, 12))
    assert matmul_peak("fp32", size=128, seconds=0.05) > 1e8
    meter = EpochMeter(conv, (6, 8, 8))
    meter.start()
    sum(conv(torch.randn(64, 6, 8, 8)).sum() for _ in range(3)).backward()
    timing = meter.stop(192)
    assert timing["gflops"] > 0 and 0 < timing["utilisation"] < 1


def test_auto_precision_is_the_faster_matmul_here_and_a_named_one_is_kept():
    faster = max(("fp32", "bf16"), key=matmul_peak)
    assert fastest_precision("auto") == faster
    assert fastest_precision("bf16") == "bf16" and fastest_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="auto or one of"):
        fastest_precision("fp16")


def test_the_amx_check_times_one_thread_and_keeps_the_thread_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        amx = has_amx_class_bf16()
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert amx == (matmul_peak("bf16") >= AMX_BF16_FLOPS)
    finally:
        torch.set_num_threads(threads)


def _fake_run(folder: Path, recipe: dict, log: list[dict], summary: dict | None) -> None:
    """A run folder as the lanes leave it; a device run's recipe is the default but ``recipe``."""
    folder.mkdir(parents=True)
    if folder.name.startswith("devices-"):
        recipe = {**DeviceRecipe().asdict(), **recipe}
    (folder / "metrics.json").write_text(json.dumps({"settings": {"recipe": recipe},
                                                     "log": log}))
    if summary is not None:
        (folder / "evaluation.json").write_text(json.dumps({"summary": summary}))


def test_report_compares_finished_seeds_and_lists_running_ones(tmp_path):
    from resilient_perception.paper.accuracy_report import write_accuracy_report

    speed = {"cpu_seconds": 150.0, "cpu_gflops": 80.0, "peak_gflops": 1300.0,
             "utilisation": 0.06}
    for method, seed, acc in (("paper", 0, 0.80), ("ours", 0, 0.82), ("paper", 1, 0.79),
                              ("ours", 1, 0.815)):
        log = [{"epoch": e, "test_no_failure": acc - 0.1 / e,
                "test_single_failure_modifier": acc - 0.02 - 0.1 / e, **speed}
               for e in (1, 2)]
        summary = {"avg": {"baseline": {"no_failure": acc},
                           "modifier": {"single_failure_mean": acc - 0.02}}}
        _fake_run(tmp_path / "runs" / f"devices-{method}-s{seed}",
                  {"method": method, "seed": seed, "epochs": 2}, log, summary)
    gated = {name: {"no_failure": 0.8, "single_failure_mean": value}
             for name, value in (("none", 0.78), ("modifier", 0.779), ("gated", 0.782))}
    for seed in (0, 1):
        folder = tmp_path / "runs" / f"devices-ours-s{seed}" / "eval-test"
        folder.mkdir()
        (folder / "gated.json").write_text(json.dumps({"summary": gated,
                                                       "average": GATE_AVERAGE}))
    # paper's seed 0 was gated by the earlier gate: listed, left out of the gated table.
    folder = tmp_path / "runs" / "devices-paper-s0" / "eval-test"
    folder.mkdir()
    (folder / "gated.json").write_text(json.dumps({"summary": gated}))
    # A pilot of ours (seed 0 too) is reported apart, never in the seeds' means.
    _fake_run(tmp_path / "runs" / "devices-pilot-lr0.05",
              {"method": "ours", "seed": 0, "epochs": 2, "lr": 0.05},
              [{"epoch": e, "test_no_failure": 0.9, "test_single_failure_modifier": 0.89,
                **speed} for e in (1, 2)],
              {"avg": {"baseline": {"no_failure": 0.9},
                       "modifier": {"single_failure_mean": 0.89}}})
    # So is one seed of a pilot's setting at full length.
    _fake_run(tmp_path / "runs" / "devices-ours-lr0.05-s0",
              {"method": "ours", "seed": 0, "epochs": 2, "lr": 0.05},
              [{"epoch": e, "test_no_failure": 0.83, "test_single_failure_modifier": 0.82,
                **speed} for e in (1, 2)],
              {"avg": {"baseline": {"no_failure": 0.83},
                       "modifier": {"single_failure_mean": 0.82}}})
    # A pilot still training is compared with the reference after the same epoch.
    _fake_run(tmp_path / "runs" / "devices-pilot-noaug",
              {"method": "ours", "seed": 0, "epochs": 2, "pad": 0, "flip": False,
               "precision": "fp32"},
              [{"epoch": 1, "test_no_failure": 0.75, "test_single_failure_modifier": 0.74,
                **speed}], None)
    # A change on top of a pilot's is compared with that pilot: the nearest run it changes.
    _fake_run(tmp_path / "runs" / "devices-pilot-noaug-geo",
              {"method": "ours-geo", "seed": 0, "epochs": 2, "pad": 0, "flip": False,
               "precision": "fp32"},
              [{"epoch": 1, "test_no_failure": 0.76, "test_single_failure_modifier": 0.75,
                **speed}], None)
    _fake_run(tmp_path / "runs" / "resnet-w16", {"epochs": 24},
              [{"epoch": 1, "test_acc": 0.5, "test_acc_tta": 0.52, **speed}], None)
    seeds = Path(__file__).resolve().parents[1] / "docs" / "results" / "paper" / "seeds.csv"
    text = write_accuracy_report(tmp_path / "runs", tmp_path / "out", seeds)
    assert "| paper | 4 epochs (reproduction protocol) | 10 | 61.87 ± 0.31 | 60.59 ± 0.30 |" in text
    assert "| ours | 40 epochs, 50% overlap, flip + translate | 2 | 81.75 ± " in text
    assert "t-test, ours vs paper, 40 epochs, on the 2 seeds" in text
    assert "| resnet-w16 | 1/24 | 50.00 (flip TTA 52.00) |" in text
    assert "CPU hours of every epoch above: 0.6 " in text  # 14 epochs of 150 CPU s
    assert "| cifar10 | ours | 2 | 80.00 ± 0.00 | 78.00 ± 0.00 | 77.90 ± 0.00 |" in text
    assert "| cifar10 | paper |" not in text and "earlier gate" in text
    assert "devices-paper-s0." in text
    reference = "devices-ours-s0 | 77.00 | 75.00 |"  # ours seed 0 after epoch 2 of 2
    for run, scores in (("devices-pilot-lr0.05", "90.00 | 89.00"),
                        ("devices-ours-lr0.05-s0", "83.00 | 82.00")):
        assert f"| {run} | epochs 2, lr 0.05 | 2/2 | {scores} | {reference}" in text
    assert ("| devices-pilot-noaug | epochs 2, pad 0, flip False | 1/2 | 75.00 | 74.00 "
            "| devices-ours-s0 | 72.00 | 70.00 |") in text
    assert ("| devices-pilot-noaug-geo | method ours-geo, epochs 2, pad 0, flip False | 1/2 "
            "| 76.00 | 75.00 | devices-pilot-noaug | 75.00 | 74.00 |") in text
    assert len((tmp_path / "out" / "epochs.csv").read_text().splitlines()) == 1 + 6 * 2 + 3
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000

    # The run folders go with their machine; the records of the finished runs stay.
    records = sorted(p.stem for p in (tmp_path / "out" / "records").glob("*.json"))
    assert records == ["devices-ours-lr0.05-s0", "devices-ours-s0", "devices-ours-s1",
                       "devices-paper-s0", "devices-paper-s1", "devices-pilot-lr0.05"]
    shutil.rmtree(tmp_path / "runs")
    again = write_accuracy_report(tmp_path / "runs", tmp_path / "out", seeds)
    for line in text.splitlines():
        if line.startswith(("| ours | 40", "| paper | 40", "| cifar10 |", "- ")):
            assert line in again.splitlines()
    assert "resnet-w16" not in again


def test_the_cli_offers_every_device_method():
    assert tuple(DEVICE_METHODS) == DEVICE_METHOD_NAMES  # the parser's copy imports no torch
