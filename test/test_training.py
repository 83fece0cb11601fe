"""Tests of the joint training loop on 2,000 real MNIST test images cut 3x2."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resilient_perception.perception.checkpoint import load_training_state, save_training_state
from resilient_perception.perception.model import DeviceCNN, MultiDeviceCNN, views_to_float
from resilient_perception.perception.training import (
    TrainConfig,
    joint_loss,
    train,
    train_epoch_loop,
)

FAST = {"epochs": 1, "batch_size": 64, "lr": 0.1, "num_threads": 2}


def _model(seed=0):
    torch.manual_seed(seed)
    return MultiDeviceCNN(6, 1, 10)


def test_one_epoch_learns(mnist_views):
    views, labels = mnist_views
    model = _model()
    cfg = TrainConfig(**FAST)
    with torch.no_grad():
        ce0 = float(joint_loss(*model(views_to_float(views[:500])),
                               *model.classifier_heads(), torch.as_tensor(labels[:500]))[1])
    hist = train(model, views, labels, cfg, progress=False)
    assert len(hist) == 1 and hist[0]["kl"] > 0 and hist[0]["images"] == 2000
    json.dumps(hist)
    with torch.no_grad():
        logits, _ = model(views_to_float(views[:500]))
    ce1 = float(joint_loss(logits, _, *model.classifier_heads(), torch.as_tensor(labels[:500]))[1])
    assert ce1 < 0.8 * ce0
    fused_acc = float((logits.softmax(-1).mean(1).argmax(1) == torch.as_tensor(labels[:500]))
                      .float().mean())
    assert fused_acc > 0.3  # chance is 0.1
    assert not model.training


def test_bf16_training_takes_the_steps_fp32_takes(mnist_views):
    """Autocast changes the forward's arithmetic, not what is learned; weights stay fp32.

    A few steps on a short slice: bf16 runs emulated (slowly) on CPUs without native bf16, and
    agreement with fp32 step for step says more than a longer run's accuracy would.
    """
    views, labels = mnist_views[0][:256], mnist_views[1][:256]
    start = _model().state_dict()
    trained = {}
    for precision in ("fp32", "bf16"):
        model = _model()
        hist = train(model, views, labels, TrainConfig(**FAST, precision=precision, seed=3),
                     progress=False)
        trained[precision] = (hist[0]["loss"], model)
    (loss32, fp32), (loss16, bf16) = trained["fp32"], trained["bf16"]
    assert abs(loss16 - loss32) < 0.005 * loss32  # another batch order: 1.3% apart
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    # The whole update, not each tensor's: a convolution's bias before BatchNorm gets only
    # rounding noise as its gradient, in either precision.
    steps = {precision: torch.cat([(p.detach() - start[name]).flatten()
                                   for name, p in model.named_parameters()])
             for precision, model in (("fp32", fp32), ("bf16", bf16))}
    # 0.997 here; the update from another batch order is at 0.89.
    assert float(F.cosine_similarity(steps["fp32"], steps["bf16"], dim=0)) > 0.98


def test_same_seed_same_weights(mnist_views):
    views, labels = mnist_views
    v, y = views[:256], labels[:256]
    cfg = TrainConfig(**FAST, seed=7)
    a, b = _model(), _model()
    train(a, v, y, cfg, progress=False)
    train(b, v, y, cfg, progress=False)
    for (k, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), k
    c = _model()
    train(c, v, y, TrainConfig(**FAST, seed=8), progress=False)
    assert not torch.equal(c.head_weight, a.head_weight)


def test_baseline_has_no_kl_and_drop_k2_works(mnist_views):
    views, labels = mnist_views
    v, y = views[:256], labels[:256]
    h0 = train(_model(), v, y, TrainConfig(**FAST, fail_simulation=False), progress=False)
    assert h0[0]["kl"] == 0.0 and h0[0]["loss"] == pytest.approx(h0[0]["ce"])
    h2 = train(_model(), v, y, TrainConfig(**FAST, drop_k=2), progress=False)
    assert h2[0]["kl"] > 0 and np.isfinite(h2[0]["loss"])
    with pytest.raises(ValueError, match="drop_k"):
        train(_model(), v, y, TrainConfig(**FAST, drop_k=6), progress=False)


def test_kl_gradient_target_detached(mnist_views):
    views, labels = mnist_views
    model = _model()
    logits, feats = model(views_to_float(views[:32]))
    w, b = model.classifier_heads()
    y = torch.as_tensor(labels[:32])
    _, _, kl = joint_loss(logits, feats, w, b, y, dropped=[2], detach_target=True)
    assert kl > 0
    kl.backward()
    assert model.head_weight.grad[2].abs().sum() == 0  # dropped device is only the target
    assert model.head_weight.grad[0].abs().sum() > 0


def test_masks_and_naive_loop(mnist_views):
    views, labels = mnist_views
    v, y = views[:256], labels[:256]
    avail = np.ones((256, 6), bool)
    avail[:128, 5] = False
    smask = np.ones((256, 6), bool)
    smask[:, 0] = y % 2 == 0  # device 0 learns only even digits
    h = train(_model(), v, y, TrainConfig(**FAST), available=avail, sample_mask=smask,
              progress=False)
    assert np.isfinite(h[0]["loss"])
    torch.manual_seed(0)
    stats = train_epoch_loop([DeviceCNN(1, 10) for _ in range(6)], v, y, TrainConfig(**FAST),
                             progress=False, max_batches=2)
    assert stats["images"] == 128 and stats["kl"] > 0


def test_fused_loss_trains_the_surrogate_path(mnist_views):
    """The fused term adds the fused NLL with all devices and with the dropped one replaced."""
    views, labels = mnist_views
    model = _model()
    logits, feats = model(views_to_float(views[:32]))
    w, b = model.classifier_heads()
    y = torch.as_tensor(labels[:32])
    _, ce_paper, _ = joint_loss(logits, feats, w, b, y, dropped=[2], fused_weight=0.0)
    _, ce_fused, _ = joint_loss(logits, feats, w, b, y, dropped=[2], fused_weight=1.0)
    probs = logits.softmax(-1)
    nll_all = -probs.mean(1).log().gather(1, y[:, None]).mean()
    # ce_fused = paper CE + NLL(all devices) + NLL(device 2 replaced by its surrogate)
    assert (ce_fused - ce_paper).detach() > nll_all.detach()
    (ce_fused - ce_paper).backward()
    # Through the surrogate path the fused term reaches every live device's head.
    assert model.head_weight.grad[0].abs().sum() > 0


def test_the_fused_loss_in_the_geometric_mean_scores_that_pooling():
    """With no device dropped, the geo fused term is the NLL of the softmax of mean log p."""
    torch.manual_seed(1)
    logits, feats = torch.randn(8, 6, 10), torch.randn(8, 6, 16)
    w, b, y = torch.randn(6, 10, 16), torch.randn(6, 10), torch.arange(8) % 10
    _, ce_devices, _ = joint_loss(logits, feats, w, b, y, fused_weight=0.0)
    _, ce_geo, _ = joint_loss(logits, feats, w, b, y, fused_weight=1.0, fused_mode="geo")
    _, ce_avg, _ = joint_loss(logits, feats, w, b, y, fused_weight=1.0)
    log_geo = torch.log_softmax(torch.log_softmax(logits, -1).mean(1), -1)
    expected = -log_geo.gather(1, y[:, None]).mean()
    torch.testing.assert_close(ce_geo - ce_devices, expected)
    assert not torch.isclose(ce_avg, ce_geo)
    with pytest.raises(ValueError, match="fused_mode"):
        TrainConfig(fused_mode="max").validate(6)


class _Stop(Exception):
    """Raised from the epoch callback: the run is 'killed' right after a checkpoint."""


@pytest.mark.parametrize("options", [
    {"feature_dropout": 0.3},  # torch's RNG draws the dropout masks
    {"fail_simulation": False, "fedavg_every": 3},  # averaging counts steps across epochs
])
def test_resumed_run_equals_straight_run(tmp_path, mnist_views, options):
    views, labels = mnist_views
    v, y = views[:256], labels[:256]
    cfg = TrainConfig(**{**FAST, "epochs": 3, "num_threads": 1}, **options)
    straight = _model()
    straight_history = train(straight, v, y, cfg, progress=False)

    interrupted, path = _model(), tmp_path / "state.safetensors"

    def checkpoint_then_stop(state):
        save_training_state(path, interrupted, state, {"note": "kept"})
        if len(state.history) == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(interrupted, v, y, cfg, progress=False, on_epoch_end=checkpoint_then_stop)
    resumed, state, meta = load_training_state(path)  # a new process would start here
    assert meta["note"] == "kept" and [h["epoch"] for h in state.history] == [1]
    history = train(resumed, v, y, cfg, progress=False, resume=state)

    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["loss"] for h in history] == [h["loss"] for h in straight_history]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
