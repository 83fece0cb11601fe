"""The block-addressable ResNet, its profile, resumable training and the drop study.

Models are tiny (base width 2: ~1 M MACs per image) and data are small evenly spaced cuts of
the real CIFAR-10 files, so every test takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resilient_perception.datasets import load_cifar10
from resilient_perception.placement.block_profile import (
    BlockProfile,
    ProfileError,
    load_profile,
    save_profile,
)
from resilient_perception.placement.drop_study import (
    build_profile,
    evaluate_accuracy,
    run_drop_study,
    spread_subset,
    to_input,
)
from resilient_perception.placement.resnet import ResNet, profile_blocks
from resilient_perception.placement.resnet_training import ResNetTrainConfig, train_resnet
from test.conftest import DATA_ROOT, ROOT, needs_data

needs_data = needs_data

TINY = {"epochs": 2, "batch_size": 64, "base_width": 2, "train_limit": 256, "test_limit": 100,
        "seed": 5}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: deterministic sums and no oversubscription of the shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar():
    """The real CIFAR-10 train and test splits."""
    if not DATA_ROOT.is_dir():
        pytest.skip("../shared/datasets not present")
    return load_cifar10(DATA_ROOT, "train"), load_cifar10(DATA_ROOT, "test")


@pytest.fixture(scope="module")
def trained(cifar, tmp_path_factory):
    """A tiny ResNet after 2 epochs on 256 images: branches are no longer zero."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("trained")
    train_resnet(out, ResNetTrainConfig(**TINY), *cifar, progress=False)
    return out


