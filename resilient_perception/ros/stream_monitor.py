"""An in-process subscriber that scores the live pipeline: labels vs fused streams.

Used by the demo, the benchmark and the stream tests: it subscribes to the ground-truth
``FrameLabel`` topic and to one or more ``FusedPrediction`` topics (e.g. the fusion node
with the Modifier and a second one without it), feeds a
:class:`~resilient_perception.core.stream_score.StreamScore` per stream, and remembers when
each fused message arrived so failure reaction times can be measured. It spins in its own
thread; every public method is safe to call from the main thread.
"""

from __future__ import annotations

import contextlib
import threading
import time

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from resilient_perception.core.stream_score import FusedRecord, StreamScore
from resilient_perception.msg import FrameLabel, FusedPrediction

__all__ = ["StreamMonitor", "stamp_ns"]


def stamp_ns(stamp) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds (the frame join key)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StreamMonitor:
    """Scores fused streams against the label topic while the pipeline runs.

    Args:
        streams: stream name -> ``FusedPrediction`` topic.
        n_devices: devices in the fleet.
        label_topic: the ``FrameLabel`` topic.
        node_name: name of the monitor's node.

    """

    def __init__(
        self,
        streams: dict[str, str],
        n_devices: int,
        label_topic: str = "perception/label",
        node_name: str = "stream_monitor",
    ) -> None:
        """Create the node in a private context (call :meth:`start` to spin it)."""
        self._lock = threading.Lock()
        self.scores = {name: StreamScore(n_devices) for name in streams}
        self.arrivals: dict[str, dict[int, float]] = {name: {} for name in streams}
        self._context = Context()
        rclpy.init(context=self._context)
        self.node = Node(node_name, context=self._context)
        # RELIABLE and deep: a scorer must see every message of a burst.
        qos = QoSProfile(depth=200)
        self.node.create_subscription(FrameLabel, label_topic, self._on_label, qos)
        for name, topic in streams.items():
            self.node.create_subscription(
                FusedPrediction, topic, lambda msg, name=name: self._on_fused(name, msg), qos)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=node_name, daemon=True)

    def _spin(self) -> None:
        with contextlib.suppress(ExternalShutdownException):
            self._executor.spin()

    def _on_label(self, msg: FrameLabel) -> None:
        with self._lock:
            for score in self.scores.values():
                score.add_truth(stamp_ns(msg.header.stamp), msg.frame_index, msg.label)

    def _on_fused(self, name: str, msg: FusedPrediction) -> None:
        now = time.monotonic()
        key = stamp_ns(msg.header.stamp)
        record = FusedRecord(key, int(msg.label), tuple(int(d) for d in msg.live_devices),
                             tuple(int(d) for d in msg.surrogate_devices), float(msg.latency))
        with self._lock:
            self.arrivals[name].setdefault(key, now)
            self.scores[name].add_fused(record)

    def start(self) -> StreamMonitor:
        """Start spinning in a background thread; returns self."""
        self._thread.start()
        return self

    def summary(self, name: str) -> dict:
        """:meth:`StreamScore.summary` of stream ``name`` (a consistent snapshot)."""
        with self._lock:
            return self.scores[name].summary()

    def counts(self) -> dict[str, int]:
        """Fused messages received per stream, and labels received."""
        with self._lock:
            out = {name: len(score.fused) for name, score in self.scores.items()}
            out["labels"] = len(next(iter(self.scores.values())).truth) if self.scores else 0
            return out

    def first_arrival_with_surrogate(self, name: str, device: int, after: float) -> float | None:
        """Arrival time of the first fused message flagging ``device`` as a surrogate.

        Times are ``time.monotonic()`` seconds; only arrivals at or after ``after`` count.
        Returns None when there is none.
        """
        with self._lock:
            score = self.scores[name]
            times = [t for s, t in self.arrivals[name].items()
                     if t >= after and device in score.fused[s].surrogates]
        return min(times, default=None)

    def wait_for(self, predicate, timeout: float, period: float = 0.05) -> bool:
        """Poll ``predicate(self)`` until it is true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(period)
        return bool(predicate(self))

    def close(self) -> None:
        """Stop spinning and destroy the node and its context."""
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._context)
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def __enter__(self) -> StreamMonitor:
        """Start and return self."""
        return self.start()

    def __exit__(self, *exc) -> None:
        """Close."""
        self.close()
