"""Recorder node: writes the pipeline's outputs to a rosbag2 bag as they arrive.

Subscribes, and writes every message to the bag at ``bag_path`` (MCAP, or sqlite3 with
``storage``) the moment it arrives, as the serialised bytes received (``raw``: no
deserialisation), with the receive time as the bag time:

* ``prediction_topic_format.format(i)`` (``DevicePrediction``) for ``i`` in
  ``0..num_devices-1``;
* ``fused_topics`` (``FusedPrediction``), by default ``[perception/fused]``;
* ``label_topic`` (``FrameLabel``), the ground truth of the player or a bag replay;
* ``diagnostics_topic`` (``diagnostic_msgs/DiagnosticArray``).

No message may be lost: every subscription is RELIABLE with a deep KEEP_LAST history, and
requests no deadline or liveliness lease, so it matches any publisher (a subscriber that
requests less than a publisher offers always matches). Each topic is added to the bag on its
first message, with the QoS profiles its publishers offer then (as ``ros2 bag record``
stores them, so the bag replays with the same QoS). A BEST_EFFORT publisher of such a topic
(none of the package's) is recorded with ``qos_overrides.<topic>.subscription.reliability:
best_effort`` (standard ``qos_overrides`` parameters apply to every subscription). The node
counts what it wrote per topic and logs the counts on exit; ``resilient-perception
score-bag`` scores the bag.

SIGINT/SIGTERM close the bag cleanly (index and ``metadata.yaml`` written). Exit codes: 0
after SIGINT/SIGTERM, 2 for an invalid parameter or a bag folder that already exists.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterType
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.qos_overriding_options import QoSOverridingOptions
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

from resilient_perception.msg import DevicePrediction, FrameLabel, FusedPrediction
from resilient_perception.ros.bags import STORAGES, BagError, BagWriter
from resilient_perception.ros.node_utils import THROTTLE_S, descriptor, run_node
from resilient_perception.ros.topics import (
    DIAGNOSTICS_TOPIC,
    FUSED_TOPIC,
    LABEL_TOPIC,
    PREDICTION_TOPIC_FORMAT,
)

__all__ = ["RecorderNode", "main", "offered_qos"]

# Deep enough for bursts: the fusion node can release many frames in one callback.
_DEPTH = 1000


def _qos_time(duration) -> QosTime:
    return QosTime(*divmod(duration.nanoseconds, 1_000_000_000))


def offered_qos(profile) -> Qos:
    """A publisher's offered ``rclpy.qos.QoSProfile`` as rosbags stores it.

    rclpy's policy enums have rmw's values, which are also rosbags' (and rosbag2's).
    """
    return Qos(QosHistory(int(profile.history)), int(profile.depth),
               QosReliability(int(profile.reliability)), QosDurability(int(profile.durability)),
               _qos_time(profile.deadline), _qos_time(profile.lifespan),
               QosLiveliness(int(profile.liveliness)),
               _qos_time(profile.liveliness_lease_duration),
               bool(profile.avoid_ros_namespace_conventions))


class RecorderNode(Node):
    """Writes device predictions, fused predictions, labels and diagnostics to a bag."""

    def __init__(self, node_name: str = "recorder_node", **kwargs) -> None:
        """Declare the parameters, open the bag and subscribe.

        Raises:
            InvalidParameterValueException: For a bad storage, topic format or bag path.
        """
        super().__init__(node_name, **kwargs)
        i, s, sa = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_STRING,
                    ParameterType.PARAMETER_STRING_ARRAY)
        self.declare_parameter("bag_path", "", descriptor(
            "New bag folder to write (must not exist).", s))
        self.declare_parameter("storage", "mcap", descriptor(
            f"rosbag2 storage: one of {STORAGES}.", s))
        self.declare_parameter("num_devices", 6, descriptor(
            "Number of camera devices whose predictions are recorded.", i, (0, 64)))
        self.declare_parameter("prediction_topic_format", PREDICTION_TOPIC_FORMAT,
                               descriptor("DevicePrediction topic of device i: format(i).", s))
        self.declare_parameter("fused_topics", [FUSED_TOPIC], descriptor(
            "FusedPrediction topics to record.", sa))
        self.declare_parameter("label_topic", LABEL_TOPIC, descriptor(
            "FrameLabel topic; empty: none.", s))
        self.declare_parameter("diagnostics_topic", DIAGNOSTICS_TOPIC, descriptor(
            "DiagnosticArray topic; empty: none.", s))
        p = {name: self.get_parameter(name).value for name in (
            "bag_path", "storage", "num_devices", "prediction_topic_format", "fused_topics",
            "label_topic", "diagnostics_topic")}
        if p["num_devices"] and (p["prediction_topic_format"].format(0)
                                 == p["prediction_topic_format"].format(1)):
            raise InvalidParameterValueException(
                "prediction_topic_format", p["prediction_topic_format"], "needs a '{}' field")
        if not p["bag_path"]:
            raise InvalidParameterValueException("bag_path", "", "set it to a new bag folder")
        topics = [(p["prediction_topic_format"].format(d), DevicePrediction)
                  for d in range(p["num_devices"])]
        topics += [(t, FusedPrediction) for t in p["fused_topics"] if t]
        if p["label_topic"]:
            topics.append((p["label_topic"], FrameLabel))
        if p["diagnostics_topic"]:
            topics.append((p["diagnostics_topic"], DiagnosticArray))
        try:
            self.bag = BagWriter(p["bag_path"], p["storage"], {
                "devices": str(p["num_devices"]), "recorder": self.get_fully_qualified_name()})
        except BagError as exc:
            raise InvalidParameterValueException("bag_path", p["bag_path"], str(exc)) from None
        self.errors = 0
        for topic, msg_type in topics:
            # The resolved name (namespace and remappings applied) is what the bag stores.
            name = self.resolve_topic_name(topic)
            self.create_subscription(
                msg_type, topic, lambda data, name=name, kind=msg_type:
                self._on_message(name, kind, data),
                # RELIABLE, VOLATILE, no deadline or lease requested; a profile of its own:
                # qos_overrides change the profile they are given.
                QoSProfile(depth=_DEPTH), raw=True,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self.get_logger().info(f"recording {len(topics)} topics to {self.bag.path} "
                               f"({p['storage']})")

    def _on_message(self, topic: str, msg_type: type, data: bytes) -> None:
        try:
            if not self.bag.has_topic(topic):
                offers = [offered_qos(info.qos_profile)
                          for info in self.get_publishers_info_by_topic(topic)]
                self.bag.add_topic(topic, _type_name(msg_type), offers)
            self.bag.write(topic, self.get_clock().now().nanoseconds, data)
        except Exception as exc:  # a write failure is counted and logged, never fatal
            self.errors += 1
            self.get_logger().error(f"{topic}: cannot write ({type(exc).__name__}: {exc}; "
                                    f"{self.errors} errors)", throttle_duration_sec=THROTTLE_S)

    def close(self) -> dict[str, int]:
        """Close the bag (index and metadata.yaml); returns the messages written per topic."""
        self.bag.close()
        return dict(self.bag.counts)


def _type_name(msg_type: type) -> str:
    """``pkg/msg/Name`` of a generated message class."""
    return f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"


def _close(node: RecorderNode) -> None:
    counts = node.close()
    node.get_logger().info(f"closed {node.bag.path}: {sum(counts.values())} messages "
                           f"({', '.join(f'{t}: {n}' for t, n in counts.items())}), "
                           f"{node.errors} write errors")


def main(argv: list[str] | None = None) -> int:
    """Record until SIGINT/SIGTERM, then close the bag; return the process exit code.

    Exit codes: 0 after SIGINT/SIGTERM, 2 for an invalid parameter or bag folder.
    """
    return run_node(RecorderNode, "recorder_node", argv, on_exit=_close)

if __name__ == "__main__":
    raise SystemExit(main())
