"""The ``bench-distributed`` benchmark: distributed ResNet inference on shaped links, three ways.

The robots of a fleet file become network namespaces behind ``tc tbf``-shaped links
(:class:`..harness.distributed_run.NamespaceFleet`, needs root): each robot's link is shaped to the
rate the fleet's ``rates_mbps`` give it (they must be those of robots on one switch,
:func:`..placement.distributed.star_link_rates`), or every link to ``--rate-mbit``. The fleet's
rates are only the planner's starting values; it plans with the link probes' measurements.
Each stage emulates its robot's
``compute_gmacs`` (all robots share this machine's CPU). For each placement - the
monolithic baseline (every unit on the robot holding the image), the paper's heuristic and
the exact CP-SAT plan - it starts the planner, a stage and a link probe per robot and the
request node, waits until every link has been measured, then times ``--requests`` requests
under the plan made from the measured rates (the newest plan, if a measured rate moves
past the planner's threshold meanwhile): per-request latency (image sent to
classification published) and bytes sent between robots. After the exact run's requests it
kills one robot the plan uses (its stage and probe, SIGKILL) and measures the time to the
new plan and to the first request completed under it.

Raw data: ``requests.csv`` (one row per timed request), ``plans.json`` (every plan each run
saw) and ``summary.json`` (with the seed and settings); ``summary.md`` is the table made from
them. Node logs go to ``--log-dir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import time

from tqdm.auto import tqdm

from ..harness.distributed_run import NamespaceFleet, distributed_nodes, read_records
from ..harness.pipeline import Pipeline
from ..placement.block_profile import load_profile
from ..placement.distributed import star_link_rates
from ..placement.fleet_config import load_fleet
from ..placement.problem import Network

__all__ = ["PLACEMENTS", "run_distributed_benchmark"]

PLACEMENTS = {"monolithic": "monolithic", "heuristic": "heuristic", "exact": "cpsat"}
"""Benchmark row -> planner ``solver``."""


def _run(name: str, args: argparse.Namespace, network: NamespaceFleet, robots: list[str],
         source: str, gmacs: list[float], kill: bool) -> dict:
    log_dir = args.log_dir / name
    log_dir.mkdir(parents=True, exist_ok=True)
    records = log_dir / "records.jsonl"
    records.unlink(missing_ok=True)
    nodes = distributed_nodes(
        robots, model_path=args.model.resolve(), fleet=args.fleet.resolve(),
        profile=args.profile.resolve(), records=records, source=source, probes=True,
        probe={"max_burst_period_s": args.probe_max_period},
        planner={"solver": PLACEMENTS[name], "time_limit_s": args.time_limit},
        requests={"rate_hz": args.rate_hz, "data_root": str(args.data_root or "")},
        placement={robot: network.node_options(robot) for robot in robots},
        stages={robot: {"emulate_gmacs": rate} for robot, rate in zip(robots, gmacs,
                                                                       strict=True)})
    n_links = len(robots) * (len(robots) - 1)
    result: dict = {"placement": name}
    with Pipeline(nodes, log_dir=log_dir, domain_id=args.domain_id) as pipeline:
        pipeline.start()

        def measured() -> bool:
            counts = {(r["source"], r["target"]): r["samples"]
                      for r in read_records(records, "link")}
            return len(counts) == n_links and min(counts.values()) >= 5

        pipeline.wait_until(lambda: any(all(p["alive"]) for p in read_records(records, "plan")),
                            "a plan on every robot", 120.0)
        pipeline.wait_until(measured, "every link measured 5 times", 120.0)
        time.sleep(1.0)  # the planner's re-plan on the measured rates
        plan = read_records(records, "plan")[-1]
        version = plan["version"]
        links = {(r["source"], r["target"]): r for r in read_records(records, "link")}
        result["links"] = [{"source": source_robot, "target": target,
                            "throughput_bps": r["throughput_bps"], "samples": r["samples"]}
                           for (source_robot, target), r in sorted(links.items())]
        timed: list[dict] = []
        with tqdm(total=args.requests, desc=f"{name} requests", unit="req") as bar:
            while len(timed) < args.requests:
                timed = [p for p in read_records(records, "prediction")
                         if p["plan_version"] == version][:args.requests]
                bar.update(len(timed) - bar.n)
                newer = [p for p in read_records(records, "plan") if p["version"] > version]
                if newer:  # re-planned (a rate moved past the threshold): time the new plan
                    plan, version = newer[-1], newer[-1]["version"]
                    tqdm.write(f"{name}: re-planned ({plan['reason']}); timing plan {version}")
                pipeline.check()
                time.sleep(0.1)
        result.update(plan=plan, requests=timed)
        if kill:
            used = [d for d in plan["devices"] if d >= 0 and robots[d] != source]
            victim = robots[max(set(used), key=used.count)] if used else None
            if victim is not None:
                killed_at = time.monotonic()
                for node in (f"stage_{victim}", f"probe_{victim}"):
                    pipeline.signal(node, signal.SIGKILL)
                new = pipeline.wait_until(lambda: next(
                    (p for p in read_records(records, "plan") if p["reason"] == "robot lost"),
                    None), "a plan without the killed robot", 30.0)
                first = pipeline.wait_until(lambda: next(
                    (p for p in read_records(records, "prediction")
                     if p["plan_version"] == new["version"]), None),
                    "a request under the new plan", 30.0)
                result["death"] = {"robot": victim, "new_plan_s": new["t"] - killed_at,
                                   "first_request_s": first["t"] - killed_at,
                                   "new_plan": new}
        result["plans"] = read_records(records, "plan")
    return result


def _summary_row(run: dict) -> dict:
    latencies = [p["latency"] for p in run["requests"]]
    plan = run["plan"]
    return {
        "placement": run["placement"],
        "requests": len(latencies),
        "latency_median_ms": 1e3 * statistics.median(latencies),
        "latency_p90_ms": 1e3 * statistics.quantiles(latencies, n=10)[-1],
        "bytes_per_request": statistics.mean(p["bytes_sent"] for p in run["requests"]),
        "expected_latency_ms": 1e3 * plan["latency_s"],
        "expected_accuracy": plan["accuracy"],
        "solve_s": plan["solve_seconds"],
        "robots_used": sorted({d for d in plan["devices"] if d >= 0}),
        "skipped_units": sum(d < 0 for d in plan["devices"]),
    }


def run_distributed_benchmark(args: argparse.Namespace) -> int:
    """Distributed ResNet inference on shaped links: monolithic vs heuristic vs exact plan.

    ``args`` are those of ``bench-distributed`` (:mod:`...commands.distributed`).
    """
    if os.geteuid() != 0:
        raise ValueError("bench-distributed creates network namespaces: run it as root")
    for path, what in ((args.model, "--model"), (args.profile, "--profile"),
                       (args.fleet, "--fleet")):
        if not path.is_file():
            raise ValueError(f"{what} {path}: no such file")
    if args.requests < 2:
        raise ValueError(f"--requests must be >= 2, got {args.requests}")
    config = load_fleet(args.fleet)
    robots = list(config.fleet.names)
    sources = {robots[s] for s in config.sources}
    if len(sources) != 1:
        raise ValueError(f"the fleet's requests must all start on one robot, got {sources}")
    source = sources.pop()
    # Stages emulate the fleet's compute speeds (all robots share this machine's CPU).
    problem = config.problem(Network.from_profile(load_profile(args.profile)))
    gmacs = [float(rate) / 1e9 for rate in problem.fleet.macs_per_second]
    if args.rate_mbit is not None:
        link_mbit = [args.rate_mbit] * len(robots)
    else:
        try:
            link_mbit = star_link_rates(problem.rates_bps / 1e6).tolist()
        except ValueError as exc:
            raise ValueError(f"{args.fleet}: {exc}; or pass --rate-mbit") from exc
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    with NamespaceFleet(robots, link_mbit) as network:
        for name in PLACEMENTS:
            runs.append(_run(name, args, network, robots, source, gmacs,
                             kill=name == "exact"))
    rows = [_summary_row(run) for run in runs]
    with (args.out / "requests.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["placement", "request_id", "plan_version", "latency_s", "bytes_sent",
                         "label", "unit_robots"])
        for run in runs:
            for p in run["requests"]:
                writer.writerow([run["placement"], p["id"], p["plan_version"], p["latency"],
                                 p["bytes_sent"], p["label"],
                                 " ".join(map(str, p["unit_robots"]))])
    (args.out / "plans.json").write_text(json.dumps(
        {run["placement"]: run["plans"] for run in runs}, indent=1) + "\n")
    death = next(run["death"] for run in runs if "death" in run)
    def shaped_bps(link: dict) -> float:
        return 1e6 * min(link_mbit[robots.index(link["source"])],
                         link_mbit[robots.index(link["target"])])

    links = [{"placement": run["placement"], **link, "shaped_bps": shaped_bps(link),
              "error": link["throughput_bps"] / shaped_bps(link) - 1} for run in runs
             for link in run["links"]]
    worst = max(links, key=lambda link: abs(link["error"]))
    summary = {
        "settings": {"fleet": str(args.fleet), "profile": str(args.profile),
                     "model": str(args.model),
                     "link_mbit": dict(zip(robots, link_mbit, strict=True)),
                     "requests": args.requests, "rate_hz": args.rate_hz,
                     "time_limit_s": args.time_limit, "seed": 0,
                     "probe_max_period_s": args.probe_max_period, "emulated_gmacs": gmacs,
                     "images": "CIFAR-10 test images 0.. in order"},
        "placements": rows,
        "links": links,
        "robot_death": {k: v for k, v in death.items() if k != "new_plan"},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"Distributed inference on {len(robots)} robots (network namespaces on a switch), "
             "their links shaped with tc tbf to "
             f"{', '.join(f'{g:g}' for g in link_mbit)} Mbit/s, each stage emulating its "
             f"robot's compute rate ({', '.join(f'{g:g}' for g in gmacs)} GMAC/s); fleet "
             f"`{args.fleet}`; {args.requests} requests each at {args.rate_hz:g} Hz. Made by "
             "`resilient-perception bench-distributed` (raw data: requests.csv, plans.json, "
             "summary.json).", "",
             "| placement | robots used | skipped units | median latency (ms) | p90 (ms) | "
             "planner's expected (ms) | expected accuracy | bytes/request | solve (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['placement']} | {', '.join(robots[d] for d in row['robots_used'])}"
                     f" | {row['skipped_units']} | {row['latency_median_ms']:.1f} | "
                     f"{row['latency_p90_ms']:.1f} | {row['expected_latency_ms']:.1f} | "
                     f"{row['expected_accuracy']:.4f} | "
                     f"{row['bytes_per_request']:.0f} | {row['solve_s']:.2f} |")
    lines += ["", f"Measured link rates (the link probes' medians when each run started timing, "
              f"{len(links)} in all): {min(x['throughput_bps'] for x in links) / 1e6:.2f} to "
              f"{max(x['throughput_bps'] for x in links) / 1e6:.2f} Mbit/s; the worst is "
              f"{100 * worst['error']:+.1f}% off its shaped {worst['shaped_bps'] / 1e6:g} "
              f"Mbit/s ({worst['source']} -> {worst['target']}, {worst['placement']} run)."]
    lines += ["", f"Robot death ({death['robot']}'s stage and probe killed with SIGKILL, exact "
              f"plan): new plan after {death['new_plan_s']:.2f} s, first request completed "
              f"under it after {death['first_request_s']:.2f} s."]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
