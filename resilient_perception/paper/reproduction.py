"""The Modifier paper's evaluation: protocol as data, a resumable run cache, statistics.

A *run* is one (dataset, method, seed): the N device CNNs trained with that method's
:class:`~.training.TrainConfig` options, then every failure subset scored with and without
the Modifier for average, max and vote fusion (:func:`.evaluation.evaluate_failures`), plus
message loss and input noise. Runs live under ``<root>/<dataset>/<method>/seed<k>/``:

* ``model.safetensors`` -- written atomically when training ends;
* ``training-state.safetensors`` -- the unfinished training after its last whole epoch
  (:func:`.experiment.train_devices`): an interrupted run continues from there;
* ``history.json`` -- the per-epoch training curve;
* ``evaluation.json`` -- written last (atomically): the run's key, failure-subset rows
  (``rows``; ``rows_confidence`` for the Modifier with confidence-weighted peers;
  ``rows_learned`` for the learned options of :mod:`.learned_modifier` fitted on the
  training split, by variant, for ``paper`` and ``ours``), message-loss rows
  (``message_loss``: each device's message lost with probability 0..40%), for ``paper``
  and ``ours`` the summaries of no and single failures under per-device input noise
  (``noise``), and the summary. A run whose ``evaluation.json``
  holds the expected key is finished and skipped; a key that differs (other epochs,
  limits, options, evaluation version) makes the run stale, and it is redone. The model is
  kept when only the evaluation version changed: its staleness is decided by the key
  without it, so a new evaluation re-scores finished models and never retrains them.

Methods (:data:`METHODS`) are named training options; a method may also be limited to some
datasets and seeds and train for a multiple of its dataset's epochs on wider views (the two
runs past the protocol's budget: ``paper-10x``, ``ours-overlap50``). *Strategies*
(:data:`STRATEGIES`) are what the aggregator does at inference with a method's model: a
fusion mode, with or without the Modifier, and optionally a redundant standby unit.
Statistics over seeds: :func:`mean_ci` (t-distribution confidence interval),
:func:`paired_t_test` (``scipy.stats.ttest_rel`` on the same seeds),
:func:`error_rate_reduction` (Table 6) and :func:`recovery_ratio`.

Readings of the paper written down here:

* **Redundant standby** (Figure 7, "an extra identical device model runs in parallel as a
  standby"): one extra unit holding copies of the device models takes over the first
  failed device's stream (the camera is intact; its compute unit or link failed). It covers
  one failure exactly and costs a seventh unit; with k failures, k - 1 stay uncovered.
  Scored from the no-Modifier rows: failed set ``S`` is scored as ``S`` minus its first
  device.
* **Ensemble voting** (Figure 7): majority vote of the remaining devices' argmax
  (:func:`.modifier.fuse_vote`), on the model trained without fail-simulation.
* **Dropout-trained** devices drop feature units before their classifier (p = 0.3);
  **failout** (ResiliNet) drops a device's whole output per sample (p = 0.1) and trains the
  fused output of the survivors; **FedAvg** trains one shared model, each device on its own
  views, averaged every 50 steps, and fuses the devices' outputs. None of them uses the
  Modifier at inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ..checkpoints import CheckpointError
from ..compute import compute_device
from ..perception.checkpoint import load_checkpoint, save_checkpoint
from ..perception.evaluation import (
    device_outputs,
    evaluate_failures,
    evaluate_message_loss,
    failure_subsets,
    summarise,
)
from ..perception.experiment import (
    TRAINING_STATE,
    DeviceViews,
    StaleTrainingState,
    default_view_spec,
    load_device_views,
    train_devices,
)
from ..perception.learned_modifier import LEARNED_VARIANTS, fit_learned_modifier
from ..perception.modes import EVALUATION_MODES
from ..perception.training import TrainConfig
from ..perception.views import ViewSpec, apply_device_noise, parse_noise
from .methods import FULL_PLANS, METHODS, DatasetPlan, Method

__all__ = [
    "FULL_PLANS",
    "METHODS",
    "OURS",
    "STRATEGIES",
    "TARGET_STRATEGIES",
    "DatasetPlan",
    "Method",
    "Protocol",
    "Strategy",
    "error_rate_reduction",
    "compare_options",
    "fit_subset",
    "full_protocol",
    "modifier_options",
    "load_results",
    "mean_ci",
    "paired_t_test",
    "quick_protocol",
    "recovery_ratio",
    "run_dir",
    "run_protocol",
    "score_modifier_options",
    "seed_metrics",
    "strategy_recovery_ratio",
    "strategy_summary",
]


MAIN_METHODS = ("paper", "ours", "no-fail-sim")  # always run on every seed
MESSAGE_LOSS_RATES = (0.0, 0.1, 0.2, 0.3, 0.4)
# Bump when a run's evaluation gains or changes results: cached runs then count as stale.
EVALUATION_VERSION = 4
# The paper's noise study: device 1 at 20%, device 2 at 5% (devices 0 and 1 here), others
# clean; scored for the methods of Tables 4-6 only (two extra passes over the test split).
NOISE_SETTINGS = {"gaussian": "0:gaussian:0.2,1:gaussian:0.05",
                  "salt_pepper": "0:salt_pepper:0.2,1:salt_pepper:0.05"}
NOISE_METHODS = ("paper", "ours")
# The fail-sim methods the learned Modifier options are fitted and scored for, and the most
# training samples they are fitted on (evenly spaced over the split): 16 x 16 maps and 12
# temperatures need far fewer, and the forward pass over the training split is the cost.
LEARNED_METHODS = ("paper", "ours")
LEARNED_FIT_SAMPLES = 10_000


@dataclass(frozen=True)
class Strategy:
    """What the aggregator does with a method's model when devices fail."""

    label: str
    method: str
    mode: str  # fusion: "avg", "max" or "vote"
    modifier: bool
    standby: int = 0  # failed devices a redundant standby unit takes over
    confidence: bool = False  # Modifier surrogate from confidence-weighted peers
    learned: str = ""  # a variant of LEARNED_VARIANTS (fitted on the training split)


