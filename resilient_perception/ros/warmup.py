"""When a player's unlabelled warm-up frames may end: after a count, or once fusion answers.

The player and the replay node publish unlabelled warm-up frames before the first labelled
one, so that every camera is heard before a frame is scored. A fixed count is a guess: a
publisher's subscription count says a camera subscribed, not that DDS has matched it to
this publisher yet (discovery completes on each side separately), and frames published
before the match never reach it. On a loaded machine that took ~1 s, longer than 30 frames
at 30 Hz. With ``warmup_fused_topic`` set the warm-up goes on until a ``FusedPrediction``
on that topic has every camera live: each one has then got a frame, run its model and
reached the fusion node, so the labelled frames that follow reach them too.
"""

from __future__ import annotations

import threading
import time

from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from rclpy.qos import QoSProfile

from resilient_perception.msg import FusedPrediction
from resilient_perception.ros.node_utils import descriptor

__all__ = ["WarmupGate", "declare_warmup"]


class WarmupGate:
    """Counts warm-up frames and says when the labelled frames may start.

    Thread-safe: the replay node asks from its playback thread while the executor delivers
    fused predictions. ``live_devices`` may be set after construction, once the player
    knows how many cameras its first frame has.
    """

    def __init__(self, node: Node, min_frames: int, fused_topic: str = "",
                 live_devices: int = 0, timeout_s: float = 30.0) -> None:
        """Create the gate (and, with ``fused_topic``, its subscription on ``node``).

        Args:
            node: The player node; logs go to its logger.
            min_frames: Warm-up frames to publish in any case.
            fused_topic: ``FusedPrediction`` topic to watch; empty: the count alone decides.
            live_devices: How many devices a fused prediction must have live (the cameras
                that get a warm-up image).
            timeout_s: Give up waiting for the fused topic after this many seconds from
                the first warm-up frame, log a warning and start anyway.
        """
        self.min_frames, self.live_devices, self.timeout_s = min_frames, live_devices, timeout_s
        self.fused_topic = fused_topic
        self.sent = 0  # warm-up frames published so far
        self._logger = node.get_logger()
        self._all_live = threading.Event()
        self._started_s: float | None = None
        if fused_topic:
            # RELIABLE depth 10 matches the fusion node's RELIABLE output.
            self._subscription = node.create_subscription(
                FusedPrediction, fused_topic, self._on_fused, QoSProfile(depth=10))

    @property
    def needed(self) -> bool:
        """Whether any warm-up frame is to be published at all."""
        return self.min_frames > 0 or bool(self.fused_topic)

    def _on_fused(self, msg: FusedPrediction) -> None:
        if len(set(msg.live_devices)) >= self.live_devices:
            self._all_live.set()

    def frame_sent(self) -> bool:
        """Count one published warm-up frame; True when the warm-up is over."""
        now = time.monotonic()
        if self._started_s is None:
            self._started_s = now
        self.sent += 1
        if self.sent < self.min_frames or not self.fused_topic:
            return self.sent >= self.min_frames
        if self._all_live.is_set():
            self._logger.info(f"warm-up done after {self.sent} frames: a fused prediction on "
                              f"{self.fused_topic} had all {self.live_devices} devices live")
            return True
        if now - self._started_s >= self.timeout_s:
            self._logger.warning(
                f"no fused prediction on {self.fused_topic} with all {self.live_devices} "
                f"devices live within {self.timeout_s:g} s ({self.sent} warm-up frames); "
                "starting the labelled frames anyway")
            return True
        return False


def declare_warmup(node: Node) -> WarmupGate:
    """Declare ``warmup_frames``, ``warmup_fused_topic``, ``warmup_timeout_s``; their gate.

    The caller sets the gate's ``live_devices`` to the cameras of its warm-up frame.
    """
    i, d, s = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE,
               ParameterType.PARAMETER_STRING)
    node.declare_parameter("warmup_frames", 0, descriptor(
        "Unlabelled frames (the first played frame, without its label) published before "
        "the labelled ones, so every device is heard once before the first labelled frame.",
        i, (0, 100000)))
    node.declare_parameter("warmup_fused_topic", "", descriptor(
        "FusedPrediction topic: keep publishing warm-up frames (at least warmup_frames) "
        "until a fused prediction there has every camera live; empty: warmup_frames alone "
        "decides.", s))
    node.declare_parameter("warmup_timeout_s", 30.0, descriptor(
        "Stop waiting for warmup_fused_topic after this many seconds and play the labelled "
        "frames anyway (with a warning).", d, float_range=(0.1, 3600.0)))
    value = {name: node.get_parameter(name).value
             for name in ("warmup_frames", "warmup_fused_topic", "warmup_timeout_s")}
    return WarmupGate(node, value["warmup_frames"], value["warmup_fused_topic"],
                      timeout_s=value["warmup_timeout_s"])
