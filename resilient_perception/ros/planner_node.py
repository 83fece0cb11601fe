"""Planner node: places the ResNet's units on the live robots from measured links.

Reads the fleet file and the block profile (the formats of ``resilient-perception plan``),
watches every robot's stage heartbeat (``<robot>/stage_alive``) and the link probes'
``link_measurements``, and publishes a ``PlacementPlan`` on ``placement_plan`` (RELIABLE,
TRANSIENT_LOCAL: a stage that starts later still gets the current plan), and the current
plan again every ``plan_period_s`` (the same version), since Fast DDS can miss delivering
a latched sample to a reader that joins later (eProsima/Fast-DDS#3822); a stage takes a
version it has once more without effect. It re-plans

* at once when a robot's heartbeat is older than ``robot_timeout_s`` (robot lost) or a
  robot joins (or comes back),
* when a measured rate between live robots differs from the one the current plan used by
  more than ``rate_change_threshold`` (relative),
* every ``replan_period_s`` (0 = never on a timer).

Measured rates replace the fleet file's (which are the starting values, used until a link
is measured). The problem is solved for the live robots only
(:func:`..placement.distributed.live_problem`); requests whose image is on a dead robot are
left out.

A solve never makes a plan late: every re-plan first publishes the plan of
:func:`..placement.solvers.quick_plan` (each request's cheapest path, repaired by the
paper's Algorithm 1 where they share a device beyond its limits; milliseconds to a few
tenths of a second for 50 robots), with status ``optimal`` if that is proven, else
``incumbent``. The configured solver then runs on its own thread within ``time_limit_s``
and its plan is published (a new version, the same reason) only if it is better. A change
while it runs publishes its own quick plan at once; the stale solve's result is dropped and
the newest change is solved next.

Outside messages are checked before they change anything: messages over
:data:`MAX_MESSAGE_BYTES` serialised are dropped undeserialised, a heartbeat must name its
own robot, a measurement a known link, and a rate must be 0 (not measured) or within
``[min_link_bps, max_link_bps]`` (a rate of 1e-300 once overflowed the solver's objective
scaling). Rejections are counted per reason and logged at most once per reason every few
seconds. A re-plan that fails anyway (any exception of the solver) is logged, counted as
``replan_errors``, and the previous plan stays. The counts (``plan_version``,
``rejected``, one per reason, ``replan_errors``, robots alive) are on ``/diagnostics`` every
second.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from std_msgs.msg import Header

from resilient_perception.message_checks import clip_text, link_rate_problem
from resilient_perception.msg import LinkMeasurement, PlacementPlan
from resilient_perception.placement.block_profile import load_profile
from resilient_perception.placement.distributed import fleet_plan, live_problem, monolithic_plan
from resilient_perception.placement.fleet_config import load_fleet
from resilient_perception.placement.link_estimation import relative_change
from resilient_perception.placement.problem import Network, Problem, evaluate_plan
from resilient_perception.placement.solvers import SOLVERS, SolveResult, quick_plan, solve
from resilient_perception.ros.node_utils import (
    Rejections,
    capped_subscription,
    descriptor,
    publish_counters,
    run_node,
)
from resilient_perception.ros.topics import (
    HEARTBEAT_TOPIC_FORMAT,
    LINK_MEASUREMENT_TOPIC,
    PLAN_TOPIC,
    plan_qos,
)

__all__ = ["INCUMBENT", "MAX_MESSAGE_BYTES", "MONOLITHIC", "PlannerNode", "main"]

MAX_MESSAGE_BYTES = 4096
"""Largest serialised heartbeat or link measurement accepted (real ones are ~100 bytes)."""

REJECTION_REASONS = ("oversize", "malformed", "bad_heartbeat", "unknown_link",
                     "implausible_rate", "callback_error")

MONOLITHIC = "monolithic"
"""The ``solver`` value of the baseline plan: every unit on the robot holding the image."""

INCUMBENT = "incumbent"
"""The ``status`` of the plan published at once, before the solver's (not proven optimal)."""


@dataclasses.dataclass
class _Job:
    """One re-plan: what it was made for, and the objective of the plan published at once."""

    generation: int
    live: Problem
    robots: np.ndarray
    requests: np.ndarray
    alive: np.ndarray
    reason: str
    objective: float = math.inf