def modifier_options(method: str) -> tuple[Strategy, ...]:
    """The inference options of one fail-sim model that the reproduction compares (avg fusion)."""
    return (
        Strategy(f"{method}, no Modifier", method, "avg", False),
        Strategy(f"{method} + Modifier", method, "avg", True),
        Strategy(f"{method} + confidence-weighted Modifier", method, "avg", True,
                 confidence=True),
        Strategy(f"{method} + affine Modifier", method, "avg", True, learned="affine"),
        Strategy(f"{method}, calibrated fusion, no Modifier", method, "avg", False,
                 learned="calibrated"),
        Strategy(f"{method} + Modifier, calibrated fusion", method, "avg", True,
                 learned="calibrated"),
        Strategy(f"{method} + affine Modifier, calibrated fusion", method, "avg", True,
                 learned="affine+calibrated"),
    )


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("no Modifier", "no-fail-sim", "avg", False),
    Strategy("ensemble voting", "no-fail-sim", "vote", False),
    Strategy("dropout-trained", "dropout", "avg", False),
    Strategy("redundant standby", "no-fail-sim", "avg", False, standby=1),
    Strategy("failout (ResiliNet-style)", "failout", "avg", False),
    Strategy("FedAvg, ensemble fusion", "fedavg", "avg", False),
    Strategy("paper: fail-sim + Modifier", "paper", "avg", True),
    Strategy("ours: fail-sim + fused loss + Modifier", "ours", "avg", True),
    Strategy("ours, k = 2 + Modifier", "ours-k2", "avg", True),
    *modifier_options("ours")[2:],
    Strategy("paper, 10x the epochs + Modifier", "paper-10x", "avg", True),
    Strategy("ours, 50%-overlapping views + Modifier", "ours-overlap50", "avg", True),
)
# the strategy every baseline is t-tested against
OURS = next(s for s in STRATEGIES if s.method == "ours")
# The reproduction's targets are checked for ours with both fusions (on MVMC, cameras that do not
# see the object drag the average down, and max fusion ignores them) and for the runs
# beyond the protocol's budget.
TARGET_STRATEGIES = (
    OURS, Strategy("ours, max fusion + Modifier", "ours", "max", True),
    *(s for s in STRATEGIES if s.method in ("paper-10x", "ours-overlap50")),
)


