"""Failure-scenario evaluation: every failed-device subset, both fusions, with/without Modifier.

Per-device outputs are computed once (:func:`device_outputs`); each scenario only re-runs
the cheap fusion/Modifier on the cached outputs, batched over chunks of subsets.

Scoring conventions:

* :func:`failure_subsets` lists the ``2**N - 1`` failed sets from the empty set (no failure)
  to every set of size ``N - 1``; failing all N devices leaves nothing to fuse or to build
  a surrogate from, so it is excluded.
* Frames where ``available`` is False treat that camera as failed as well. A frame left
  with no live device (possible only through ``available``) counts as an error.
* ``balanced_accuracy`` is the mean per-class recall over the classes present in labels.
* ``abstain`` (optional) marks devices whose view shows nothing (:func:`blank_views`):
  they are left out like failed ones, unless no other live device remains for the frame.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import torch

from ..compute import model_device
from .model import MultiDeviceCNN, views_to_float
from .modes import EVAL_BATCH, PAPER_MODES
from .modifier import (
    LearnedModifier,
    device_output_tensors,
    fuse_with_failures,
)

__all__ = [
    "blank_views",
    "device_outputs",
    "evaluate_failures",
    "evaluate_message_loss",
    "failure_subsets",
    "summarise",
]


def device_outputs(
    model: MultiDeviceCNN, views: np.ndarray | torch.Tensor, batch_size: int = EVAL_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-device ``(probs (M, N, K), features (M, N, D))`` in eval mode (uint8 views in).

    The model runs where its parameters are (:mod:`..compute`); the outputs are on the CPU.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    views_t = torch.as_tensor(views) if not torch.is_tensor(views) else views
    probs, feats = [], []
    try:
        with torch.inference_mode():
            for s in range(0, len(views_t), batch_size):
                logits, f = model(views_to_float(views_t[s : s + batch_size].to(device)))
                probs.append(logits.softmax(dim=-1).cpu())
                feats.append(f.cpu())
    finally:
        model.train(was_training)
    return torch.cat(probs), torch.cat(feats)


def blank_views(views: np.ndarray) -> np.ndarray:
    """``(M, N)`` bool: True where a device's uint8 view ``(M, N, ...)`` is all black.

    MVMC pads a camera that does not see the object with a black frame; such a device can
    only answer with what it learnt about black frames, the training split's class prior.
    """
    views = np.asarray(views)
    return views.reshape(*views.shape[:2], -1).max(axis=-1) == 0


def failure_subsets(n_devices: int) -> list[tuple[int, ...]]:
    """All failed-device sets of size 0..N-1 (``2**N - 1`` sets), by size then lexically."""
    return [
        c for k in range(n_devices) for c in itertools.combinations(range(n_devices), k)
    ]


def _balanced_accuracy(correct: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float64)
    hits = torch.bincount(labels[correct], minlength=n_classes).to(torch.float64)
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


def evaluate_failures(
    probs,
    features,
    weights,
    biases,
    labels,
    available=None,
    modes: tuple[str, ...] = PAPER_MODES,
    subsets: list[tuple[int, ...]] | None = None,
    max_rows: int = 200_000,
    confidence_weighted: bool = False,
    learned: LearnedModifier | None = None,
    abstain=None,
) -> list[dict]:
    """Score every failure subset for each mode, with and without the Modifier.

    Args:
        probs: (M, N, K) cached device probabilities.
        features: (M, N, D) cached device features.
        weights: (N, K, D) classifier weights.
        biases: (N, K) classifier biases.
        labels: (M,) int.
        available: optional (M, N) bool; False = no view (that camera counts as failed).
        modes: fusion modes (``"avg"``, ``"max"``).
        subsets: failed sets to score (default :func:`failure_subsets`).
        max_rows: rows (frames x subsets) fused per chunk, bounds memory.
        confidence_weighted: Modifier surrogates weight each live peer by its confidence
            (see :func:`.modifier.fuse_with_failures`).
        learned: fitted refinements of the Modifier and the fusion
            (:mod:`.learned_modifier`), applied to both the rows with and without it.
        abstain: optional (M, N) bool; True = the device abstains on that frame (left out
            like a failed device, unless that leaves the frame no live device).

    Returns:
        Rows ``{failed, n_failed, mode, modifier, accuracy, balanced_accuracy}``.

    """
    with torch.inference_mode():
        probs, features, labels, avail = device_output_tensors(probs, features, labels,
                                                               available)
        weights = torch.as_tensor(weights, dtype=torch.float32)
        biases = torch.as_tensor(biases, dtype=torch.float32)
        m, n, k = probs.shape
        subsets = failure_subsets(n) if subsets is None else [tuple(s) for s in subsets]
        chunk = max(1, max_rows // m)
        rows = []
        for c0 in range(0, len(subsets), chunk):
            group = subsets[c0 : c0 + chunk]
            s = len(group)
            alive = torch.ones(s, n, dtype=torch.bool)
            for gi, failed in enumerate(group):
                alive[gi, list(failed)] = False
            live = (alive[:, None, :] & avail[None]).reshape(s * m, n)
            if abstain is not None:
                voting = live & ~torch.as_tensor(np.asarray(abstain)).repeat(s, 1)
                live = torch.where(voting.any(dim=1, keepdim=True), voting, live)
            p = probs.expand(s, m, n, k).reshape(s * m, n, k)
            f = features.expand(s, m, n, features.shape[-1]).reshape(s * m, n, -1)
            y = labels.repeat(s)
            has_live = live.any(dim=1)
            for mode in modes:
                for use_mod in (False, True):
                    fused = fuse_with_failures(p, f, weights, biases, live, mode, use_mod,
                                               confidence_weighted, learned)
                    correct = ((fused.argmax(dim=1) == y) & has_live).reshape(s, m)
                    for gi, failed in enumerate(group):
                        rows.append({
                            "failed": tuple(failed),
                            "n_failed": len(failed),
                            "mode": mode,
                            "modifier": use_mod,
                            "accuracy": float(correct[gi].double().mean()),
                            "balanced_accuracy": _balanced_accuracy(correct[gi], labels, k),
                        })
    return rows


def evaluate_message_loss(
    probs,
    features,
    weights,
    biases,
    labels,
    rates: tuple[float, ...],
    available=None,
    modes: tuple[str, ...] = PAPER_MODES,
    seed: int = 0,
) -> list[dict]:
    """Accuracy when each device's message is lost independently with probability ``rate``.

    Each frame draws its own lost set (seeded, the same draws for every mode and with and
    without the Modifier); a frame that loses every message counts as an error.

    Returns:
        Rows ``{loss_rate, mode, modifier, accuracy}``.

    """
    with torch.inference_mode():
        probs, features, labels, avail = device_output_tensors(probs, features, labels,
                                                               available)
        m, n, _ = probs.shape
        rng = np.random.default_rng(seed)
        rows = []
        for rate in rates:
            live = torch.from_numpy(rng.random((m, n)) >= rate) & avail
            for mode in modes:
                for use_mod in (False, True):
                    fused = fuse_with_failures(probs, features, weights, biases, live, mode,
                                               use_mod)
                    correct = (fused.argmax(dim=1) == labels) & live.any(dim=1)
                    rows.append({"loss_rate": float(rate), "mode": mode, "modifier": use_mod,
                                 "accuracy": float(correct.double().mean())})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Summary per mode: ``{mode: {"baseline": {...}, "modifier": {...}, "recovery_ratio"}}``.

    Each of ``baseline``/``modifier`` holds ``no_failure``, ``single_failure_mean``,
    ``single_failure_per_device`` (list indexed by device, None if not scored) and
    ``by_n_failed`` (mean accuracy for 0..N-1 failed devices). ``recovery_ratio`` is
    ``(with - without) / (no_failure - without)`` on the mean single-failure accuracy,
    with ``no_failure`` from the baseline rows; None when the denominator is 0 (a single
    failure costs nothing, nothing to recover).
    """
    n_devices = 1 + max((max(r["failed"], default=-1) for r in rows), default=0)
    n_devices = max(n_devices, 1 + max(r["n_failed"] for r in rows))
    out: dict = {}
    for mode in sorted({r["mode"] for r in rows}):
        out[mode] = {}
        for use_mod, key in ((False, "baseline"), (True, "modifier")):
            sel = [r for r in rows if r["mode"] == mode and r["modifier"] == use_mod]
            if not sel:
                continue
            by_n = defaultdict(list)
            for r in sel:
                by_n[r["n_failed"]].append(r["accuracy"])
            per_dev: list = [None] * n_devices
            for r in sel:
                if r["n_failed"] == 1:
                    per_dev[r["failed"][0]] = r["accuracy"]
            out[mode][key] = {
                "no_failure": float(np.mean(by_n[0])) if by_n[0] else None,
                "single_failure_mean": float(np.mean(by_n[1])) if by_n[1] else None,
                "single_failure_per_device": per_dev,
                "by_n_failed": [
                    float(np.mean(by_n[i])) if by_n[i] else None for i in range(n_devices)
                ],
            }
        ratio = None
        base, mod = out[mode].get("baseline"), out[mode].get("modifier")
        if base and mod and None not in (
            base["no_failure"], base["single_failure_mean"], mod["single_failure_mean"]
        ):
            denom = base["no_failure"] - base["single_failure_mean"]
            if not math.isclose(denom, 0.0, abs_tol=1e-12):
                ratio = (mod["single_failure_mean"] - base["single_failure_mean"]) / denom
        out[mode]["recovery_ratio"] = ratio
    return out
