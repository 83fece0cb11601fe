"""Stage node: runs the units of the ResNet that the current plan gives this robot.

One runs on every robot (parameter ``robot``, the fleet file's name) with the whole model
(``model_path``: a ``train-resnet`` checkpoint), so any plan can be executed without
moving weights. It

* publishes a heartbeat (``std_msgs/Header``, ``frame_id`` = robot) on
  ``<robot>/stage_alive`` every ``heartbeat_period_s``: the planner's liveness signal;
* keeps the last ``plan_history`` plans from ``placement_plan`` (transient local);
* receives ``ActivationTensor`` messages on ``<robot>/activation``. A message with
  ``plan_version`` 0 is a new request (an image, unit 0): it is pinned to the newest plan
  and to the plan row of this robot's image, and sent on as it is if the plan puts the
  stem on another robot. Every stage then executes the request under
  that version, so a plan change takes effect between requests, never in the middle of
  one. The stage runs its units (:func:`..placement.distributed.stage_work`), skipped blocks
  included, and sends the activation to ``<next robot>/activation``;
* after the head, publishes the classification (``DistributedPrediction``) on
  ``distributed/prediction`` with the latency since the request's ``source_stamp``, the
  bytes sent between robots and the robots used.

With ``emulate_gmacs`` > 0 the stage emulates a robot of that speed (the fleet file's
``compute_gmacs``): each piece of work takes at least its MACs / that rate, so that runs on
one machine see the compute times the planner's model assumes.

Bad messages are counted per reason and logged at most once per reason every few seconds:
an activation over ``max_activation_bytes`` serialised is dropped before it is deserialised
(``oversize``), one that does not deserialise is ``malformed``; an unknown plan version, a
unit that is not this robot's, a tensor whose size does not match its shape or holds
NaN/Inf, a shape the model rejects (any exception while executing it) are
``bad_activation``; a plan that does not fit the model is ``bad_plan``. The counts
(``completed``, ``rejected``, one per reason, ``plans``) are on ``/diagnostics`` every
second.
"""

from __future__ import annotations

import array
import time
from collections import OrderedDict

import numpy as np
import torch
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from rclpy.time import Time
from std_msgs.msg import Header

from resilient_perception.msg import ActivationTensor, DistributedPrediction, PlacementPlan
from resilient_perception.placement.distributed import (
    decode_tensor,
    encode_tensor,
    run_units,
    stage_work,
)
from resilient_perception.placement.problem import DROPPED
from resilient_perception.placement.resnet import load_resnet_checkpoint, profile_blocks
from resilient_perception.ros.node_utils import (
    Rejections,
    capped_subscription,
    descriptor,
    publish_counters,
    run_node,
)
from resilient_perception.ros.topics import (
    ACTIVATION_TOPIC_FORMAT,
    DISTRIBUTED_PREDICTION_TOPIC,
    HEARTBEAT_TOPIC_FORMAT,
    PLAN_TOPIC,
    activation_qos,
    plan_qos,
)

__all__ = ["StageNode", "main"]

