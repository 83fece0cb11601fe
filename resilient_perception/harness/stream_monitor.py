"""Scores the live pipeline from an :class:`~.pipeline.Observer`: labels vs fused streams.

Used by the demo, the benchmark and the stream tests: it subscribes, on the observer's
node, to the ground-truth ``FrameLabel`` topic and to one or more ``FusedPrediction``
topics (e.g. the fusion node with the Modifier and a second one without it), feeds a
:class:`~resilient_perception.perception.stream_score.StreamScore` per stream, and remembers when
each fused message arrived so failure reaction times can be measured. Callbacks run when
the caller spins the observer (``observer.spin_for`` / ``spin_until``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rclpy.qos import QoSProfile

from resilient_perception.harness.pipeline import Observer
from resilient_perception.msg import FrameLabel, FusedPrediction
from resilient_perception.perception.stream_score import FusedRecord, StreamScore
from resilient_perception.ros.topics import LABEL_TOPIC

__all__ = ["StreamMonitor", "stamp_ns"]


def stamp_ns(stamp) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds (the frame join key)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StreamMonitor:
    """Scores fused streams against the label topic while the pipeline runs.

    Args:
        observer: the node to subscribe on; spin it to receive.
        streams: stream name -> ``FusedPrediction`` topic.
        n_devices: devices in the fleet.
        label_topic: the ``FrameLabel`` topic.

    """

    def __init__(
        self,
        observer: Observer,
        streams: dict[str, str],
        n_devices: int,
        label_topic: str = LABEL_TOPIC,
    ) -> None:
        """Subscribe the label topic and every stream on ``observer``'s node."""
        self.scores = {name: StreamScore(n_devices) for name in streams}
        self.arrivals: dict[str, dict[int, float]] = {name: {} for name in streams}
        # RELIABLE and deep: a scorer must see every message of a burst.
        qos = QoSProfile(depth=1000)
        observer.node.create_subscription(FrameLabel, label_topic, self._on_label, qos)
        for name, topic in streams.items():
            observer.node.create_subscription(
                FusedPrediction, topic, lambda msg, name=name: self._on_fused(name, msg), qos)

    def _on_label(self, msg: FrameLabel) -> None:
        for score in self.scores.values():
            score.add_truth(stamp_ns(msg.header.stamp), msg.frame_index, msg.label)

    def _on_fused(self, name: str, msg: FusedPrediction) -> None:
        key = stamp_ns(msg.header.stamp)
        self.arrivals[name].setdefault(key, time.monotonic())
        self.scores[name].add_fused(FusedRecord(
            key, int(msg.label), tuple(int(d) for d in msg.live_devices),
            tuple(int(d) for d in msg.surrogate_devices), float(msg.latency)))

    def labels(self) -> int:
        """Labels received so far."""
        return len(next(iter(self.scores.values())).truth)

    def first_arrival(self, name: str, after: float,
                      predicate: Callable[[FusedRecord], bool]) -> float | None:
        """Arrival time of the first fused message of ``name`` with ``predicate(record)``.

        Times are ``time.monotonic()`` seconds; only arrivals at or after ``after`` count.
        Returns None when there is none.
        """
        score = self.scores[name]
        return min((t for s, t in self.arrivals[name].items()
                    if t >= after and predicate(score.fused[s])), default=None)

    def first_arrival_with_surrogate(self, name: str, device: int, after: float) -> float | None:
        """Arrival time of the first fused message flagging ``device`` as a surrogate.

        Times are ``time.monotonic()`` seconds; only arrivals at or after ``after`` count.
        Returns None when there is none.
        """
        return self.first_arrival(name, after, lambda record: device in record.surrogates)
