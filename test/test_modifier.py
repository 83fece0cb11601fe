"""Tests of the Modifier surrogate and fusion against hand-written loop references."""

import torch

from resilient_perception.perception.model import MultiDeviceCNN, views_to_float
from resilient_perception.perception.modifier import (
    fuse_average,
    fuse_max,
    fuse_with_failures,
    synthesize_surrogate,
)


def _reference_surrogate(f, w, b, live):
    out = []
    for r in range(f.shape[0]):
        idx = [i for i in range(f.shape[1]) if live[r, i]]
        if not idx:
            out.append(torch.full((w.shape[1],), 1.0 / w.shape[1]))
            continue
        w_bar = sum(w[i] for i in idx) / len(idx)
        b_bar = sum(b[i] for i in idx) / len(idx)
        z_bar = sum(f[r, i] for i in idx) / len(idx)
        out.append(torch.softmax(w_bar @ z_bar + b_bar, dim=0))
    return torch.stack(out)


def _real_outputs(mnist_views, n=6):
    views, labels = mnist_views
    torch.manual_seed(1)
    model = MultiDeviceCNN(6, 1, 10).eval()
    with torch.no_grad():
        logits, feats = model(views_to_float(views[:n]))
    w, b = model.classifier_heads()
    return logits.softmax(-1), feats, w.detach(), b.detach(), torch.as_tensor(labels[:n])


def test_surrogate_matches_loop_reference(mnist_views):
    _, f, w, b, _ = _real_outputs(mnist_views)
    live = torch.tensor([
        [True, True, True, True, True, False],   # one failure
        [False, True, False, True, True, True],  # two failures
        [True, False, False, False, False, False],  # five failures
        [True, True, True, True, True, True],    # none
        [False, False, True, True, False, True],
        [False] * 6,                              # nothing live -> uniform
    ])
    got = synthesize_surrogate(f, w, b, live)
    torch.testing.assert_close(got, _reference_surrogate(f, w, b, live), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[5], torch.full((10,), 0.1))
    # dead devices' entries are never read, even if they hold NaN
    f_nan = f.clone()
    f_nan[~live] = float("nan")
    torch.testing.assert_close(synthesize_surrogate(f_nan, w, b, live), got)


def test_fusion_avg_max():
    probs = torch.tensor([[[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]]])
    mask = torch.tensor([[True, False, True]])
    torch.testing.assert_close(fuse_average(probs, mask), torch.tensor([[0.55, 0.45]]))
    torch.testing.assert_close(fuse_max(probs, mask), torch.tensor([[0.7, 0.6]]))
    torch.testing.assert_close(fuse_max(probs, torch.zeros(1, 3, dtype=torch.bool)),
                               torch.tensor([[0.5, 0.5]]))


def test_no_modifier_ignores_dead_devices(mnist_views):
    p, f, w, b, _ = _real_outputs(mnist_views)
    live = torch.ones(6, 6, dtype=torch.bool)
    live[torch.arange(6), torch.arange(6)] = False  # row r loses device r
    for mode in ("avg", "max"):
        base = fuse_with_failures(p, f, w, b, live, mode, use_modifier=False)
        garbage = p.clone()
        garbage[~live] = 123.0
        torch.testing.assert_close(
            fuse_with_failures(garbage, f, w, b, live, mode, use_modifier=False), base)
        torch.testing.assert_close(
            fuse_with_failures(garbage, f, w, b, live, mode, use_modifier=True),
            fuse_with_failures(p, f, w, b, live, mode, use_modifier=True))


def test_modifier_fills_failed_devices(mnist_views):
    p, f, w, b, _ = _real_outputs(mnist_views)
    live = torch.tensor([[True, True, False, True, False, True]] * 6)
    p_hat = _reference_surrogate(f, w, b, live)
    filled = p.clone()
    filled[:, [2, 4]] = p_hat[:, None]
    torch.testing.assert_close(fuse_with_failures(p, f, w, b, live, "avg", True),
                               filled.mean(1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fuse_with_failures(p, f, w, b, live, "max", True),
                               filled.amax(1), atol=1e-6, rtol=1e-5)


def test_gradients_flow_to_live_devices_only(mnist_views):
    views, _ = mnist_views
    model = MultiDeviceCNN(6, 1, 10)
    logits, feats = model(views_to_float(views[:8]))
    w, b = model.classifier_heads()
    live = torch.ones(8, 6, dtype=torch.bool)
    live[:, 3] = False
    synthesize_surrogate(feats, w, b, live)[:, 0].sum().backward()
    g = model.head_weight.grad
    assert g[3].abs().sum() == 0 and all(g[i].abs().sum() > 0 for i in (0, 1, 2, 4, 5))
    assert model.trunk.blocks[0].conv1.weight.grad.abs().sum() > 0
