"""Dashboard node: a web page of the live pipeline, served by the node itself.

"Run the node, point a browser at the robot": the node serves one page over HTTP (aiohttp,
in a thread of its own beside the rclpy executor) and pushes the pipeline's state to it a
few times a second over server-sent events (:mod:`resilient_perception.dashboard.server`).
The page shows a tile per camera (latest image, downscaled; live / late / dead / no input
with the fusion node's reason; the Modifier surrogate flag; input rate and inference time
from the camera's ``/diagnostics``), the fused output with rolling accuracy with and
without the Modifier when labels are published, the end-to-end latency of the last minute
with an event strip (deaths, revivals, restarts, plan changes) on the same time axis, and,
for the distributed ResNet, the placement plan, the measured links and the request latency.

Subscribes, all with :func:`~resilient_perception.ros.topics.dashboard_qos` (best effort:
a slow dashboard loses messages, it never slows a publisher), except the latched plan
(:func:`~resilient_perception.ros.topics.plan_qos`):

* sampled every ``sample_period``: ``image_topic_format.format(i)`` (``sensor_msgs/Image``;
  with ``image_transport:=compressed`` the same plus ``/compressed``, a
  ``sensor_msgs/CompressedImage`` as image_transport's compressed plugin publishes it),
  depth 1, kept serialised: only the newest image of a camera is decoded, when the page's
  previews are next pushed; ``prediction_topic_format.format(i)`` (``DevicePrediction``),
  ``fused_topic`` (``FusedPrediction``) and ``label_topic`` (``FrameLabel``);
* with a callback each: ``/diagnostics``, ``plan_topic`` (``PlacementPlan``),
  ``link_topic`` (``LinkMeasurement``), ``distributed_topic`` (``DistributedPrediction``).

Sampled: the frame-rate topics (six cameras' images and predictions, fused output and
labels: ~400 messages a second at 30 Hz) are subscribed on a second node that no executor
spins, and a timer takes what arrived in one go. An rclpy executor's wake-up costs far more
than taking a message, so a callback per message kept this node at ~13% of a core, and on
a loaded 2-core machine that CPU comes out of the pipeline's latency. The sampler node takes
no command-line remappings (it is created with ``use_global_arguments=False`` so that a
``__node`` remapping does not rename it too); its topics are the parameters, in this node's
namespace.

Publishes its own ``/diagnostics`` every second: the page's ``url``, connected
``clients``, ``pushes``, ``skipped`` updates (browsers that read slower than the pushes)
and rejected messages. All the state is kept by the ROS-free
:class:`~resilient_perception.dashboard.state.DashboardState`.

It binds ``127.0.0.1`` by default (this machine only); ``bind_address`` ``0.0.0.0``
serves the robot's network, and ``port`` 0 picks a free port (logged, and on
``/diagnostics``).
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image

from resilient_perception.dashboard.preview import preview_jpeg
from resilient_perception.dashboard.server import DashboardServer
from resilient_perception.dashboard.state import DashboardState
from resilient_perception.msg import (
    DevicePrediction,
    DistributedPrediction,
    FrameLabel,
    FusedPrediction,
    LinkMeasurement,
    PlacementPlan,
)
from resilient_perception.ros.image_conversion import (
    decode_compressed,
    decode_image,
    to_model_input,
)
from resilient_perception.ros.node_utils import Rejections, descriptor, publish_counters, run_node
from resilient_perception.ros.topics import (
    CAMERA_STATUS,
    DIAGNOSTICS_TOPIC,
    DISTRIBUTED_PREDICTION_TOPIC,
    FUSED_TOPIC,
    FUSION_ASSEMBLY_STATUS,
    FUSION_DEVICE_STATUS_FORMAT,
    IMAGE_TOPIC_FORMAT,
    IMAGE_TRANSPORTS,
    LABEL_TOPIC,
    LINK_MEASUREMENT_TOPIC,
    PLAN_TOPIC,
    PREDICTION_TOPIC_FORMAT,
    dashboard_qos,
    plan_qos,
    qualified_node_name,
    status_name,
    status_node,
)

__all__ = ["DashboardNode", "main", "plan_view"]

REJECTION_REASONS = ("bad_image", "callback_error")


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def plan_view(msg: PlacementPlan) -> dict:
    """A ``PlacementPlan`` as the page shows it: per request row, each unit's robot or None."""
    robots, units = list(msg.robot_names), list(msg.unit_names)
    rows = []
    for r, source in enumerate(msg.sources):
        cells = msg.devices[r * len(units):(r + 1) * len(units)]
        rows.append({"source": robots[source] if 0 <= source < len(robots) else str(source),
                     "robots": [robots[d] if 0 <= d < len(robots) else None for d in cells]})
    return {"version": int(msg.version), "reason": msg.reason, "solver": msg.solver,
            "expected_accuracy": float(msg.expected_accuracy),
            "latency_s": float(msg.latency_s), "units": units, "rows": rows,
            "robots_alive": [name for name, alive in zip(robots, msg.robots_alive,
                                                         strict=False) if alive]}


