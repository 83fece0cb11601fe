"""The paper's Section V experiments on the placement problem, for all three solvers.

Every point of a sweep is a :class:`Setting` (the paper's 10-device fleet by default:
half the devices 100 MB / 1.4 GMAC/s / 800 J, half 200 MB / 2.8 GMAC/s / 1000 J; 8 W
computing, 10 W transmitting; link rates uniform in [7.2, 72.2] Mb/s; Poisson requests).
A *run* is one setting, one solver and one seed over ``rounds`` time steps: each step draws
new symmetric link rates and a Poisson number of requests from random source devices (the
same draws for every solver and point of a seed), solves that step's problem with the
batteries left over from the steps before, and books the plan's energy. A step without a
feasible plan serves none of its requests.

The capacities are the paper's, for ResNet-50 at 224x224, scaled to the profile's network
(:func:`~resilient_perception.placement.fleet_config.reference_scale`), so times and energies
are on the paper's scale while shared data and MACs are the profile network's own.
The accuracy threshold is the same fraction of the clean accuracy as the paper's 80% is of
its 94.73% (``threshold_share``), so a less accurate network keeps the paper's slack.

:func:`run_sweep` writes one JSON file per (experiment, point, solver, seed) and skips files
that exist (resumable); :func:`write_report` turns them into CSV, Markdown tables and PNG
figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..placement.fleet_config import reference_scale
from ..placement.problem import Fleet, Network, Problem, evaluate_plan
from ..placement.solvers import solve

__all__ = ["EXPERIMENTS", "PAPER_THRESHOLD_SHARE", "Setting", "run_one", "run_sweep",
           "write_report"]

PAPER_THRESHOLD_SHARE = 0.80 / 0.9473
"""The paper's accuracy threshold (80%) as a share of its clean accuracy (94.73%)."""


