"""Request node: feeds CIFAR-10 test images into the distributed ResNet and records everything.

It sends ``count`` requests (0 = until stopped) at ``rate_hz`` to the stage of ``robot``
(the robot whose camera holds the image): an ``ActivationTensor`` with unit 0, plan
version 0 (the stage pins it to its newest plan) and the image as float32 ``[1, 3, 32,
32]`` in [0, 1] (the network's input, :func:`..placement.drop_study.to_input`). Request ``i``
is test image ``i mod 10000``. Sending starts once a plan holding this robot's image has
arrived.

Everything it sees is appended to ``output`` as JSON lines (tests and the benchmark read
it while it runs): ``{"kind": "plan" | "link" | "sent" | "prediction", "t": monotonic
seconds, ...message fields}``; a plan once per version (the planner repeats the plan in
force).
"""

from __future__ import annotations

import array
import json
import time
from pathlib import Path

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node

from resilient_perception.datasets import load_cifar10
from resilient_perception.msg import (
    ActivationTensor,
    DistributedPrediction,
    LinkMeasurement,
    PlacementPlan,
)
from resilient_perception.placement.distributed import encode_tensor
from resilient_perception.placement.drop_study import to_input
from resilient_perception.ros.node_utils import descriptor, run_node
from resilient_perception.ros.topics import (
    ACTIVATION_TOPIC_FORMAT,
    DISTRIBUTED_PREDICTION_TOPIC,
    LINK_MEASUREMENT_TOPIC,
    PLAN_TOPIC,
    activation_qos,
    plan_qos,
)

__all__ = ["RequestNode", "main", "request_image"]


def request_image(images: np.ndarray, request_id: int) -> np.ndarray:
    """The network input of request ``request_id``: float32 ``[1, 3, H, W]``."""
    return np.ascontiguousarray(to_input(images[request_id % len(images)][None]).numpy())


class RequestNode(Node):
    """Sends requests at a fixed rate and logs plans, links, requests and predictions."""

    def __init__(self) -> None:
        """Load the test images, open the output file, subscribe."""
        super().__init__("requests")
        string, double = ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_DOUBLE
        integer = ParameterType.PARAMETER_INTEGER
        self.robot = self.declare_parameter("robot", "", descriptor(
            "Robot whose stage receives the images.", string)).value
        self.count = self.declare_parameter("count", 0, descriptor(
            "Requests to send (0 = until stopped).", integer, int_range=(0, 10**9))).value
        rate = self.declare_parameter("rate_hz", 5.0, descriptor(
            "Requests per second.", double, float_range=(0.01, 1000.0))).value
        output = self.declare_parameter("output", "", descriptor(
            "JSON-lines file to append everything to.", string)).value
        data_root = self.declare_parameter("data_root", "", descriptor(
            "Folder holding cifar10-jpeg.tar.gz ('' = the default datasets folder).",
            string)).value
        if not self.robot or not output:
            raise ValueError("parameters 'robot' and 'output' are required")
        self.images = load_cifar10(data_root or None, "test").images
        self._out = Path(output).open("a")  # noqa: SIM115 (closed in destroy_node)
        self.sent = 0
        self._ready = False
        self._plan_version: int | None = None  # the planner repeats the plan in force
        self._activation = self.create_publisher(
            ActivationTensor, ACTIVATION_TOPIC_FORMAT.format(self.robot), activation_qos())
        self.create_subscription(PlacementPlan, PLAN_TOPIC, self._on_plan, plan_qos())
        self.create_subscription(LinkMeasurement, LINK_MEASUREMENT_TOPIC, self._on_link, 50)
        self.create_subscription(DistributedPrediction, DISTRIBUTED_PREDICTION_TOPIC,
                                 self._on_prediction, 50)
        self.create_timer(1.0 / rate, self._send)

    def _write(self, kind: str, **fields) -> None:
        self._out.write(json.dumps({"kind": kind, "t": time.monotonic(), **fields}) + "\n")
        self._out.flush()

    def _on_plan(self, msg: PlacementPlan) -> None:
        if msg.version == self._plan_version:
            return
        self._plan_version = msg.version
        self._write("plan", version=msg.version, robots=list(msg.robot_names),
                    sources=list(msg.sources), devices=list(msg.devices),
                    alive=list(msg.robots_alive), reason=msg.reason, solver=msg.solver,
                    status=msg.status, objective=msg.objective, latency_s=msg.latency_s,
                    accuracy=msg.expected_accuracy, shared_bytes=msg.shared_bytes,
                    solve_seconds=msg.solve_seconds)
        self._ready = self._ready or self.robot in [msg.robot_names[s] for s in msg.sources]

    def _on_link(self, msg: LinkMeasurement) -> None:
        self._write("link", source=msg.from_robot, target=msg.to_robot,
                    throughput_bps=msg.throughput_bps, rtt_s=msg.rtt_s,
                    samples=msg.throughput_samples)

    def _on_prediction(self, msg: DistributedPrediction) -> None:
        self._write("prediction", id=msg.request_id, plan_version=msg.plan_version,
                    label=msg.label, probabilities=[float(p) for p in msg.probabilities],
                    latency=msg.latency, bytes_sent=msg.bytes_sent,
                    unit_robots=list(msg.unit_robots))

    def _send(self) -> None:
        if not self._ready or (self.count and self.sent >= self.count):
            return
        msg = ActivationTensor(request_id=self.sent, plan_version=0, next_unit=0)
        msg.shape, msg.dtype, data = encode_tensor(request_image(self.images, self.sent))
        msg.data = array.array("B", data)
        msg.source_stamp = self.get_clock().now().to_msg()
        msg.header.stamp = msg.source_stamp
        self._activation.publish(msg)
        self._write("sent", id=self.sent)
        self.sent += 1

    def destroy_node(self) -> None:
        """Close the output file, then destroy the node."""
        self._out.close()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0); exit 2 for invalid parameters."""
    return run_node(RequestNode, "requests", argv)


if __name__ == "__main__":
    raise SystemExit(main())
