"""Robot loss -> new plan: the real planner node driven by a simulated fleet of many robots.

The installed ``planner_node`` runs as its own process (:class:`..harness.pipeline.Pipeline`)
on a generated fleet file (:mod:`..placement.fleet_generator`); one
:class:`..harness.simulated_fleet.SimulatedFleet` node in this process publishes every
robot's heartbeat and link measurements. After the initial plan has settled, each round

1. loses a robot drawn at random (its heartbeats stop) and records the time until the
   first plan without it arrives on ``placement_plan`` (the planner's quick plan) and,
   if the solver then publishes a better one, until that arrives;
2. revives the robot and waits until a plan with every robot arrives and the solver is
   done with it (no plan for ``settle_s``).

The loss -> plan time includes the planner's detection (a robot is lost when its last
heartbeat is older than ``robot_timeout_s``; heartbeats every 0.1 s) and DDS delivery.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import yaml

from ..placement.block_profile import load_profile
from ..placement.fleet_generator import fleet_document, generate_fleet
from ..placement.problem import Network

__all__ = ["run_replan_benchmark", "summarise"]


def _wait_settled(observer, fleet, settle_s: float, timeout: float, pipeline) -> None:
    """Spin until no plan has arrived for ``settle_s`` (and every robot is in the last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        observer.spin_for(0.1)
        last = fleet.plans[-1] if fleet.plans else None
        if (last is not None and all(last.msg.robots_alive) == bool(fleet.alive.all())
                and time.monotonic() - last.time >= settle_s):
            return
    raise TimeoutError(f"the planner did not settle within {timeout:g} s "
                       f"({len(fleet.plans)} plans)")


def run_replan_benchmark(profile: Path, out: Path, robots: int = 50, losses: int = 30,
                         seed: int = 0, time_limit: float = 1.0, robot_timeout: float = 0.5,
                         domain_id: int = 87, threshold: float = 0.0,
                         progress: bool = True) -> dict:
    """Run the rounds (module doc) and return the raw record (one entry per loss)."""
    from ..harness.pipeline import NodeSpec, Observer, Pipeline
    from ..harness.simulated_fleet import SimulatedFleet

    config = generate_fleet(robots, seed, alpha=0.5, accuracy_threshold=threshold)
    out.mkdir(parents=True, exist_ok=True)
    fleet_path = out / f"fleet-{robots}-seed{seed}.yaml"
    fleet_path.write_text(yaml.safe_dump(fleet_document(config), sort_keys=False))
    names = list(config.fleet.names)
    planner = NodeSpec("planner", "planner_node", {
        "fleet": str(fleet_path.resolve()), "profile": str(Path(profile).resolve()),
        "solver": "cpsat", "time_limit_s": time_limit, "robot_timeout_s": robot_timeout})
    rng = np.random.default_rng(seed)
    rounds = []
    with Pipeline([planner], log_dir=out / "logs", domain_id=domain_id) as pipeline, \
            Observer("simulated_fleet", domain_id=domain_id) as observer:
        # The rates the planner plans with (scaled to the profile's network, as measured
        # on the real links would be), so that measurements agree with the fleet file.
        rates = config.problem(Network.from_profile(load_profile(profile))).rates_bps
        fleet = SimulatedFleet(observer.node, names, rates, seed=seed)
        pipeline.start()
        observer.spin_until(fleet.subscribed, "the planner's subscriptions", 60.0, pipeline)
        _wait_settled(observer, fleet, time_limit + 1.0, 60.0, pipeline)
        for index in range(losses):
            victim = int(rng.integers(robots))
            before = len(fleet.plans)
            lost_at = fleet.lose(victim)
            observer.spin_until(lambda victim=victim, before=before: any(
                not p.msg.robots_alive[victim] for p in fleet.plans[before:]),
                f"a plan without {names[victim]}", 30.0, pipeline)
            # The solver's plan, if better, comes within its time limit.
            observer.spin_for(time_limit + 1.0)
            after = [p for p in fleet.plans[before:] if not p.msg.robots_alive[victim]]
            record = {
                "round": index, "robot": names[victim], "load_1min": os.getloadavg()[0],
                "plans": [{"after_s": round(p.time - lost_at, 4), "version": p.msg.version,
                           "status": p.msg.status, "objective": p.msg.objective,
                           "solve_seconds": round(float(p.msg.solve_seconds), 4),
                           "reason": p.msg.reason} for p in after],
            }
            rounds.append(record)
            if progress:
                print(f"loss {index}: {names[victim]} -> "
                      + ", ".join(f"{p['status']} after {p['after_s']:.3f} s"
                                  for p in record["plans"]), flush=True)
            fleet.revive(victim)
            _wait_settled(observer, fleet, time_limit + 1.0, 60.0, pipeline)
    return {"robots": robots, "requests": int(config.sources.size), "losses": losses,
            "seed": seed, "time_limit_s": time_limit, "robot_timeout_s": robot_timeout,
            "heartbeat_period_s": 0.1, "profile": str(profile), "fleet": fleet_path.name,
            "rounds": rounds}


def summarise(record: dict) -> dict:
    """p50/p99/max of the loss -> first plan and loss -> solver's plan times (seconds)."""

    def stats(values: list[float]) -> dict:
        if not values:
            return {"count": 0}
        return {"count": len(values), "p50": float(np.percentile(values, 50)),
                "p99": float(np.percentile(values, 99)), "max": float(max(values))}

    first = [r["plans"][0]["after_s"] for r in record["rounds"] if r["plans"]]
    improved = [r["plans"][-1]["after_s"] for r in record["rounds"] if len(r["plans"]) > 1]
    statuses: dict[str, int] = {}
    for r in record["rounds"]:
        for p in r["plans"]:
            statuses[p["status"]] = statuses.get(p["status"], 0) + 1
    return {"loss_to_first_plan_s": stats(first), "loss_to_solver_plan_s": stats(improved),
            "plans_by_status": statuses,
            "load_1min_median": float(np.median([r["load_1min"] for r in record["rounds"]]))}
