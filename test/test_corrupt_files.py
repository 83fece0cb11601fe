"""Corrupt files through every command that reads them: exit 2, the file named, no traceback.

The corpus is made at test time (nothing binary is committed): truncations and bit flips of
a small real checkpoint, its ONNX export, a small camera bag in both storages (MCAP and
sqlite3), the example fleet file and the committed ResNet profile. A damaged file that still
reads as valid (a flip inside a tensor's data) is no error; so each damaged file is first
read with the library function the command uses, and only those that fail there are run
through the command, which must then exit with status 2 and a one-line message that names
the file, never a traceback.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT

SEED = 15
VARIANTS = 6  # per file: truncations and bit flips


def damaged_copies(data: bytes, n: int = VARIANTS, seed: int = SEED) -> list[tuple[str, bytes]]:
    """``n`` damaged versions of ``data``: half truncated, half with 1-8 bits flipped."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            cut = rng.randrange(0, len(data))
            out.append((f"truncated at {cut}", data[:cut]))
        else:
            flipped = bytearray(data)
            # In the first kilobyte: headers, metadata and structure, not tensor payloads.
            for _ in range(rng.randint(1, 8)):
                bit = rng.randrange(8 * min(len(data), 1024))
                flipped[bit // 8] ^= 1 << (bit % 8)
            out.append(("bits flipped", bytes(flipped)))
    return out


def assert_usage_error(result: tuple[int, str, str], path: Path) -> None:
    status, out, err = result
    text = out + err
    assert status == 2, f"exit {status} for {path}:\n{text[-2000:]}"
    assert "Traceback" not in text, text[-2000:]
    assert str(path) in err, f"the message does not name {path}: {err[-500:]}"


def fails(read, path: Path) -> bool:
    """Whether the library's reader rejects ``path`` (with any exception)."""
    try:
        read(path)
    except Exception:
        return True
    return False


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from resilient_perception.perception.checkpoint import save_checkpoint
    from resilient_perception.perception.model import MultiDeviceCNN
    from resilient_perception.perception.views import ViewSpec

    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return save_checkpoint(path, MultiDeviceCNN(6, 1, 10, widths=(2, 2), n_blocks=1), {
        "view_spec": ViewSpec(kind="grid").to_dict(), "dataset": "mnist",
        "classes": [str(k) for k in range(10)]})


def test_damaged_checkpoints(cli, tiny_checkpoint, tmp_path):
    from resilient_perception.perception.checkpoint import load_checkpoint

    tried = 0
    for i, (what, data) in enumerate(damaged_copies(tiny_checkpoint.read_bytes(), 10)):
        path = tmp_path / f"damaged_{i}.safetensors"
        path.write_bytes(data)
        if not fails(load_checkpoint, path):
            continue
        tried += 1
        for args in (["evaluate", str(path), "--limit", "10"],
                     ["export", str(path), "--out", str(tmp_path / f"onnx_{i}")]):
            assert_usage_error(cli(*args), path), what
    assert tried >= 5


def test_damaged_onnx_exports(cli, tiny_checkpoint, tmp_path):
    """A reused export that is damaged: the commands that start cameras or measure them."""
    import onnx

    from resilient_perception.perception.export import export_checkpoint

    folder = tmp_path / "model"
    folder.mkdir()
    checkpoint = folder / "model.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    export_checkpoint(checkpoint, folder / "onnx")
    target = folder / "onnx" / "device_3.onnx"
    original = target.read_bytes()
    tried = 0
    for what, data in damaged_copies(original, 8):
        target.write_bytes(data)
        if not fails(lambda p: onnx.checker.check_model(onnx.load(str(p))), target):
            continue
        tried += 1
        for args in (["bench-cost", str(checkpoint), "--out", str(tmp_path / "cost")],
                     ["bench-pipeline", str(checkpoint), "--out", str(tmp_path / "bench")]):
            assert_usage_error(cli(*args), target), what
    assert tried >= 3


def test_damaged_fleet_and_profile_files(cli, tmp_path):
    from resilient_perception.placement.block_profile import load_profile
    from resilient_perception.placement.fleet_config import load_fleet

    fleet = ROOT / "config" / "fleet_example.yaml"
    profile = ROOT / "docs" / "results" / "resnet" / "baseline-w8" / "plain" / "profile.json"
    tried = 0
    for name, source, reader in (("fleet.yaml", fleet, load_fleet),
                                 ("profile.json", profile, load_profile)):
        for i, (what, data) in enumerate(damaged_copies(source.read_bytes(), 10)):
            path = tmp_path / f"{i}_{name}"
            path.write_bytes(data)
            if not fails(reader, path):
                continue
            tried += 1
            args = (["plan", str(path), "--profile", str(profile)] if name == "fleet.yaml"
                    else ["plan", str(fleet), "--profile", str(path)])
            assert_usage_error(cli(*args, "--out", str(tmp_path / "plan.json")), path), what
    assert tried >= 8


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_damaged_bags(cli, tmp_path, storage):
    from resilient_perception.ros.bags import CameraFrame, summarize, write_frames

    bag = tmp_path / "bag"
    frames = [CameraFrame(10**9 + i * 10**8, (np.full((4, 4, 1), i, np.uint8),) * 6, "mono8",
                          i, i) for i in range(3)]
    write_frames(bag, frames, 6, storage=storage)
    tried = 0
    for name in ("metadata.yaml", next(f.name for f in bag.iterdir()
                                       if f.suffix in (".mcap", ".db3"))):
        for i, (what, data) in enumerate(damaged_copies((bag / name).read_bytes())):
            copy = tmp_path / f"{i}_{name.replace('.', '_')}"
            shutil.copytree(bag, copy)
            (copy / name).write_bytes(data)
            if not fails(summarize, copy):
                continue
            tried += 1
            assert_usage_error(cli("check-bag", str(copy)), copy), what
            assert_usage_error(cli("score-bag", str(copy)), copy), what
    assert tried >= 4
