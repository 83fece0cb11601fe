"""Report of the long accuracy runs: tables, per-epoch CSV and learning curves.

Reads the run folders that ``scripts/accuracy_lanes.sh`` fills (``devices-<method>-s<seed>``
from :mod:`.paper_budget`, ``resnet-*`` from :mod:`.resnet_recipe`), finished or not, and
writes ``tables.md`` (the 40-epoch devices beside the 4-epoch, 10-seed protocol of
``docs/results/paper/seeds.csv``, with 95% confidence intervals over finished seeds and a
paired t-test of ``ours`` vs ``paper``; the ResNets' clean and flip-TTA accuracy; epoch
times and achieved FLOP/s against the matmul peak), ``epochs.csv`` (every epoch of every
run) and ``curves.png``. Runs still training are listed with their latest epoch and left
out of the means. A run folder lives outside the repository and goes with its machine, so
the report keeps a record of each finished run beside the tables (``records/<name>.json``) and
reads it back when the folder is gone; ``scripts/accuracy_lanes.sh`` does not train a
recorded run again.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..perception.modes import FUSION_MODES  # noqa: E402
from ..run_state import read_state_meta, what_it_trains  # noqa: E402
from .gated_modifier import GATE_AVERAGE, gated_stem  # noqa: E402
from .paper_budget import DeviceRecipe  # noqa: E402
from .reproduction import mean_ci, paired_t_test  # noqa: E402

__all__ = ["collect_runs", "gated_report", "protocol_seeds", "write_accuracy_report"]

METHODS = ("paper", "ours")


RECORDS = "records"  # the report's folder of finished runs' records, one JSON per run


def _read_live_run(folder: Path) -> dict | None:
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        return None
    data = json.loads(metrics.read_text())
    evaluation, gated = folder / "evaluation.json", folder / "eval-test" / "gated.json"
    return {**data, "commit": (read_state_meta(folder) or {}).get("commit", ""),
            "summary": (json.loads(evaluation.read_text())["summary"]
                        if evaluation.is_file() else None),
            "gated": json.loads(gated.read_text()) if gated.is_file() else None}


def collect_runs(root: Path, records: Path | None = None) -> dict[str, dict]:
    """``{run name: {settings, log, summary, gated, commit, finished, epochs}}``.

    The run folders under ``root`` (finished or not), and the records in ``records``
    (:func:`write_accuracy_report` keeps one per finished run) of runs whose folder is gone:
    a run folder lives outside the repository and is lost with its machine, its record
    is not. ``commit`` is the code of the run's latest epoch (its saved state's metadata).
    """
    found = {}
    if records is not None and Path(records).is_dir():
        found = {p.stem: json.loads(p.read_text()) for p in Path(records).glob("*.json")}
    if Path(root).is_dir():
        for folder in Path(root).iterdir():
            run = _read_live_run(folder)
            if run is not None:
                found[folder.name] = run
    runs = {}
    for name in sorted(found):
        run = found[name]
        epochs = run["settings"]["recipe"]["epochs"]
        runs[name] = {**run, "finished": len(run["log"]) == epochs, "epochs": epochs}
    return runs


def protocol_seeds(seeds_csv: Path, dataset: str = "cifar10") -> dict[str, dict[str, list]]:
    """Per method, the protocol's per-seed avg-fusion ``no_failure`` and ``single_modifier``."""
    out: dict[str, dict[str, list]] = {m: {"no_failure": [], "single_modifier": []}
                                       for m in METHODS}
    with Path(seeds_csv).open() as fh:
        for row in csv.DictReader(fh):
            plain = (row["mode"] == "avg" and row["standby"] == "0"
                     and row["confidence_weighted"] == "False" and not row["learned"])
            if row["dataset"] != dataset or row["method"] not in out or not plain:
                continue
            if row["modifier"] == "False":
                out[row["method"]]["no_failure"].append(float(row["no_failure"]))
            else:
                out[row["method"]]["single_modifier"].append(float(row["single_failure_mean"]))
    return out


def _pct(values: list[float]) -> str:
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f}" + ("" if math.isnan(half) else f" ± {100 * half:.2f}")


def _is_main_run(name: str, method: str) -> bool:
    """A run of the 40-epoch seeds (``devices-<method>-s<seed>``), not a pilot."""
    return re.fullmatch(rf"devices-{method}-s\d+", name) is not None