@dataclass(frozen=True)
class Protocol:
    """Which runs make up the reproduction and how each is trained."""

    datasets: dict[str, DatasetPlan]
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = tuple(range(10))
    baseline_seeds: int | None = None  # seeds for methods outside MAIN_METHODS (None = all)
    precision: str = "fp32"
    threads: int = 1
    device: str = "cpu"  # where runs train (compute.compute_device); not part of a run's key

    def __post_init__(self) -> None:
        """Reject unknown methods (naming the valid ones) and an empty seed list."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if not self.seeds:
            raise ValueError("need at least one seed")

    def seeds_for(self, method: str) -> tuple[int, ...]:
        """Seeds a method runs on: all (baselines: ``baseline_seeds``), at most its own number."""
        seeds = self.seeds
        if method not in MAIN_METHODS and self.baseline_seeds is not None:
            seeds = seeds[: self.baseline_seeds]
        return seeds[: METHODS[method].seeds]

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (dataset, method, seed) of the protocol, dataset by dataset."""
        return [(d, m, s) for d in self.datasets for m in self.methods
                if METHODS[m].runs_on(d) for s in self.seeds_for(m)]

    def train_config(self, dataset: str, method: str, seed: int) -> TrainConfig:
        """The training configuration of one run."""
        plan = self.datasets[dataset]
        return TrainConfig(
            epochs=plan.epochs * METHODS[method].epoch_factor, batch_size=plan.batch_size,
            seed=seed, num_threads=self.threads, precision=self.precision,
            **METHODS[method].options,
        )

    def view_spec(self, dataset: str, method: str) -> ViewSpec:
        """How one run's dataset is cut into device views."""
        spec = default_view_spec(dataset)
        overlap = METHODS[method].overlap
        return dataclasses.replace(spec, overlap=overlap) if overlap else spec

    def run_key(self, dataset: str, method: str, seed: int) -> dict:
        """Everything a run's result depends on; a cached result with another key is stale."""
        plan = self.datasets[dataset]
        config = self.train_config(dataset, method, seed).asdict()
        config.pop("num_threads")  # results do not depend on the thread count
        if config["fused_mode"] == "avg":  # the default: the keys of earlier runs stay valid
            config.pop("fused_mode")
        key = {"dataset": dataset, "method": method, "seed": seed, "train_config": config,
               "train_limit": plan.train_limit, "test_limit": plan.test_limit,
               "evaluation_version": EVALUATION_VERSION}
        if METHODS[method].overlap:  # only then: the keys of earlier runs stay valid
            key["view_spec"] = self.view_spec(dataset, method).to_dict()
        return key


def full_protocol(datasets: Iterable[str] = ("mnist", "cifar10", "mvmc"), **kwargs) -> Protocol:
    """The full protocol: whole splits, :data:`FULL_PLANS`, 10 seeds by default."""
    return Protocol({d: FULL_PLANS[d] for d in datasets}, **kwargs)


def quick_protocol(datasets: Iterable[str] = ("mnist",), **kwargs) -> Protocol:
    """The CI profile: one epoch on a few hundred samples, one seed by default."""
    kwargs.setdefault("seeds", (0,))
    plan = DatasetPlan(1, batch_size=64, train_limit=128, test_limit=256)
    return Protocol(dict.fromkeys(datasets, plan), **kwargs)


# ---------------------------------------------------------------------------------------
# Run cache


def run_dir(root: Path, dataset: str, method: str, seed: int) -> Path:
    """Folder of one run: ``<root>/<dataset>/<method>/seed<k>``."""
    return Path(root) / dataset / method / f"seed{seed}"


def _write_json_atomic(path: Path, payload: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)  # an interrupted write leaves the old file or none


def _cached_result(path: Path, key: dict) -> dict | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("key") == key else None


def _training_key(key: dict) -> dict:
    """The part of a run key the trained model depends on (all but the evaluation version)."""
    return {k: v for k, v in key.items() if k != "evaluation_version"}


def _trained_model(folder: Path, key: dict):
    """The run's model if training finished with this key's training part, else None."""
    try:
        model, meta = load_checkpoint(folder / "model.safetensors")
    except CheckpointError:
        return None, None
    if _training_key(meta.get("run_key", {})) != _training_key(key):
        return None, None
    return model, meta


