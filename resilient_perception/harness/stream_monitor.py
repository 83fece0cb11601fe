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

from resilient_perception.harness.pipeline import Observer, Pipeline
from resilient_perception.msg import FrameLabel, FusedPrediction
from resilient_perception.perception.stream_score import FusedRecord, StreamScore
from resilient_perception.ros.topics import LABEL_TOPIC

__all__ = ["QUIET_S", "StreamMonitor", "stamp_ns"]

QUIET_S = 0.5
"""Once the source has stopped, the streams are drained when nothing arrived for this long."""


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
        self.last_arrival = time.monotonic()  # of any label or fused message
        # RELIABLE and deep: a scorer must see every message of a burst.
        qos = QoSProfile(depth=1000)
        observer.node.create_subscription(FrameLabel, label_topic, self._on_label, qos)
        for name, topic in streams.items():
            observer.node.create_subscription(
                FusedPrediction, topic, lambda msg, name=name: self._on_fused(name, msg), qos)

    def _on_label(self, msg: FrameLabel) -> None:
        self.last_arrival = time.monotonic()
        for score in self.scores.values():
            score.add_truth(stamp_ns(msg.header.stamp), msg.frame_index, msg.label)

    def _on_fused(self, name: str, msg: FusedPrediction) -> None:
        key = stamp_ns(msg.header.stamp)
        self.last_arrival = time.monotonic()
        self.arrivals[name].setdefault(key, self.last_arrival)
        self.scores[name].add_fused(FusedRecord(
            key, int(msg.label), tuple(int(d) for d in msg.live_devices),
            tuple(int(d) for d in msg.surrogate_devices), float(msg.latency)))

    def labels(self) -> int:
        """Labels received so far."""
        return len(next(iter(self.scores.values())).truth)

    def drain(self, observer: Observer, timeout: float = 10.0,
              pipeline: Pipeline | None = None) -> None:
        """Spin ``observer`` until every labelled frame is fused and :data:`QUIET_S` passed quietly.

        Call it after the source (player) has exited. Labels and fused predictions
        published while the caller did not spin (a slow kill, a stalled machine) wait in the
        observer's readers; stopping at "every label read so far is fused" would end the
        count before they are read, and score fewer frames than were played. So it spins
        until nothing has arrived for :data:`QUIET_S` (counted from the drain's start).

        Raises:
            TimeoutError: If frames are still unfused or messages still arriving after
                ``timeout`` s.
        """
        start = time.monotonic()

        def quiet_for() -> float:
            return time.monotonic() - max(self.last_arrival, start)

        def drained() -> bool:
            return quiet_for() >= QUIET_S and not any(
                score.unfused() for score in self.scores.values())

        def undrained() -> str:
            return f"a drained stream (last message {quiet_for():.2f} s ago; " + "; ".join(
                f"{name}: {score.describe_unfused()}" for name, score in self.scores.items()
            ) + ")"

        observer.spin_until(drained, undrained, timeout, pipeline)

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
