"""The placement solvers at fleet scale: the paper's 10-device example and generated fleets.

:func:`run_scale` solves, with each solver under the same wall-clock time limit,

* the example fleet (``config/fleet_example.yaml``: 10 devices, the profile's 16 blocks)
  ``repeats`` times, for the exact solver's time to a proven optimum;
* generated fleets (:mod:`..placement.fleet_generator`) of each size and seed.

Every solve is one row: the instance, the solver, its status, objective, proven bound and
gap (absolute and relative to the objective), the solver's own seconds and the wall
seconds around the call, and the machine's 1-minute load average before it (the machine
may be shared: the load says how much of a core the solve had). The solver libraries are
imported before the first solve, so no row pays for them. :func:`write_scale_report`
writes ``results.csv``, ``results.json`` (rows and settings), ``scale.png`` and
``tables.md``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..commands.common import write_csv, write_json
from ..placement.fleet_config import FleetConfig
from ..placement.fleet_generator import FleetRanges, fleet_document, generate_fleet
from ..placement.problem import Network, evaluate_plan
from ..placement.solvers import import_backends, solve

__all__ = ["SIZES", "SOLVER_NAMES", "run_scale", "settings_of", "write_scale_report"]

SIZES = (10, 25, 50, 100)
"""Fleet sizes (robots) of the scaling run."""

SOLVER_NAMES = {"cpsat": "exact (path program + CP-SAT)",
                "heuristic": "paper: relaxation + Algorithm 1", "ga": "paper: GA"}


def _solve_row(problem, solver: str, time_limit: float, **instance) -> dict:
    seed = instance["seed"]
    options = {"cpsat": {"seed": seed, "workers": 1}, "ga": {"seed": seed,
                                                            "generations": 10**6}}
    load = os.getloadavg()[0]
    started = time.monotonic()
    result = solve(problem, solver, time_limit, **options.get(solver, {}))
    wall = time.monotonic() - started
    feasible = result.plan is not None and evaluate_plan(problem, result.plan).feasible
    relative = (result.gap / result.objective
                if feasible and result.objective > 0 and np.isfinite(result.gap) else None)
    return {**instance, "requests": problem.n_requests, "solver": solver,
            "status": result.status, "objective": result.objective if feasible else None,
            "bound": result.bound if np.isfinite(result.bound) else None,
            "gap": result.gap if np.isfinite(result.gap) else None,
            "relative_gap": relative, "seconds": round(result.seconds, 4),
            "wall_seconds": round(wall, 4), "load_1min": round(load, 2),
            "stages": result.info.get("stages"),
            "reduced_costs": result.info.get("reduced_costs")}


def run_scale(network: Network, example: FleetConfig, sizes: Iterable[int],
              seeds: Iterable[int], solvers: Iterable[str], time_limit: float,
              threshold: float, repeats: int = 5, fleets_dir: Path | None = None,
              progress: bool = True) -> list[dict]:
    """Solve the example ``repeats`` times and each generated fleet once per solver."""
    import yaml

    import_backends()
    solvers = list(solvers)
    rows = []

    def note(row: dict) -> None:
        rows.append(row)
        if progress:
            gap = "" if row["relative_gap"] is None else f", gap {100 * row['relative_gap']:.2f}%"
            print(f"{row['instance']:>12s} {row['solver']:9s} {row['status']:9s} "
                  f"objective {row['objective'] or float('nan'):.6f}{gap}, "
                  f"{row['wall_seconds']:.2f} s (load {row['load_1min']})", flush=True)

    problem = example.problem(network)
    for repeat in range(repeats):
        for solver in solvers:
            note(_solve_row(problem, solver, time_limit, instance="example",
                            robots=problem.fleet.n_devices, seed=0, repeat=repeat))
    for n in sizes:
        for seed in seeds:
            config = generate_fleet(n, seed, alpha=0.5, accuracy_threshold=threshold)
            if fleets_dir is not None:
                fleets_dir.mkdir(parents=True, exist_ok=True)
                (fleets_dir / f"fleet-{n}-seed{seed}.yaml").write_text(
                    yaml.safe_dump(fleet_document(config), sort_keys=False))
            problem = config.problem(network)
            for solver in solvers:
                note(_solve_row(problem, solver, time_limit, instance=f"{n} robots",
                                robots=n, seed=seed, repeat=0))
    return rows


def _table(rows: list[dict]) -> list[str]:
    lines = ["| instance | solver | solves | status | objective (median) | vs best found | "
             "proven gap (median) | seconds (median / max) | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["instance"], row["seed"], row["solver"]), []).append(row)
    best = {}
    for (instance, seed, _), group in groups.items():
        values = [r["objective"] for r in group if r["objective"] is not None]
        if values:
            best[instance, seed] = min(best.get((instance, seed), np.inf), min(values))
    for (instance, seed, solver), group in groups.items():
        objectives = [r["objective"] for r in group if r["objective"] is not None]
        gaps = [r["relative_gap"] for r in group if r["relative_gap"] is not None]
        seconds = [r["wall_seconds"] for r in group]
        statuses = sorted({r["status"] for r in group})
        objective = float(np.median(objectives)) if objectives else None
        versus = (f"+{100 * (objective / best[instance, seed] - 1):.2f}%"
                  if objective is not None else "-")
        lines.append(
            f"| {instance} (seed {seed}, {group[0]['requests']} requests) | "
            f"{SOLVER_NAMES.get(solver, solver)} | {len(group)} | {', '.join(statuses)} | "
            f"{'-' if objective is None else f'{objective:.6f}'} | {versus} | "
            f"{'-' if not gaps else f'{100 * float(np.median(gaps)):.3f}%'} | "
            f"{np.median(seconds):.2f} / {max(seconds):.2f} | "
            f"{np.median([r['load_1min'] for r in group]):.1f} |")
    return lines


def _figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generated = [r for r in rows if r["instance"] != "example"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    for solver in SOLVER_NAMES:
        mine = [r for r in generated if r["solver"] == solver]
        if not mine:
            continue
        sizes = sorted({r["robots"] for r in mine})

        def median(key: str, size: int, rows=mine) -> float:
            values = [r[key] for r in rows if r["robots"] == size and r[key] is not None]
            return float(np.median(values)) if values else np.nan

        left.plot(sizes, [median("objective", s) for s in sizes], "o-",
                  label=SOLVER_NAMES[solver])
        middle.plot(sizes, [100 * median("relative_gap", s) for s in sizes], "o-",
                    label=SOLVER_NAMES[solver])
        right.plot(sizes, [median("wall_seconds", s) for s in sizes], "o-",
                   label=SOLVER_NAMES[solver])
    left.set(xlabel="robots", ylabel="objective (lower is better)")
    middle.set(xlabel="robots", ylabel="proven gap (% of objective)")
    right.set(xlabel="robots", ylabel="wall seconds", yscale="log")
    left.legend(fontsize=8)
    fig.suptitle("Placement at fleet scale (generated fleets, same time limit for all)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_scale_report(out: Path, rows: list[dict], settings: dict) -> str:
    """results.csv, results.json, scale.png and tables.md in ``out``; returns the tables."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"settings": settings, "rows": rows})
    write_csv(out / "results.csv", [{k: v for k, v in r.items() if k != "stages"}
                                    for r in rows])
    generated = any(r["instance"] != "example" for r in rows)
    if generated:
        _figure(rows, out / "scale.png")
    ranges = settings["ranges"]
    text = "\n".join([
        "# Placement at fleet scale",
        "",
        f"Made by `{settings['command']}` ({settings['date']}); raw rows in `results.json` "
        "and `results.csv`" + (", figure `scale.png`, generated fleets in `fleets/`."
                               if generated else "."),
        "",
        f"Every solver had the same wall-clock limit of {settings['time_limit']:g} s per "
        "solve, one CPU thread (CP-SAT `num_workers=1`); the solver libraries were imported "
        "before the first solve. `seconds` are wall seconds around the call; `load` is the "
        "machine's 1-minute load average before it (2 cores; other work was running, so a "
        "solve had at most one core and often less). `proven gap` is (objective - proven "
        "lower bound) / objective (the heuristic's bound is its linear relaxation's; the GA "
        "proves none). `vs best found` "
        "compares with the best objective any solver found on that instance.",
        "",
        f"Generated fleets (seeded, `placement/fleet_generator.py`): memory "
        f"{ranges['memory_mb']} MB, compute {ranges['compute_gmacs']} GMAC/s, battery "
        f"{ranges['energy_j']} J, link rates {ranges['rates_mbps']} Mb/s (symmetric), all "
        f"uniform (ResNet-50 figures, scaled to the profile's network); one request per "
        f"{ranges['robots_per_request']} robots, at least {ranges['min_requests']}; "
        f"alpha = beta = 0.5, accuracy threshold {settings['threshold']:.4f}. The example "
        f"is `{settings['example']}`.",
        "",
        *_table(rows),
        "",
    ])
    (out / "tables.md").write_text(text)
    return text


def settings_of(command: str, example: Path, profile: Path, time_limit: float,
                threshold: float, seeds: list[int], sizes: list[int]) -> dict:
    """The run's settings as stored beside the rows."""
    return {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "example": str(example), "profile": str(profile), "time_limit": time_limit,
            "threshold": threshold, "seeds": seeds, "sizes": sizes,
            "ranges": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(FleetRanges()).items()}}
