"""Tests of failure-subset evaluation and its summary."""

import numpy as np
import pytest
import torch

from resilient_perception.perception.evaluation import (
    device_outputs,
    evaluate_failures,
    failure_subsets,
    summarise,
)
from resilient_perception.perception.model import MultiDeviceCNN


def test_failure_subsets():
    subs = failure_subsets(6)
    assert len(subs) == 63 and subs[0] == () and len(set(subs)) == 63
    assert tuple(range(6)) not in subs and max(len(s) for s in subs) == 5
    assert failure_subsets(2) == [(), (0,), (1,)]


def test_device_outputs_and_rows(mnist_views):
    views, labels = mnist_views
    torch.manual_seed(0)
    model = MultiDeviceCNN(6, 1, 10).train()
    probs, feats = device_outputs(model, views[:300], batch_size=128)
    assert model.training  # mode restored
    assert probs.shape == (300, 6, 10) and feats.shape == (300, 6, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(300, 6))
    w, b = model.classifier_heads()
    rows = evaluate_failures(probs, feats, w.detach(), b.detach(), labels[:300], max_rows=5000)
    assert len(rows) == 63 * 2 * 2
    assert {(r["mode"], r["modifier"]) for r in rows} == {
        ("avg", False), ("avg", True), ("max", False), ("max", True)}
    nofail = [r for r in rows if r["failed"] == ()]
    assert len({r["accuracy"] for r in nofail if r["mode"] == "avg"}) == 1  # modifier unused


def test_available_counts_as_failure():
    # 2 frames, 3 devices, 2 classes; device 0 is right, devices 1-2 wrong on frame 0
    probs = torch.tensor([[[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]],
                          [[0.2, 0.8], [0.3, 0.7], [0.1, 0.9]]])
    feats = torch.zeros(2, 3, 4)
    w, b = torch.zeros(3, 2, 4), torch.zeros(3, 2)
    labels = np.array([0, 1])
    rows = evaluate_failures(probs, feats, w, b, labels, modes=("max",))
    assert next(r for r in rows if r["failed"] == () and not r["modifier"])["accuracy"] == 1.0
    avail = np.array([[False, True, True], [True, True, True]])
    rows = evaluate_failures(probs, feats, w, b, labels, available=avail, modes=("max",))
    r0 = next(r for r in rows if r["failed"] == () and not r["modifier"])
    assert r0["accuracy"] == 0.5 and r0["balanced_accuracy"] == 0.5
    # frame 0 with devices 1, 2 failed and device 0 unavailable: no live device -> error
    r12 = next(r for r in rows if r["failed"] == (1, 2) and not r["modifier"])
    assert r12["accuracy"] == 0.5


def test_summarise_math():
    rows = []
    for mod, single in ((False, [0.6, 0.8]), (True, [0.85, 0.95])):
        rows.append({"failed": (), "n_failed": 0, "mode": "avg", "modifier": mod,
                     "accuracy": 1.0, "balanced_accuracy": 1.0})
        for i, acc in enumerate(single):
            rows.append({"failed": (i,), "n_failed": 1, "mode": "avg", "modifier": mod,
                         "accuracy": acc, "balanced_accuracy": acc})
    s = summarise(rows)["avg"]
    assert s["baseline"]["single_failure_mean"] == pytest.approx(0.7)
    assert s["modifier"]["single_failure_per_device"] == [0.85, 0.95]
    assert s["baseline"]["by_n_failed"] == [1.0, pytest.approx(0.7)]
    assert s["recovery_ratio"] == pytest.approx((0.9 - 0.7) / (1.0 - 0.7))
