"""The Modifier module and output fusion (vectorised over a batch, differentiable).

The Modifier synthesises a failed device's output from its live peers (paper, "Modifier
module design", Algorithm 1/3)::

    p_hat = softmax(mean_live(W) @ mean_live(f) + mean_live(b))

Design choices (documented here once, used everywhere):

* **Bias.** The paper writes ``softmax(W_bar . z_bar)`` without a bias, but each device's
  classifier (Table 2: "16*10 + 10") has one. We average the live biases too, so the
  surrogate is exactly the linear classifier whose parameters are the average of the live
  heads, applied to the average live feature. Dropping the bias would make the surrogate a
  different function from the one the devices are trained with.
* **Several failed devices.** The surrogate depends only on the live set, so every failed
  device in a frame receives the same surrogate (a surrogate has no features, so the
  paper's "one at a time, updating the pool" cannot add information).
* **No live device.** With zero live devices there is nothing to average: the surrogate and
  the fused output are the uniform distribution ``1/K`` (the caller decides how to score
  such rows; :mod:`.evaluation` counts them as errors).
* Entries of dead devices are never read (they are zeroed / masked before any product),
  so they may hold stale values or NaN.
* **Confidence-weighted surrogate** (an option beyond the paper): ``peer_weights`` replace
  the equal average over live peers by a weighted one; :func:`fuse_with_failures` weights
  each peer by its confidence (its largest class probability).
* **Learned refinements** (options beyond the paper, fitted on training features by
  :mod:`.learned_modifier`, never on test data), held by :class:`LearnedModifier`:
  an *affine Modifier* gives failed device d the surrogate ``head_d(A_d f_bar + c_d)``, its
  own head applied to the average live feature mapped into d's feature space; *calibrated
  fusion* divides each live device's logits by its temperature ``T_d`` and each surrogate's
  by ``S_d`` before the softmax, so the average weighs outputs by how reliable they are.
  With several failed devices every one gets its own surrogate from the same live average
  (the maps were fitted on the average of all N - 1 peers; with fewer live peers the
  average is noisier but still the best input there is).
* Everything is masked means written as matrix products: no Python loop over devices or
  samples, and each row of the batch may have its own live set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .modes import EVALUATION_MODES, PROBABILITY_FLOOR

__all__ = [
    "LearnedModifier",
    "device_output_tensors",
    "device_surrogate_logits",
    "fuse",
    "fuse_average",
    "fuse_geometric",
    "fuse_max",
    "fuse_vote",
    "fuse_with_failures",
    "live_average",
    "probs_to_logits",
    "surrogate_logits",
    "synthesize_surrogate",
]


def device_output_tensors(probs, features, labels, available=None) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cached device outputs as tensors, the form every scoring function works on.

    ``probs`` and ``features`` float32, ``labels`` long, ``available`` bool ``(M, N)``: all
    True when None (every view present).
    """
    probs = torch.as_tensor(probs, dtype=torch.float32)
    m, n = probs.shape[:2]
    return (probs, torch.as_tensor(features, dtype=torch.float32),
            torch.as_tensor(np.asarray(labels), dtype=torch.long),
            torch.ones(m, n, dtype=torch.bool) if available is None
            else torch.as_tensor(np.asarray(available), dtype=torch.bool))


