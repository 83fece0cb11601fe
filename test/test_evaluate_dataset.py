"""`evaluate --dataset`: IDX checkpoints are scored on their held-out pair, not training data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from resilient_perception.cli import main
from resilient_perception.datasets import load_mnist
from test.conftest import DATA_ROOT, needs_data

pytestmark = needs_data


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Plain (not gzip'd) IDX: 00 00 08 <ndim>, big-endian int32 dims, ubyte payload."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_pairs(tmp_path_factory):
    """A user's own IDX data: 300 training and 200 held-out MNIST digits."""
    folder = tmp_path_factory.mktemp("idx")
    data = load_mnist(DATA_ROOT, "test")
    pairs = {}
    for name, part in (("train", slice(0, 300)), ("heldout", slice(300, 500))):
        _write_idx(folder / f"{name}-images.idx", data.images[part, 0])
        _write_idx(folder / f"{name}-labels.idx", data.labels[part])
        pairs[name] = f"idx:{folder}/{name}-images.idx:{folder}/{name}-labels.idx"
    return pairs


def test_idx_checkpoint_needs_its_held_out_pair(tmp_path, idx_pairs, capsys):
    out = tmp_path / "m"
    assert main(["train", "--dataset", idx_pairs["train"], "--epochs", "1",
                 "--threads", "1", "--out", str(out),
                 "--eval-dataset", idx_pairs["heldout"]]) == 0
    trained = json.loads((out / "eval-heldout-images" / "summary.json").read_text())
    assert trained["dataset"] == idx_pairs["heldout"] and trained["samples"] == 200

    checkpoint = str(out / "model.safetensors")
    capsys.readouterr()
    # Without --dataset, or with the training pair, the score would be training accuracy.
    for extra in ([], ["--dataset", idx_pairs["train"]]):
        assert main(["evaluate", checkpoint, *extra]) == 2
        err = capsys.readouterr().err
        assert "held-out pair" in err and "--dataset idx:IMAGES:LABELS" in err
    assert not (out / "eval-test").exists()

    assert main(["evaluate", checkpoint, "--dataset", idx_pairs["heldout"],
                 "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out
    assert "heldout-images.idx" in printed and "(200 samples)" in printed
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["train_dataset"] == idx_pairs["train"]
    assert 0.0 <= summary["summary"]["avg"]["baseline"]["no_failure"] <= 1.0


def test_named_dataset_checkpoint_still_defaults_to_its_test_split(tmp_path, idx_pairs):
    out = tmp_path / "m"
    assert main(["train", "--limit", "300", "--epochs", "1", "--threads", "1",
                 "--out", str(out)]) == 0
    speed = json.loads((out / "speed.json").read_text())
    assert speed["gflops"] > 0 and speed["peak_gflops"] > speed["cpu_gflops"]
    assert main(["evaluate", str(out / "model.safetensors"), "--limit", "100"]) == 0
    summary = json.loads((out / "eval-test" / "summary.json").read_text())
    assert summary["dataset"] == "mnist" and summary["split"] == "test"
    # Another dataset than the training one is allowed (same view shapes: an IDX of digits).
    assert main(["evaluate", str(out / "model.safetensors"), "--dataset",
                 idx_pairs["heldout"]]) == 0
    assert (out / "eval-heldout-images" / "summary.json").is_file()
