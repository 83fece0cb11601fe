"""A Modifier that never hurts beyond noise: each option is used only where it helps.

The Modifier's surrogate, and each learned option (:mod:`.learned_modifier`), helps on some
datasets and live sets and hurts on others (on an IDX pair trained 3 epochs every option
lowered accuracy). So the aggregator decides per failed set, from data the devices were not
trained on, whether to use an option at all:

* The **validation split** (:func:`.validation.holdout_split`, recorded in the checkpoint)
  was held out of training. The learned options are fitted on training samples as before
  (:func:`.reproduction.fit_subset`); the *gate* is chosen on the validation split only.
* **Gate**: for every failed set ``S`` (including none) each option's per-sample
  correctness on the validation split is compared with plain fusion of the live devices
  (no Modifier) by an exact one-sided McNemar test on the discordant samples. Of the
  options better at ``alpha`` (default 0.05), the :data:`GATE_AVERAGE` most accurate on
  validation are used for ``S``, their fused probabilities averaged: the best options
  differ by a few validation samples, so picking one of them is mostly noise, and their
  mean is usually better than either. If no option passes, the evidence is pooled over all
  failed sets of ``S``'s size (more samples: a small split, as MVMC's 110 frames, rarely
  decides one set alone) and the pooled choice is used for ``S`` where it is also more
  accurate than no Modifier on ``S``'s own validation samples; otherwise ``S`` gets no
  Modifier. An option that does not help on data the model never saw is never switched
  on, so the gated aggregator can only lose where the validation split misleads, which
  the significance level bounds.
* **How many to average** is judged on the validation split too (:func:`cross_fitted`):
  the gate is fitted on one random half and scored on the other, for 1, 2 and 3 options.
* **Report** (:func:`gated_evaluation`): on the test split, per failed set, the rows of no
  Modifier, the plain Modifier and the gated choice, their summaries (no failure, mean
  single failure), and paired McNemar tests of gated vs none and gated vs plain on the
  pooled single-failure (sample, failed device) pairs. Every option's own summary is
  kept too, so a report can show what each gives alone and the best single option per
  failed set *chosen on the test split itself*: the most a gate choosing one option could
  recover, which tells apart a gate that chooses badly from options that cannot recover
  more (averaging two options can pass it).
* **Per fusion mode**: each pooling (avg, max, geo) gets a gate of its own, fitted and
  scored in that pooling, since an option that helps one can hurt another.
* **For the live node**: the fusion node computes plain surrogates only, so the same test
  with the plain Modifier as the one option gives the gate it applies per failed set
  (``surrogate_gate`` in the result; the node's ``surrogate_gate`` parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ..perception.evaluation import device_outputs, failure_subsets
from ..perception.experiment import DeviceViews, load_device_views
from ..perception.learned_modifier import LEARNED_VARIANTS, fit_learned_modifier
from ..perception.modifier import LearnedModifier, device_output_tensors, fuse_with_failures
from ..perception.surrogate_gate import failed_set_key
from ..perception.validation import holdout_split
from ..perception.views import ViewSpec
from ..placement.drop_study import spread_subset
from .reproduction import fit_subset

__all__ = ["GATE_AVERAGE", "GATE_OPTIONS", "GateOption", "cross_fitted", "fit_gate",
           "gated_correctness", "gated_evaluation", "gated_stem", "mcnemar",
           "option_probabilities", "training_splits"]


@dataclass(frozen=True)
class GateOption:
    """One way to fuse with failures: Modifier or not, confidence weights, a learned variant."""

    name: str
    modifier: bool
    confidence: bool = False
    learned: str = ""  # a key of LEARNED_VARIANTS


GATE_OPTIONS = (
    GateOption("none", False),
    GateOption("modifier", True),
    GateOption("confidence", True, confidence=True),
    GateOption("affine", True, learned="affine"),
    GateOption("calibrated", False, learned="calibrated"),
    GateOption("modifier+calibrated", True, learned="calibrated"),
    GateOption("affine+calibrated", True, learned="affine+calibrated"),
)
"""The options of :func:`.reproduction.modifier_options`, by short name; ``none`` first."""

GATE_AVERAGE = 2
"""At most this many options, the most accurate that pass, are averaged per failed set.

