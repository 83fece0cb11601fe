"""Learned refinements of the Modifier, fitted on a run's training features.

Both are fitted at evaluation time on the device outputs of the split the model was trained
on (never on test data) without retraining the devices, and applied by
:func:`.modifier.fuse_with_failures` through a :class:`.modifier.LearnedModifier`:

* **Affine Modifier.** For each device d, a ridge least-squares affine map
  ``f_d ~ A_d f_bar_{-d} + c_d`` from the average feature of the *other* devices to device
  d's own feature (closed form, float64, intercept not penalised). The failed device's
  surrogate is then its own head on the mapped average, ``head_d(A_d f_bar + c_d)``,
  instead of the average head on the average feature: it predicts what d would have seen.
  The maps are fitted on the single-failure input (all N - 1 peers); with several failed
  devices each failed one gets its own map applied to the average of the live peers (no
  map per live set: 2**N of them, most with few training rows, and one failure is the case
  the paper scores).
* **Calibrated fusion.** Per-device temperature scaling: live device d's logits are
  divided by ``T_d`` and its surrogate's logits by ``S_d``, each fitted by minimising that
  output's own negative log-likelihood on the training labels (the surrogate of d built
  from all the other devices). One scalar per output is the simplest calibration that
  changes how the average weighs devices without changing any device's argmax. Fitting
  all temperatures jointly on the NLL of the fused single-failure outputs instead was
  tried on the MNIST foundation checkpoints: it sharpened every output several-fold on the
  training split (where the devices are nearly always right together) and lost test
  accuracy, with and without failures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .modifier import (
    LearnedModifier,
    device_output_tensors,
    device_surrogate_logits,
    live_average,
    probs_to_logits,
)

__all__ = [
    "LEARNED_VARIANTS",
    "fit_feature_maps",
    "fit_learned_modifier",
    "fit_temperatures",
]

# Named options: variant -> (affine Modifier, calibrated fusion).
LEARNED_VARIANTS = {"affine": (True, False), "calibrated": (False, True),
                    "affine+calibrated": (True, True)}


def _peers_without(available: torch.Tensor, device: int) -> torch.Tensor:
    """Live mask (M, N) of the single failure of ``device``: every other available device."""
    live = available.clone()
    live[:, device] = False
    return live


def fit_feature_maps(
    features: torch.Tensor, available: torch.Tensor, ridge: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge affine maps ``f_d ~ A_d mean_{n != d}(f_n) + c_d`` for every device d.

    Args:
        features: (M, N, D) training features.
        available: (M, N) bool; a row fits device d's map only if d and a peer are there.
        ridge: penalty as a fraction of the average input variance (scale-free; a small
            value only keeps nearly collinear features from blowing the map up).

    Returns:
        ``A`` (N, D, D) and ``c`` (N, D), float32.

    """
    m, n, d = features.shape
    maps, offsets = [], []
    for device in range(n):
        live = _peers_without(available, device)
        rows = available[:, device] & live.any(dim=1)
        _, x = live_average(features, live, None)
        x, y = x[rows].double(), features[rows, device].double()
        x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ xc / len(xc)
        penalty = ridge * torch.trace(gram) / d
        eye = torch.eye(d, dtype=gram.dtype)
        a_t = torch.linalg.solve(gram + penalty * eye, xc.T @ yc / len(xc))  # A_d transposed
        maps.append(a_t.T)
        offsets.append(y_mean - a_t.T @ x_mean)
    return torch.stack(maps).float(), torch.stack(offsets).float()


def fit_temperatures(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-output temperatures (N,) minimising each output's mean NLL over its ``mask`` rows.

    Args:
        logits: (M, N, K).
        labels: (M,) int.
        mask: (M, N) bool, the rows each output is fitted on.

    The N problems are independent (the loss is their sum), solved together by L-BFGS on
    ``log T`` so that T stays positive.
    """
    # a fresh copy: tensors made under inference mode cannot take part in autograd
    logits = logits.detach().to(torch.float64, copy=True)
    weights = mask.double() / mask.sum(dim=0).clamp(min=1)
    targets = labels[:, None].expand(-1, logits.shape[1])
    log_t = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        nll = F.cross_entropy((logits / log_t.exp()[:, None]).transpose(1, 2), targets,
                              reduction="none")  # (M, N)
        loss = (nll * weights).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return log_t.detach().exp().float()


def fit_learned_modifier(
    probs,
    features,
    weights,
    biases,
    labels,
    available=None,
    affine: bool = True,
    calibrated: bool = True,
) -> LearnedModifier:
    """Fit the affine Modifier and/or calibrated fusion on training device outputs.

    Args:
        probs: (M, N, K) training device probabilities.
        features: (M, N, D) training device features.
        weights: (N, K, D) classifier weights.
        biases: (N, K) classifier biases.
        labels: (M,) int training labels.
        available: optional (M, N) bool; False = no view.
        affine: fit the feature maps (:func:`fit_feature_maps`).
        calibrated: fit the device and surrogate temperatures (of the affine surrogate
            when ``affine``).

    """
    probs, features, labels, available = device_output_tensors(probs, features, labels,
                                                               available)
    weights = torch.as_tensor(weights, dtype=torch.float32)
    biases = torch.as_tensor(biases, dtype=torch.float32)
    m, n, _ = probs.shape
    learned = LearnedModifier()
    if affine:
        learned = LearnedModifier(*fit_feature_maps(features, available))
    if not calibrated:
        return learned
    with torch.inference_mode():
        surrogates = torch.stack([
            device_surrogate_logits(features, weights, biases, _peers_without(available, d),
                                    learned=learned)[:, d]
            for d in range(n)], dim=1)  # (M, N, K): each device's single-failure surrogate
    has_peer = torch.stack([_peers_without(available, d).any(dim=1) for d in range(n)], dim=1)
    return LearnedModifier(
        learned.feature_map, learned.feature_offset,
        device_temperature=fit_temperatures(probs_to_logits(probs), labels, available),
        surrogate_temperature=fit_temperatures(surrogates, labels, has_peer))
