"""The topic contract: every topic name and format and every QoS profile, defined once.

Nodes, launch files, the process harness, the benchmarks and the tests take their topic
names and QoS profiles from here, so publisher and subscriber of a topic cannot drift apart.
Names are relative (namespaces and ``-r`` remappings apply) unless they start with ``/``;
a ``*_FORMAT`` name is ``format(i)``-ed with a device index or a robot name.

Publisher and subscriber of one topic must use *compatible* profiles, or DDS never matches
them and messages silently stop (rclpy only logs an "incompatible QoS" event):

* reliability: a RELIABLE subscriber needs a RELIABLE publisher;
* durability: a TRANSIENT_LOCAL subscriber needs a TRANSIENT_LOCAL publisher;
* deadline: the publisher's *offered* deadline must be <= the subscriber's *requested* one;
* liveliness: the offered lease duration must be <= the requested one (and the kinds must
  be compatible: AUTOMATIC offered satisfies AUTOMATIC requested).

Both sides therefore build their profiles with these helpers and the same parameters; a
camera node may offer a *shorter* deadline or lease than the fusion node requests, never a
longer one. Importing this module imports no rclpy (the names serve the CLI and bag tools
too); building a profile does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile

__all__ = [
    "ACTIVATION_TOPIC_FORMAT",
    "CAMERA_HEAD_TOPIC",
    "CAMERA_IMAGE_TOPIC",
    "CAMERA_PREDICTION_TOPIC",
    "CAMERA_STATUS",
    "DASHBOARD_QUEUE_DEPTH",
    "DIAGNOSTICS_TOPIC",
    "DISTRIBUTED_PREDICTION_TOPIC",
    "FRAME_ID_FORMAT",
    "FUSION_ASSEMBLY_STATUS",
    "FUSION_DEVICE_STATUS_FORMAT",
    "FUSED_TOPIC",
    "HEAD_QUEUE_DEPTH",
    "HEAD_TOPIC_FORMAT",
    "HEARTBEAT_TOPIC_FORMAT",
    "IMAGE_QUEUE_DEPTH",
    "IMAGE_RELIABILITIES",
    "IMAGE_TOPIC_FORMAT",
    "IMAGE_TRANSPORTS",
    "LABEL_TOPIC",
    "LINK_MEASUREMENT_TOPIC",
    "PLAN_TOPIC",
    "PREDICTION_QUEUE_DEPTH",
    "PREDICTION_TOPIC_FORMAT",
    "PROBE_TOPIC_FORMAT",
    "activation_qos",
    "dashboard_qos",
    "fused_qos",
    "head_qos",
    "image_qos",
    "label_qos",
    "latched_qos",
    "plan_qos",
    "prediction_qos",
    "probe_qos",
    "qualified_node_name",
    "status_name",
    "status_node",
]

# Perception (DESIGN.md's topics). A camera node's own names are relative and remapped to
# the device's topics (``image_raw`` -> ``camera_<i>/image_raw`` and so on).
IMAGE_TOPIC_FORMAT = "camera_{}/image_raw"
"""Camera ``i``'s ``sensor_msgs/Image`` stream (player, bag replay or a driver)."""
FRAME_ID_FORMAT = "camera_{}"
"""``header.frame_id`` of camera ``i``'s images."""
PREDICTION_TOPIC_FORMAT = "perception/device_{}/prediction"
"""Device ``i``'s ``DevicePrediction`` stream."""
HEAD_TOPIC_FORMAT = "perception/device_{}/head"
"""Device ``i``'s ``ClassifierHead`` (latched)."""
CAMERA_IMAGE_TOPIC = "image_raw"
"""A camera node's image input, before remapping."""
IMAGE_TRANSPORTS = ("raw", "compressed")
"""How a camera's images are read: ``sensor_msgs/Image`` on its image topic, or
``sensor_msgs/CompressedImage`` on the topic plus ``/compressed`` (image_transport's
compressed plugin)."""
CAMERA_PREDICTION_TOPIC = "prediction"
"""A camera node's prediction output, before remapping."""
CAMERA_HEAD_TOPIC = "head"
"""A camera node's head output, before remapping."""
FUSED_TOPIC = "perception/fused"
"""The fusion node's ``FusedPrediction`` stream."""
LABEL_TOPIC = "perception/label"
"""Ground truth (``FrameLabel``) of the player or a bag replay, stamped like the images."""
DIAGNOSTICS_TOPIC = "/diagnostics"
"""``diagnostic_msgs/DiagnosticArray`` of every node (absolute, as ROS tools expect)."""


CAMERA_STATUS = "images"
"""What a camera node's ``/diagnostics`` status is about: ``/ns/camera_0: images``."""
FUSION_ASSEMBLY_STATUS = "frame assembly"
"""The fusion node's status of its inputs and frames: ``/ns/fusion: frame assembly``."""
FUSION_DEVICE_STATUS_FORMAT = "device {}"
"""The fusion node's status of device ``i``'s health: ``/ns/fusion: device 2``."""