def _random_model(calibration: torch.Tensor | None = None) -> ResNet:
    """Random weights, no zero branch; BN statistics of ``calibration`` images if given.

    Calibrated BN standardises the features, so the predictions differ between images and
    between drop sets (an uncalibrated random net predicts one class for everything).
    """
    torch.manual_seed(0)
    model = ResNet(base_width=2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
            module.momentum = None  # running statistics = plain average of the batches seen
    if calibration is not None:
        with torch.no_grad():
            model.train()(calibration)
    return model.eval()


def _activations(model: ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    inputs = [model.stem(x)]
    for i in range(model.n_blocks):
        inputs.append(model.run_block(i, inputs[-1]))
    return inputs


def test_blocks_one_by_one_equal_the_full_forward():
    model = _random_model()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        inputs = _activations(model, x)
        assert torch.equal(model.head(inputs[-1]), model(x))
        assert torch.equal(model.forward_from(5, inputs[5]), model(x))


def test_dc_drop_is_the_shortcut_and_sc_drop_is_the_branch():
    model = _random_model()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        inputs = _activations(model, x)
        for i in (0, 1, 3, 7):
            block = model.blocks[i]
            dc = model.run_block(i, inputs[i], "dc")
            sc = model.run_block(i, inputs[i], "sc")
            assert torch.equal(dc, torch.relu(block.shortcut(inputs[i])))
            assert torch.equal(sc, torch.relu(block.branch(inputs[i])))
            assert not torch.allclose(dc, inputs[i + 1]) and not torch.allclose(sc, dc)
            # The forward arguments do the same inside the network.
            assert torch.equal(model(x, drop_dc={i}), model.forward_from(i + 1, dc))
            assert torch.equal(model(x, drop_sc={i}), model.forward_from(i + 1, sc))
        # An identity block with its branch dropped passes its (non-negative) input on.
        assert not model.blocks[1].has_projection
        assert torch.equal(model.run_block(1, inputs[1], "dc"), inputs[1])
    with pytest.raises(ValueError, match="both DC and SC"):
        model(x, drop_dc={2}, drop_sc={2})
    with pytest.raises(ValueError, match=r"0\.\.15"):
        model(x, drop_dc={16})


def test_stochastic_depth_drops_late_blocks_more_and_only_in_training():
    model = ResNet(base_width=2, stochastic_depth=0.5)
    probabilities = model.drop_probabilities
    assert probabilities[-1] == pytest.approx(0.5)
    assert probabilities[0] == pytest.approx(0.5 / 16)
    assert all(a < b for a, b in zip(probabilities, probabilities[1:], strict=False))
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_profile_matches_hand_computed_costs():
    model = ResNet(base_width=2)
    stem, blocks, head = profile_blocks(model)
    assert len(blocks) == 16 and [b.stage for b in blocks] == [1] * 3 + [2] * 4 + [3] * 6 + [4] * 3
    # Stem: 3x3 conv 3 -> 2 at 32x32 (54 weights), BN with 4 tensors of 2.
    assert stem.macs == 3 * 9 * 2 * 1024 and stem.param_bytes == 4 * (54 + 8)
    # stage1.block0 (2 -> 2 -> 8 at 32x32, projection 2 -> 8):
    # MACs 1x1 2->2, 3x3 2->2, 1x1 2->8, shortcut 1x1 2->8, each per output pixel.
    b0 = blocks[0]
    assert b0.has_projection and b0.name == "stage1.block0"
    assert b0.macs == (2 * 2 + 9 * 2 * 2 + 2 * 8 + 2 * 8) * 1024 == 73728
    assert b0.param_bytes == 4 * ((4 + 36 + 16 + 16) + 4 * (2 + 2 + 8 + 8)) == 608
    assert (b0.input_bytes, b0.output_bytes) == (4 * 2 * 1024, 4 * 8 * 1024)
    # stage2.block0 (8 -> 4 -> 16, stride 2 in the 3x3 and the shortcut): 1x1 at 32x32,
    # the rest at 16x16.
    b3 = blocks[3]
    assert b3.macs == 8 * 4 * 1024 + (9 * 4 * 4 + 4 * 16 + 8 * 16) * 256 == 118784
    assert (b3.input_bytes, b3.output_bytes) == (4 * 8 * 1024, 4 * 16 * 256)
    assert not blocks[1].has_projection and blocks[1].input_bytes == blocks[1].output_bytes
    # Head: linear 64 -> 10 after pooling 64 x 4 x 4.
    assert head.macs == 640 and head.param_bytes == 4 * 650 and head.input_bytes == 4 * 64 * 16


@needs_data
def test_cached_drop_study_equals_naive_evaluation(cifar):
    images, labels = spread_subset(cifar[1].images, cifar[1].labels, 100)
    model = _random_model(calibration=to_input(images))
    study = run_drop_study(model, images, labels, batch_size=64, progress=False)
    assert study.clean == evaluate_accuracy(model, images, labels)
    assert len(set(study.dc) | set(study.sc)) > 5  # the drops change predictions
    for i in range(model.n_blocks):
        assert study.dc[i] == evaluate_accuracy(model, images, labels, drop_dc={i}), i
        assert study.sc[i] == evaluate_accuracy(model, images, labels, drop_sc={i}), i
    assert len(study.pairs) == 120
    for (i, j) in sorted(study.pairs)[::15]:
        assert study.pairs[i, j] == evaluate_accuracy(model, images, labels, drop_dc={i, j})


@needs_data
def test_resume_after_one_epoch_equals_a_straight_run(cifar, trained, tmp_path):
    chunked = tmp_path / "chunked"
    first = train_resnet(chunked, ResNetTrainConfig(**TINY), *cifar, progress=False, chunk=1)
    assert len(first) == 1
    with pytest.raises(ValueError, match="exists; pass --resume"):
        train_resnet(chunked, ResNetTrainConfig(**TINY), *cifar, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        train_resnet(chunked, ResNetTrainConfig(**{**TINY, "lr": 0.05}), *cifar,
                     progress=False, resume=True)
    resumed = train_resnet(chunked, ResNetTrainConfig(**TINY), *cifar, progress=False,
                           resume=True)
    from resilient_perception.placement.resnet import load_resnet_checkpoint

    model_a, meta_a, extra_a = load_resnet_checkpoint(trained / "checkpoint.safetensors")
    model_b, meta_b, extra_b = load_resnet_checkpoint(chunked / "checkpoint.safetensors")
    assert extra_a and extra_a.keys() == extra_b.keys()
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key
    for key, value in extra_a.items():
        assert torch.equal(value, extra_b[key]), key

    def without_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert without_time(resumed) == without_time(meta_a["history"]) == without_time(
        meta_b["history"])


def _profile(**changes) -> dict:
    model = ResNet(base_width=2)
    n = model.n_blocks
    from resilient_perception.placement.drop_study import DropStudy

    study = DropStudy(samples=10, clean=0.9, dc=tuple([0.8] * n), sc=tuple([0.1] * n),
                      pairs={(i, j): 0.7 for i in range(n) for j in range(i + 1, n)})
    data = build_profile(model, study, "tiny", seed=0).to_dict()
    data.update(changes)
    return data


def test_profile_round_trip_and_clear_errors(tmp_path):
    data = _profile()
    path = save_profile(tmp_path / "profile.json", BlockProfile.from_dict(data))
    profile = load_profile(path)
    assert profile.to_dict() == data
    assert profile.accuracy([]) == 0.9 and profile.accuracy([5, 2]) == 0.7
    assert profile.accuracy([3]) == 0.8 and len(profile.drop_accuracy) == 16 + 120
    with pytest.raises(KeyError, match="not measured"):
        profile.accuracy([1, 2, 3])

    def error(data: dict) -> str:
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(ProfileError) as info:
            load_profile(tmp_path / "bad.json")
        return str(info.value)

    assert "missing keys ['head']" in error({k: v for k, v in data.items() if k != "head"})
    assert "clean_accuracy" in error(_profile(clean_accuracy=94.7))
    blocks = [dict(b) for b in data["blocks"]]
    blocks[2]["macs"] = -1
    assert "blocks[2].macs" in error(_profile(blocks=blocks))
    blocks = [dict(b) for b in data["blocks"]]
    blocks[4]["input_bytes"] += 4
    assert "stage2.block0 outputs 16384 bytes but the next part, stage2.block1, takes 16388" in (
        error(_profile(blocks=blocks)))
    assert "lacks 1 of the 136" in error(_profile(drop_accuracy=data["drop_accuracy"][:-1]))
    bad_set = [*data["drop_accuracy"][:-1], {"dropped": [15, 14], "accuracy": 0.5}]
    assert "increasing block indices" in error(_profile(drop_accuracy=bad_set))
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not a readable JSON"):
        load_profile(tmp_path / "bad.json")


def test_the_untrained_profile_in_docs_is_valid():
    profile = load_profile(ROOT / "docs" / "results" / "resnet" / "untrained-profile.json")
    stem, blocks, head = profile_blocks(ResNet())
    assert profile.n_blocks == 16 and profile.stem == stem and profile.head == head
    assert list(profile.blocks) == blocks


@needs_data
def test_cli_train_study_report(tmp_path, cli):
    def run(*args: str) -> str:
        status, out, err = cli(*args, cwd=tmp_path)
        assert status == 0, err
        return out

    tiny = ["--base-width", "2", "--limit", "256", "--test-limit", "100", "--batch-size", "64",
            "--threads", "1"]
    run("train-resnet", "--epochs", "2", "--chunk", "1", *tiny, "--out", "m")
    assert len((tmp_path / "m" / "history.csv").read_text().splitlines()) == 2
    assert "resuming" in run("train-resnet", "--epochs", "2", *tiny, "--resume", "--out", "m")
    run("drop-study", "m", "--limit", "100", "--threads", "1", "--out", "s")
    profile = load_profile(tmp_path / "s" / "profile.json")
    assert profile.model == "m" and profile.seed == 0 and len(profile.drop_accuracy) == 136
    rows = (tmp_path / "s" / "table2.csv").read_text().splitlines()
    assert len(rows) == 1 + 136 and rows[0].startswith("dropped,names,accuracy,memory_saved")
    study = json.loads((tmp_path / "s" / "drop_study.json").read_text())
    assert study["samples"] == 100 and len(study["history"]) == 2
    assert study["clean_accuracy"] == profile.clean_accuracy
    run("drop-report", "a=s", "b=s", "--out", "r/tables.md")
    text = (tmp_path / "r" / "tables.md").read_text()
    assert "| a DC | a SC | b DC | b SC |" in text and "94.73" in text
    assert (tmp_path / "r" / "dc_drop_accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["drop-study", "missing/checkpoint.safetensors", "--out", "x"], "no such file"),
        (["drop-study", "--out", "x"], "give a CHECKPOINT"),
        (["drop-report", "a=nowhere"], "cannot read a drop-study result"),
        (["drop-report", "no-equals"], "NAME=PATH such as plain="),
        (["train-resnet", "--stochastic-depth", "1.5"], "must be in [0, 1)"),
        (["train-resnet", "--epochs", "0"], "must be >= 1"),
        (["train-resnet", "--lr", "-1", "--out", "x"], "lr must be positive"),
    ],
)
def test_cli_errors_exit_2_with_a_message(tmp_path, cli, args, message):
    status, _, err = cli(*args, cwd=tmp_path)
    assert status == 2
    assert message in err


def test_spread_subset_takes_every_class_of_sorted_labels():
    labels = np.repeat(np.arange(10), 100)
    images = np.zeros((1000, 3, 2, 2), np.uint8)
    _, subset = spread_subset(images, labels, 50)
    assert len(subset) == 50 and np.bincount(subset).tolist() == [5] * 10