def _live_weights(live: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row averaging weights ``live / n_live`` (B, N) and the ``n_live > 0`` flag (B,)."""
    m = live.to(dtype)
    cnt = m.sum(dim=1, keepdim=True)
    return m / cnt.clamp(min=1.0), cnt.squeeze(1) > 0


@dataclass(frozen=True)
class LearnedModifier:
    """Parameters fitted on training features that refine the Modifier and the fusion.

    Every field is optional; ``None`` keeps the paper's behaviour for that part.

    Attributes:
        feature_map: (N, D, D) ``A_d``, maps the average live feature to device d's.
        feature_offset: (N, D) ``c_d``, the affine map's offset (with ``feature_map``).
        device_temperature: (N,) ``T_d``, divides live device d's logits.
        surrogate_temperature: (N,) ``S_d``, divides the logits of device d's surrogate.

    """

    feature_map: torch.Tensor | None = None
    feature_offset: torch.Tensor | None = None
    device_temperature: torch.Tensor | None = None
    surrogate_temperature: torch.Tensor | None = None

    def temper(self, probs: torch.Tensor) -> torch.Tensor:
        """Device probabilities (B, N, K) at temperature ``T_d``: ``softmax(log p / T_d)``.

        ``log p`` (:func:`probs_to_logits`) equals the logits up to a per-row constant,
        which the softmax ignores.
        """
        if self.device_temperature is None:
            return probs
        t = self.device_temperature.to(probs.dtype)[:, None]
        return torch.softmax(probs_to_logits(probs) / t, -1)


def probs_to_logits(probs: torch.Tensor) -> torch.Tensor:
    """``log p``, with ``p`` clamped at the smallest normal float so ``log 0`` stays finite."""
    return probs.clamp(min=torch.finfo(probs.dtype).tiny).log()


def live_average(
    features: torch.Tensor, live: torch.Tensor, peer_weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaging weights ``a`` (B, N) over the live peers and the average feature (B, D)."""
    if peer_weights is None:
        a, _ = _live_weights(live, features.dtype)  # (B, N)
    else:
        w = torch.where(live, peer_weights.to(features.dtype), torch.zeros_like(features[..., 0]))
        a = w / w.sum(dim=1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)
    # zero dead entries first: they may hold garbage/NaN and 0 * NaN = NaN
    features = torch.where(live[:, :, None], features, torch.zeros_like(features))
    return a, torch.einsum("bn,bnd->bd", a, features)


def surrogate_logits(
    features: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor,
    live: torch.Tensor,
    peer_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of the Modifier surrogate: ``mean_live(W) @ mean_live(f) + mean_live(b)``.

    Args:
        features: (B, N, D) per-device feature vectors.
        weights: (N, K, D) classifier weights of the N devices.
        biases: (N, K) classifier biases.
        live: (B, N) bool, the devices whose outputs are available for each row.
        peer_weights: optional (B, N) positive weights of the peers (default: equal).

    Returns:
        (B, K) logits; rows with no live device are all zeros (softmax = uniform).

    """
    if features.ndim != 3 or weights.ndim != 3 or biases.ndim != 2 or live.ndim != 2:
        raise ValueError("expected features (B,N,D), weights (N,K,D), biases (N,K), live (B,N)")
    a, f_bar = live_average(features, live.to(torch.bool), peer_weights)
    b_bar = a @ biases  # (B, K)
    # mean_live(W) @ f_bar without materialising W_bar per row:
    # sum_n a_bn W_n f_bar_b = einsum over (B,N,K)
    wf = torch.einsum("nkd,bd->bnk", weights, f_bar)
    return torch.einsum("bn,bnk->bk", a, wf) + b_bar


def device_surrogate_logits(
    features: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor,
    live: torch.Tensor,
    peer_weights: torch.Tensor | None = None,
    learned: LearnedModifier | None = None,
) -> torch.Tensor:
    """Logits (B, N, K) of the surrogate each device gets when it fails.

    Without ``learned.feature_map`` every device gets :func:`surrogate_logits`; with it,
    device d gets ``W_d (A_d f_bar + c_d) + b_d`` where ``f_bar`` is the (peer-weighted)
    average live feature. ``learned.surrogate_temperature`` then divides device d's logits
    by ``S_d``. Arguments as in :func:`surrogate_logits`; a row with no live device has no
    meaningful surrogate (:func:`fuse_with_failures` returns the uniform distribution).
    """
    n = weights.shape[0]
    if learned is None or learned.feature_map is None:
        logits = surrogate_logits(features, weights, biases, live, peer_weights)[:, None, :]
        logits = logits.expand(-1, n, -1)
    else:
        _, f_bar = live_average(features, live.to(torch.bool), peer_weights)
        mapped = torch.einsum("nde,be->bnd", learned.feature_map, f_bar)
        mapped = mapped + learned.feature_offset  # (B, N, D): f_bar in each device's space
        logits = torch.einsum("nkd,bnd->bnk", weights, mapped) + biases
    if learned is not None and learned.surrogate_temperature is not None:
        logits = logits / learned.surrogate_temperature.to(logits.dtype)[:, None]
    return logits


def synthesize_surrogate(
    features: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor,
    live: torch.Tensor,
) -> torch.Tensor:
    """Return the Modifier surrogate probabilities (B, K) built from each row's live devices.

    See :func:`surrogate_logits`; rows with no live device return the uniform ``1/K``.
    """
    return torch.softmax(surrogate_logits(features, weights, biases, live), dim=-1)


def fuse_average(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of ``probs`` (B, N, K) over the devices in ``mask`` (B, N) -> (B, K).

    Rows with an empty mask return the uniform distribution.
    """
    mask = mask.to(torch.bool)
    a, any_live = _live_weights(mask, probs.dtype)
    probs = torch.where(mask[:, :, None], probs, torch.zeros_like(probs))  # NaN-safe
    fused = torch.einsum("bn,bnk->bk", a, probs)
    uniform = torch.full_like(fused, 1.0 / probs.shape[-1])
    return torch.where(any_live[:, None], fused, uniform)


def fuse_geometric(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Renormalised geometric mean of ``probs`` (B, N, K) over the devices in ``mask`` -> (B, K).

    The softmax of the mean log-probability; a probability of 0 counts as
    :data:`.modes.PROBABILITY_FLOOR`, so a class one device rules out keeps a finite score.
    Rows with an empty mask return the uniform distribution.
    """
    mask = mask.to(torch.bool)
    a, any_live = _live_weights(mask, probs.dtype)
    logs = torch.where(mask[:, :, None], probs.clamp_min(PROBABILITY_FLOOR).log(),
                       torch.zeros_like(probs))  # NaN-safe, as in fuse_average
    fused = torch.softmax(torch.einsum("bn,bnk->bk", a, logs), dim=-1)
    uniform = torch.full_like(fused, 1.0 / probs.shape[-1])
    return torch.where(any_live[:, None], fused, uniform)


def fuse_max(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max of ``probs`` (B, N, K) over the devices in ``mask`` -> (B, K).

    The result is not renormalised (the paper's max pooling; only its argmax is used).
    Rows with an empty mask return the uniform distribution.
    """
    mask = mask.to(torch.bool)
    # probabilities are >= 0, so -1 is a safe "absent" sentinel (no inf, no NaN gradients)
    masked = torch.where(mask[:, :, None], probs, torch.full_like(probs, -1.0))
    fused = masked.amax(dim=1)
    uniform = torch.full_like(fused, 1.0 / probs.shape[-1])
    return torch.where(mask.any(dim=1)[:, None], fused, uniform)


def fuse_vote(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Majority vote of the argmax of each device in ``mask`` -> (B, K) scores.

    A class scores its number of votes plus half its average probability, so ties between
    equally voted classes go to the more probable one and a vote is never outweighed.
    Rows with an empty mask return the uniform distribution (via :func:`fuse_average`).
    """
    mask = mask.to(torch.bool)
    votes = torch.nn.functional.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
    counts = (votes * mask[:, :, None].to(probs.dtype)).sum(dim=1)
    return counts + 0.5 * fuse_average(probs, mask)


def fuse(probs: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool by ``mode``: :func:`fuse_average`, :func:`fuse_max`, :func:`fuse_geometric` or vote."""
    if mode == "avg":
        return fuse_average(probs, mask)
    if mode == "max":
        return fuse_max(probs, mask)
    if mode == "geo":
        return fuse_geometric(probs, mask)
    if mode == "vote":
        return fuse_vote(probs, mask)
    raise ValueError(f"unknown fusion mode {mode!r}; expected one of {EVALUATION_MODES}")


def fuse_with_failures(
    probs: torch.Tensor,
    features: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor,
    live: torch.Tensor,
    mode: str = "avg",
    use_modifier: bool = True,
    confidence_weighted: bool = False,
    learned: LearnedModifier | None = None,
) -> torch.Tensor:
    """Fuse device outputs when the devices outside ``live`` (B, N) have failed.

    Without the Modifier only the live devices are fused. With it, each failed device's
    output is replaced by the surrogate from that row's live peers and all N are fused
    (Algorithm 3). Any failure set (per row) is allowed; rows with no live device give
    the uniform distribution.

    Args:
        probs: (B, N, K) device probabilities (entries of failed devices are ignored).
        features: (B, N, D) device features (entries of failed devices are ignored).
        weights: (N, K, D) classifier weights.
        biases: (N, K) classifier biases.
        live: (B, N) bool.
        mode: ``"avg"``, ``"max"``, ``"geo"`` or ``"vote"`` (:func:`fuse`).
        use_modifier: substitute Modifier surrogates for failed devices.
        confidence_weighted: build the surrogate with each live peer weighted by its
            largest class probability instead of equally.
        learned: fitted refinements (:class:`LearnedModifier`): calibrated live outputs
            (with or without the Modifier) and per-device surrogates.

    Returns:
        (B, K) fused scores.

    """
    live = live.to(torch.bool)
    if learned is not None:
        probs = learned.temper(probs)
    if not use_modifier:
        return fuse(probs, live, mode)
    confidence = probs.amax(dim=-1) if confidence_weighted else None
    p_hat = torch.softmax(
        device_surrogate_logits(features, weights, biases, live, confidence, learned), -1)
    filled = torch.where(live[:, :, None], probs, p_hat)
    # every device now has an output, unless no device was live at all
    any_live = live.any(dim=1, keepdim=True).expand_as(live)
    return fuse(filled, any_live, mode)
