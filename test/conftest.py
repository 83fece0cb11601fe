"""Shared pytest fixtures: small cuts of the real MNIST test set (no synthetic data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resilient_perception.core.datasets import load_mnist
from resilient_perception.core.views import ViewSpec, make_views

DATA_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


@pytest.fixture(scope="session")
def mnist_views():
    """First 2,000 MNIST test images cut 3x2: (views (2000, 6, 1, 10, 14), labels)."""
    if not DATA_ROOT.is_dir():
        pytest.skip("../shared/datasets not present")
    data = load_mnist(DATA_ROOT, "test")
    views, _ = make_views(ViewSpec(kind="grid", rows=3, cols=2), data)
    return np.ascontiguousarray(views[:2000]), data.labels[:2000].copy()