@dataclass(frozen=True)
class Setting:
    """One experiment point: the fleet (low-end, high-end device figures) and the workload."""

    n_devices: int = 10
    memory_mb: tuple[float, float] = (100.0, 200.0)
    compute_gmacs: tuple[float, float] = (1.4, 2.8)
    energy_j: tuple[float, float] = (800.0, 1000.0)
    rates_mbps: tuple[float, float] = (7.2, 72.2)
    request_rate: float = 3.0
    fixed_requests: int | None = None
    alpha: float = 0.5
    beta: float = 0.5
    threshold_share: float = PAPER_THRESHOLD_SHARE
    rounds: int = 3
    compute_power_w: float = 8.0
    transmit_power_w: float = 10.0

    def fleet(self, network: Network) -> Fleet:
        """The fleet scaled from ResNet-50 figures to ``network``; the first half low-end."""
        scale = reference_scale(network)
        low = np.arange(self.n_devices) < (self.n_devices + 1) // 2

        def pick(pair: tuple[float, float]) -> np.ndarray:
            return np.where(low, pair[0], pair[1])

        return Fleet(tuple(f"d{i}" for i in range(self.n_devices)),
                     pick(self.memory_mb) * 1e6 * scale.memory,
                     pick(self.compute_gmacs) * 1e9 * scale.compute,
                     pick(self.energy_j), self.compute_power_w, self.transmit_power_w)

    def step(self, network: Network, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rates in bit/s, request sources) of one time step: the same for every solver."""
        rng = np.random.default_rng([seed, step])
        low, high = self.rates_mbps
        rates = np.triu(rng.uniform(low, high, (self.n_devices, self.n_devices)), 1)
        rates = (rates + rates.T) * 1e6 * reference_scale(network).rate
        count = (self.fixed_requests if self.fixed_requests is not None
                 else int(rng.poisson(self.request_rate)))
        return rates, rng.integers(0, self.n_devices, count)


def _points(base: Setting, key: str, values: Iterable, x: Callable = lambda v: v) -> list:
    return [(x(v), dataclasses.replace(base, **{key: v})) for v in values]


_BASE = Setting()
EXPERIMENTS: dict[str, dict] = {
    # V-A, Fig. 6: the weights, at the paper's threshold.
    "weights": {
        "title": "Weights alpha (latency) / beta = 1 - alpha (accuracy), Fig. 6",
        "x": "alpha",
        "points": [(a, dataclasses.replace(_BASE, alpha=a, beta=round(1 - a, 6)))
                   for a in (0.0, 0.25, 0.5, 0.75, 1.0)],
    },
    # V-B, Fig. 7: batteries, accuracy first. The paper's 800/1000 J never run out in a few
    # steps, so the sweep goes down to where they do.
    "battery": {
        "title": "Battery capacity (low-end device; high-end x1.25), alpha = 0, Fig. 7",
        "x": "low-end battery (J)",
        "points": [(800 * f, dataclasses.replace(_BASE, alpha=0.0, beta=1.0,
                                                 energy_j=(800 * f, 1000 * f)))
                   for f in (0.005, 0.01, 0.02, 0.05, 1.0)],
    },
    # V-C, Fig. 8: request rate, 500/800 J batteries, alpha 0.7.
    "requests": {
        "title": "Request rate (Poisson mean per time step), alpha = 0.7, Fig. 8",
        "x": "requests per step",
        "points": _points(dataclasses.replace(_BASE, alpha=0.7, beta=0.3,
                                              energy_j=(500.0, 800.0)),
                          "request_rate", (1.0, 2.0, 3.0, 4.0, 5.0)),
    },
    # V-D, Fig. 9: compute capacity, accuracy first.
    "compute": {
        "title": "Compute capacity (low-end device; high-end x2), alpha = 0, Fig. 9",
        "x": "low-end GMAC/s",
        "points": [(1.4 * f, dataclasses.replace(_BASE, alpha=0.0, beta=1.0,
                                                 compute_gmacs=(1.4 * f, 2.8 * f)))
                   for f in (0.5, 0.75, 1.0, 1.5, 2.0)],
    },
    # Solve time against problem size: one step, three requests, up to 50 devices, with a
    # longer time limit (8 devices is the smallest paper-like fleet that can serve three).
    "scaling": {
        "title": "Solve time vs number of devices (3 requests, one step)",
        "x": "devices",
        "work_limit": 10.0,
        "ga_generations": 1000,
        "points": [(n, dataclasses.replace(_BASE, n_devices=n, fixed_requests=3, rounds=1))
                   for n in (8, 10, 20, 30, 40, 50)],
    },
}
"""Experiment name -> title, x-axis label, its (x value, Setting) points and optionally its
own solver budgets (CP-SAT work limit, GA generations)."""


WALL_CAP = 10.0
"""Every solve also stops after this many times the work limit in wall-clock seconds."""


def run_one(network: Network, setting: Setting, solver: str, seed: int, work_limit: float,
            ga_generations: int) -> dict:
    """One run: ``setting.rounds`` time steps solved by ``solver``; per-step records.

    Budgets are counted in work, not wall time, so that a run is reproducible on a shared
    machine: CP-SAT stops after ``work_limit`` deterministic seconds (one worker), the GA
    after ``ga_generations`` generations; a wall-clock cap of :data:`WALL_CAP` x
    ``work_limit`` bounds both (and the heuristic's linear program).
    """
    fleet = setting.fleet(network)
    energy_left = fleet.energy_j.copy()
    threshold = setting.threshold_share * network.clean_accuracy
    steps = []
    for t in range(setting.rounds):
        rates, sources = setting.step(network, seed, t)
        record = {"step": t, "requests": int(sources.size)}
        steps.append(record)
        if sources.size == 0:
            continue
        problem = Problem(network, dataclasses.replace(fleet, energy_j=energy_left.copy()),
                          rates, sources, setting.alpha, setting.beta, threshold)
        options = {"ga": {"seed": seed, "generations": ga_generations},
                   "cpsat": {"seed": seed, "work_limit": work_limit}}.get(solver, {})
        result = solve(problem, solver, WALL_CAP * work_limit, **options)
        record.update({k: v for k, v in result.to_dict().items() if k != "solver"})
        if result.plan is None:
            continue
        evaluation = evaluate_plan(problem, result.plan)
        record["metrics"] = evaluation.metrics()
        energy_left = np.maximum(energy_left - evaluation.scores.energy_j[0], 0.0)
    return {"setting": dataclasses.asdict(setting), "solver": solver, "seed": seed,
            "work_limit": work_limit, "ga_generations": ga_generations,
            "accuracy_threshold": threshold, "steps": steps}


def run_sweep(network: Network, out: Path, experiments: Iterable[str], solvers: Iterable[str],
              seeds: Iterable[int], work_limit: float, ga_generations: int,
              progress: bool = True) -> list[Path]:
    """Run every (experiment, point, solver, seed) whose result file is missing."""
    from tqdm import tqdm

    jobs = []
    for name in experiments:
        if name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {name!r}; choose from {list(EXPERIMENTS)}")
        for index, (_, setting) in enumerate(EXPERIMENTS[name]["points"]):
            for seed in seeds:
                for solver in solvers:
                    path = out / "raw" / name / f"p{index}-{solver}-seed{seed}.json"
                    spec = EXPERIMENTS[name]
                    budget = (spec.get("work_limit", work_limit),
                              spec.get("ga_generations", ga_generations))
                    jobs.append((path, setting, solver, seed, budget))
    todo = [job for job in jobs if not job[0].exists()]
    for path, setting, solver, seed, budget in tqdm(todo, desc="placement runs",
                                                    disable=not progress, mininterval=5):
        result = run_one(network, setting, solver, seed, *budget)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(path)  # a run interrupted mid-write leaves no result file behind
    return [job[0] for job in jobs]


# ---------------------------------------------------------------------------------------
# Report


_METRICS = [  # (column, label, how to aggregate a run's steps)
    ("accuracy", "accuracy %", "request"),
    ("latency_s", "latency s", "request"),
    ("shared_mb", "shared MB/step", "step"),
    ("gmacs", "GMAC/step", "step"),
    ("energy_j", "energy J/step", "step"),
    ("dropped", "dropped blocks", "request"),
    ("served", "served %", None),
    ("objective", "objective", "step"),
    ("seconds", "solve s", "step"),
]


def _summarise(run: dict) -> dict:
    """One run's means: per served request, per step, and the share of requests served."""
    steps = [s for s in run["steps"] if s["requests"] > 0]
    solved = [s for s in steps if "metrics" in s]
    weights = np.array([s["requests"] for s in solved], dtype=float)
    total = sum(s["requests"] for s in steps)

    def per_request(key: str, scale: float = 1.0) -> float:
        if not solved:
            return float("nan")
        values = np.array([s["metrics"][key] for s in solved]) * scale
        return float(np.average(values, weights=weights))

    def per_step(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {
        "accuracy": per_request("accuracy", 100.0),
        "latency_s": per_request("latency_s"),
        "dropped": per_request("dropped_blocks"),
        "shared_mb": per_step([s["metrics"]["shared_bytes"] / 1e6 for s in solved]),
        "gmacs": per_step([s["metrics"]["macs"] / 1e9 for s in solved]),
        "energy_j": per_step([s["metrics"]["energy_j"] for s in solved]),
        "served": 100.0 * sum(s["requests"] for s in solved) / total if total else float("nan"),
        "objective": per_step([s["objective"] for s in solved]),
        "seconds": per_step([s["seconds"] for s in steps]),
    }


def _load_runs(results: Path) -> list[dict]:
    rows = []
    for path in sorted((results / "raw").glob("*/p*-*-seed*.json")):
        run = json.loads(path.read_text())
        experiment = path.parent.name
        point = int(path.name.split("-")[0][1:])
        if experiment not in EXPERIMENTS or point >= len(EXPERIMENTS[experiment]["points"]):
            continue
        x = EXPERIMENTS[experiment]["points"][point][0]
        rows.append({"experiment": experiment, "point": point, "x": x, "solver": run["solver"],
                     "seed": run["seed"], "run": run, **_summarise(run)})
    return rows


def _fmt(values: list[float], digits: int) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values)):.{digits}f}"