class PlannerNode(Node):
    """Solves the placement for the live robots and publishes it as a PlacementPlan."""

    def __init__(self) -> None:
        """Load the fleet and profile, subscribe heartbeats and measurements."""
        super().__init__("planner")
        string, double = ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_DOUBLE
        boolean = ParameterType.PARAMETER_BOOL
        fleet_path = self.declare_parameter("fleet", "", descriptor(
            "Fleet YAML (devices, rates, requests), as for `resilient-perception plan`.",
            string)).value
        profile_path = self.declare_parameter("profile", "", descriptor(
            "Block profile JSON (drop-study's profile.json).", string)).value
        self.solver = self.declare_parameter("solver", "cpsat", descriptor(
            f"Placement solver: one of {', '.join(SOLVERS)}, or {MONOLITHIC} (the baseline: "
            "every unit on the robot holding the image).", string)).value
        self.time_limit = self.declare_parameter("time_limit_s", 1.0, descriptor(
            "Solver time limit in seconds.", double, float_range=(0.01, 600.0))).value
        self.replan_period = self.declare_parameter("replan_period_s", 0.0, descriptor(
            "Re-plan every this many seconds (0 = only on changes).", double,
            float_range=(0.0, 86400.0))).value
        plan_period = self.declare_parameter("plan_period_s", 1.0, descriptor(
            "Publish the current plan again every this many seconds, for a reader the "
            "latched one missed (0 = only when it changes).", double,
            float_range=(0.0, 3600.0))).value
        self.rate_threshold = self.declare_parameter("rate_change_threshold", 0.3, descriptor(
            "Re-plan when a measured rate changes by more than this fraction.", double,
            float_range=(0.0, 100.0))).value
        self.robot_timeout = self.declare_parameter("robot_timeout_s", 0.5, descriptor(
            "A robot whose stage heartbeat is older than this is lost.", double,
            float_range=(0.01, 60.0))).value
        self.use_measured = self.declare_parameter("use_measured_rates", True, descriptor(
            "Replace the fleet file's rates with the link probes' measurements.",
            boolean)).value
        self.rate_range = tuple(self.declare_parameter(name, value, descriptor(
            f"Measured link rates outside [min_link_bps, max_link_bps] are rejected "
            f"(bit/s; this is the {bound}).", double, float_range=(1.0, 1e15))).value
            for name, value, bound in (("min_link_bps", 1e3, "lower bound"),
                                       ("max_link_bps", 1e12, "upper bound")))
        if self.rate_range[0] > self.rate_range[1]:
            raise ValueError(f"min_link_bps {self.rate_range[0]:g} is above max_link_bps "
                             f"{self.rate_range[1]:g}")
        if self.solver not in (*SOLVERS, MONOLITHIC):
            raise ValueError(f"solver must be one of {[*SOLVERS, MONOLITHIC]}, got "
                             f"{self.solver!r}")
        if not fleet_path or not profile_path:
            raise ValueError("parameters 'fleet' and 'profile' (file paths) are required")
        profile = load_profile(profile_path)
        self.problem = load_fleet(fleet_path).problem(Network.from_profile(profile))
        self.names = list(self.problem.fleet.names)
        n = len(self.names)
        self.rates = np.array(self.problem.rates_bps, dtype=float)  # current estimates
        self.last_seen = np.full(n, -math.inf)  # monotonic time of each robot's heartbeat
        self.rejections = Rejections(self, REJECTION_REASONS)
        self.replan_errors = 0
        self.version = 0
        self._plan_alive: np.ndarray | None = None  # alive set of the current plan
        self._plan_rates = self.rates.copy()  # rates the current plan was made with
        self._last_plan_time = -math.inf
        # Full solves run on their own thread, one at a time, so that the executor keeps
        # hearing heartbeats and a plan is published at once for every change.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner-solve")
        self._solving: tuple[Future, _Job] | None = None
        self._waiting: _Job | None = None
        self._generation = 0

        self._publisher = self.create_publisher(PlacementPlan, PLAN_TOPIC, plan_qos())
        self._plan_msg: PlacementPlan | None = None  # the plan in force, as published
        if plan_period > 0:
            self.create_timer(plan_period, self._publish_again)
        for i, name in enumerate(self.names):
            capped_subscription(self, Header, HEARTBEAT_TOPIC_FORMAT.format(name),
                                lambda msg, i=i: self._on_heartbeat(i, msg), 10,
                                MAX_MESSAGE_BYTES, self.rejections, f"heartbeat of {name}")
        capped_subscription(self, LinkMeasurement, LINK_MEASUREMENT_TOPIC, self._on_link, 50,
                            MAX_MESSAGE_BYTES, self.rejections, "link measurement")
        self.create_timer(0.02, self.rejections.guard(self._check, "re-plan check"))
        publish_counters(self, "plans", "planner", lambda: {
            "plan_version": self.version, "rejected": self.rejections.total,
            **self.rejections.counts, "replan_errors": self.replan_errors,
            "alive": [self.names[i] for i in np.flatnonzero(self._alive())]})
        self.get_logger().info(f"planning {profile.model} ({len(profile.blocks)} blocks) on "
                               f"{self.names} with {self.solver}")

    def _on_heartbeat(self, robot: int, msg: Header) -> None:
        if msg.frame_id != self.names[robot]:
            self.rejections.reject(f"heartbeat of {self.names[robot]}", "bad_heartbeat",
                                   f"frame_id {clip_text(msg.frame_id)!r}")
            return
        self.last_seen[robot] = time.monotonic()

    def _on_link(self, msg: LinkMeasurement) -> None:
        if msg.from_robot not in self.names or msg.to_robot not in self.names or (
                msg.from_robot == msg.to_robot):
            self.rejections.reject("link measurement", "unknown_link",
                                   f"{clip_text(msg.from_robot)!r} -> "
                                   f"{clip_text(msg.to_robot)!r}")
            return
        if link_rate_problem(msg.throughput_bps, *self.rate_range):
            self.rejections.reject("link measurement", "implausible_rate",
                                   f"{msg.from_robot} -> {msg.to_robot}: "
                                   f"{msg.throughput_bps:g} bit/s")
            return
        if self.use_measured and msg.throughput_bps > 0:
            i, k = self.names.index(msg.from_robot), self.names.index(msg.to_robot)
            self.rates[i, k] = msg.throughput_bps

    def _alive(self) -> np.ndarray:
        return time.monotonic() - self.last_seen <= self.robot_timeout

    def _rates_changed(self, alive: np.ndarray) -> bool:
        live = np.ix_(alive, alive)
        off = ~np.eye(int(alive.sum()), dtype=bool)
        old, new = self._plan_rates[live][off], self.rates[live][off]
        return any(relative_change(a, b) > self.rate_threshold for a, b in zip(old, new,
                                                                                strict=True))

    def _check(self) -> None:
        self._collect()
        alive = self._alive()
        if not alive.any():
            return
        reason = None
        if self._plan_alive is None:
            reason = "initial"
        elif np.any(self._plan_alive & ~alive):
            reason = "robot lost"
        elif np.any(alive & ~self._plan_alive):
            reason = "robot joined"
        elif self._rates_changed(alive):
            reason = "rate change"
        elif self.replan_period > 0 and (
                time.monotonic() - self._last_plan_time >= self.replan_period):
            reason = "timer"
        if reason is not None:
            self._replan(alive, reason)

    def _replan(self, alive: np.ndarray, reason: str) -> None:
        # Remember what this attempt saw even if it fails, so a hopeless set of robots is
        # not re-solved 50 times a second.
        self._plan_alive, self._plan_rates = alive.copy(), self.rates.copy()
        self._last_plan_time = time.monotonic()
        self._generation += 1
        try:
            self._plan_at_once(alive, reason)
        except Exception as exc:  # whatever the solver meets, the plan in force stays
            self._failed(reason, exc)

    def _failed(self, reason: str, exc: Exception) -> None:
        self.replan_errors += 1
        self.get_logger().error(f"re-plan ({reason}) failed, keeping plan {self.version}: "
                                f"{type(exc).__name__}: {clip_text(str(exc), 300)}")

    def _plan_at_once(self, alive: np.ndarray, reason: str) -> None:
        """Publish a plan now (milliseconds) and hand the full solve to the solver thread."""
        try:
            problem = dataclasses.replace(self.problem, rates_bps=self.rates)
            live, robots, requests = live_problem(problem, alive)
        except ValueError as exc:
            self.get_logger().warning(f"cannot plan yet ({reason}): {exc}")
            return
        job = _Job(self._generation, live, robots, requests, alive.copy(), reason)
        if self.solver == MONOLITHIC:
            plan = monolithic_plan(live)
            self._publish(job, SolveResult(MONOLITHIC, plan, evaluate_plan(live, plan).objective,
                                           float("nan"), float("nan"), "baseline", 0.0))
            return
        started = time.monotonic()
        plan, bound = quick_plan(live)
        if plan is not None:
            job.objective = evaluate_plan(live, plan).objective
            proven = job.objective <= bound + 1e-12
            self._publish(job, SolveResult(self.solver, plan, job.objective, bound,
                                           job.objective - bound,
                                           "optimal" if proven else INCUMBENT,
                                           time.monotonic() - started))
            if proven:
                return
        elif not math.isfinite(bound):
            self.get_logger().error(f"no plan exists for robots {self._named(robots)} "
                                    "(some request cannot be served even alone); keeping "
                                    "the previous plan")
            return
        # The quick plan blocked this node's executor, so heartbeats that arrived meanwhile
        # are still queued: count the robots alive when it started as heard now.
        self.last_seen[alive] = np.maximum(self.last_seen[alive], time.monotonic())
        if self._solving is None:
            self._start(job)
        else:  # the solver thread is busy with an older one: this one is next
            self._waiting = job

    def _start(self, job: _Job) -> None:
        options = {"seed": 0, "workers": 1} if self.solver == "cpsat" else {}
        future = self._pool.submit(solve, job.live, self.solver, self.time_limit, **options)
        self._solving = (future, job)

    def _collect(self) -> None:
        """Publish a finished solve's plan if it is still wanted and better; start the next."""
        if self._solving is None or not self._solving[0].done():
            return
        future, job = self._solving
        self._solving = None
        try:
            result = future.result()
        except Exception as exc:
            self._failed(job.reason, exc)
        else:
            current = job.generation == self._generation
            if current and result.plan is not None and result.objective < job.objective - 1e-12:
                self._publish(job, result)
            elif current and result.plan is None and not math.isfinite(job.objective):
                self.get_logger().error(f"{self.solver} found no plan for robots "
                                        f"{self._named(job.robots)} ({result.status}); "
                                        "keeping the previous plan")
        if self._waiting is not None:
            job, self._waiting = self._waiting, None
            if job.generation == self._generation:
                self._start(job)

    def _named(self, robots: np.ndarray) -> list[str]:
        return [self.names[i] for i in robots]

    def _publish_again(self) -> None:
        if self._plan_msg is not None:
            self._publisher.publish(self._plan_msg)

    def _publish(self, job: _Job, result: SolveResult) -> None:
        metrics = evaluate_plan(job.live, result.plan).metrics()
        self.version += 1
        msg = PlacementPlan(
            version=self.version, robot_names=self.names,
            unit_names=list(self.problem.network.names),
            sources=[int(s) for s in self.problem.sources[job.requests]],
            devices=[int(d) for d in fleet_plan(result.plan, job.robots).reshape(-1)],
            robots_alive=[bool(a) for a in job.alive],
            expected_accuracy=metrics["accuracy"], latency_s=metrics["latency_s"],
            energy_j=metrics["energy_j"], shared_bytes=metrics["shared_bytes"],
            solver=self.solver, status=result.status, objective=result.objective,
            solve_seconds=result.seconds, reason=job.reason)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(msg)
        self._plan_msg = msg
        self.get_logger().info(
            f"plan {self.version} ({job.reason}, {result.status} in {result.seconds:.2f} s): "
            f"units on {[self.names[d] if d >= 0 else '-' for d in msg.devices]}, expected "
            f"latency {metrics['latency_s'] * 1e3:.1f} ms, accuracy {metrics['accuracy']:.3f}")

    def destroy_node(self) -> None:
        """Stop the solver thread (a solve in progress ends within its time limit)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0); exit 2 for invalid parameters or files."""
    return run_node(PlannerNode, "planner", argv)


if __name__ == "__main__":
    raise SystemExit(main())
