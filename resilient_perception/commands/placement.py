"""Subcommands of the block placement optimiser: ``plan``, ``placement-sweep``, ``-report``.

``plan`` places a profiled ResNet on the fleet of a fleet file with one solver, prints the
plan (per unit and request: a device or "skipped") with its metrics and constraints, and
saves it as JSON. Invalid fleet files and profiles, and instances without a feasible plan,
exit with status 2 and a message saying what to change (for an infeasible instance: which
constraint binds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..paper.placement_experiments import EXPERIMENTS, run_sweep, write_report
from ..placement.block_profile import load_profile, save_profile
from ..placement.fleet_config import load_fleet
from ..placement.problem import DROPPED, Network, PlanEvaluation, Problem, evaluate_plan
from ..placement.solvers import (
    SOLVERS,
    SolveResult,
    binding_constraints,
    import_backends,
    solve,
)
from .common import positive_float, positive_int

_HOW_TO_RELAX = {
    "memory": "more memory_mb, or more devices",
    "compute": "more compute_gmacs, a longer round_seconds, or fewer requests",
    "energy": "more energy_j (battery), or faster links (rates_mbps)",
    "accuracy": "a lower accuracy_threshold",
}


def format_plan(problem: Problem, evaluation: PlanEvaluation) -> str:
    """The plan as a table (units x requests) followed by its metrics and constraints."""
    names = problem.fleet.names
    net = problem.network
    headers = ["unit", *(f"request {r} (image on {names[s]})"
                         for r, s in enumerate(problem.sources))]
    rows = [[unit, *("skipped" if d == DROPPED else names[d]
                     for d in evaluation.plan.devices[:, u])]
            for u, unit in enumerate(net.names)]
    widths = [max(len(str(row[c])) for row in [headers, *rows]) for c in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]
    m = evaluation.metrics()
    lines += [
        "",
        f"objective {m['objective']:.6f} (alpha {problem.alpha:g} x normalised latency "
        f"{m['normalised_latency']:.4f} + beta {problem.beta:g} x accuracy loss "
        f"{net.clean_accuracy - m['accuracy']:.4f})",
        f"expected accuracy {100 * m['accuracy']:.2f}% (clean {100 * net.clean_accuracy:.2f}%), "
        f"{m['dropped_blocks']:g} blocks dropped per request",
        f"latency per request {m['latency_s']:.3f} s = compute {m['compute_s']:.3f} + image "
        f"{m['input_s']:.3f} + direct connections {m['direct_s']:.3f} + skip connections "
        f"{m['skip_s']:.3f}",
        f"shared data {m['shared_bytes'] / 1e6:.3f} MB, computation {m['macs'] / 1e9:.4f} GMAC, "
        f"energy {m['energy_j']:.2f} J",
        "constraints (tightest use / limit):",
    ]
    for c in evaluation.constraints[1:]:
        state = "ok" if c.satisfied else "VIOLATED"
        lines.append(f"  {c.name:9s} {100 * c.utilisation:6.1f}% at {c.where} ({state})")
    lines.append(f"  tightest: {evaluation.tightest.name}")
    return "\n".join(lines)


def solve_summary(result: SolveResult) -> str:
    """One line: the solver, whether the plan is proven optimal, objective, bound, gap, time."""
    state = {"optimal": "optimal (proven)",
             "feasible": "feasible, optimality NOT proven within the time limit"}.get(
                 result.status, result.status)
    relative = (f" ({100 * result.gap / result.objective:.3f}% of the objective)"
                if result.objective > 0 and np.isfinite(result.gap) else "")
    return (f"{result.solver}: {state}, objective {result.objective:.6f}, bound "
            f"{result.bound:.6f}, gap {result.gap:.2e}{relative}, {result.seconds:.2f} s")


def plan_json(problem: Problem, result: SolveResult, evaluation: PlanEvaluation) -> dict:
    """The JSON document ``plan --out`` writes."""
    names = problem.fleet.names
    return {
        **{k: v for k, v in result.to_dict().items() if k != "plan"},
        "alpha": problem.alpha, "beta": problem.beta,
        "accuracy_threshold": problem.accuracy_threshold,
        "requests": [
            {"source": names[s], "dropped": [problem.network.names[u]
                                             for u in evaluation.plan.dropped(r)],
             "units": [{"unit": unit, "device": None if d == DROPPED else names[d]}
                       for unit, d in zip(problem.network.names, evaluation.plan.devices[r],
                                          strict=True)]}
            for r, s in enumerate(problem.sources)
        ],
        "metrics": evaluation.metrics(),
        "constraints": [c.__dict__ for c in evaluation.constraints],
    }


def cmd_plan(args: argparse.Namespace) -> int:
    """Place a profiled ResNet on a fleet: which device runs each block, which are skipped."""
    profile = load_profile(args.profile)
    problem = load_fleet(args.fleet).problem(Network.from_profile(profile))
    options = {"seed": args.seed} if args.solver in ("cpsat", "ga") else {}
    if args.solver == "cpsat":
        options["workers"] = args.workers
    started = time.monotonic()
    import_backends()
    print(f"solver libraries imported in {time.monotonic() - started:.2f} s")
    result = solve(problem, args.solver, args.time_limit, **options)
    if result.plan is None:
        if result.status == "unknown" and args.solver != "cpsat":
            raise ValueError(f"{args.solver} found no feasible plan; try --solver cpsat, which "
                             "proves whether one exists")
        binding = binding_constraints(problem, args.time_limit)
        if not binding:
            raise ValueError(f"no plan found within --time-limit {args.time_limit:g} s; "
                             "raise it")
        raise ValueError("infeasible: no plan meets the " + " and ".join(binding)
                         + " constraint" + ("s" if len(binding) > 1 else "")
                         + " together with the others (relax with: "
                         + "; ".join(_HOW_TO_RELAX[b] for b in binding) + ")")
    evaluation = evaluate_plan(problem, result.plan)
    print(solve_summary(result))
    print(format_plan(problem, evaluation))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = plan_json(problem, result, evaluation)
    document.update(fleet=str(args.fleet), profile=str(args.profile), model=profile.model)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def cmd_placement_sweep(args: argparse.Namespace) -> int:
    """Run the paper's Section V sweeps for each solver and seed (resumable), then report."""
    import torch

    torch.set_num_threads(1)
    profile = load_profile(args.profile)
    network = Network.from_profile(profile)
    # The profile the results were made with sits beside them; never mix two profiles.
    kept = args.out / "profile.json"
    if kept.exists() and load_profile(kept) != profile:
        raise ValueError(f"{args.out} holds results of another profile ({kept}); delete "
                         f"{args.out / 'raw'} and {kept}, or choose another --out")
    save_profile(kept, profile)
    paths = run_sweep(network, args.out, args.experiments, args.solvers, args.seeds,
                      args.work_limit, args.ga_generations)
    print(f"{len(paths)} run results in {args.out / 'raw'}")
    write_report(args.out, f"{args.profile} ({profile.model})")
    print(f"wrote {args.out / 'tables.md'}")
    return 0