Judged on halves of the validation splits alone (:func:`cross_fitted`, in every
``gated.json``; docs/results/gated/tables.md), two beat one on every dataset where the gate
switches options on (MNIST, both methods, and an IDX pair), and three were better than two
on one of the three only."""


def gated_stem(mode: str) -> str:
    """File name, without suffix, of one fusion mode's gated evaluation.

    ``gated`` for avg, the paper's pooling and the one the gate first served, so records
    written before the gate took a mode stay where every report looks for them.
    """
    return "gated" if mode == "avg" else f"gated-{mode}"


def mcnemar(a: np.ndarray, b: np.ndarray, alternative: str = "greater") -> float:
    """Exact McNemar p-value that ``a`` (bool per sample) is more often right than ``b``.

    Only discordant samples count: a binomial test of ``a``-only wins among them at 1/2.
    """
    wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if wins + losses == 0:
        return 1.0
    return float(stats.binomtest(wins, wins + losses, 0.5, alternative=alternative).pvalue)


def option_probabilities(outputs: tuple, heads: tuple, labels: np.ndarray,
                         available: np.ndarray | None, subsets: list[tuple[int, ...]],
                         option: GateOption, learned: LearnedModifier | None,
                         mode: str = "avg") -> np.ndarray:
    """Fused class probabilities ``(len(subsets), M, C)`` of ``option`` per failed set.

    ``mode`` is the fusion rule the aggregator pools with (:data:`.modes.FUSION_MODES`).

    A sample with no live device gets all zeros: it is classified wrong whatever is chosen.
    """
    probs, features, _, avail = device_output_tensors(*outputs, labels, available)
    n_samples, _, n_classes = probs.shape
    out = np.zeros((len(subsets), n_samples, n_classes), dtype=np.float32)
    with torch.inference_mode():
        for i, failed in enumerate(subsets):
            live = avail.clone()
            live[:, list(failed)] = False
            fused = fuse_with_failures(probs, features, *heads, live, mode, option.modifier,
                                       option.confidence, learned)
            out[i] = (fused * live.any(1, keepdim=True)).numpy()
    return out


def _learned_fits(model, fit: DeviceViews, heads: tuple) -> dict[str, LearnedModifier]:
    fit = fit_subset(fit)  # as the protocol: at most 10,000 evenly spaced samples
    probs, features = device_outputs(model, fit.views)
    return {name: fit_learned_modifier(probs, features, *heads, fit.labels, fit.available,
                                       affine, calibrated)
            for name, (affine, calibrated) in LEARNED_VARIANTS.items()}


def _all_probabilities(outputs: tuple, data: DeviceViews, heads: tuple,
                       subsets: list[tuple[int, ...]], learned: dict[str, LearnedModifier],
                       mode: str) -> dict[str, np.ndarray]:
    return {o.name: option_probabilities(outputs, heads, data.labels, data.available, subsets,
                                         o, learned.get(o.learned), mode)
            for o in GATE_OPTIONS}


def gated_correctness(probs: dict[str, np.ndarray], labels: np.ndarray,
                      gate: dict[tuple[int, ...], tuple[str, ...]],
                      subsets: list[tuple[int, ...]]) -> np.ndarray:
    """Bool ``(len(subsets), M)``: which samples the gate classifies right per failed set.

    A failed set's prediction is the mean of its chosen options' probabilities, or plain
    fusion (``none``) where the gate chose nothing.
    """
    return np.stack([
        (np.mean([probs[name][i] for name in gate[s] or ("none",)], axis=0).argmax(-1)
         == labels) & (probs["none"][i].sum(-1) > 0)
        for i, s in enumerate(subsets)])


def fit_gate(probs: dict[str, np.ndarray], labels: np.ndarray,
             subsets: list[tuple[int, ...]], alpha: float = 0.05,
             average: int = GATE_AVERAGE) -> dict[tuple[int, ...], tuple[str, ...]]:
    """The options per failed set from validation data (see the module docstring).

    ``probs``: option name -> ``(len(subsets), M, C)`` fused probabilities on validation
    samples with ``labels``; ``none`` is plain fusion. For each failed set, the options more
    accurate than ``none`` by an exact one-sided McNemar test at ``alpha``, most accurate
    first, of which the first ``average`` are averaged. Where none passes on the set's own
    samples (a small validation split, or an effect too small for one set), each option's
    evidence is pooled over every failed set of the same size, which holds C(N, k) times
    the samples; the pooled choice is used for the set if, on the set's own samples, it is
    also more accurate than ``none``. An empty tuple: no Modifier.
    """
    correct = {name: gated_correctness(probs, labels, dict.fromkeys(subsets, (name,)), subsets)
               for name in probs}

    def passing(rows: list[int]) -> tuple[str, ...]:
        base = correct["none"][rows].ravel()
        better = sorted(((correct[name][rows].mean(), name) for name in correct
                         if name != "none" and correct[name][rows].mean() > base.mean()
                         and mcnemar(correct[name][rows].ravel(), base) < alpha),
                        reverse=True)
        return tuple(name for _, name in better[:average])

    rows_by_size: dict[int, list[int]] = {}
    for i, failed in enumerate(subsets):
        rows_by_size.setdefault(len(failed), []).append(i)
    pooled = {size: passing(rows) for size, rows in rows_by_size.items()}
    gate = {}
    for i, failed in enumerate(subsets):
        choice, fallback = passing([i]), pooled[len(failed)]
        if not choice and fallback:
            one = {failed: fallback}
            own = gated_correctness({k: v[i:i + 1] for k, v in probs.items()}, labels, one,
                                    [failed])
            if own.mean() > correct["none"][i].mean():
                choice = fallback
        gate[failed] = choice
    return gate


def cross_fitted(probs: dict[str, np.ndarray], labels: np.ndarray,
                 subsets: list[tuple[int, ...]], alpha: float = 0.05,
                 averages: tuple[int, ...] = (1, 2, 3), repeats: int = 5) -> dict:
    """How many options to average, judged on the validation split alone.

    The split is halved at random ``repeats`` times; the gate is fitted on each half with
    every count in ``averages`` and scored on the other half. Returns the mean accuracies
    over the ``2 * repeats`` scored halves: ``no_failure`` and ``single_failure_none``
    (plain fusion), and ``single_failure`` per count. The test split is not touched, so
    this is the evidence :data:`GATE_AVERAGE` may be chosen on.
    """
    single = [i for i, s in enumerate(subsets) if len(s) == 1]
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {}
    for _ in range(repeats):
        order = rng.permutation(len(labels))
        halves = order[:len(order) // 2], order[len(order) // 2:]
        for fit_on, score_on in (halves, halves[::-1]):
            part = {name: p[:, score_on] for name, p in probs.items()}
            none = gated_correctness(part, labels[score_on], dict.fromkeys(subsets, ()),
                                     subsets)
            scores.setdefault("no_failure", []).append(none[subsets.index(())].mean())
            scores.setdefault("single_failure_none", []).append(none[single].mean())
            for count in averages:
                gate = fit_gate({name: p[:, fit_on] for name, p in probs.items()},
                                labels[fit_on], subsets, alpha, count)
                scored = gated_correctness(part, labels[score_on], gate, subsets)
                scores.setdefault(str(count), []).append(scored[single].mean())
    return {"halves": 2 * repeats,
            "no_failure": float(np.mean(scores.pop("no_failure"))),
            "single_failure_none": float(np.mean(scores.pop("single_failure_none"))),
            "single_failure": {k: float(np.mean(v)) for k, v in scores.items()}}


def _summary(correct: np.ndarray, subsets: list[tuple[int, ...]]) -> dict:
    single = [i for i, s in enumerate(subsets) if len(s) == 1]
    return {"no_failure": float(correct[subsets.index(())].mean()),
            "single_failure_mean": float(correct[single].mean()),
            "by_failed_set": {failed_set_key(s): float(correct[i].mean())
                              for i, s in enumerate(subsets)}}


def gated_evaluation(model, fit: DeviceViews, validation: DeviceViews, test: DeviceViews,
                     alpha: float = 0.05, max_failed: int | None = None,
                     modes: tuple[str, ...] = ("avg",)) -> dict[str, dict]:
    """Fit the gate on ``validation`` and score none / plain / gated on ``test``, per mode.

    ``fit`` is the training data the learned options are fitted on (never ``validation``);
    ``max_failed`` limits the failed sets to that many devices (default all ``N - 1``).
    Each fusion mode of ``modes`` gets its own gate: an option that helps one pooling can
    hurt another (the plain Modifier helps avg on MNIST and lowers geo). The learned options
    and the device outputs are computed once for all modes.

    Returns, per mode: ``mode``, ``gate`` (failed set -> the options averaged, empty for
    none), ``surrogate_gate`` (the gate the fusion node applies, :mod:`.surrogate_gate`:
    per failed set, plain surrogates only where they beat none on validation), ``average``
    (:data:`GATE_AVERAGE`), ``summary`` per strategy (``none``, ``modifier``, ``gated``,
    ``surrogate_gated``), ``options`` (the same summary for every option of
    :data:`GATE_OPTIONS` used on every failed set: what each would give alone, and per set
    the best single option), ``cross_fitted`` (:func:`cross_fitted` on the validation
    split) and ``tests`` (McNemar p-values on the pooled single-failure pairs, both
    directions).
    """
    heads = tuple(t.detach() for t in model.classifier_heads())
    subsets = [s for s in failure_subsets(test.n_devices)
               if max_failed is None or len(s) <= max_failed]
    learned = _learned_fits(model, fit, heads)
    validation_outputs = device_outputs(model, validation.views)
    test_outputs = device_outputs(model, test.views)
    single = [i for i, s in enumerate(subsets) if len(s) == 1]
    fit_samples = len(fit_subset(fit).labels)
    results = {}
    for mode in modes:
        on_validation = _all_probabilities(validation_outputs, validation, heads, subsets,
                                           learned, mode)
        gate = fit_gate(on_validation, validation.labels, subsets, alpha)
        on_test = _all_probabilities(test_outputs, test, heads, subsets, learned, mode)
        alone = {name: gated_correctness(on_test, test.labels,
                                         dict.fromkeys(subsets, (name,)), subsets)
                 for name in on_test}
        # The gate the fusion node can apply: plain surrogates or none, per failed set.
        surrogate_gate = fit_gate({name: on_validation[name] for name in ("none", "modifier")},
                                  validation.labels, subsets, alpha, average=1)
        strategies = {"none": alone["none"], "modifier": alone["modifier"],
                      "gated": gated_correctness(on_test, test.labels, gate, subsets),
                      "surrogate_gated": gated_correctness(on_test, test.labels,
                                                           surrogate_gate, subsets)}
        pooled = {name: c[single].ravel() for name, c in strategies.items()}
        tests = {f"{one} vs {other}": {
            "gain": float(pooled[one].mean() - pooled[other].mean()),
            "p_better": mcnemar(pooled[one], pooled[other], "greater"),
            "p_worse": mcnemar(pooled[one], pooled[other], "less")}
            for one, other in (("gated", "none"), ("gated", "modifier"),
                               ("surrogate_gated", "none"))}
        results[mode] = {
            "surrogate_gate": {"mode": mode, "n_devices": test.n_devices, "failed_sets": {
                failed_set_key(s): bool(names) for s, names in surrogate_gate.items() if s}},
            "mode": mode, "alpha": alpha, "average": GATE_AVERAGE,
            "fit_samples": fit_samples,
            "validation_samples": len(validation.labels), "test_samples": len(test.labels),
            "gate": {failed_set_key(s): list(names) for s, names in gate.items()},
            "options_used": {o.name: sum(o.name in names or (o.name == "none" and not names)
                                         for names in gate.values()) for o in GATE_OPTIONS},
            "summary": {name: _summary(c, subsets) for name, c in strategies.items()},
            "options": {name: _summary(c, subsets) for name, c in alone.items()},
            "cross_fitted": cross_fitted(on_validation, validation.labels, subsets, alpha),
            "tests": tests,
        }
    return results


def training_splits(meta: dict, root=None) -> tuple[DeviceViews, DeviceViews]:
    """``(fit, validation)``: a checkpoint's training samples and its held-out validation.

    Rebuilt from the checkpoint's ``validation`` record ``{seed, size, of, limit,
    limit_rule}``: the ``limit`` first (``"first"``, as ``train --limit``) or evenly spaced
    (``"spread"``) samples of the training split, of which :func:`.validation.holdout_split`
    held ``size`` out. A checkpoint trained on its whole split has no validation data:
    retrain it with ``train --holdout N``.
    """
    record = meta.get("validation")
    if not record or not record.get("size"):
        raise ValueError("this checkpoint was trained on its whole training split, so there "
                         "is no held-out data to gate the Modifier on: retrain with "
                         "`train --holdout N` (e.g. 10% of the samples)")
    data = load_device_views(meta["dataset"], meta.get("train_split", "train"),
                             ViewSpec.from_dict(meta["view_spec"]), root)
    index = np.arange(len(data.labels))
    if record.get("limit"):
        index = (index[:record["limit"]] if record.get("limit_rule") == "first"
                 else spread_subset(index, index, record["limit"])[0])
    if len(index) != record["of"]:
        raise ValueError(f"the training split has {len(index)} samples, the checkpoint's "
                         f"validation record {record['of']}: not the data it was trained on")
    fit, validation = holdout_split(len(index), record["size"], record["seed"])
    return data.subset(index[fit]), data.subset(index[validation])

