"""The learned Modifier options: ridge affine maps and temperatures, on real device outputs."""

import numpy as np
import pytest
import torch

from resilient_perception.perception.evaluation import device_outputs
from resilient_perception.perception.learned_modifier import (
    fit_feature_maps,
    fit_learned_modifier,
    fit_temperatures,
)
from resilient_perception.perception.modifier import (
    LearnedModifier,
    device_surrogate_logits,
    fuse_with_failures,
    probs_to_logits,
    surrogate_logits,
)


@pytest.fixture(scope="module")
def outputs(mnist_views, briefly_trained_model):
    views, labels = mnist_views
    probs, features = device_outputs(briefly_trained_model, views[:1000])
    weights, biases = (t.detach() for t in briefly_trained_model.classifier_heads())
    return probs, features, weights, biases, torch.as_tensor(labels[:1000])


def test_feature_maps_are_least_squares(outputs):
    _, features, *_ = outputs
    available = torch.ones(features.shape[:2], dtype=torch.bool)
    maps, offsets = fit_feature_maps(features, available, ridge=0.0)
    f = features.double().numpy()
    for d in (0, 5):
        peers = np.delete(f, d, axis=1).mean(axis=1)
        design = np.hstack([peers, np.ones((len(f), 1))])
        solution = np.linalg.lstsq(design, f[:, d], rcond=None)[0]
        np.testing.assert_allclose(maps[d].numpy(), solution[:-1].T, atol=2e-3)
        np.testing.assert_allclose(offsets[d].numpy(), solution[-1], atol=2e-3)
        # the map predicts device d's feature better than the plain average does
        mapped = peers @ maps[d].double().numpy().T + offsets[d].double().numpy()
        assert ((mapped - f[:, d]) ** 2).mean() < ((peers - f[:, d]) ** 2).mean()


def test_device_surrogates(outputs):
    probs, features, weights, biases, _ = outputs
    live = torch.ones(features.shape[:2], dtype=torch.bool)
    live[:, 2] = False
    plain = device_surrogate_logits(features, weights, biases, live)
    assert plain.shape == (1000, 6, 10)
    torch.testing.assert_close(plain[:, 4], surrogate_logits(features, weights, biases, live))
    identity = LearnedModifier(torch.eye(16).expand(6, 16, 16), torch.zeros(6, 16),
                               surrogate_temperature=torch.full((6,), 2.0))
    own_head = device_surrogate_logits(features, weights, biases, live, learned=identity)
    f_bar = features[:, [0, 1, 3, 4, 5]].mean(dim=1)
    torch.testing.assert_close(own_head[:, 2], (f_bar @ weights[2].T + biases[2]) / 2.0,
                               atol=1e-5, rtol=1e-5)
    # unit temperatures and no map: exactly the paper's fusion, with and without Modifier
    unit = LearnedModifier(device_temperature=torch.ones(6), surrogate_temperature=torch.ones(6))
    for use_modifier in (False, True):
        torch.testing.assert_close(
            fuse_with_failures(probs, features, weights, biases, live, "avg", use_modifier,
                               learned=unit),
            fuse_with_failures(probs, features, weights, biases, live, "avg", use_modifier))


def test_temperatures_undo_a_known_scaling(outputs):
    probs, *_ = outputs
    logits = probs_to_logits(probs[:, :2])  # (M, 2, K)
    # labels drawn from the model's own probabilities: calibrated by construction (T = 1)
    generator = torch.Generator().manual_seed(0)
    labels = torch.multinomial(probs[:, 0], 1, generator=generator).squeeze(1)
    both = torch.stack([logits[:, 0], 3.0 * logits[:, 0]], dim=1)
    t = fit_temperatures(both, labels, torch.ones(len(labels), 2, dtype=torch.bool))
    assert t[0] == pytest.approx(1.0, abs=0.15) and t[1] == pytest.approx(3.0, rel=0.15)


def test_fit_learned_modifier(outputs):
    probs, features, weights, biases, labels = outputs
    learned = fit_learned_modifier(probs, features, weights, biases, labels)
    assert learned.feature_map.shape == (6, 16, 16)
    assert learned.device_temperature.shape == learned.surrogate_temperature.shape == (6,)
    assert bool((learned.device_temperature > 0).all())
    affine_only = fit_learned_modifier(probs, features, weights, biases, labels,
                                       calibrated=False)
    assert affine_only.device_temperature is None
    torch.testing.assert_close(affine_only.feature_map, learned.feature_map)
