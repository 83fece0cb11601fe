"""A simulated fleet for the planner node: many robots' heartbeats and links from one node.

One rclpy node publishes on the topics of :mod:`..ros.topics` (no stage nodes, no network
namespaces).

Every live robot's stage heartbeat (``<robot>/stage_alive``, a ``Header`` naming it) goes
out every ``heartbeat_period_s``; ``links_per_second`` link measurements cycle through the
links between live robots, each the fleet file's rate with a few percent of noise (below a
planner's re-plan threshold, so they refresh the estimates without re-planning). A robot
is lost with :meth:`SimulatedFleet.lose` (its heartbeats stop) and comes back with
:meth:`SimulatedFleet.revive`. The planner's plans are recorded with their arrival time,
each version once (the planner publishes the plan in force again every ``plan_period_s``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from std_msgs.msg import Header

from resilient_perception.msg import LinkMeasurement, PlacementPlan
from resilient_perception.ros.topics import (
    HEARTBEAT_TOPIC_FORMAT,
    LINK_MEASUREMENT_TOPIC,
    PLAN_TOPIC,
    plan_qos,
)

__all__ = ["ReceivedPlan", "SimulatedFleet"]


@dataclass(frozen=True)
class ReceivedPlan:
    """A plan as it arrived: monotonic time of arrival and the message."""

    time: float
    msg: PlacementPlan


class SimulatedFleet:
    """Heartbeats and link measurements of ``names`` published from ``node`` (see module)."""

    def __init__(self, node, names: list[str], rates_bps: np.ndarray,
                 heartbeat_period_s: float = 0.1, links_per_second: float = 100.0,
                 noise: float = 0.05, seed: int = 0) -> None:
        """Create the publishers, the plan subscription and the timers on ``node``."""
        self.node = node
        self.names = list(names)
        self.rates = np.asarray(rates_bps, dtype=float)
        self.alive = np.ones(len(names), dtype=bool)
        self.plans: list[ReceivedPlan] = []
        self._rng = np.random.default_rng(seed)
        self._noise = noise
        self._beats = [node.create_publisher(Header, HEARTBEAT_TOPIC_FORMAT.format(name), 10)
                       for name in self.names]
        self._links = node.create_publisher(LinkMeasurement, LINK_MEASUREMENT_TOPIC, 100)
        node.create_subscription(PlacementPlan, PLAN_TOPIC, self._on_plan, plan_qos())
        self._pairs = [(i, k) for i in range(len(names)) for k in range(len(names)) if i != k]
        self._next_pair = 0
        node.create_timer(heartbeat_period_s, self._beat)
        # Measurements in batches of ten, at links_per_second overall.
        node.create_timer(10.0 / links_per_second, self._measure)

    def _on_plan(self, msg: PlacementPlan) -> None:
        if not self.plans or msg.version != self.plans[-1].msg.version:  # not a repeat
            self.plans.append(ReceivedPlan(time.monotonic(), msg))

    def _beat(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for i in np.flatnonzero(self.alive):
            self._beats[i].publish(Header(stamp=stamp, frame_id=self.names[i]))

    def _measure(self) -> None:
        sent = 0
        for _ in range(len(self._pairs)):
            if sent == 10:
                return
            i, k = self._pairs[self._next_pair]
            self._next_pair = (self._next_pair + 1) % len(self._pairs)
            if self.alive[i] and self.alive[k]:
                rate = self.rates[i, k] * (1 + self._noise * self._rng.uniform(-1, 1))
                self._links.publish(LinkMeasurement(from_robot=self.names[i],
                                                    to_robot=self.names[k],
                                                    throughput_bps=float(rate)))
                sent += 1

    def lose(self, robot: int) -> float:
        """Stop ``robot``'s heartbeats; the monotonic time it was lost."""
        self.alive[robot] = False
        return time.monotonic()

    def revive(self, robot: int) -> float:
        """Resume ``robot``'s heartbeats; the monotonic time it came back."""
        self.alive[robot] = True
        return time.monotonic()

    def subscribed(self) -> bool:
        """Whether a planner subscribes every heartbeat and the measurements."""
        return all(b.get_subscription_count() > 0 for b in self._beats) and (
            self._links.get_subscription_count() > 0)
