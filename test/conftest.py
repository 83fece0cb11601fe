"""Shared pytest fixtures: small cuts of the real MNIST test set (no synthetic data)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file (MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def cut_3x2(images: np.ndarray) -> np.ndarray:
    """(M, 28, 28) -> (M, 6, 1, 10, 14): 3 rows (starts 0, 9, 18) x 2 columns of 14."""
    views = [images[:, r : r + 10, c : c + 14] for r in (0, 9, 18) for c in (0, 14)]
    return np.stack(views, axis=1)[:, :, None]


@pytest.fixture(scope="session")
def mnist_test():
    """(images uint8 (10000, 28, 28), labels int64 (10000,)) from ../shared/datasets."""
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def mnist_views(mnist_test):
    """First 2,000 MNIST test images cut 3x2: (views (2000, 6, 1, 10, 14), labels)."""
    images, labels = mnist_test
    return cut_3x2(images[:2000]), labels[:2000].copy()