class DashboardNode(Node):
    """Keeps a :class:`DashboardState` from the pipeline's topics and serves it."""

    def __init__(self, node_name: str = "dashboard", **kwargs) -> None:
        """Declare the parameters, subscribe and start the web server.

        Raises:
            ValueError: If the bind address and port cannot be served.
        """
        super().__init__(node_name, **kwargs)
        i, d, s = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE,
                   ParameterType.PARAMETER_STRING)
        self.declare_parameter("num_devices", 6, descriptor(
            "Camera devices shown (topics are formatted with 0..num_devices-1).", i, (1, 64)))
        self.declare_parameter("bind_address", "127.0.0.1", descriptor(
            "Address the web server binds: 127.0.0.1 serves this machine only, 0.0.0.0 "
            "every network of the robot.", s))
        self.declare_parameter("port", 8080, descriptor(
            "TCP port of the page; 0 picks a free one (logged and on /diagnostics).", i,
            (0, 65535)))
        self.declare_parameter("push_period", 0.2, descriptor(
            "Seconds between the state pushes to the browsers.", d, float_range=(0.02, 10.0)))
        self.declare_parameter("sample_period", 0.1, descriptor(
            "Seconds between takes of the frame-rate topics (images, predictions, fused "
            "output, labels); at most the dashboard queue depth of each arrives between two.",
            d, float_range=(0.01, 1.0)))
        self.declare_parameter("image_period", 0.5, descriptor(
            "Seconds between the camera preview pushes.", d, float_range=(0.05, 60.0)))
        self.declare_parameter("image_transport", "raw", descriptor(
            "How the cameras' images are read for the previews, as the camera nodes read "
            "them: 'raw' (sensor_msgs/Image on image_topic_format) or 'compressed' "
            "(sensor_msgs/CompressedImage on it plus '/compressed'). One of the two: an "
            "image_transport publisher encodes JPEG only while someone subscribes.", s))
        self.declare_parameter("image_width", 160, descriptor(
            "Largest width of a camera preview, pixels (larger images are shrunk).", i,
            (16, 4096)))
        self.declare_parameter("window_s", 60.0, descriptor(
            "Seconds of latency and events on the page's time axis.", d,
            float_range=(5.0, 3600.0)))
        self.declare_parameter("accuracy_window", 300, descriptor(
            "Labelled frames of the rolling accuracy.", i, (1, 100000)))
        self.declare_parameter("fusion_node", "fusion", descriptor(
            "Name of the fusion node whose per-device /diagnostics give the tiles' health "
            "(relative: in this node's namespace; or fully qualified).", s))
        for name, default, what in (
                ("image_topic_format", IMAGE_TOPIC_FORMAT, "Image topic of camera i: format(i)."),
                ("prediction_topic_format", PREDICTION_TOPIC_FORMAT,
                 "DevicePrediction topic of device i: format(i)."),
                ("fused_topic", FUSED_TOPIC, "FusedPrediction topic."),
                ("label_topic", LABEL_TOPIC, "FrameLabel topic (ground truth, if any)."),
                ("plan_topic", PLAN_TOPIC, "PlacementPlan topic (latched)."),
                ("link_topic", LINK_MEASUREMENT_TOPIC, "LinkMeasurement topic."),
                ("distributed_topic", DISTRIBUTED_PREDICTION_TOPIC,
                 "DistributedPrediction topic.")):
            self.declare_parameter(name, default, descriptor(what, s))
        p = {name: self.get_parameter(name).value for name in (
            "num_devices", "bind_address", "port", "push_period", "sample_period",
            "image_period", "image_transport",
            "image_width", "window_s", "accuracy_window", "fusion_node", "image_topic_format",
            "prediction_topic_format", "fused_topic", "label_topic", "plan_topic",
            "link_topic", "distributed_topic")}
        for name in ("image_topic_format", "prediction_topic_format"):
            if p[name].format(0) == p[name].format(1):
                raise ValueError(f"{name} {p[name]!r} needs a '{{}}' field")
        if p["image_transport"] not in IMAGE_TRANSPORTS:
            raise ValueError(f"image_transport must be one of {IMAGE_TRANSPORTS}, got "
                             f"{p['image_transport']!r}")
        compressed = p["image_transport"] == "compressed"
        image_type = CompressedImage if compressed else Image
        self.n_devices = p["num_devices"]
        self.image_width = p["image_width"]
        # Statuses are named with fully qualified node names: only this robot's fusion node
        # and cameras (this node's namespace) feed the tiles.
        self.fusion_node = qualified_node_name(p["fusion_node"], self.get_namespace())
        self._namespace = self.get_namespace().rstrip("/")
        self.state = DashboardState(self.n_devices, p["window_s"], p["accuracy_window"])
        self.rejections = Rejections(self, REJECTION_REASONS)
        # The newest serialised image per camera and the preview made of it: decoding waits
        # until the page wants a preview.
        self._images: dict[int, tuple[int, bytes]] = {}
        self._image_type = image_type
        self._decode = decode_compressed if compressed else decode_image
        self._previews: dict[int, tuple[int, str]] = {}
        self._images_lock = threading.Lock()
        qos = dashboard_qos()
        guard = self.rejections.guard
        self._sampler = Node(f"{self.get_name()}_sampler", namespace=self.get_namespace(),
                             context=self.context, use_global_arguments=False,
                             start_parameter_services=False)
        sample = self._sampler.create_subscription
        self._sampled: list[tuple[Subscription, Any]] = []
        for device in range(self.n_devices):
            topic = p["image_topic_format"].format(device) + ("/compressed" if compressed else "")
            self._sampled += [
                (sample(image_type, topic, _unused, dashboard_qos(1), raw=True),
                 lambda data, dev=device: self._on_image(dev, data)),
                (sample(DevicePrediction, p["prediction_topic_format"].format(device), _unused,
                        qos), lambda msg, dev=device: self._on_prediction(dev, msg))]
        # predictions before the fused output that uses them, labels after it
        self._sampled += [(sample(FusedPrediction, p["fused_topic"], _unused, qos),
                           self._on_fused),
                          (sample(FrameLabel, p["label_topic"], _unused, qos), self._on_label)]
        self.create_timer(p["sample_period"], guard(self._take_sampled, "sampling"))
        subscriptions = (
            (DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, dashboard_qos(20)),
            (PlacementPlan, p["plan_topic"], self._on_plan, plan_qos()),
            (LinkMeasurement, p["link_topic"], self._on_link, qos),
            (DistributedPrediction, p["distributed_topic"], self._on_request, qos))
        for msg_type, topic, callback, profile in subscriptions:
            self.create_subscription(msg_type, topic, guard(callback, topic), profile)
        self.server = DashboardServer(
            lambda: self.state.snapshot(time.monotonic()), self._preview_urls,
            p["bind_address"], p["port"], p["push_period"], p["image_period"]).start()
        publish_counters(self, "page", "dashboard", lambda: {
            "url": self.server.url, "clients": self.server.clients,
            "pushes": self.server.pushes, "skipped": self.server.skipped,
            "push_errors": self.server.errors, "rejected": self.rejections.total,
            **self.rejections.counts})
        self.get_logger().info(f"dashboard of {self.n_devices} cameras at {self.server.url}")

    # -- callbacks (the executor's thread) -------------------------------------------------
    def _take_sampled(self) -> None:
        for subscription, handle in self._sampled:
            for message in _take_all(subscription):
                try:
                    handle(message)
                except Exception as exc:  # one bad message costs itself
                    self.rejections.reject(subscription.topic_name, "callback_error",
                                           f"{type(exc).__name__}: {exc}")

    def _on_image(self, device: int, data: bytes) -> None:
        with self._images_lock:
            seq = self._images.get(device, (0, b""))[0] + 1
            self._images[device] = (seq, data)
        self.state.on_image(device)

    def _on_prediction(self, device: int, msg: DevicePrediction) -> None:
        if msg.device_id == device:
            self.state.on_prediction(device, _stamp_ns(msg.header.stamp), msg.probabilities,
                                     time.monotonic())

    def _on_fused(self, msg: FusedPrediction) -> None:
        self.state.on_fused(_stamp_ns(msg.header.stamp), msg.label, msg.confidence,
                            msg.live_devices, msg.surrogate_devices, msg.latency,
                            msg.fusion_mode, time.monotonic())

    def _on_label(self, msg: FrameLabel) -> None:
        self.state.on_label(_stamp_ns(msg.header.stamp), msg.label)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        assembly = status_name(self.fusion_node, FUSION_ASSEMBLY_STATUS)
        for status in msg.status:
            if status.name == assembly:
                self.state.on_frame_assembly({kv.key: kv.value for kv in status.values}, now)
                continue
            device = _device_of(status.hardware_id, self.n_devices)
            if device is None:
                continue
            values = {kv.key: kv.value for kv in status.values}
            if status.name == status_name(
                    self.fusion_node, FUSION_DEVICE_STATUS_FORMAT.format(device)):
                self.state.on_device_health(device, values["health"], values.get("reason", ""),
                                            now)
            elif (status.name.endswith(f": {CAMERA_STATUS}") and "received" in values
                  and status_node(status.name).rpartition("/")[0] == self._namespace):
                self.state.on_camera_status(device, values, now)

    def _on_plan(self, msg: PlacementPlan) -> None:
        self.state.on_plan(plan_view(msg), time.monotonic())

    def _on_link(self, msg: LinkMeasurement) -> None:
        self.state.on_link(msg.from_robot, msg.to_robot, msg.throughput_bps, msg.rtt_s,
                           time.monotonic())

    def _on_request(self, msg: DistributedPrediction) -> None:
        self.state.on_request(msg.latency, time.monotonic())

    # -- previews (the web server's thread) ------------------------------------------------
    def _preview_urls(self) -> dict[int, str]:
        with self._images_lock:
            newest = dict(self._images)
        for device, (seq, data) in newest.items():
            if self._previews.get(device, (0, ""))[0] == seq:
                continue
            try:
                pixels, encoding = self._decode(deserialize_message(data, self._image_type))
                rgb = to_model_input(pixels, encoding, 3).transpose(1, 2, 0)
                jpeg = preview_jpeg(rgb, self.image_width)
            except Exception as exc:  # a bad image costs its preview, nothing else
                self.rejections.reject(f"camera {device}: image", "bad_image",
                                       f"{type(exc).__name__}: {exc}")
                jpeg = None
            url = ("" if jpeg is None else
                   "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"))
            self._previews[device] = (seq, url)
        return {device: url for device, (_, url) in self._previews.items() if url}

    def destroy_node(self) -> None:
        """Stop the web server, then leave ROS (also after a constructor that failed)."""
        server = getattr(self, "server", None)  # absent when the constructor failed
        if server is not None:
            server.stop()
        sampler = getattr(self, "_sampler", None)
        if sampler is not None:
            sampler.destroy_node()
        super().destroy_node()


def _unused(msg: Any) -> None:
    """The sampler's subscriptions are never spun: their messages are taken."""


def _take_all(subscription: Subscription) -> list:
    """Every message waiting in ``subscription``'s reader (its history depth at most)."""
    taken = []
    with subscription.handle:
        while (message := subscription.handle.take_message(subscription.msg_type,
                                                           subscription.raw)) is not None:
            taken.append(message[0])
    return taken


def _device_of(hardware_id: str, n_devices: int) -> int | None:
    index = hardware_id.removeprefix("device_")
    if index == hardware_id or not index.isdigit() or int(index) >= n_devices:
        return None
    return int(index)


def main(argv: list[str] | None = None) -> int:
    """Run a dashboard node until SIGINT/SIGTERM; return the process exit code.

    Exit codes: 0 after SIGINT/SIGTERM, 2 for an invalid parameter or an address and port
    that cannot be served.
    """
    return run_node(DashboardNode, "dashboard", argv)


if __name__ == "__main__":
    raise SystemExit(main())