def _finals(run: dict) -> tuple[float, float]:
    """A finished device run's (no failure, mean single failure + Modifier), avg fusion."""
    avg = run["summary"]["avg"]
    return avg["baseline"]["no_failure"], avg["modifier"]["single_failure_mean"]


def _device_finals(runs: dict[str, dict], method: str) -> dict[int, tuple[float, float]]:
    """Finished main runs of ``method``: seed -> (no failure, single failure + Modifier)."""
    return {run["settings"]["recipe"]["seed"]: _finals(run) for name, run in runs.items()
            if _is_main_run(name, method) and run["summary"]}


def _reference(runs: dict[str, dict], name: str, recipe: dict) -> tuple[str, dict] | None:
    """The run ``name`` (trained with ``recipe``) changes least, if any.

    Of the runs with the same seed and length, those whose every change from the default
    recipe ``recipe`` makes too, with the same value; the one with the most such changes
    (the nearest ablation: for a pilot of two changes, the pilot of one of them), by name
    on a tie. The default recipe itself is the reference where no run is nearer.
    """
    default = what_it_trains(DeviceRecipe().asdict())

    def changes(trains: dict) -> dict:
        return {k: v for k, v in trains.items() if default.get(k) != v}

    mine = changes(recipe)
    found = []
    for other, run in runs.items():
        trains = what_it_trains(run["settings"]["recipe"]) if other.startswith("devices-") else {}
        theirs = changes(trains)
        if (other != name and trains.get("seed") == recipe["seed"]
                and trains.get("epochs") == recipe["epochs"]
                and theirs.items() < mine.items()):
            found.append((-len(theirs), other, run))
    return min(found, key=lambda f: f[:2])[1:] if found else None


def _at_epoch(run: dict, epoch: int) -> str:
    """``no failure | one failure + Modifier`` (%) after ``epoch``, or dashes before it."""
    entry = next((e for e in run["log"] if e["epoch"] == epoch), None)
    if entry is None:
        return "- | -"
    return " | ".join(f"{100 * entry[k]:.2f}"
                      for k in ("test_no_failure", "test_single_failure_modifier"))