def cmd_placement_report(args: argparse.Namespace) -> int:
    """Tables (tables.md), summary CSVs and figures from placement-sweep's raw results."""
    text = write_report(args.results, args.profile_name)
    print(text)
    return 0


def cmd_bench_placement_scale(args: argparse.Namespace) -> int:
    """Solve the example fleet and generated fleets of 10-100 robots with every solver."""
    import shlex
    import sys

    from ..bench.placement_scale import run_scale, settings_of, write_scale_report
    from ..paper.placement_experiments import PAPER_THRESHOLD_SHARE

    profile = load_profile(args.profile)
    network = Network.from_profile(profile)
    example = load_fleet(args.example)
    threshold = PAPER_THRESHOLD_SHARE * network.clean_accuracy
    rows = run_scale(network, example, args.sizes, args.seeds, args.solvers, args.time_limit,
                     threshold, args.repeats, args.out / "fleets")
    command = "resilient-perception " + shlex.join(sys.argv[1:])
    settings = settings_of(command, args.example, args.profile, args.time_limit, threshold,
                           args.seeds, args.sizes)
    print(write_scale_report(args.out, rows, settings))
    return 0


def cmd_bench_replan(args: argparse.Namespace) -> int:
    """Lose robots of a simulated fleet one at a time; time until the planner's new plan."""
    import shlex
    import sys

    from ..bench.replan_benchmark import run_replan_benchmark, summarise
    from ..paper.placement_experiments import PAPER_THRESHOLD_SHARE
    from .common import write_json

    network = Network.from_profile(load_profile(args.profile))
    record = run_replan_benchmark(args.profile, args.out, args.robots, args.losses, args.seed,
                                  args.time_limit, args.robot_timeout, args.domain_id,
                                  PAPER_THRESHOLD_SHARE * network.clean_accuracy)
    record["command"] = "resilient-perception " + shlex.join(sys.argv[1:])
    record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    record["summary"] = summary = summarise(record)
    name = f"replan-{args.robots}"
    write_json(args.out / f"{name}.json", record)

    def row(what: str, stats: dict) -> str:
        if not stats["count"]:
            return f"| {what} | 0 | - | - | - |"
        return (f"| {what} | {stats['count']} | {stats['p50']:.3f} | {stats['p99']:.3f} | "
                f"{stats['max']:.3f} |")

    text = "\n".join([
        f"# Re-planning after a robot loss, {args.robots} simulated robots",
        "",
        f"Made by `{record['command']}` ({record['date']}); raw rounds in `{name}.json`, the "
        f"fleet in `{record['fleet']}`. {args.losses} losses "
        f"of a random robot; the planner (CP-SAT, time limit {args.time_limit:g} s, one "
        f"worker) declares a robot lost {args.robot_timeout:g} s after its last heartbeat "
        f"(heartbeats every 0.1 s), so that much of each time is detection. Median 1-minute "
        f"load average during the run: {summary['load_1min_median']:.1f} (2 cores, shared).",
        "",
        "| loss -> | plans | p50 (s) | p99 (s) | max (s) |",
        "|---|---|---|---|---|",
        row("first plan without the robot (published at once)",
            summary["loss_to_first_plan_s"]),
        row("the solver's better plan (when there was one)", summary["loss_to_solver_plan_s"]),
        "",
        "Plans by status: " + ", ".join(f"{k} {v}" for k, v in
                                        sorted(summary["plans_by_status"].items())) + ".",
        "",
    ])
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