def run_one(protocol: Protocol, root: Path, dataset: str, method: str, seed: int,
            train_data: DeviceViews, test_data: DeviceViews, progress: bool = False) -> dict:
    """Train (unless a finished model exists) and evaluate one run; write its cache files."""
    key = protocol.run_key(dataset, method, seed)
    folder = run_dir(root, dataset, method, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".*.tmp"):  # from a process killed mid-write
        leftover.unlink()
    model, meta = _trained_model(folder, key)
    if model is None:
        config = protocol.train_config(dataset, method, seed)
        state = folder / TRAINING_STATE
        device = compute_device(protocol.device)
        try:
            model, history, meta = train_devices(train_data, config, progress=progress,
                                                 state_path=state, device=device)
        except StaleTrainingState:  # left by a run of an older protocol: start over
            state.unlink()
            model, history, meta = train_devices(train_data, config, progress=progress,
                                                 state_path=state, device=device)
        meta["run_key"] = key
        save_checkpoint(folder / "model.safetensors", model, meta)
        _write_json_atomic(folder / "history.json", history)
        state.unlink()
    result = {"key": key, "history": meta["history"],
              **_evaluate(model, train_data, test_data, method, seed)}
    _write_json_atomic(folder / "evaluation.json", result)
    return result


def fit_subset(train_data: DeviceViews) -> DeviceViews:
    """Every k-th training sample, k chosen to keep at most :data:`LEARNED_FIT_SAMPLES`."""
    step = -(-len(train_data.labels) // LEARNED_FIT_SAMPLES)  # ceil
    return dataclasses.replace(train_data, views=train_data.views[::step],
                               available=train_data.available[::step],
                               labels=train_data.labels[::step])


def score_modifier_options(model, train_data: DeviceViews | None, test_data: DeviceViews,
                           modes: tuple[str, ...] = EVALUATION_MODES,
                           test_outputs: tuple | None = None) -> dict:
    """Failure-subset rows of a model under every Modifier option (test split).

    ``test_outputs`` are the test split's :func:`.evaluation.device_outputs` if the caller
    has them already.

    Returns ``rows`` (``modes``, with and without the Modifier), ``rows_confidence``
    (avg and max, Modifier rows only) and, when ``train_data`` is given, ``rows_learned``:
    each variant of :data:`.learned_modifier.LEARNED_VARIANTS` fitted on the device outputs
    of :func:`fit_subset` of ``train_data`` (avg and max, with and without the Modifier).
    """
    probs, features = test_outputs or device_outputs(model, test_data.views)
    heads = [t.detach() for t in model.classifier_heads()]

    def score(modes: tuple[str, ...], **options) -> list[dict]:
        return evaluate_failures(probs, features, *heads, test_data.labels,
                                 test_data.available, modes, **options)

    out = {"rows": score(modes),
           "rows_confidence": [r for r in score(("avg", "max"), confidence_weighted=True)
                               if r["modifier"]],
           "rows_learned": {}}
    if train_data is not None:
        fit = fit_subset(train_data)
        train_probs, train_features = device_outputs(model, fit.views)
        for name, (affine, calibrated) in LEARNED_VARIANTS.items():
            learned = fit_learned_modifier(train_probs, train_features, *heads, fit.labels,
                                           fit.available, affine, calibrated)
            out["rows_learned"][name] = score(("avg", "max"), learned=learned)
    return out


def _evaluate(model, train_data: DeviceViews, test_data: DeviceViews, method: str,
              seed: int) -> dict:
    """A trained run's results (see the module docstring for the keys)."""
    probs, features = device_outputs(model, test_data.views)
    heads = [t.detach() for t in model.classifier_heads()]
    options = score_modifier_options(model, train_data if method in LEARNED_METHODS else None,
                                     test_data, test_outputs=(probs, features))
    rows = options["rows"]
    message_loss = evaluate_message_loss(probs, features, *heads, test_data.labels,
                                         MESSAGE_LOSS_RATES, test_data.available, seed=seed)
    noise = {}
    if method in NOISE_METHODS:
        up_to_one = [s for s in failure_subsets(test_data.n_devices) if len(s) <= 1]
        for name, spec in NOISE_SETTINGS.items():
            noisy = apply_device_noise(test_data.views, parse_noise(spec), seed)
            noisy_probs, noisy_features = device_outputs(model, noisy)
            noise[name] = summarise(evaluate_failures(
                noisy_probs, noisy_features, *heads, test_data.labels, test_data.available,
                ("avg", "max"), subsets=up_to_one))
    return {"test_samples": int(len(test_data.labels)), **options,
            "message_loss": message_loss, "noise": noise, "summary": summarise(rows)}


def pending_runs(protocol: Protocol, root: Path) -> list[tuple[str, str, int]]:
    """The runs of ``protocol`` without a finished result under ``root``."""
    return [
        (d, m, s) for d, m, s in protocol.runs()
        if _cached_result(run_dir(root, d, m, s) / "evaluation.json",
                          protocol.run_key(d, m, s)) is None
    ]


@contextlib.contextmanager
def claim_run(folder: Path) -> Iterator[bool]:
    """Hold the run folder's lock while the block runs; yields False if another holds it.

    An advisory ``flock`` on ``<folder>/.lock``: processes running the same protocol on the
    same cache share its runs out between them, and a killed process's lock goes with it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_protocol(protocol: Protocol, root: Path, data_root: Path | None = None,
                 progress: bool = True) -> list[tuple[str, str, int]]:
    """Run every pending run of ``protocol`` (tqdm over runs); returns the runs done here.

    Several processes may run the same protocol on the same ``root`` at once: each run goes
    to the first process that claims it (:func:`claim_run`), and the others skip it.
    """
    from tqdm.auto import tqdm

    todo = pending_runs(protocol, root)
    done = []
    data: dict[tuple[str, str, ViewSpec], DeviceViews] = {}

    def views(dataset: str, method: str, split: str) -> DeviceViews:
        spec = protocol.view_spec(dataset, method)
        if (dataset, split, spec) not in data:
            plan = protocol.datasets[dataset]
            limit = plan.train_limit if split == "train" else plan.test_limit
            data[dataset, split, spec] = load_device_views(dataset, split, spec,
                                                           root=data_root, limit=limit)
        return data[dataset, split, spec]

    bar = tqdm(todo, desc="paper runs", unit="run", disable=not progress)
    for dataset, method, seed in bar:
        bar.set_postfix_str(f"{dataset} {method} seed {seed}")
        folder = run_dir(root, dataset, method, seed)
        with claim_run(folder) as claimed:
            # another process may have finished it since the list was made
            if not claimed or _cached_result(folder / "evaluation.json",
                                             protocol.run_key(dataset, method, seed)):
                continue
            run_one(protocol, root, dataset, method, seed, views(dataset, method, "train"),
                    views(dataset, method, "test"), progress=progress)
            done.append((dataset, method, seed))
    return done


def load_results(protocol: Protocol, root: Path) -> dict[tuple[str, str, int], dict]:
    """Finished results of the protocol's runs by (dataset, method, seed); missing ones left out."""
    results = {}
    for d, m, s in protocol.runs():
        result = _cached_result(run_dir(root, d, m, s) / "evaluation.json",
                                protocol.run_key(d, m, s))
        if result is not None:
            for rows in (result["rows"], result["rows_confidence"],
                         *result["rows_learned"].values()):
                for row in rows:
                    row["failed"] = tuple(row["failed"])
            results[d, m, s] = result
    return results


# ---------------------------------------------------------------------------------------
# Statistics


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its two-sided t-distribution confidence interval.

    The half-width is NaN for fewer than two values (no spread to estimate).
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size < 2:
        return float(x.mean()), math.nan
    sem = x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * sem)