SOLVER_ORDER = ("cpsat", "heuristic", "ga")
SOLVER_LABEL = {"cpsat": "CP-SAT (exact)", "heuristic": "relaxation + Alg. 1",
                "ga": "GA (paper)"}


def _instance_gaps(rows: list[dict]) -> list[dict]:
    """Per identical instance (first step of each experiment point and seed): objectives."""
    instances: dict[tuple, dict] = {}
    for row in rows:
        first = next((s for s in row["run"]["steps"] if s["requests"] > 0), None)
        if first is None or first["step"] != 0:
            continue  # only step 0 is the same instance for every solver
        key = (row["experiment"], row["point"], row["seed"])
        instances.setdefault(key, {})[row["solver"]] = first
    out = []
    for (experiment, point, seed), by_solver in sorted(instances.items()):
        if "cpsat" not in by_solver:
            continue
        exact = by_solver["cpsat"]
        entry = {"experiment": experiment, "point": point, "seed": seed,
                 "cpsat_status": exact["status"], "cpsat_objective": exact["objective"],
                 "cpsat_bound": exact["bound"], "cpsat_seconds": exact["seconds"]}
        for other in ("heuristic", "ga"):
            if other in by_solver:
                entry[f"{other}_objective"] = by_solver[other]["objective"]
                entry[f"{other}_minus_cpsat"] = (by_solver[other]["objective"]
                                                 - exact["objective"])
        out.append(entry)
    return out