def _profile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", type=Path,
                   default=Path("docs/results/resnet/recipe-w16/profile.json"),
                   help="profile.json of the network (default the current trained ResNet's, "
                   "docs/results/resnet/recipe-w16)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the placement subcommands on the main parser's subparsers."""
    p = sub.add_parser("plan", help=cmd_plan.__doc__, description=cmd_plan.__doc__)
    p.add_argument("fleet", type=Path, help="fleet YAML (see config/fleet_example.yaml)")
    p.add_argument("--profile", type=Path, required=True,
                   help="profile.json of the network, written by `drop-study`")
    p.add_argument("--solver", choices=list(SOLVERS), default="cpsat",
                   help="cpsat: exact (optimum or bound + gap); heuristic: the paper's "
                   "relaxation + Algorithm 1; ga: the paper's genetic algorithm "
                   "(default cpsat)")
    p.add_argument("--time-limit", type=positive_float, default=10.0,
                   help="seconds the solver may search (default 10)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="CP-SAT threads (default 1: with the same --seed the same plan on "
                   "every run, unless --time-limit stops the solve or the fleet is large "
                   "enough for Lagrangian steps, which are timed; more threads race, so the "
                   "plan among equally good ones may differ; a proven optimum's objective "
                   "never does)")
    p.add_argument("--seed", type=int, default=0, help="solver seed (default 0)")
    p.add_argument("--out", type=Path, default=Path("plan.json"),
                   help="where to save the plan (default plan.json)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("placement-sweep", help=cmd_placement_sweep.__doc__,
                       description=cmd_placement_sweep.__doc__)
    p.add_argument("--profile", type=Path, required=True, help="profile.json of the network")
    p.add_argument("--out", type=Path, default=Path("docs/results/placement"),
                   help="results folder: raw/<experiment>/*.json, tables.md, figures "
                   "(default docs/results/placement)")
    p.add_argument("--experiments", nargs="+", choices=list(EXPERIMENTS),
                   default=list(EXPERIMENTS), help="which sweeps (default all)")
    p.add_argument("--solvers", nargs="+", choices=list(SOLVERS), default=list(SOLVERS),
                   help="default all three")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="default 0 1")
    p.add_argument("--work-limit", type=positive_float, default=2.0,
                   help="CP-SAT deterministic seconds per solve and time step; every solver "
                   "also stops after 10x that in wall time (default 2)")
    p.add_argument("--ga-generations", type=int, default=500,
                   help="GA generations, population 100 (default 500: about as long as "
                   "CP-SAT's default work limit on 10 devices)")
    p.set_defaults(func=cmd_placement_sweep)

    p = sub.add_parser("bench-placement-scale", help=cmd_bench_placement_scale.__doc__,
                       description=cmd_bench_placement_scale.__doc__ + " Writes results.csv, "
                       "results.json, scale.png and tables.md.")
    _profile_option(p)
    p.add_argument("--example", type=Path, default=Path("config/fleet_example.yaml"),
                   help="the fleet file solved --repeats times (default "
                   "config/fleet_example.yaml)")
    p.add_argument("--sizes", nargs="*", type=positive_int, default=[10, 25, 50, 100],
                   help="robots per generated fleet (default 10 25 50 100; none: only the "
                   "example)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="default 0 1")
    p.add_argument("--solvers", nargs="+", choices=list(SOLVERS), default=list(SOLVERS),
                   help="default all three")
    p.add_argument("--time-limit", type=positive_float, default=1.0,
                   help="wall seconds per solve, the same for every solver (default 1)")
    p.add_argument("--repeats", type=int, default=5,
                   help="solves of the example fleet per solver (default 5)")
    p.add_argument("--out", type=Path, default=Path("docs/results/placement_scale"),
                   help="results folder (default docs/results/placement_scale)")
    p.set_defaults(func=cmd_bench_placement_scale)

    p = sub.add_parser("bench-replan", help=cmd_bench_replan.__doc__,
                       description=cmd_bench_replan.__doc__ + " Starts the installed "
                       "planner_node; writes replan-N.json (every round) and replan-N.md.")
    _profile_option(p)
    p.add_argument("--robots", type=positive_int, default=50, help="fleet size (default 50)")
    p.add_argument("--losses", type=positive_int, default=30,
                   help="robots lost, one at a time (default 30)")
    p.add_argument("--seed", type=int, default=0, help="fleet and victims (default 0)")
    p.add_argument("--time-limit", type=positive_float, default=1.0,
                   help="the planner's solver time limit in s (default 1)")
    p.add_argument("--robot-timeout", type=positive_float, default=0.5,
                   help="the planner's robot_timeout_s (default 0.5)")
    p.add_argument("--domain-id", type=int, default=87, help="ROS domain (default 87)")
    p.add_argument("--out", type=Path, default=Path("docs/results/placement_scale/replan"),
                   help="results folder (default docs/results/placement_scale/replan)")
    p.set_defaults(func=cmd_bench_replan)

    p = sub.add_parser("placement-report", help=cmd_placement_report.__doc__,
                       description=cmd_placement_report.__doc__)
    p.add_argument("results", type=Path, nargs="?", default=Path("docs/results/placement"),
                   help="placement-sweep's --out folder (default docs/results/placement)")
    p.add_argument("--profile-name", default="", help="profile path to name in the tables")
    p.set_defaults(func=cmd_placement_report)