def status_name(node: str, what: str) -> str:
    """Name of a ``/diagnostics`` status: ``<fully qualified node name>: <what>``.

    The node's namespace is in the name (``/robot_a/camera_0: images``), so two robots'
    ``camera_0`` are told apart on a shared ``/diagnostics``, as ``diagnostic_updater``
    names a node's tasks.
    """
    return f"{node}: {what}"


def status_node(name: str) -> str:
    """The fully qualified node name a :func:`status_name` starts with."""
    return name.split(": ", 1)[0]


def qualified_node_name(name: str, namespace: str = "/") -> str:
    """``name`` resolved as a node name from ``namespace``, as ROS resolves relative names.

    ``fusion`` seen from ``/robot_a`` is ``/robot_a/fusion``; an absolute name stays as is.
    """
    if name.startswith("/"):
        return name
    return f"{namespace.rstrip('/')}/{name}"

# Distributed ResNet inference.
PLAN_TOPIC = "placement_plan"
"""The planner's ``PlacementPlan`` (latched)."""
HEARTBEAT_TOPIC_FORMAT = "{}/stage_alive"
"""Topic of a robot's stage heartbeat: ``format(robot name)``."""
ACTIVATION_TOPIC_FORMAT = "{}/activation"
"""Topic of the activations (and images) a robot's stage receives: ``format(robot)``."""
PROBE_TOPIC_FORMAT = "{}/link_probe"
"""Topic of the probes a robot receives: ``format(robot name)``."""
LINK_MEASUREMENT_TOPIC = "link_measurements"
"""The link probes' ``LinkMeasurement``s, read by the planner."""
DISTRIBUTED_PREDICTION_TOPIC = "distributed/prediction"
"""``DistributedPrediction`` of the stage that runs the head."""


def _duration(seconds: float, name: str) -> Duration:
    from rclpy.duration import Duration

    if not seconds > 0.0:
        raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    return Duration(nanoseconds=round(seconds * 1e9))


# Predictions a camera's writer and the fusion node's reader each hold: a fusion node that
# stalls for up to 100 frames (3.3 s at 30 Hz) catches up without losing one. With 10 it
# lost whole frames after a stall of a third of a second (test_pipeline's stall test): a
# RELIABLE KEEP_LAST writer drops samples its reader has not acknowledged once its history
# is full. A prediction is ~300 bytes, so the depth costs next to nothing.
PREDICTION_QUEUE_DEPTH = 100

# Images a camera's reader holds: a camera that stops taking images for up to 1 s at 30 Hz
# catches up without losing one. A camera stops when its own publish() blocks: with Fast
# DDS's default synchronous publication, a reader process that freezes (SIGSTOP, a
# debugger, swapping) can block its writers' publish() for as long as it stays frozen, over
# shared memory and UDP alike. A fusion node frozen for 0.8 s blocked every camera for all
# of it in about one freeze in ten, and with depth 5 the cameras lost all but the last 5
# images (test_pipeline's stall test). Asynchronous publication avoids the block but cost
# 2-4 ms of end-to-end latency and half the throughput on 2 cores (docs/results.md). The
# price of depth 30: a camera too slow for the frame rate lags up to 30 frames before it
# drops.
IMAGE_QUEUE_DEPTH = 30

# Classifier heads the fusion node's reader holds unprocessed per device: a head is latched
# (the writer keeps only its last one for late joiners), but heads published in quick
# succession while the node is busy would otherwise replace each other unseen, and a bad one
# would go uncounted on /diagnostics.
HEAD_QUEUE_DEPTH = 16


def prediction_qos(deadline_s: float, lease_s: float) -> QoSProfile:
    """Profile of ``DevicePrediction`` topics: liveness is watched through QoS events.

    RELIABLE, KEEP_LAST :data:`PREDICTION_QUEUE_DEPTH`, VOLATILE, with a ``deadline`` (a
    subscriber gets a deadline-missed event when no sample arrived for that long) and
    AUTOMATIC liveliness with lease ``lease_s`` (liveliness-lost when the publishing
    process dies or hangs).

    The publisher's offered deadline and lease must be <= the subscriber's requested ones,
    otherwise the two never match and predictions silently stop arriving. Deadline events
    fire only after a first sample, so the fusion node also needs a watchdog.

    Args:
        deadline_s: Deadline period in seconds (> 0).
        lease_s: Liveliness lease duration in seconds (> 0).

    Returns:
        The QoS profile.

    Raises:
        ValueError: If a duration is not positive.
    """
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        LivelinessPolicy,
        QoSProfile,
        ReliabilityPolicy,
    )

    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        history=HistoryPolicy.KEEP_LAST,
        depth=PREDICTION_QUEUE_DEPTH,
        durability=DurabilityPolicy.VOLATILE,
        deadline=_duration(deadline_s, "deadline"),
        liveliness=LivelinessPolicy.AUTOMATIC,
        liveliness_lease_duration=_duration(lease_s, "liveliness lease"),
    )