class StageNode(Node):
    """Executes this robot's share of each request's plan."""

    def __init__(self) -> None:
        """Load the model, subscribe plans and activations, start the heartbeat."""
        super().__init__("stage")
        string, double = ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_DOUBLE
        integer = ParameterType.PARAMETER_INTEGER
        self.robot = self.declare_parameter("robot", "", descriptor(
            "This robot's name (as in the fleet file).", string)).value
        model_path = self.declare_parameter("model_path", "", descriptor(
            "ResNet checkpoint (.safetensors written by train-resnet).", string)).value
        heartbeat = self.declare_parameter("heartbeat_period_s", 0.1, descriptor(
            "Seconds between two heartbeats.", double, float_range=(0.001, 10.0))).value
        self.plan_history = self.declare_parameter("plan_history", 8, descriptor(
            "Plans kept for requests still in flight.", integer, int_range=(1, 1000))).value
        emulated_gmacs = self.declare_parameter("emulate_gmacs", 0.0, descriptor(
            "Emulate a robot computing this many GMAC/s: each stage's work takes at least "
            "its MACs / this rate (0 = as fast as this machine).", double,
            float_range=(0.0, 1e6))).value
        threads = self.declare_parameter("torch_threads", 1, descriptor(
            "torch CPU threads.", integer, int_range=(1, 256))).value
        max_bytes = self.declare_parameter("max_activation_bytes", 64 << 20, descriptor(
            "Larger serialised activations are rejected before they are deserialised, "
            "bytes.", integer, int_range=(1024, 1 << 31))).value
        if not self.robot:
            raise ValueError("parameter 'robot' (this robot's name) is required")
        if not model_path:
            raise ValueError("parameter 'model_path' (a train-resnet checkpoint) is required")
        torch.set_num_threads(threads)
        self.model, _, _ = load_resnet_checkpoint(model_path)
        self.n_units = self.model.n_blocks + 2
        # Seconds per unit on the emulated robot (all zero when not emulating).
        stem, blocks, head = profile_blocks(self.model)
        self.unit_seconds = [(part.macs / (emulated_gmacs * 1e9)) if emulated_gmacs else 0.0
                             for part in (stem, *blocks, head)]
        self.plans: OrderedDict[int, PlacementPlan] = OrderedDict()
        self.rejections = Rejections(self, ("oversize", "malformed", "bad_plan",
                                            "bad_activation", "callback_error"))
        self.completed = 0

        self._heartbeat = self.create_publisher(Header, HEARTBEAT_TOPIC_FORMAT.format(
            self.robot), 10)
        self._predictions = self.create_publisher(DistributedPrediction,
                                                  DISTRIBUTED_PREDICTION_TOPIC, 50)
        self._to_robot: dict[str, object] = {}
        self.create_subscription(PlacementPlan, PLAN_TOPIC,
                                 self.rejections.guard(self._on_plan, "plan"), plan_qos())
        capped_subscription(self, ActivationTensor, ACTIVATION_TOPIC_FORMAT.format(self.robot),
                            self._on_activation, activation_qos(), max_bytes, self.rejections,
                            "activation")
        self.create_timer(heartbeat, self.rejections.guard(self._beat, "heartbeat"))
        self._beat()
        publish_counters(self, "activations", self.robot, lambda: {
            "completed": self.completed, "rejected": self.rejections.total,
            **self.rejections.counts, "plans": list(self.plans)})
        self.get_logger().info(f"stage of {self.robot} ready ({self.model.n_blocks} blocks)")

    def _beat(self) -> None:
        msg = Header(frame_id=self.robot)
        msg.stamp = self.get_clock().now().to_msg()
        self._heartbeat.publish(msg)

    def _on_plan(self, plan: PlacementPlan) -> None:
        if len(plan.unit_names) != self.n_units or len(plan.devices) != len(
                plan.sources) * self.n_units:
            self.rejections.reject(
                f"plan {plan.version}", "bad_plan",
                f"{len(plan.unit_names)} units and {len(plan.devices)} devices for "
                f"{len(plan.sources)} requests; the model has {self.n_units} units")
            return
        self.plans[plan.version] = plan
        while len(self.plans) > self.plan_history:
            self.plans.popitem(last=False)

    def _on_activation(self, msg: ActivationTensor) -> None:
        try:
            self._execute(msg)
        except Exception as exc:  # whatever the message made fail: this request only
            self.rejections.reject(f"request {msg.request_id} at unit {msg.next_unit}",
                                   "bad_activation", f"{type(exc).__name__}: {exc}")

    def _execute(self, msg: ActivationTensor) -> None:
        if msg.plan_version == 0:  # a new request: pin it to the newest plan
            if not self.plans:
                raise ValueError("no plan received yet")
            plan = next(reversed(self.plans.values()))
            me = list(plan.robot_names).index(self.robot) if (
                self.robot in plan.robot_names) else -1
            rows = [r for r, source in enumerate(plan.sources) if source == me]
            if msg.next_unit != 0 or not rows:
                raise ValueError(f"a new request must enter at unit 0 on a robot holding "
                                 f"images in plan {plan.version} (sources {list(plan.sources)})")
            msg.plan_version, msg.request_row = plan.version, rows[0]
        plan = self.plans.get(msg.plan_version)
        if plan is None:
            raise ValueError(f"plan {msg.plan_version} unknown (have {list(self.plans)})")
        if msg.request_row >= len(plan.sources):
            raise ValueError(f"plan {plan.version} has no request row {msg.request_row}")
        row = plan.devices[msg.request_row * self.n_units:(msg.request_row + 1) * self.n_units]
        me = list(plan.robot_names).index(self.robot)
        if msg.next_unit == 0 and row[0] != me:  # the stem runs elsewhere: send the image on
            msg.bytes_sent += len(msg.data)
            self._publisher_of(plan.robot_names[row[0]]).publish(msg)
            return
        work = stage_work(row, me, msg.next_unit)
        x = torch.from_numpy(decode_tensor(msg.shape, msg.dtype, msg.data.tobytes()).copy())
        dropped = {u for u in range(self.n_units) if row[u] == DROPPED}
        started = time.perf_counter()
        y = run_units(self.model, x, work.units, dropped).numpy()
        emulated = sum(self.unit_seconds[u] for u in work.units if u not in dropped)
        time.sleep(max(0.0, emulated - (time.perf_counter() - started)))
        if work.next_robot is None:
            self._publish_prediction(msg, plan, row, y)
            return
        msg.shape, msg.dtype, data = encode_tensor(y)
        msg.data = array.array("B", data)  # an array is taken as it is, bytes checked one by one
        msg.next_unit = work.next_unit
        msg.bytes_sent += len(data)
        self._publisher_of(plan.robot_names[work.next_robot]).publish(msg)

    def _publisher_of(self, robot: str):
        if robot not in self._to_robot:
            self._to_robot[robot] = self.create_publisher(
                ActivationTensor, ACTIVATION_TOPIC_FORMAT.format(robot), activation_qos())
        return self._to_robot[robot]

    def _publish_prediction(self, msg: ActivationTensor, plan: PlacementPlan, row,
                            logits: np.ndarray) -> None:
        logits = logits.reshape(-1).astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        now = self.get_clock().now()
        out = DistributedPrediction(
            request_id=msg.request_id, plan_version=plan.version,
            probabilities=probabilities.astype(np.float32).tolist(),
            label=int(np.argmax(probabilities)),
            latency=(now - Time.from_msg(msg.source_stamp)).nanoseconds * 1e-9,
            bytes_sent=msg.bytes_sent, unit_robots=[int(d) for d in row])
        out.header.stamp = now.to_msg()
        out.header.frame_id = self.robot
        self._predictions.publish(out)
        self.completed += 1


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0); exit 2 for invalid parameters or model."""
    return run_node(StageNode, "stage", argv)


if __name__ == "__main__":
    raise SystemExit(main())