def paired_t_test(a: Iterable[float], b: Iterable[float]) -> tuple[float, float]:
    """Paired t-test ``(t, p)`` of ``a`` vs ``b`` on the same seeds (two-sided).

    NaN for fewer than two pairs or when every pair differs by the same amount.
    """
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    diff = x - y
    if x.size < 2 or np.allclose(diff, diff[0]):
        return math.nan, math.nan
    result = stats.ttest_rel(x, y)
    return float(result.statistic), float(result.pvalue)


def error_rate_reduction(baseline_accuracy: float, new_accuracy: float) -> float:
    """Relative error reduction ``(err_base - err_new) / err_base`` (Table 6); accuracies in [0, 1].

    MNIST max pooling in the paper: 81.11% -> 82.60% is errors 18.89% -> 17.40%, a 7.9%
    reduction.
    """
    base_error = 1.0 - baseline_accuracy
    if base_error <= 0:
        return math.nan
    return (new_accuracy - baseline_accuracy) / base_error


def recovery_ratio(no_failure: float, without: float, with_modifier: float) -> float:
    """Share of the accuracy a failure costs that the Modifier wins back (NaN if it costs 0)."""
    cost = no_failure - without
    return math.nan if math.isclose(cost, 0.0, abs_tol=1e-12) else (with_modifier - without) / cost


# ---------------------------------------------------------------------------------------
# Per-seed metrics of a strategy


