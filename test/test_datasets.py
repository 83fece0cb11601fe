"""Tests of the offline dataset loaders against the real files in ../shared/datasets."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from resilient_perception import datasets
from resilient_perception.datasets import (
    DatasetError,
    LabeledImages,
    MultiViewImages,
    class_counts,
    load_cifar10,
    load_dataset,
    load_idx_dataset,
    load_mnist,
    load_mvmc,
    read_idx,
)
from test.conftest import DATA_ROOT, needs_data

# Figures from ../shared/datasets/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MVMC_FRAMES = {"train": [813, 295, 7], "test": [98, 51, 2], "holdout": [89, 33, 1]}


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the decode cache at an empty folder so first and cached loads are both run."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv(datasets.CACHE_DIR_ENV, str(folder))
        yield folder


def write_idx(path: Path, array: np.ndarray, type_code: int, compress: bool = True) -> None:
    """Write ``array`` as an IDX file (big-endian), gzip'd unless told otherwise."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@needs_data
@pytest.mark.parametrize(
    ("split", "counts"), [("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)]
)
def test_mnist_counts_match_readme(split: str, counts: list[int]) -> None:
    """MNIST sizes and per-class counts equal the README's."""
    data = load_mnist(DATA_ROOT, split)
    assert data.images.shape == (sum(counts), 1, 28, 28)
    assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
    assert class_counts(data.labels, 10).tolist() == counts
    assert data.classes == tuple("0123456789")
    if split == "train":
        assert data.labels[0] == 5


@needs_data
def test_data_root_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESILIENT_PERCEPTION_DATA selects the dataset folder."""
    monkeypatch.setenv(datasets.DATA_ROOT_ENV, str(DATA_ROOT))
    assert datasets.resolve_data_root() == DATA_ROOT
    assert len(load_dataset("mnist", "test").labels) == 10_000


@needs_data
def test_cifar10_splits_and_cache(fresh_cache: Path) -> None:
    """CIFAR-10 decodes once, then loads identically from the cache."""
    first = load_cifar10(DATA_ROOT, "test")
    (cache_file,) = fresh_cache.glob("cifar10-jpeg-test-*.npz")  # the first load wrote it
    assert not list(fresh_cache.glob("*.tmp")), "atomic write must not leave temp files"

    cached = load_cifar10(DATA_ROOT, "test")
    np.testing.assert_array_equal(cached.images, first.images)
    np.testing.assert_array_equal(cached.labels, first.labels)
    # Loads come from the cache, not from decoding again: what the cache holds is loaded.
    with np.load(cache_file) as npz:
        arrays = {key: npz[key] for key in npz.files}
    np.savez(cache_file, **{**arrays, "labels": (arrays["labels"] + 1) % 10})
    try:
        np.testing.assert_array_equal(load_cifar10(DATA_ROOT, "test").labels,
                                      (first.labels + 1) % 10)
    finally:
        np.savez(cache_file, **arrays)

    assert first.images.shape == (10_000, 3, 32, 32)
    assert first.classes[:3] == ("airplane", "automobile", "bird")
    assert list(first.classes) == sorted(first.classes) and len(first.classes) == 10
    assert class_counts(first.labels, 10).tolist() == [1000] * 10


@needs_data
def test_cifar10_train_split() -> None:
    """The usual cache, which the training tests fill and read too: one decode per machine."""
    train = load_cifar10(DATA_ROOT, "train")
    assert train.images.shape == (50_000, 3, 32, 32)
    assert class_counts(train.labels, 10).tolist() == [5000] * 10


@needs_data
def test_damaged_cache_is_rebuilt(fresh_cache: Path) -> None:
    """A corrupt cache file is decoded again and overwritten."""
    load_mvmc(DATA_ROOT, "holdout")
    (cache_file,) = fresh_cache.glob("mvmc-multiview-holdout-*.npz")
    cache_file.write_bytes(b"not an npz")
    data = load_mvmc(DATA_ROOT, "holdout")
    assert len(data.labels) == sum(MVMC_FRAMES["holdout"])
    assert np.load(cache_file)["views"].shape == data.views.shape


@needs_data
def test_mvmc_splits_views_and_availability(fresh_cache: Path) -> None:
    """MVMC frame counts and camera availability match the README."""
    frames_by_views = np.zeros(7, dtype=int)
    for split, counts in MVMC_FRAMES.items():
        data = load_mvmc(DATA_ROOT, split)
        assert isinstance(data, MultiViewImages)
        assert data.classes == ("car", "person", "bus")
        assert class_counts(data.labels, 3).tolist() == counts
        assert data.views.shape == (sum(counts), 6, 3, 32, 32)
        assert len(set(data.frame_ids)) == len(data.frame_ids)
        assert not data.views[~data.available].any(), "missing views must be zeros"
        frames_by_views += np.bincount(data.available.sum(axis=1), minlength=7)
    assert frames_by_views[6] == 1379
    assert frames_by_views[5] == 7
    assert frames_by_views[1] == 3
    assert frames_by_views.sum() == 1389


@needs_data
def test_load_dataset_dispatch(fresh_cache: Path) -> None:
    """load_dataset dispatches by name, including an IDX pair by path."""
    assert isinstance(load_dataset("mvmc", "test", DATA_ROOT), MultiViewImages)
    assert isinstance(load_dataset("mnist", "test", DATA_ROOT), LabeledImages)
    mnist = DATA_ROOT / "mnist"
    by_path = load_dataset(
        f"idx:{mnist / 't10k-images-idx3-ubyte.gz'}:{mnist / 't10k-labels-idx1-ubyte.gz'}"
    )
    assert by_path.images.shape == (10_000, 1, 28, 28)
    assert by_path.classes == tuple(str(k) for k in range(10))


def test_unknown_dataset_lists_valid_names() -> None:
    """Unknown names and splits are rejected with the valid choices."""
    with pytest.raises(DatasetError, match="mnist, cifar10, mvmc"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="idx:<images_path>:<labels_path>"):
        load_dataset("idx:only-one-path")
    with pytest.raises(DatasetError, match="valid splits"):
        load_mnist(DATA_ROOT, "validation")


@pytest.mark.parametrize(
    ("type_code", "dtype"),
    [
        (0x08, np.uint8),
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ],
)
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_all_types(tmp_path: Path, type_code: int, dtype, compress: bool) -> None:
    """read_idx reads every IDX element type, gzip'd or plain."""
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / "data.idx"
    write_idx(path, array, type_code, compress)
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    assert result.flags.writeable
    np.testing.assert_array_equal(result, array)


def test_generic_idx_pair_channel_last(tmp_path: Path) -> None:
    """4-D IDX images are read channel-last and become (M, C, H, W)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0], dtype=np.uint8)
    write_idx(tmp_path / "images.gz", images, 0x08)
    write_idx(tmp_path / "labels.gz", labels, 0x08)
    data = load_idx_dataset(tmp_path / "images.gz", tmp_path / "labels.gz", ("a", "b", "c"))
    np.testing.assert_array_equal(data.images, images.transpose(0, 3, 1, 2))
    assert data.labels.tolist() == [0, 2, 1, 2, 0] and data.classes == ("a", "b", "c")


def test_missing_file_names_path_and_data_root(tmp_path: Path) -> None:
    """A missing file names its path and how to point at the data."""
    with pytest.raises(DatasetError) as info:
        load_mnist(tmp_path, "train")
    message = str(info.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert "--data-root" in message and os.fspath(datasets.DEFAULT_DATA_ROOT) in message
    with pytest.raises(DatasetError, match="cifar10-jpeg.tar.gz"):
        load_cifar10(tmp_path, "test")


def test_truncated_gzip_names_file(tmp_path: Path) -> None:
    """A truncated gzip stream is a DatasetError naming the file."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((10, 28, 28), np.uint8), 0x08)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(
        DatasetError, match=f"{re.escape(str(path))}: expected a complete gzip'd IDX"
    ):
        read_idx(path)


def test_truncated_payload_names_file(tmp_path: Path) -> None:
    """A payload shorter than the header says is a DatasetError."""
    path = tmp_path / "images.idx"
    write_idx(path, np.zeros((10, 28, 28), np.uint8), 0x08, compress=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(
        DatasetError,
        match=f"{re.escape(str(path))}: IDX header .*needs 7840 payload bytes, got 7839",
    ):
        read_idx(path)


def test_wrong_magic_names_file(tmp_path: Path) -> None:
    """A non-IDX file is rejected with the magic it had."""
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(b"PK\x03\x04 this is a zip, not IDX"))
    with pytest.raises(
        DatasetError, match=f"{re.escape(str(path))}: expected IDX with magic .*0x504b0304"
    ):
        read_idx(path)


def test_count_mismatch_names_both_files(tmp_path: Path) -> None:
    """Image and label counts must agree; both files are named."""
    write_idx(tmp_path / "images.gz", np.zeros((4, 28, 28), np.uint8), 0x08)
    write_idx(tmp_path / "labels.gz", np.zeros(3, np.uint8), 0x08)
    with pytest.raises(DatasetError, match=r"labels.gz: has 3 labels but .*images.gz has 4"):
        load_idx_dataset(tmp_path / "images.gz", tmp_path / "labels.gz")


def test_label_out_of_range_names_file(tmp_path: Path) -> None:
    """Labels outside the class list are rejected."""
    write_idx(tmp_path / "images.gz", np.zeros((2, 4, 4), np.uint8), 0x08)
    write_idx(tmp_path / "labels.gz", np.array([0, 7], np.uint8), 0x08)
    with pytest.raises(DatasetError, match=r"labels.gz: labels span \[0, 7\]"):
        load_idx_dataset(tmp_path / "images.gz", tmp_path / "labels.gz", ("a", "b"))


def test_corrupt_archive_names_file(tmp_path: Path) -> None:
    """A corrupt tar archive is a DatasetError naming the archive."""
    (tmp_path / "mvmc-multiview.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match="mvmc-multiview.tar.gz: expected a gzip'd tar"):
        load_mvmc(tmp_path, "test")