def _mean(values: list[float]) -> float:
    """Mean of the values that are not NaN (NaN if none: no plan at that point)."""
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _figure(rows: list[dict], experiment: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in _METRICS if m[0] != "seconds"]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6))
    axes = axes.ravel()
    for ax, (key, label, _) in zip(axes, panels, strict=True):
        for solver in SOLVER_ORDER:
            xs = sorted({r["x"] for r in rows if r["solver"] == solver})
            if not xs:
                continue
            means = [_mean([r[key] for r in rows if r["solver"] == solver and r["x"] == x])
                     for x in xs]
            ax.plot(xs, means, marker="o", label=SOLVER_LABEL[solver])
        ax.set_xlabel(EXPERIMENTS[experiment]["x"])
        ax.set_title(label, fontsize=9)
        if experiment in ("battery",):
            ax.set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(EXPERIMENTS[experiment]["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scaling_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for solver in SOLVER_ORDER:
        mine = [r for r in rows if r["solver"] == solver]
        xs = sorted({r["x"] for r in mine})
        if not xs:
            continue
        axes[0].plot(xs, [np.mean([r["seconds"] for r in mine if r["x"] == x]) for x in xs],
                     marker="o", label=SOLVER_LABEL[solver])
        axes[1].plot(xs, [np.mean([r["objective"] for r in mine if r["x"] == x]) for x in xs],
                     marker="o", label=SOLVER_LABEL[solver])
    axes[0].set_yscale("log")
    axes[0].set_xlabel("devices")
    axes[0].set_ylabel("solve time (s)")
    axes[1].set_xlabel("devices")
    axes[1].set_ylabel("objective (lower is better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Path, profile_name: str = "") -> str:
    """Write summary.csv, instances.csv, figures and tables.md from ``results/raw``."""
    import csv

    rows = _load_runs(results)
    if not rows:
        raise ValueError(f"{results / 'raw'}: no run results; run placement-sweep first")
    keys = ["experiment", "point", "x", "solver", "seed", *(m[0] for m in _METRICS)]
    with (results / "summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in keys})
    gaps = _instance_gaps(rows)
    if gaps:
        with (results / "instances.csv").open("w", newline="") as fh:
            fields = list(dict.fromkeys(k for g in gaps for k in g))
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(gaps)

    run0 = next((r["run"] for r in rows if r["experiment"] != "scaling"), rows[0]["run"])
    lines = [
        "# Block placement: the paper's Section V, three solvers side by side",
        "",
        "Generated by `resilient-perception placement-report` from the raw runs in `raw/` "
        "(one JSON per experiment point, solver and seed; `summary.csv` has one row per run, "
        "`instances.csv` one row per instance all three solvers solved). Do not edit by hand.",
        "",
        f"Profile: `{profile_name or 'see the raw files'}`. Budgets are work, not wall time, "
        "so runs are reproducible on a shared machine: CP-SAT (1 worker) stops after "
        f"{run0['work_limit']:g} deterministic seconds per step, the GA (population 100) "
        f"after {run0['ga_generations']} generations, about as long on 10 devices (the "
        f"scaling experiment: {EXPERIMENTS['scaling']['work_limit']:g} and "
        f"{EXPERIMENTS['scaling']['ga_generations']}); every solve is also capped at "
        f"{WALL_CAP:g}x the work limit in wall time. 'solve s' is the measured wall time "
        "on a machine shared with other jobs. Cells: mean ± std over seeds; accuracy, "
        "latency and dropped blocks per served request; shared data, computation, energy, "
        "objective and solve time per time step.",
        "",
    ]
    for name, spec in EXPERIMENTS.items():
        mine = [r for r in rows if r["experiment"] == name]
        if not mine:
            continue
        lines += [f"## {spec['title']}", "", f"![{name}]({name}.png)", ""]
        metrics = _METRICS if name != "scaling" else [
            m for m in _METRICS if m[0] in ("objective", "seconds", "served")]
        lines.append("| " + " | ".join([spec["x"], "solver", *(m[1] for m in metrics)]) + " |")
        lines.append("|" + "---|" * (2 + len(metrics)))
        for index, (x, _) in enumerate(spec["points"]):
            for solver in SOLVER_ORDER:
                cell = [r for r in mine if r["point"] == index and r["solver"] == solver]
                if not cell:
                    continue
                values = [_fmt([r[key] for r in cell], 4 if key == "objective" else
                               3 if key in ("latency_s", "seconds") else 2)
                          for key, _, _ in metrics]
                lines.append(f"| {x:g} | {SOLVER_LABEL[solver]} | " + " | ".join(values) + " |")
        lines.append("")
        if name == "scaling":
            statuses = {}
            for r in mine:
                if r["solver"] == "cpsat":
                    for s in r["run"]["steps"]:
                        if "status" in s:
                            statuses.setdefault(r["x"], []).append(
                                f"{s['status']} (gap {s['gap']:.1e})")
            lines += ["CP-SAT per instance: " + "; ".join(
                f"{x:g} devices: {', '.join(v)}" for x, v in sorted(statuses.items())), ""]
            _scaling_figure(mine, results / f"{name}.png")
        else:
            _figure(mine, name, results / f"{name}.png")

    if gaps:
        lines += ["## Exact vs the paper's methods on identical instances", "",
                  "The first time step of every experiment point and seed is the same "
                  "instance for all three solvers. Objective difference = other solver's "
                  "objective - CP-SAT's (positive: CP-SAT is better).", "",
                  "| experiment | instances | CP-SAT optimal | mean CP-SAT gap to bound | "
                  "GA - CP-SAT mean | GA - CP-SAT max | GA - CP-SAT min | "
                  "heuristic - CP-SAT mean | heuristic - CP-SAT min |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in EXPERIMENTS:
            mine = [g for g in gaps if g["experiment"] == name
                    and g["cpsat_objective"] is not None
                    and not math.isnan(g["cpsat_objective"])]
            if not mine:
                continue
            optimal = sum(g["cpsat_status"] == "optimal" for g in mine)
            bound_gap = [g["cpsat_objective"] - g["cpsat_bound"] for g in mine
                         if g["cpsat_bound"] is not None and not math.isnan(g["cpsat_bound"])]

            def stat(key: str, fn: Callable, rows_: list[dict] = mine) -> str:
                vals = [g[key] for g in rows_ if key in g and not math.isnan(g[key])]
                return f"{fn(vals):.2e}" if vals else "-"

            lines.append(
                f"| {name} | {len(mine)} | {optimal} | "
                f"{np.mean(bound_gap) if bound_gap else float('nan'):.2e} | "
                f"{stat('ga_minus_cpsat', np.mean)} | {stat('ga_minus_cpsat', np.max)} | "
                f"{stat('ga_minus_cpsat', np.min)} | {stat('heuristic_minus_cpsat', np.mean)} | "
                f"{stat('heuristic_minus_cpsat', np.min)} |")
        worse = [g for g in gaps if g.get("ga_minus_cpsat", 0.0) < -1e-6]
        missed = [g for g in gaps if math.isnan(g["cpsat_objective"] or math.nan)
                  and not math.isnan(g.get("ga_objective") or math.nan)]
        lines += ["", f"Instances where the GA beat CP-SAT by more than 1e-6: {len(worse)} "
                  f"of {len(gaps)}; where the GA found a plan and CP-SAT none: {len(missed)}."]
        lines.append("")
    text = "\n".join(lines)
    (results / "tables.md").write_text(text)
    return text
