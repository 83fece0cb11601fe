"""Tables, raw CSV/JSON and figures of the Modifier paper reproduction, paper vs ours.

:func:`write_report` reads the finished runs of a :class:`~.reproduction.Protocol` and
writes into ``out``:

* ``tables.md`` -- a summary of the paper's printed numbers beside ours; Tables 4/5
  (single failures per device, without/with the Modifier), Table 6 (improvement, paired
  t-test, error-rate reduction, recovery ratio), accuracy vs number of failed devices
  (Figure 4), baselines (Figure 7) with t-tests against ours, the reproduction's targets,
  the Modifier options (confidence-weighted, affine, calibrated fusion) with their
  recovery ratios and t-tests against the plain Modifier;
* ``seeds.csv`` -- the raw per-seed metrics every table is computed from;
* ``summary.json`` -- the protocol and every aggregated number with its seeds;
* ``fig4_failed_devices.png``, ``fig5_pooling.png``, ``fig6_per_device.png``,
  ``fig7_baselines.png``, ``training_curves.png``, ``training_accuracy.png`` (the
  training curves show whether a dataset's epochs are enough: ``paper-10x`` trains 10x
  as long).

Accuracies are in percent in the outputs; "±" is the half-width of the 95% t-interval
over seeds ("-" with a single seed).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..perception.modes import EVALUATION_MODES
from .reproduction import (
    LEARNED_METHODS,
    METHODS,
    NOISE_METHODS,
    NOISE_SETTINGS,
    OURS,
    STRATEGIES,
    TARGET_STRATEGIES,
    Protocol,
    Strategy,
    compare,
    load_results,
    mean_ci,
    method_values,
    modifier_options,
    protocol_dict,
    recovery_ratio,
    strategy_recovery_ratio,
)

__all__ = ["PAPER_TABLE4", "PAPER_TABLE5", "PAPER_TABLE6", "write_report"]

# The paper's Table 4 (without the Modifier): no failure, devices 1..6 failed, overall.
PAPER_TABLE4 = {
    ("mnist", "max"): (85.23, 85.85, 86.22, 76.22, 76.27, 85.85, 76.27, 81.11),
    ("mnist", "avg"): (96.25, 96.42, 95.78, 91.77, 90.38, 95.52, 90.38, 93.37),
    ("cifar10", "max"): (75.50, 70.49, 70.74, 70.88, 70.81, 70.29, 70.25, 70.57),
    ("cifar10", "avg"): (83.49, 80.45, 80.04, 78.73, 78.57, 79.56, 79.83, 79.53),
}
# Table 5 (with the Modifier): devices 1..6 failed, overall (no "no failure" row).
PAPER_TABLE5 = {
    ("mnist", "max"): (85.85, 86.22, 76.22, 76.27, 85.11, 85.93, 82.60),
    ("mnist", "avg"): (96.35, 95.85, 92.23, 90.19, 95.53, 95.55, 94.28),
    ("cifar10", "max"): (70.56, 71.04, 70.92, 70.83, 69.48, 76.28, 71.51),
    ("cifar10", "avg"): (81.05, 80.06, 79.04, 78.36, 79.56, 82.91, 80.16),
}
# Table 6: p value of the paired t-test and error-rate reduction (%), as printed.
PAPER_TABLE6 = {
    ("mnist", "max"): (0.0021, 7.9), ("mnist", "avg"): (0.005, 13.7),
    ("cifar10", "max"): (0.016, 3.2), ("cifar10", "avg"): (0.027, 3.0),
}
# Figure 7 and its text give only approximate values (one failure, %).
PAPER_FIGURE7_TEXT = {
    "mnist": "ensemble voting ~92, the paper's method ~94 (ResiliNet, Table 4: 94.45)",
    "cifar10": "dropout-trained ~78, redundancy ~79, the paper's method > 80 "
               "(ResiliNet, Table 4: 79.87)",
}
# The reproduction's targets for ours (avg fusion + Modifier): (dataset, what, metric, at least).
# "worst_single_failure" is the lowest single-failure accuracy over the devices.
ISSUE_TARGETS = (
    ("mnist", "no failure", "no_failure", 0.992),
    ("mnist", "mean single failure", "single_failure_mean", 0.985),
    ("mnist", "5 of 6 failed", "5_failed", 0.80),
    ("cifar10", "mean single failure", "single_failure_mean", 0.82),
    ("mvmc", "any one camera missing", "worst_single_failure", 0.98),
)
MODES = ("avg", "max")
FIGURE_METHODS = ("paper", "ours")  # the methods of Figures 4-6 and Tables 4-6


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _pm(values: list[float]) -> str:
    mean, ci = mean_ci(values)
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f}" if math.isnan(ci) else f"{100 * mean:.2f} ± {100 * ci:.2f}"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.2f}"


def _p(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2g}"


def _column(per_seed: dict[int, dict], metric: str) -> list[float]:
    return [m[metric] for m in per_seed.values()]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


HEADLINE_METHODS = ("paper", "ours", "paper-10x")  # the summary's measured columns


def _headline_table(results, datasets: list[str]) -> list[str]:
    """Paper (printed) vs our runs at a glance: avg fusion, with/without the Modifier."""
    shown = [m for m in HEADLINE_METHODS if any(k[1] == m for k in results)]
    rows = []
    for dataset in datasets:
        printed = PAPER_TABLE4.get((dataset, "avg")), PAPER_TABLE5.get((dataset, "avg"))
        values = {m: (method_values(results, dataset, Strategy("", m, "avg", False)),
                      method_values(results, dataset, Strategy("", m, "avg", True)))
                  for m in shown}
        ratios = {m: [recovery_ratio(without[s]["no_failure"],
                                     without[s]["single_failure_mean"],
                                     with_mod[s]["single_failure_mean"]) for s in without]
                  for m, (without, with_mod) in values.items()}
        for what, column, metric in (
                ("no failure", 0, "no_failure"),
                ("mean single failure, no Modifier", 0, "single_failure_mean"),
                ("mean single failure, Modifier", 1, "single_failure_mean")):
            paper = printed[column]
            index = 0 if metric == "no_failure" else -1
            row = [dataset, what, "-" if paper is None else f"{paper[index]:.2f}"]
            row += [_pm(_column(values[m][column], metric)) for m in shown]
            rows.append(row)
        paper_ratio = ("-" if printed[0] is None else
                       f"{100 * recovery_ratio(printed[0][0], printed[0][-1], printed[1][-1]):.1f}")
        rows.append([dataset, "recovery ratio %", paper_ratio,
                     *(_pm([r for r in ratios[m] if not math.isnan(r)]) for m in shown)])
        rows.append([dataset, "seeds", "-" if printed[0] is None else "10",
                     *(str(len(values[m][0])) for m in shown)])
    return _table(["dataset", "avg fusion", "paper (printed)", *(f"`{m}`" for m in shown)],
                  rows)


def _single_failure_table(results, dataset: str, method: str, n_devices: int) -> list[str]:
    values = {(mode, mod): method_values(results, dataset, Strategy("", method, mode, mod))
              for mode in MODES for mod in (False, True)}
    has_paper = (dataset, "avg") in PAPER_TABLE4
    header = ["failed device"]
    for mode in MODES:
        for label in ("no Modifier", "Modifier"):
            if has_paper:
                header.append(f"printed {mode} {label}")
            header.append(f"measured {mode} {label}")
    metrics = ["no_failure", *(f"device_{i + 1}_failed" for i in range(n_devices)),
               "single_failure_mean"]
    labels = ["none", *(str(i + 1) for i in range(n_devices)), "mean single"]
    rows = []
    for r, (metric, label) in enumerate(zip(metrics, labels, strict=True)):
        row = [label]
        for mode in MODES:
            for mod in (False, True):
                if has_paper:
                    paper = PAPER_TABLE4 if not mod else PAPER_TABLE5
                    index = r if not mod else r - 1  # Table 5 has no "no failure" row
                    row.append(f"{paper[dataset, mode][index]:.2f}" if index >= 0 else "-")
                row.append(_pm(_column(values[mode, mod], metric)))
        rows.append(row)
    return _table(header, rows)


def _table6(results, dataset: str, methods: list[str]) -> tuple[list[str], list[dict]]:
    header = ["method", "fusion", "no Modifier", "Modifier", "improvement", "p (paired t)",
              "error-rate reduction %", "recovery ratio %", "seeds"]
    rows, raw = [], []
    for mode in MODES:
        if (dataset, mode) in PAPER_TABLE6:
            p, err = PAPER_TABLE6[dataset, mode]
            base, with_mod = PAPER_TABLE4[dataset, mode][-1], PAPER_TABLE5[dataset, mode][-1]
            ratio = recovery_ratio(PAPER_TABLE4[dataset, mode][0], base, with_mod)
            rows.append(["paper (printed)", mode, f"{base:.2f}", f"{with_mod:.2f}",
                         f"{with_mod - base:+.2f}", f"{p:g}", f"{err:.1f}",
                         f"{100 * ratio:.1f}", "10"])
        for method in methods:
            without = method_values(results, dataset, Strategy("", method, mode, False))
            with_mod = method_values(results, dataset, Strategy("", method, mode, True))
            c = compare(with_mod, without, "single_failure_mean")
            ratios = [recovery_ratio(without[s]["no_failure"], without[s]["single_failure_mean"],
                                     with_mod[s]["single_failure_mean"]) for s in c["seeds"]]
            rows.append([method, mode, _pm(_column(without, "single_failure_mean")),
                         _pm(_column(with_mod, "single_failure_mean")),
                         _signed(c["difference"]), _p(c["p"]),
                         _pct(c["error_rate_reduction"]),
                         _pm([r for r in ratios if not math.isnan(r)]), str(len(c["seeds"]))])
            raw.append({"dataset": dataset, "method": method, "mode": mode,
                        "recovery_ratios": ratios, **c})
    return _table(header, rows), raw


def _failed_count_table(results, dataset: str, n_devices: int) -> list[str]:
    header = ["failed devices"]
    columns = []
    for method in FIGURE_METHODS:
        for mode in MODES:
            for mod in (False, True):
                header.append(f"{method} {mode} {'Modifier' if mod else 'no Modifier'}")
                columns.append(method_values(results, dataset, Strategy("", method, mode, mod)))
    rows = [[str(k), *(_pm(_column(col, f"{k}_failed")) for col in columns)]
            for k in range(n_devices)]
    return _table(header, rows)


def _message_loss_table(results, dataset: str) -> tuple[list[str], list[dict]]:
    header, columns, raw = ["message loss %"], [], []
    for method in FIGURE_METHODS:
        for mode in MODES:
            for mod in (False, True):
                header.append(f"{method} {mode} {'Modifier' if mod else 'no Modifier'}")
                per_seed = {seed: {r["loss_rate"]: r["accuracy"] for r in result["message_loss"]
                                   if r["mode"] == mode and r["modifier"] == mod}
                            for (d, m, seed), result in sorted(results.items())
                            if d == dataset and m == method}
                columns.append(per_seed)
                raw.append({"dataset": dataset, "method": method, "mode": mode,
                            "modifier": mod, "seeds": sorted(per_seed),
                            "accuracy_by_rate": [sorted(v.items()) for v in per_seed.values()]})
    rates = sorted({rate for col in columns for v in col.values() for rate in v})
    rows = [[f"{100 * rate:.0f}", *(_pm([v[rate] for v in col.values()]) for col in columns)]
            for rate in rates]
    return _table(header, rows), raw


def _noise_table(results, dataset: str) -> tuple[list[str], list[dict]]:
    header = ["input noise", "method", "fusion", "no failure", "mean single failure, no Modifier",
              "with Modifier", "seeds"]
    rows, raw = [], []
    for method in NOISE_METHODS:
        runs = [r for (d, m, _), r in sorted(results.items()) if d == dataset and m == method]
        for name in ("clean", *NOISE_SETTINGS):
            for mode in MODES:
                summaries = [r["summary"][mode] if name == "clean" else r["noise"][name][mode]
                             for r in runs]
                if not summaries:
                    continue
                cells = {
                    "no_failure": [s["baseline"]["no_failure"] for s in summaries],
                    "single_no_modifier": [s["baseline"]["single_failure_mean"]
                                           for s in summaries],
                    "single_modifier": [s["modifier"]["single_failure_mean"] for s in summaries],
                }
                label = "none" if name == "clean" else NOISE_SETTINGS[name]
                rows.append([label, method, mode, *(_pm(v) for v in cells.values()),
                             str(len(summaries))])
                raw.append({"dataset": dataset, "noise": label, "method": method, "mode": mode,
                            **cells})
    return _table(header, rows), raw


def _targets_table(results, dataset: str) -> list[str]:
    shown = [(s, v) for s in TARGET_STRATEGIES if (v := method_values(results, dataset, s))]
    rows = []
    for name, what, metric, target in ISSUE_TARGETS:
        if name != dataset or not shown:
            continue
        cells = []
        for _, per_seed in shown:
            if metric == "worst_single_failure":
                values = [min(v for k, v in m.items() if k.startswith("device_"))
                          for m in per_seed.values()]
            else:
                values = _column(per_seed, metric)
            mean = mean_ci(values)[0]
            verdict = "met" if mean >= target else f"missed by {100 * (target - mean):.2f}"
            cells.append(f"{_pm(values)} ({verdict})")
        rows.append([what, f"{100 * target:.1f}", *cells])
    if not rows:
        return []
    return ["### The reproduction's targets (with the Modifier; verdict on the mean)", "",
            *_table(["what", "target",
                     *(f"{s.method}, {s.mode} ({len(v)} seed{'s' * (len(v) > 1)})"
                       for s, v in shown)], rows)]


def _baseline_table(results, dataset: str, n_devices: int) -> tuple[list[str], list[dict]]:
    ours = method_values(results, dataset, OURS)
    header = ["strategy (avg fusion)", "model", "no failure", "mean single failure",
              "balanced, mean single failure", f"{n_devices - 1} failed", "ours minus this",
              "p (paired t)", "seeds"]
    rows, raw = [], []
    for strategy in STRATEGIES:
        values = method_values(results, dataset, strategy)
        if not values:
            continue
        c = compare(ours, values, "single_failure_mean") if ours else None
        rows.append([strategy.label, strategy.method, _pm(_column(values, "no_failure")),
                     _pm(_column(values, "single_failure_mean")),
                     _pm(_column(values, "balanced_single_failure_mean")),
                     _pm(_column(values, f"{n_devices - 1}_failed")),
                     "-" if c is None else _signed(c["difference"]),
                     "-" if c is None else _p(c["p"]), str(len(values))])
        raw.append({"dataset": dataset, "strategy": strategy.label, "method": strategy.method,
                    "single_failure_mean": _column(values, "single_failure_mean"),
                    "seeds": sorted(values), "vs_ours": c})
    return _table(header, rows), raw


def _options_table(results, dataset: str) -> tuple[list[str], list[dict]]:
    header = ["option (avg fusion)", "no failure", "mean single failure", "recovery ratio %",
              "this minus plain Modifier", "p (paired t)", "seeds"]
    rows, raw = [], []
    for method in LEARNED_METHODS:
        options = modifier_options(method)
        plain_modifier = method_values(results, dataset, options[1])
        for strategy in options:
            values = method_values(results, dataset, strategy)
            if not values:
                continue
            c = compare(values, plain_modifier, "single_failure_mean")
            ratios = [strategy_recovery_ratio(results[dataset, method, seed], strategy)
                      for seed in sorted(values)]
            rows.append([strategy.label, _pm(_column(values, "no_failure")),
                         _pm(_column(values, "single_failure_mean")),
                         _pm([r for r in ratios if not math.isnan(r)]),
                         _signed(c["difference"]), _p(c["p"]), str(len(values))])
            raw.append({"dataset": dataset, "strategy": strategy.label, "method": method,
                        "seeds": sorted(values), "recovery_ratios": ratios,
                        "vs_plain_modifier": c})
    return _table(header, rows), raw


def _seed_rows(results) -> list[dict]:
    plain = [Strategy("", m, mode, mod) for m in METHODS for mode in EVALUATION_MODES
             for mod in (False, True)]
    special = [*(s for s in STRATEGIES if s.standby),
               *(s for m in LEARNED_METHODS for s in modifier_options(m)
                 if s.confidence or s.learned)]
    rows = []
    for dataset in sorted({d for d, _, _ in results}):
        for strategy in (*plain, *special):
            for seed, metrics in method_values(results, dataset, strategy).items():
                rows.append({"dataset": dataset, "method": strategy.method,
                             "mode": strategy.mode, "modifier": strategy.modifier,
                             "standby": strategy.standby,
                             "confidence_weighted": strategy.confidence,
                             "learned": strategy.learned, "seed": seed,
                             **{k: round(v, 6) for k, v in metrics.items()}})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _figures(results, datasets: list[str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def errorbars(values: list[list[float]]) -> tuple[list[float], list[float]]:
        stats = [mean_ci(v) for v in values]
        return ([100 * m for m, _ in stats],
                [0.0 if math.isnan(c) else 100 * c for _, c in stats])

    written = []
    n = len(datasets)

    def panels(name: str, draw, width: float = 4.2, height: float = 3.4) -> None:
        fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
        for ax, dataset in zip(axes[0], datasets, strict=True):
            draw(ax, dataset)
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
        if axes[0][0].get_legend_handles_labels()[0]:  # nothing drawn, nothing to label
            axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    def fig4(ax, dataset):
        pairs = [(method, mode) for method in FIGURE_METHODS for mode in MODES]
        for color, (method, mode) in enumerate(pairs):  # one colour, dashed = no Modifier
            for mod in (False, True):
                values = method_values(results, dataset, Strategy("", method, mode, mod))
                if not values:
                    continue
                ks = sorted(int(k.split("_")[0]) for k in next(iter(values.values()))
                            if k[0].isdigit())
                y, e = errorbars([_column(values, f"{k}_failed") for k in ks])
                ax.errorbar(ks, y, yerr=e, capsize=2, linestyle="-" if mod else "--",
                            color=f"C{color}",
                            label=f"{method} {mode}{' + Modifier' if mod else ''}")
        ax.set_xlabel("failed devices")
        ax.set_ylabel("accuracy %")

    def bars(ax, groups: list[str], series: dict[str, list[list[float]]]) -> None:
        width = 0.8 / max(1, len(series))
        lows, highs = [], []
        for i, (label, values) in enumerate(series.items()):
            y, e = errorbars(values)
            ax.bar([g + i * width for g in range(len(groups))], y, width, yerr=e, capsize=2,
                   label=label)
            lows += [m - c for m, c in zip(y, e, strict=True) if not math.isnan(m)]
            highs += [m + c for m, c in zip(y, e, strict=True) if not math.isnan(m)]
        ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups,
                      fontsize=7, rotation=20, ha="right")
        if lows:  # methods differ by tenths of a point: bars from 0 would hide that
            span = max(highs) - min(lows)
            ax.set_ylim(max(0.0, min(lows) - max(1.0, span)),
                        min(100.0, max(highs) + 0.3 * span + 0.2))
        ax.set_ylabel("accuracy % (axis does not start at 0)")

    def fig5(ax, dataset):
        groups = [f"{m} {mode}" for m in FIGURE_METHODS for mode in MODES]
        series = {label: [_column(method_values(results, dataset, Strategy("", m, mode, mod)),
                                  "single_failure_mean") for m in FIGURE_METHODS for mode in MODES]
                  for mod, label in ((False, "no Modifier"), (True, "Modifier"))}
        bars(ax, groups, series)

    def fig6(ax, dataset):
        without = method_values(results, dataset, Strategy("", "paper", "avg", False))
        with_mod = method_values(results, dataset, Strategy("", "paper", "avg", True))
        if not without:
            return
        devices = [k for k in next(iter(without.values())) if k.startswith("device_")]
        bars(ax, [d.split("_")[1] for d in devices], {
            "paper avg, no Modifier": [_column(without, d) for d in devices],
            "paper avg, Modifier": [_column(with_mod, d) for d in devices]})
        ax.set_xlabel("failed device")

    def fig7(ax, dataset):
        # Horizontal: sixteen strategy names do not fit under vertical bars.
        shown = [s for s in STRATEGIES if method_values(results, dataset, s)][::-1]
        y, e = errorbars([_column(method_values(results, dataset, s), "single_failure_mean")
                          for s in shown])
        ax.barh(range(len(shown)), y, xerr=e, capsize=2, color="C0")
        ax.set_yticks(range(len(shown)), [s.label for s in shown], fontsize=7)
        if y:  # strategies differ by tenths of a point: bars from 0 would hide that
            low, high = min(m - c for m, c in zip(y, e, strict=True)), max(y) + max(e)
            ax.set_xlim(max(0.0, low - 0.1 * (high - low) - 1.0), min(100.0, high + 0.5))
        ax.set_xlabel("mean single failure %, avg fusion (axis not from 0)")

    def curves(metric: str, label: str, scale: float = 1.0):
        def draw(ax, dataset):
            for method in METHODS:
                runs = [r for (d, m, _), r in results.items() if d == dataset and m == method]
                if runs:
                    epochs = range(1, len(runs[0]["history"]) + 1)
                    y = [scale * sum(r["history"][e - 1][metric] for r in runs) / len(runs)
                         for e in epochs]
                    ax.plot(list(epochs), y, marker="o", markersize=3, label=method)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)  # each panel: the methods differ between datasets
        return draw

    panels("fig4_failed_devices.png", fig4)
    panels("fig5_pooling.png", fig5)
    panels("fig6_per_device.png", fig6)
    panels("fig7_baselines.png", fig7, width=6.0, height=5.0)
    panels("training_curves.png", curves("ce", "training CE, mean of seeds"))
    panels("training_accuracy.png", curves("train_acc", "train accuracy % (avg fusion)", 100.0))
    return written


def write_report(protocol: Protocol, root: Path, out: Path, command: str = "") -> dict:
    """Write tables, raw per-seed results and figures of the finished runs into ``out``."""
    results = load_results(protocol, root)
    out.mkdir(parents=True, exist_ok=True)
    datasets = [d for d in protocol.datasets if any(k[0] == d for k in results)]
    done, total = len(results), len(protocol.runs())
    lines = [
        "# The Modifier paper reproduction: paper vs ours", "",
        f"Produced by `{command or 'resilient-perception reproduce'}` from {done} of "
        f"{total} runs of the protocol (raw per-seed metrics: `seeds.csv`; every aggregate "
        "with its seeds: `summary.json`). Accuracy %, mean ± half-width of the 95% "
        "t-interval over seeds; p from paired t-tests on the same seeds.", "",
        "| dataset | epochs | batch | train samples | test samples | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, plan in protocol.datasets.items():
        lines.append(f"| {dataset} | {plan.epochs} | {plan.batch_size} "
                     f"| {plan.train_limit or 'all'} "
                     f"| {plan.test_limit or 'all'} | {len(protocol.seeds)} "
                     f"(baselines {protocol.baseline_seeds or len(protocol.seeds)}) |")
    methods = "; ".join(f"`{m}` = {METHODS[m].label}" for m in protocol.methods)
    lines += ["", f"Training precision {protocol.precision}. Methods: {methods}.", ""]
    if datasets:
        lines += ["## Summary: the paper's printed numbers and ours", "",
                  "Accuracy % with average fusion; recovery ratio = share of a single "
                  "failure's cost the Modifier wins back. Per-device tables, significance, "
                  "baselines and options follow per dataset.", "",
                  *_headline_table(results, datasets)]
    summary: dict = {"protocol": protocol_dict(protocol), "runs_done": done, "runs": total,
                     "table6": [], "baselines": [], "modifier_options": [], "message_loss": [],
                     "noise": []}
    for dataset in datasets:
        any_result = next(r for k, r in results.items() if k[0] == dataset)
        n_devices = len(any_result["summary"]["avg"]["baseline"]["single_failure_per_device"])
        lines += [f"## {dataset}", ""]
        for method in FIGURE_METHODS:
            if method in protocol.methods:
                lines += [f"### Single failures per device, `{method}` "
                          "(Tables 4 and 5)", ""]
                lines += _single_failure_table(results, dataset, method, n_devices)
        table6, raw6 = _table6(results, dataset, [
            m for m in METHODS if m in protocol.methods and METHODS[m].runs_on(dataset)])
        lines += ["### Modifier improvement and significance (Table 6)", "", *table6]
        summary["table6"] += raw6
        lines += ["### Accuracy vs number of failed devices (Figure 4)", ""]
        lines += _failed_count_table(results, dataset, n_devices)
        baselines, raw7 = _baseline_table(results, dataset, n_devices)
        lines += ["### Baselines, one failed device (Figure 7)", ""]
        if dataset in PAPER_FIGURE7_TEXT:
            lines += [f"Paper (approximate, from its text): {PAPER_FIGURE7_TEXT[dataset]}.", ""]
        lines += baselines
        lines += _targets_table(results, dataset)
        summary["baselines"] += raw7
        options_table, raw_options = _options_table(results, dataset)
        lines += ["### Modifier options", "",
                  "Learned options are fitted on each run's training split "
                  "(`perception/learned_modifier.py`). Recovery ratio: share of the plain fusion's "
                  "single-failure loss won back, per seed; p: paired t-test against the "
                  "plain Modifier of the same model.", "", *options_table]
        summary["modifier_options"] += raw_options
        loss_table, raw_loss = _message_loss_table(results, dataset)
        lines += ["### Message loss between the devices and the aggregator", "",
                  "Each device's message is lost independently per frame with the given "
                  "probability (the same draws for every column of a seed).", "", *loss_table]
        summary["message_loss"] += raw_loss
        noise_table, raw_noise = _noise_table(results, dataset)
        lines += ["### Per-device input noise (the paper's devices 1 and 2 = ids 0 and 1)", "",
                  *noise_table]
        summary["noise"] += raw_noise
    figures = _figures(results, datasets, out) if datasets else []
    lines += ["## Figures", "", *(f"![{f}]({f})" for f in figures), ""]
    (out / "tables.md").write_text("\n".join(lines))
    _write_csv(out / "seeds.csv", _seed_rows(results))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary
