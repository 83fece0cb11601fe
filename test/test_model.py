"""Tests of the device CNNs (Table 2) on real MNIST views."""

import pytest
import torch

from resilient_perception.perception.model import (
    DeviceCNN,
    MultiDeviceCNN,
    count_parameters,
    views_to_float,
)


def test_parameter_count_matches_consistent_table2():
    assert count_parameters(DeviceCNN(1, 10)) == 18_530
    assert count_parameters(MultiDeviceCNN(6, 1, 10)) == 6 * 18_530
    assert count_parameters(DeviceCNN(3, 10)) == 18_530 + 2 * 8 * 9  # RGB first conv


def test_shapes(mnist_views):
    views, _ = mnist_views
    x = views_to_float(views[:7])
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and float(x.min()) >= 0.0
    logits, feats = MultiDeviceCNN(6, 1, 10)(x)
    assert logits.shape == (7, 6, 10) and feats.shape == (7, 6, 16)
    logits1, feats1 = DeviceCNN(1, 10)(x[:, 0])
    assert logits1.shape == (7, 10) and feats1.shape == (7, 16)
    with pytest.raises(ValueError):
        MultiDeviceCNN(5, 1, 10)(x)


def test_grouped_equals_per_device(mnist_views):
    views, _ = mnist_views
    torch.manual_seed(0)
    model = MultiDeviceCNN(6, 1, 10)
    x = views_to_float(views[:64])
    model.train()
    with torch.no_grad():
        model(x)  # update BN running stats so they are non-trivial
    model.eval()
    with torch.no_grad():
        logits, feats = model(x)
        for i in range(6):
            dev = model.device(i)
            assert not dev.training
            li, fi = dev(x[:, i])
            torch.testing.assert_close(li, logits[:, i], atol=1e-5, rtol=0)
            torch.testing.assert_close(fi, feats[:, i], atol=1e-5, rtol=0)
        w, b = model.classifier_heads()
        assert w.shape == (6, 10, 16) and b.shape == (6, 10)
        rebuilt = MultiDeviceCNN.from_devices([model.device(i) for i in range(6)]).eval()
        torch.testing.assert_close(rebuilt(x)[0], logits, atol=1e-6, rtol=0)



def test_a_training_step_of_the_six_equals_six_devices_trained_alone(mnist_views):
    """Weights, gradients' effect and BN statistics (with their batch count) per device.

    In float64: in float32 the two paths' rounding differs, and where a pre-activation is
    within rounding of 0 a ReLU passes a gradient on one path and not on the other.
    """
    views, labels = mnist_views
    x, y = views_to_float(views[:32]).double(), torch.as_tensor(labels[:32])
    torch.manual_seed(0)
    model = MultiDeviceCNN(6, 1, 10).double().train()
    alone = [model.device(i).double().train() for i in range(6)]
    for trained, params in ((model, model.parameters()),
                            *((dev, dev.parameters()) for dev in alone)):
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for _ in range(2):
            if trained is model:
                logits = model(x)[0].reshape(-1, 10)
                loss = torch.nn.functional.cross_entropy(logits, y.repeat_interleave(6),
                                                         reduction="sum") / len(y)
            else:
                i = alone.index(trained)
                loss = torch.nn.functional.cross_entropy(trained(x[:, i])[0], y,
                                                         reduction="sum") / len(y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for i, dev in enumerate(alone):
        copy = model.device(i).state_dict()  # float32, a device as it is exported
        for name, value in dev.state_dict().items():
            torch.testing.assert_close(copy[name], value.to(copy[name].dtype), atol=1e-6,
                                       rtol=0, msg=name)
    assert int(model.trunk.blocks[0].bn1.num_batches_tracked) == 2

def test_device_copy_is_independent():
    model = MultiDeviceCNN(2, 1, 10)
    dev = model.device(1)
    with torch.no_grad():
        dev.classifier.weight.add_(1.0)
    assert not torch.equal(dev.classifier.weight, model.head_weight[1])