def _standby_rows(rows: list[dict], covered: int) -> list[dict]:
    """No-Modifier rows as a standby unit sees them: failed set S scored as S[covered:]."""
    by_set = {(r["mode"], r["failed"]): r for r in rows if not r["modifier"]}
    out = []
    for r in rows:
        if not r["modifier"]:
            source = by_set[r["mode"], r["failed"][covered:]]
            out.append({**r, "accuracy": source["accuracy"],
                        "balanced_accuracy": source["balanced_accuracy"]})
    return out


def strategy_summary(result: dict, strategy: Strategy, metric: str = "accuracy") -> dict:
    """One run's summary (see :func:`.evaluation.summarise`) under a strategy.

    ``metric`` is ``"accuracy"`` or ``"balanced_accuracy"`` (mean per-class recall).
    """
    if strategy.learned:
        source = result["rows_learned"][strategy.learned]
    else:
        source = result["rows_confidence" if strategy.confidence else "rows"]
    rows = [{**r, "accuracy": r[metric]} for r in source if r["mode"] == strategy.mode]
    if strategy.standby:
        rows = _standby_rows(rows, strategy.standby)
    summary = summarise(rows)[strategy.mode]
    return summary["modifier" if strategy.modifier else "baseline"]


def strategy_recovery_ratio(result: dict, strategy: Strategy) -> float:
    """Recovery ratio of a strategy against the same model's plain fusion without Modifier.

    ``(strategy - plain) / (plain no failure - plain)`` on the mean single-failure
    accuracy: for calibrated fusion, which also changes the no-failure output, the cost of
    a failure is still the plain system's, so every option is measured on one scale.
    """
    plain = strategy_summary(result, Strategy("", strategy.method, strategy.mode, False))
    return recovery_ratio(plain["no_failure"], plain["single_failure_mean"],
                          strategy_summary(result, strategy)["single_failure_mean"])


def compare_options(result: dict, method: str) -> list[dict]:
    """One run's summary and recovery ratio under each of :func:`modifier_options`."""
    return [{**dataclasses.asdict(s), **strategy_summary(result, s),
             "recovery_ratio": strategy_recovery_ratio(result, s)}
            for s in modifier_options(method)]


def seed_metrics(summary: dict) -> dict[str, float]:
    """Flat metrics of a strategy summary: no failure, single-failure mean, per device, by n."""
    nan = math.nan
    out = {"no_failure": summary["no_failure"],
           "single_failure_mean": summary["single_failure_mean"]}
    for i, acc in enumerate(summary["single_failure_per_device"]):
        out[f"device_{i + 1}_failed"] = nan if acc is None else acc
    for k, acc in enumerate(summary["by_n_failed"]):
        out[f"{k}_failed"] = nan if acc is None else acc
    return out


def method_values(results: dict, dataset: str, strategy: Strategy) -> dict[int, dict[str, float]]:
    """Per seed: :func:`seed_metrics` of a strategy, plus its balanced accuracies.

    ``balanced_no_failure`` and ``balanced_single_failure_mean`` are mean per-class recalls
    (MVMC's classes are heavily imbalanced).
    """
    out = {}
    for (d, m, seed), result in sorted(results.items()):
        if d == dataset and m == strategy.method:
            metrics = seed_metrics(strategy_summary(result, strategy))
            balanced = strategy_summary(result, strategy, "balanced_accuracy")
            metrics["balanced_no_failure"] = balanced["no_failure"]
            metrics["balanced_single_failure_mean"] = balanced["single_failure_mean"]
            out[seed] = metrics
    return out


def compare(a: dict[int, dict], b: dict[int, dict], metric: str) -> dict:
    """Mean/CI of ``a`` and ``b`` on their common seeds, the paired t-test and error reduction."""
    seeds = sorted(set(a) & set(b))
    xa = [a[s][metric] for s in seeds]
    xb = [b[s][metric] for s in seeds]
    mean_a, ci_a = mean_ci(xa)
    mean_b, ci_b = mean_ci(xb)
    t, p = paired_t_test(xa, xb)
    return {"seeds": seeds, "a": mean_a, "a_ci": ci_a, "b": mean_b, "b_ci": ci_b,
            "difference": mean_a - mean_b, "t": t, "p": p,
            "error_rate_reduction": error_rate_reduction(mean_b, mean_a)}


def protocol_dict(protocol: Protocol) -> dict:
    """JSON-safe description of a protocol (written beside the results)."""
    out = dataclasses.asdict(protocol)
    out["methods"] = {m: dataclasses.asdict(METHODS[m]) for m in protocol.methods}
    out["strategies"] = [dataclasses.asdict(s) for s in STRATEGIES]
    return out