def latched_qos(depth: int = 1) -> QoSProfile:
    """A latched topic's profile (RELIABLE, TRANSIENT_LOCAL, KEEP_LAST ``depth``, default 1).

    The message is published once (or rarely); a subscriber that joins later (a restarted
    fusion node, a stage that starts after the planner) still receives the last one.
    Subscribers must also request TRANSIENT_LOCAL to get it. Writers keep depth 1 (a late
    joiner gets only the last message); a reader may ask for a deeper queue so that
    messages published in quick succession are each delivered (depth is not matched).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


IMAGE_RELIABILITIES = ("best_effort", "reliable")
"""Values of the camera node's ``image_reliability`` parameter."""


def image_qos(reliability: str = "reliable", depth: int = IMAGE_QUEUE_DEPTH) -> QoSProfile:
    """Profile of camera image topics: sensor-data-like (KEEP_LAST, VOLATILE), deeper.

    ``reliability`` is ``"reliable"`` (the default here: the package's player and bag replay
    publish RELIABLE, and frame-by-frame comparisons need every frame) or ``"best_effort"``:
    what REP-2003 asks of sensor-data subscribers, matched by every publisher, RELIABLE or
    BEST_EFFORT (most drivers' ``qos_profile_sensor_data``); a RELIABLE subscription is never
    matched by a BEST_EFFORT publisher. The camera node's ``image_reliability`` parameter
    chooses (default best effort; the params files in ``config/`` ask reliable for the
    player). ``depth`` defaults to :data:`IMAGE_QUEUE_DEPTH` instead of sensor data's 5.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if reliability not in IMAGE_RELIABILITIES:
        raise ValueError(f"image reliability must be one of {IMAGE_RELIABILITIES}, "
                         f"got {reliability!r}")
    return QoSProfile(
        reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                     else ReliabilityPolicy.BEST_EFFORT),
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        durability=DurabilityPolicy.VOLATILE,
    )


head_qos = latched_qos
"""Profile of ``ClassifierHead`` topics: a camera publishes its head latched, and again
every ``head_period`` s for a reader the latched sample missed (the fusion node reads them
with ``depth=HEAD_QUEUE_DEPTH``)."""
plan_qos = latched_qos
"""Profile of :data:`PLAN_TOPIC`: the current plan, latched for stages that start later
(and repeated every ``plan_period_s`` by the planner for a reader the latched one missed)."""


def label_qos() -> QoSProfile:
    """Profile of the ``FrameLabel`` topic: RELIABLE, VOLATILE, KEEP_LAST 100.

    Labels are tiny and a scorer must not lose one, so the history is deep enough for a
    slow subscriber at hundreds of frames per second; a subscriber asks for RELIABLE too.
    """
    from rclpy.qos import QoSProfile

    return QoSProfile(depth=100)


def fused_qos() -> QoSProfile:
    """Profile of :data:`FUSED_TOPIC`: RELIABLE, VOLATILE, KEEP_LAST 50.

    A slow consumer loses nothing at ~10-30 Hz.
    """
    from rclpy.qos import QoSProfile

    return QoSProfile(depth=50)


def activation_qos() -> QoSProfile:
    """RELIABLE, KEEP_LAST 50: requests in flight are not dropped by a full history."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                      depth=50)


def probe_qos(depth: int) -> QoSProfile:
    """BEST_EFFORT, KEEP_LAST ``depth`` (a whole burst fits in the history).

    Best effort because a probe measures what the link delivers: on an overloaded link,
    reliable retransmissions of long bursts would fill its queue (round trips of seconds),
    starve the activations and never let a burst finish.
    """
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                      history=HistoryPolicy.KEEP_LAST, depth=depth)


# Messages of one topic the dashboard's reader holds: it takes them every sample period
# (0.1 s), so 50 hold the frames of half a second at 100 Hz; at higher rates it scores a
# sample (best effort: the oldest are replaced, the publisher never waits).
DASHBOARD_QUEUE_DEPTH = 50


def dashboard_qos(depth: int = DASHBOARD_QUEUE_DEPTH) -> QoSProfile:
    """Profile of the dashboard's subscriptions: BEST_EFFORT, VOLATILE, KEEP_LAST ``depth``.

    Best effort so that the dashboard never slows a publisher: a RELIABLE writer neither
    waits for nor resends to a BEST_EFFORT reader, so a dashboard that falls behind loses
    messages, never the pipeline's time. It matches RELIABLE and BEST_EFFORT publishers
    alike and requests no deadline or liveliness (every publisher's offer satisfies it).
    The latched plan is the exception: the dashboard reads it with :func:`plan_qos`.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                      history=HistoryPolicy.KEEP_LAST, depth=depth,
                      durability=DurabilityPolicy.VOLATILE)