def _pilot_table(runs: dict[str, dict]) -> list[str]:
    """Device runs of a changed recipe, outside the 40-epoch seeds.

    The short pilots (``devices-pilot-*``) and e.g. one seed of a pilot's setting at 40 epochs,
    each beside its reference run (:func:`_reference`: the nearest run it changes) after the
    same epoch, so a run still training is compared where it stands.
    """
    pilots = {name: run for name, run in runs.items() if name.startswith("devices-")
              and not any(_is_main_run(name, method) for method in METHODS)}
    if not pilots:
        return []
    default = what_it_trains(DeviceRecipe().asdict())
    lines = ["", "Pilots: runs of a changed recipe (settings that differ from the 40-epoch "
             "runs'), after their latest epoch, beside their reference after the same epoch: "
             "the run of the same seed and length whose every change they make too, the most "
             "of them (the default recipe where no run is nearer):", "",
             "| run | settings | epochs | no failure | one failure + Modifier | reference "
             "| reference: no failure | reference: one failure + Modifier |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in pilots.items():
        recipe = what_it_trains(run["settings"]["recipe"])
        changed = ", ".join(f"{k} {v}" for k, v in recipe.items() if default.get(k) != v)
        epoch = run["log"][-1]["epoch"]
        reference = _reference(runs, name, recipe)
        if reference is None:
            against = "- | - | -"
        else:
            against = f"{reference[0]} | {_at_epoch(reference[1], epoch)}"
        lines.append(f"| {name} | {changed or '-'} | {epoch}/{run['epochs']} "
                     f"| {_at_epoch(run, epoch)} | {against} |")
    return lines


def _device_tables(runs: dict[str, dict], protocol: dict[str, dict[str, list]]) -> list[str]:
    lines = ["## CIFAR-10, six devices, avg fusion (test split, %)", "",
             "| method | training | seeds | no failure | one failure + Modifier |",
             "|---|---|---|---|---|"]
    for method in METHODS:
        p = protocol[method]
        lines.append(f"| {method} | 4 epochs (reproduction protocol) | {len(p['no_failure'])} "
                     f"| {_pct(p['no_failure'])} | {_pct(p['single_modifier'])} |")
    for method in METHODS:
        finals = _device_finals(runs, method)
        values = list(finals.values())
        lines.append(f"| {method} | 40 epochs, 50% overlap, flip + translate | {len(finals)} "
                     f"| {_pct([v[0] for v in values])} | {_pct([v[1] for v in values])} |")
    lines.append("| paper's Table (target) | 40 epochs | - | 83.49 | 80.16 |")
    paper, ours = _device_finals(runs, "paper"), _device_finals(runs, "ours")
    seeds = sorted(set(paper) & set(ours))
    gated = {m: {name: run["gated"] for name, run in runs.items()
                 if _is_main_run(name, m) and run.get("gated")} for m in METHODS}
    if any(gated.values()):
        lines += ["", "The gated Modifier on the 40-epoch runs (gate fitted on the 5,000 "
                  "held-out training images; `evaluate --gated`):", "", *GATED_HEADER]
        rows = [("cifar10", m, [r for r in by_run.values() if current_gate(r)])
                for m, by_run in gated.items()]
        rows = [row for row in rows if row[2]]
        lines += [_gated_row(*row) for row in rows] + _options_lines(rows)
        lines += _cross_fitted_lines(rows)
        earlier = sorted(name for by_run in gated.values() for name, r in by_run.items()
                         if not current_gate(r))
        if earlier:
            lines += ["", "Left out, gated by an earlier gate (one option per failed set) "
                      "and without a model on this machine to gate again: "
                      + ", ".join(earlier) + "."]
    lines += ["", f"Paired t-test, ours vs paper, 40 epochs, on the {len(seeds)} seeds "
              "finished for both:"]
    for label, k in (("no failure", 0), ("one failure + Modifier", 1)):
        t, p = paired_t_test([ours[s][k] for s in seeds], [paper[s][k] for s in seeds])
        lines.append(f"- {label}: t = {t:.2f}, p = {p:.3g}" if not math.isnan(p)
                     else f"- {label}: needs two or more paired seeds")
    return lines + _pilot_table(runs)


def _progress_table(runs: dict[str, dict]) -> list[str]:
    lines = ["## Every run: progress, latest test accuracy, speed", "",
             "| run | epochs | latest test % | CPU s / epoch | achieved GFLOP/s per CPU s "
             "| matmul peak GFLOP/s | % of peak | commit |", "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        last = run["log"][-1]
        acc = last.get("test_acc", last.get("test_no_failure"))
        extra = f" (flip TTA {100 * last['test_acc_tta']:.2f})" if "test_acc_tta" in last else ""
        cpu = sum(e["cpu_seconds"] for e in run["log"]) / len(run["log"])
        lines.append(f"| {name} | {len(run['log'])}/{run['epochs']} | {100 * acc:.2f}{extra} "
                     f"| {cpu:.0f} | {last['cpu_gflops']:.2f} | {last['peak_gflops']:.0f} "
                     f"| {100 * last['utilisation']:.2f} | {run.get('commit', '')[:10]} |")
    hours = sum(e["cpu_seconds"] for run in runs.values() for e in run["log"]) / 3600
    return [*lines, "", f"CPU hours of every epoch above: {hours:.1f} (training only: the "
            "per-epoch test scoring and the steps after a run are not counted)."]


def _plot(runs: dict[str, dict], path: Path) -> None:
    fig, (dev, res) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        epochs = [e["epoch"] for e in run["log"]]
        if name.startswith("devices"):
            line, = dev.plot(epochs, [100 * e["test_no_failure"] for e in run["log"]],
                             marker="o", ms=3, label=f"{name}, no failure")
            dev.plot(epochs, [100 * e["test_single_failure_modifier"] for e in run["log"]],
                     ls="--", marker="o", ms=3, color=line.get_color())
        else:
            res.plot(epochs, [100 * e["test_acc"] for e in run["log"]], marker="o", ms=3,
                     label=name)
    dev.axhline(83.49, color="grey", lw=0.8, ls=":")
    dev.set(title="CIFAR-10 six devices (dashed: one failure + Modifier)", xlabel="epoch",
            ylabel="test accuracy %")
    res.axhline(90, color="grey", lw=0.8, ls=":")
    res.set(title="block-addressable ResNet (EMA weights)", xlabel="epoch",
            ylabel="test accuracy %")
    for ax, prefix in ((dev, "devices"), (res, "resnet")):
        ax.set_xlim(0, max([r["epochs"] for n, r in runs.items() if n.startswith(prefix)],
                           default=1) + 1)
        if ax.lines[1:]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_accuracy_report(root: Path, out: Path, seeds_csv: Path) -> str:
    """Write ``tables.md``, ``epochs.csv``, ``curves.png`` and the records to ``out``.

    Every finished run in ``root`` gets its record in ``out/records/<name>.json`` (settings,
    every epoch, final evaluation, gated evaluation, commit), which later reports read
    when the run folder is gone. Returns the tables.
    """
    out = Path(out)
    runs = collect_runs(root, out / RECORDS)
    if not runs:
        raise ValueError(f"{root}: no run folder with a metrics.json yet, and no record in "
                         f"{out / RECORDS}")
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        live = Path(root) / name / "metrics.json"
        if run["finished"] and live.is_file():
            record = {k: run[k] for k in ("settings", "log", "summary", "gated", "commit")}
            (out / RECORDS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    text = "\n".join([
        "# Accuracy runs: CIFAR-10 devices at the paper's budget, the fast ResNet recipe", "",
        f"Generated by `resilient-perception accuracy-report` from "
        f"`{os.path.relpath(root)}` and the records of finished runs in `{RECORDS}/`; runs "
        "still training are listed with their latest epoch and left out of the means.", "",
        *_device_tables(runs, protocol_seeds(seeds_csv)), "",
        *_progress_table(runs), ""])
    (out / "tables.md").write_text(text)
    fields = sorted({k for run in runs.values() for e in run["log"] for k in e})
    with (out / "epochs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["run", *fields])
        writer.writeheader()
        for name, run in runs.items():
            writer.writerows({"run": name, **e} for e in run["log"])
    _plot(runs, out / "curves.png")
    return text



GATED_HEADER = ["| dataset | method | seeds | no failure (none) | one failure: none | plain "
                "Modifier | gated | gated - none (points) | p, gated vs none | p, gated vs "
                "plain | recovery: plain | recovery: gated | the node's gate (surrogates or "
                "none) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def current_gate(result: dict) -> bool:
    """Whether a ``gated.json`` came from the gate of this code, so no table mixes gates.

    Results without ``average`` came from a gate that chose one option per failed set.
    """
    return result.get("average", 1) == GATE_AVERAGE


MIN_RECOVERY_COST = 0.001
"""A failure that costs less than this (0.1 points) makes a recovery ratio noise over noise."""


def _ratio(no_failure: list[float], without: list[float], with_: list[float]) -> str:
    """(with - without) / (no failure - without) over the seeds' means, as summarise() does."""
    cost = float(np.mean(no_failure)) - float(np.mean(without))
    if cost < MIN_RECOVERY_COST:
        return "-"
    return f"{100 * (float(np.mean(with_)) - float(np.mean(without))) / cost:.0f}%"


def _recovery(results: list[dict], with_: list[float]) -> str:
    """Recovery on the test split: ``with_`` against the seeds' no-Modifier summaries."""
    none = [r["summary"]["none"] for r in results]
    return _ratio([s["no_failure"] for s in none], [s["single_failure_mean"] for s in none],
                  with_)


def _cross_fitted_lines(rows: list[tuple[str, str, list[dict]]]) -> list[str]:
    """Recovery on held-out validation halves per number of options averaged.

    The evidence for :data:`.gated_modifier.GATE_AVERAGE`, from the validation splits
    only (``cross_fitted`` in each ``gated.json``).
    """
    rows = [row for row in rows if all("cross_fitted" in r for r in row[2])]
    if not rows:
        return []
    counts = list(rows[0][2][0]["cross_fitted"]["single_failure"])
    lines = ["", "How many options to average, judged on the validation split alone: the gate "
             "fitted on one random half and scored on the other (10 halves per seed); "
             "recovery of the mean single failure per number of options averaged (the gate "
             f"averages {GATE_AVERAGE}):", "",
             "| dataset | method | seeds | " + " | ".join(f"{c} averaged" for c in counts)
             + " |", "|---" * (len(counts) + 3) + "|"]
    for dataset, method, results in rows:
        folds = [r["cross_fitted"] for r in results]
        cells = [_ratio([f["no_failure"] for f in folds],
                        [f["single_failure_none"] for f in folds],
                        [f["single_failure"][c] for f in folds]) for c in counts]
        lines.append(f"| {dataset} | {method} | {len(results)} | " + " | ".join(cells) + " |")
    return lines


def _gated_row(dataset: str, method: str, results: list[dict]) -> str:
    """One table row over seeds' ``gated.json`` results (paired t-tests across seeds)."""

    def single(name: str) -> list[float]:
        return [r["summary"][name]["single_failure_mean"] for r in results]

    gain = [g - n for g, n in zip(single("gated"), single("none"), strict=True)]
    p_none = paired_t_test(single("gated"), single("none"))[1]
    p_plain = paired_t_test(single("gated"), single("modifier"))[1]
    no_failure = [r["summary"]["none"]["no_failure"] for r in results]
    # Results from before the node's gate have no score for it.
    node_gate = (_pct(single("surrogate_gated"))
                 if all("surrogate_gated" in r["summary"] for r in results) else "-")
    return (f"| {dataset} | {method} | {len(results)} | {_pct(no_failure)} "
            f"| {_pct(single('none'))} | {_pct(single('modifier'))} | {_pct(single('gated'))} "
            f"| {100 * float(np.mean(gain)):+.2f} | {p_none:.3g} | {p_plain:.3g} "
            f"| {_recovery(results, single('modifier'))} "
            f"| {_recovery(results, single('gated'))} "
            f"| {node_gate} |")


def _best_per_set(options: dict) -> float:
    """Mean single failure when each failed set gets its best single option on these samples."""
    singles = [key for key in options["none"]["by_failed_set"] if key and "," not in key]
    return float(np.mean([max(o["by_failed_set"][key] for o in options.values())
                          for key in singles]))


def _options_lines(rows: list[tuple[str, str, list[dict]]]) -> list[str]:
    """Recovery of every option alone, of the gate, and of the best option per failed set.

    Only rows whose every seed recorded its options (``evaluate --gated`` since it keeps
    them). The best per set is chosen on the test split itself, so no gate choosing one
    option can exceed it; the gate, which averages up to :data:`GATE_AVERAGE`, can.
    """
    rows = [row for row in rows if all("options" in r for r in row[2])]
    if not rows:
        return []
    names = [n for n in rows[0][2][0]["options"] if n != "none"]
    lines = ["", "Recovery of the mean single failure by each option alone, by the gate, and by "
             "the best single option per failed set chosen on the test split (the most a gate "
             "choosing one option could recover; averaging options can pass it):", "",
             "| dataset | method | seeds | " + " | ".join(names)
             + " | gated | best option per set |", "|---" * (len(names) + 5) + "|"]
    for dataset, method, results in rows:
        cells = [_recovery(results, [r["options"][n]["single_failure_mean"] for r in results])
                 for n in names]
        cells += [_recovery(results, [r["summary"]["gated"]["single_failure_mean"]
                                      for r in results]),
                  _recovery(results, [_best_per_set(r["options"]) for r in results])]
        lines.append(f"| {dataset} | {method} | {len(results)} | " + " | ".join(cells) + " |")
    return lines


def _gated_results(root: Path, mode: str) -> tuple[list[tuple[str, str, list[dict]]],
                                                     list[str]]:
    """``(rows, earlier)``: per dataset and method, the seeds' gated results of ``mode``.

    ``rows`` holds ``(dataset, method, results)`` gated by the current gate; ``earlier``
    the paths of results from an earlier gate, left out so no table mixes gates.
    """
    rows, earlier = [], []
    for method_dir in sorted(Path(root).glob("*/*")):
        results = []
        for path in sorted(method_dir.glob(f"seed*/eval-*/{gated_stem(mode)}.json")):
            result = json.loads(path.read_text())
            if current_gate(result):
                results.append({**result, "seed_folder": path.parent.parent.name})
            else:
                earlier.append(str(path.relative_to(root)))
        if results:
            rows.append((method_dir.parent.name, method_dir.name, results))
    return rows, earlier


def _pooling_lines(root: Path, mode: str) -> list[str]:
    """``mode`` against avg on the same models: the gated table in ``mode``, then the gains.

    Both poolings score the same checkpoints (one ``evaluate --gated avg MODE`` each), so
    the seeds pair: the t-tests are over seeds of ``mode`` minus avg.
    """
    rows, _ = _gated_results(root, mode)
    if not rows:
        return []
    lines = ["", f"## Pooled by {mode}", "", f"The same table with {mode} fusion "
             "(a gate of its own, fitted in that pooling):", "", *GATED_HEADER]
    lines += [_gated_row(*row) for row in rows]
    lines += ["", f"{mode} - avg on the same models (points, mean over seeds; p: paired "
              "t-test across seeds):", "",
              "| dataset | method | seeds | no failure | p | one failure: none | p "
              "| one failure: gated | p |", "|---|---|---|---|---|---|---|---|---|"]
    avg_rows = {(d, m): {r["seed_folder"]: r for r in results}
                for d, m, results in _gated_results(root, "avg")[0]}
    for dataset, method, results in rows:
        paired = [(avg_rows[(dataset, method)][r["seed_folder"]], r) for r in results
                  if r["seed_folder"] in avg_rows.get((dataset, method), {})]
        if paired:
            lines.append(f"| {dataset} | {method} | {len(paired)} | {_paired_cells(paired)} |")
    return lines


def _paired_cells(paired: list[tuple[dict, dict]]) -> str:
    """``gain | p`` cells of the second results over the first, paired by seed.

    No failure, one failure without a Modifier, one failure gated (points; paired t-test
    across seeds).
    """
    cells = []
    for strategy, key in (("none", "no_failure"), ("none", "single_failure_mean"),
                          ("gated", "single_failure_mean")):
        base = [a["summary"][strategy][key] for a, _ in paired]
        other = [b["summary"][strategy][key] for _, b in paired]
        gain = 100 * float(np.mean(other) - np.mean(base))
        cells.append(f"{gain:+.2f} | {paired_t_test(other, base)[1]:.3g}")
    return " | ".join(cells)


def _method_lines(root: Path) -> list[str]:
    """Every two methods of a dataset on the same seeds, in every pooling gated.

    E.g. ``ours-geo`` (the fused-output loss scored in geo) against ``ours`` (in avg): the
    seeds pair, the models differ.
    """
    lines = []
    for mode in FUSION_MODES:
        by_dataset: dict[str, dict[str, dict[str, dict]]] = {}
        for dataset, method, results in _gated_results(root, mode)[0]:
            by_dataset.setdefault(dataset, {})[method] = {r["seed_folder"]: r
                                                           for r in results}
        for dataset, methods in by_dataset.items():
            names = sorted(methods)
            for i, first in enumerate(names):
                for second in names[i + 1:]:
                    paired = [(methods[first][seed], methods[second][seed])
                              for seed in methods[first] if seed in methods[second]]
                    if paired:
                        lines.append(f"| {dataset} | {mode} | {second} - {first} "
                                     f"| {len(paired)} | {_paired_cells(paired)} |")
    if not lines:
        return []
    return ["", "## Methods on the same seeds", "", "The second method minus the first, "
            "pooled and gated alike (points, mean over seeds; p: paired t-test across seeds):",
            "", "| dataset | pooling | methods | seeds | no failure | p | one failure: none | p "
            "| one failure: gated | p |", "|---|---|---|---|---|---|---|---|---|---|", *lines]


def gated_report(root: Path) -> str:
    """Markdown: gated vs plain vs no Modifier per dataset and method, over seeds.

    Reads ``<root>/<dataset>/<method>/seed<k>/eval-*/gated.json`` (``evaluate --gated``);
    means with 95% confidence intervals over seeds, and paired t-tests across seeds of the
    mean single failure (gated vs none, gated vs plain Modifier). The target: gated
    never more than 0.05 points below none. Where the seeds kept every option's scores, a
    second table gives each option's recovery alone and the bound of choosing per set.
    Where seeds were also gated in another pooling (``gated-geo.json``: ``evaluate --gated
    avg geo``), a section per pooling gives its table and its gains over avg; where a
    dataset has several methods, a last section pairs them by seed in every pooling.
    """
    lines = ["# The gated Modifier: no Modifier, plain Modifier and gated (avg fusion, test %)",
             "", "Generated by `gated-report` over each seed's `gated.json` (and "
             "`gated-MODE.json`), kept in `raw/` (`scripts/reproduce_gated.sh`, "
             "`scripts/reproduce_fusion_modes.sh`); p-values are "
             "paired t-tests across seeds (nan below two seeds); recovery = (with - without) "
             "/ (no failure - without) on the mean single failure (\"-\" where a single failure "
             "costs under 0.1 points: a ratio would be noise over noise).", "", *GATED_HEADER]
    rows, earlier = _gated_results(root, "avg")
    lines += [_gated_row(*row) for row in rows]
    lines += _options_lines(rows) + _cross_fitted_lines(rows)
    if earlier:
        lines += ["", "Left out, gated by an earlier gate (run `evaluate --gated` again): "
                  + ", ".join(earlier) + "."]
    for mode in FUSION_MODES:
        if mode != "avg":
            lines += _pooling_lines(root, mode)
    lines += _method_lines(root)
    return "\n".join(lines) + "\n"
