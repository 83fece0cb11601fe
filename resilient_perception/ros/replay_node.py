"""Replay node: plays a rosbag2 bag into the live graph, a drop-in for the dataset player.

Publishes every topic of the bag at ``bag_path`` (except ``exclude_topics``) with the
recorded timing: a message logged ``t`` after the first played one is published ``t / rate``
after playback starts. Topic names are published *relative* (``/camera_0/image_raw`` as
``camera_0/image_raw``), so a node namespace and ``-r from:=to`` remappings apply exactly as
they do to the player. Each topic's publisher offers the QoS the bag recorded for it (as
``ros2 bag play`` does; rosbag2's default, RELIABLE depth 10, when none or conflicting ones
were recorded). Messages are published as the recorded bytes, never deserialised.

Stamps: by default every message that starts with a ``std_msgs/Header`` gets a fresh
``header.stamp``: its recorded stamp moved by what its log time moved, i.e. its scheduled
publish time on the node clock plus its recorded stamp's offset from its log time (divided
by ``rate``). In a camera bag (stamp = log time) the messages of one recorded frame (the
cameras' images and the label) then share one fresh stamp, as the player's do; in a bag of
free-running cameras each image keeps its stamp's distance to the other cameras' and lies
as far in the past as it did when recorded, and the fusion node's ``sync_tolerance`` groups
them. A stamp more than :data:`MAX_STAMP_OFFSET_S` from its log time (another clock, e.g.
simulated time) is replaced by the publish time. The fusion node needs fresh stamps: it
reports latency as *now - stamp* and drops frames whose stamp is not newer than the last
fused one, so original stamps give meaningless latencies and, when looping, only stale
frames. ``original_stamps: true`` keeps the recorded stamps (a one-pass replay into tools
that compare stamps with the recording).

Bags: the package's camera bags (``record-dataset``), and bags of real cameras as ``ros2 bag
record`` writes them: messages are published at their own log times (messages logged at
the same instant together), whatever camera they are from, and ``sensor_msgs/
CompressedImage`` topics (``camera_<i>/image_raw/compressed``) are played like any other.

Timing: each message is due at a point on the monotonic clock; the node sleeps until just
before it and spins the last fraction of a millisecond, so publish times do not drift and
do not inherit timer jitter. On a loaded CPU the playback thread still waits for a core;
``realtime_priority`` gives it SCHED_FIFO (root or CAP_SYS_NICE), which keeps frames within
a fraction of a millisecond (docs/results/bags). After the run it logs (and writes to
``stats_path`` as JSON) how late frames were published and the error of the intervals
between frames (a frame: the messages of one log time, i.e. one camera's image in a bag of
free-running cameras).

Like the player: ``warmup_frames`` publishes the first frame's non-label messages (those
logged within half a frame period of the first, one per topic) that many times, each time
with its recorded offsets, before playing (every camera is heard once before the first
labelled frame), with ``warmup_fused_topic`` until a fused prediction there has every
camera of that frame live (:mod:`~resilient_perception.ros.warmup`),
``wait_for_subscribers`` waits for that many
subscribers on every camera topic (every topic if the bag has no camera topics),
``wait_for_label_subscribers`` for that many on the label topic (a scorer or recorder must
not miss the first labels), and ``on_end`` is ``stop`` (keep running) or ``shutdown`` (wait
until the last messages are acknowledged, exit 0).

Exit codes: 0 after SIGINT/SIGTERM or a ``shutdown`` end, 1 when the bag turns out damaged
while playing, 2 for an invalid parameter or a bag that cannot be played (missing,
truncated, corrupt, a camera topic missing, a message type not installed).
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.task import Future
from rosbags.interfaces import Qos

from resilient_perception.ros.bags import (
    LABEL_TYPE,
    BagError,
    camera_topics,
    has_header,
    header_stamp,
    iter_messages,
    restamp,
    summarize,
)
from resilient_perception.ros.node_utils import descriptor, run_node
from resilient_perception.ros.warmup import declare_warmup

__all__ = ["MAX_STAMP_OFFSET_S", "ON_END", "ReplayNode", "main", "recorded_qos",
           "timing_stats"]

ON_END = ("stop", "shutdown")
# Sleep until this long before a message is due, then spin: sleep overshoots by ~0.1 ms.
_SPIN_S = 0.0005
# Longest single sleep, so a stop request is noticed during long gaps in a bag.
_MAX_SLEEP_S = 0.1
_INFINITE_NS = 9223372036854775807
MAX_STAMP_OFFSET_S = 1.0
"""A recorded stamp further than this from its message's log time is not on the log clock."""
_MAX_STAMP_OFFSET_NS = round(MAX_STAMP_OFFSET_S * 1e9)


def _duration(time_: tuple[int, int]) -> Duration | None:
    ns = time_[0] * 1_000_000_000 + time_[1]
    return None if ns in (0, _INFINITE_NS) else Duration(nanoseconds=ns)


def _policy(enum: type, value: int):
    """The rclpy policy of a recorded value; unknown ones fall back to the system default."""
    try:
        policy = enum(value)
    except ValueError:
        return enum.SYSTEM_DEFAULT
    return enum.SYSTEM_DEFAULT if policy.name == "UNKNOWN" else policy


def recorded_qos(profiles: tuple[Qos, ...]) -> QoSProfile | None:
    """The profile to offer for a topic whose publishers offered ``profiles``.

    As rosbag2's player: when all recorded publishers agree on what decides compatibility
    (reliability, durability, deadline, liveliness and its lease), offer that; otherwise,
    or when nothing was recorded, None (the caller offers rosbag2's default).
    """
    if not profiles:
        return None
    first = profiles[0]

    def key(q: Qos) -> tuple:
        return (q.reliability, q.durability, q.deadline, q.liveliness,
                q.liveliness_lease_duration)

    if any(key(q) != key(first) for q in profiles[1:]):
        return None
    # DDS does not tell subscribers a publisher's history, so recordings of live topics
    # say "unknown", depth 0: offer rosbag2's default history then, KEEP_LAST 10.
    history = _policy(HistoryPolicy, first.history.value)
    keep_last = history == HistoryPolicy.KEEP_LAST and first.depth > 0
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_ALL if history == HistoryPolicy.KEEP_ALL
        else HistoryPolicy.KEEP_LAST,
        depth=first.depth if keep_last else 10,
        reliability=_policy(ReliabilityPolicy, first.reliability.value),
        durability=_policy(DurabilityPolicy, first.durability.value),
        liveliness=_policy(LivelinessPolicy, first.liveliness.value))
    for name, value in (("deadline", first.deadline), ("lifespan", first.lifespan),
                        ("liveliness_lease_duration", first.liveliness_lease_duration)):
        duration = _duration(value)
        if duration is not None:
            setattr(qos, name, duration)
    return qos


def _message_class(msgtype: str) -> type:
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        raise BagError(f"message type {msgtype} is not installed (no Python module "
                       f"{package}.{kind} with {name}): install or build its package") from None


def timing_stats(scheduled_ns: list[int], actual_ns: list[int]) -> dict:
    """Publish timing of frames: lateness and inter-frame interval error, in milliseconds.

    Args:
        scheduled_ns: When each frame was due (monotonic ns).
        actual_ns: When its first message was published (monotonic ns).

    Returns:
        ``frames``, and p50/p99/max of ``lateness_ms`` (actual - due) and of
        ``interval_error_ms`` (|actual interval - due interval| between consecutive frames).
    """
    due, actual = np.asarray(scheduled_ns, np.int64), np.asarray(actual_ns, np.int64)

    def summary(values: np.ndarray) -> dict:
        if values.size == 0:
            return {"p50": None, "p99": None, "max": None}
        ms = values.astype(np.float64) / 1e6
        return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                "max": float(ms.max())}

    return {"frames": int(due.size), "lateness_ms": summary(actual - due),
            "interval_error_ms": summary(np.abs(np.diff(actual) - np.diff(due)))}


class ReplayNode(Node):
    """Plays a bag's topics with the recorded timing; see the module docstring."""

    def __init__(self, node_name: str = "replay_node", **kwargs) -> None:
        """Declare and check the parameters, read the bag's metadata, create the publishers.

        Raises:
            InvalidParameterValueException: For a value no range can express.
            BagError: If the bag cannot be played.
        """
        super().__init__(node_name, **kwargs)
        i, d, s, b, sa = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE,
                          ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_BOOL,
                          ParameterType.PARAMETER_STRING_ARRAY)
        self.declare_parameter("bag_path", "", descriptor(
            "The rosbag2 bag folder to play (e.g. from `resilient-perception "
            "record-dataset`).", s))
        self.declare_parameter("rate", 1.0, descriptor(
            "Playback speed factor: 2.0 plays twice as fast as recorded.", d,
            float_range=(0.01, 1000.0)))
        self.declare_parameter("start_offset", 0.0, descriptor(
            "Skip the first seconds of the bag (bag time).", d, float_range=(0.0, 1e9)))
        self.declare_parameter("loop", False, descriptor(
            "Play the bag again and again (fresh stamps each pass).", b))
        self.declare_parameter("exclude_topics", [""], descriptor(
            "Topics of the bag not to publish, e.g. [camera_3/image_raw] to drop a camera.",
            sa))
        self.declare_parameter("original_stamps", False, descriptor(
            "Keep the recorded header stamps instead of stamping with the publish time.", b))
        self.declare_parameter("wait_for_subscribers", 0, descriptor(
            "Before playing, wait until every camera topic has this many subscribers.", i,
            (0, 1000)))
        self.declare_parameter("wait_for_label_subscribers", 0, descriptor(
            "Before playing, also wait until the FrameLabel topic has this many subscribers.",
            i, (0, 1000)))
        self.declare_parameter("on_end", "stop", descriptor(
            "After the last message: 'stop' publishing and keep running, or 'shutdown'.", s))
        self.declare_parameter("realtime_priority", 0, descriptor(
            "SCHED_FIFO priority of the playback thread (1-99; needs CAP_SYS_NICE or root) "
            "so CPU load from other processes cannot delay frames; 0 = normal scheduling.",
            i, (0, 99)))
        self.declare_parameter("stats_path", "", descriptor(
            "Write the publish timing statistics here (JSON) after the run; empty: only log.",
            s))
        self._warmup = declare_warmup(self)
        p = {name: self.get_parameter(name).value for name in (
            "bag_path", "rate", "start_offset", "loop", "exclude_topics", "original_stamps",
            "wait_for_subscribers", "wait_for_label_subscribers", "on_end", "realtime_priority",
            "stats_path")}
        if p["on_end"] not in ON_END:
            raise InvalidParameterValueException("on_end", p["on_end"], f"one of {ON_END}")
        if not p["bag_path"]:
            raise InvalidParameterValueException("bag_path", "", "set it to a bag folder")
        if p["original_stamps"] and self._warmup.needed:
            raise InvalidParameterValueException(
                "original_stamps", True, "warm-up frames (warmup_frames, warmup_fused_topic) "
                "need fresh stamps: repeated frames with one stamp are duplicates")

        self.bag = summarize(p["bag_path"])
        if "cameras" in self.bag.custom:  # a camera bag: it must have all its cameras
            cameras = set(camera_topics(self.bag))
        else:
            cameras = {t for t in self.bag.topics
                       if t.rstrip("/").endswith(("image_raw", "image_raw/compressed"))}
        excluded = {"/" + t.lstrip("/") for t in p["exclude_topics"] if t}
        unknown = sorted(excluded - set(self.bag.topics))
        if unknown:
            raise InvalidParameterValueException(
                "exclude_topics", p["exclude_topics"],
                f"{unknown} not in the bag; its topics are {sorted(self.bag.topics)}")
        self.topics = sorted(set(self.bag.topics) - excluded)
        self.rate, self.loop, self.on_end = p["rate"], p["loop"], p["on_end"]
        self.original_stamps = p["original_stamps"]
        self._cameras = cameras
        self.stats_path, self.realtime_priority = p["stats_path"], p["realtime_priority"]
        self.start_ns = self.bag.start_ns + round(p["start_offset"] * 1e9)
        self._restamp = {t: not self.original_stamps and has_header(self.bag.topics[t].msgtype)
                         for t in self.topics}
        self._pubs = {}
        for topic in self.topics:
            summary = self.bag.topics[topic]
            qos = recorded_qos(summary.qos)
            if qos is None:
                self.get_logger().warning(f"{topic}: no single recorded QoS; offering "
                                          "RELIABLE, VOLATILE, depth 10")
                qos = QoSProfile(depth=10)
            self._pubs[topic] = self.create_publisher(
                _message_class(summary.msgtype), topic.lstrip("/"), qos)
        # (publisher, subscribers it waits for) before the first message
        waited = [t for t in self.topics if t in cameras] or self.topics
        self._waits = [(self._pubs[t], p["wait_for_subscribers"]) for t in waited]
        self._waits += [(self._pubs[t], p["wait_for_label_subscribers"]) for t in self.topics
                        if self.bag.topics[t].msgtype == LABEL_TYPE]
        self.published = 0  # messages
        self.published_bytes = 0
        self.scheduled_ns: list[int] = []  # per played frame: when due (monotonic)
        self.actual_ns: list[int] = []  # when its first message went out
        self.finished = Future()  # done when on_end is 'shutdown' and the bag has played
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="replay", daemon=True)
        span = f"from {p['start_offset']:g} s " if p["start_offset"] else ""
        self.get_logger().info(
            f"playing {self.bag.path} {span}at {self.rate:g}x"
            f"{', looped' if self.loop else ''}: {len(self.topics)} topics "
            f"({', '.join(self._pubs[t].topic_name for t in self.topics)})"
            + (f", excluding {sorted(excluded)}" if excluded else ""))

    def start(self) -> None:
        """Start playing in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the playback thread to stop and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- playback --------------------------------------------------------------------------
    def _sleep_until(self, due_ns: int) -> bool:
        """Wait until monotonic ``due_ns``; False if a stop was requested meanwhile."""
        while (left := (due_ns - time.monotonic_ns()) / 1e9) > _SPIN_S:
            if self._stop.wait(min(left - _SPIN_S, _MAX_SLEEP_S)):
                return False
        while time.monotonic_ns() < due_ns:
            pass
        return not self._stop.is_set()

    def _messages(self) -> Iterator[tuple[str, int, bytes]]:
        for topic, _, log_ns, data in iter_messages(self.bag.path, self.topics, self.start_ns):
            yield topic, log_ns, data

    def _set_realtime(self) -> None:
        if not self.realtime_priority:
            return
        try:  # pid 0: the calling thread only
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
        except (OSError, AttributeError) as exc:
            self.get_logger().warning(f"cannot use SCHED_FIFO priority "
                                      f"{self.realtime_priority} ({exc}); normal scheduling")

    def _play(self) -> None:
        try:
            self._set_realtime()
            # Objects made so far (modules, the node) are never garbage: keep the collector
            # from walking them in the middle of a frame.
            gc.freeze()
            self._wait_for_subscribers()
            # Bag time -> monotonic time: t0 + (log - first) / rate, plus a pass offset.
            clock_offset = self.get_clock().now().nanoseconds - time.monotonic_ns()
            period = round(self.bag.frame_period_ns() / self.rate)
            t0 = time.monotonic_ns() + period
            first, messages = _first_frame(self._messages(), self.bag.sync_tolerance_ns())
            if not first:
                self.get_logger().warning(f"nothing to play in {self.bag.path} from the offset")
                self._finish()
                return
            unlabelled = [m for m in first if self.bag.topics[m[0]].msgtype != LABEL_TYPE]
            self._warmup.live_devices = sum(m[0] in self._cameras for m in unlabelled)
            warmed = not self._warmup.needed
            first_log = first[0][1]
            while not warmed:
                if self._play_pass(iter(unlabelled), first_log, t0, clock_offset) is None:
                    return
                warmed = self._warmup.frame_sent()
                t0 += period
            while True:
                last_due = self._play_pass(messages, first_log, t0, clock_offset)
                if last_due is None or not self.loop:
                    break
                t0 = last_due + period
                messages = self._messages()
            if last_due is not None:
                self._finish()
        except Exception as exc:
            if not self.context.ok():  # SIGINT/SIGTERM shut ROS down under a publish
                return
            # A storage file damaged past its index (BagError), or a publish that failed.
            self.error = exc
            self.get_logger().error(f"playback stopped: {type(exc).__name__}: {exc}")
            self.finished.set_result(False)

    def _play_pass(self, messages, first_log: int, t0: int, clock_offset: int) -> int | None:
        """Play one pass; returns the monotonic time its last frame was due (None: stopped).

        A message logged at ``log`` is due at ``t0 + (log - first_log) / rate``; messages
        logged at the same instant (a camera bag's frame) go out together.
        """
        frame, frame_log = [], None
        due = t0
        for message in messages:
            if frame and message[1] != frame_log:
                if not self._publish_frame(frame, due, clock_offset):
                    return None
                frame = []
            frame_log = message[1]
            due = t0 + round((frame_log - first_log) / self.rate)
            frame.append(message)
        if frame and not self._publish_frame(frame, due, clock_offset):
            return None
        return due

    def _publish_frame(self, frame: list[tuple[str, int, bytes]], due_ns: int,
                       clock_offset: int) -> bool:
        """Publish messages of one bag time at ``due_ns``; False if stopped first."""
        if not self._sleep_until(due_ns):
            return False
        self.actual_ns.append(time.monotonic_ns())
        self.scheduled_ns.append(due_ns)
        stamp = due_ns + clock_offset
        for topic, log_ns, data in frame:
            if self._restamp[topic]:
                data = restamp(data, stamp + self._stamp_offset(data, log_ns))
            self._pubs[topic].publish(data)
            self.published += 1
            self.published_bytes += len(data)
        return True

    def _stamp_offset(self, data: bytes, log_ns: int) -> int:
        """How far a message's fresh stamp lies from its publish time: as recorded, / rate."""
        offset = header_stamp(data) - log_ns
        return round(offset / self.rate) if abs(offset) <= _MAX_STAMP_OFFSET_NS else 0

    def _wait_for_subscribers(self) -> None:
        while not self._stop.is_set() and any(
                pub.get_subscription_count() < count for pub, count in self._waits):
            self._stop.wait(0.05)

    def _finish(self) -> None:
        stats = timing_stats(self.scheduled_ns, self.actual_ns)
        seconds = (self.actual_ns[-1] - self.actual_ns[0]) / 1e9 if self.actual_ns else 0.0
        stats.update(messages=self.published, bytes=self.published_bytes, seconds=seconds,
                     rate=self.rate, bag=str(self.bag.path))
        late, interval = stats["lateness_ms"], stats["interval_error_ms"]
        self.get_logger().info(
            f"played {self.published} messages in {stats['frames']} frames; lateness p50 "
            f"{late['p50']} ms p99 {late['p99']} ms, interval error p50 {interval['p50']} ms "
            f"p99 {interval['p99']} ms; {self.on_end}")
        if self.stats_path:
            Path(self.stats_path).write_text(json.dumps(stats, indent=2) + "\n")
        if self.on_end == "shutdown":  # run_node flushes the last messages on the way out
            self.finished.set_result(True)


def _first_frame(messages: Iterator[tuple[str, int, bytes]], window_ns: int
                 ) -> tuple[list[tuple[str, int, bytes]], Iterator[tuple[str, int, bytes]]]:
    """The first frame's messages, and an iterator over all messages (those too).

    The first frame is the messages logged less than ``window_ns`` after the first one (at
    the same instant for a window of 0), one per topic: a camera bag's first bag time, or
    each free-running camera's first image.
    """
    first: list[tuple[str, int, bytes]] = []
    for message in messages:
        if first and (message[1] - first[0][1] >= max(window_ns, 1)
                      or any(message[0] == m[0] for m in first)):
            return first, itertools.chain(first, [message], messages)
        first.append(message)
    return first, iter(first)


def _start(node: ReplayNode) -> None:
    node.start()


def _stop(node: ReplayNode) -> int | None:
    node.stop()
    return 1 if node.error is not None else None


def main(argv: list[str] | None = None) -> int:
    """Run the replay node until SIGINT/SIGTERM (or its end with ``on_end: shutdown``)."""
    return run_node(ReplayNode, "replay_node", argv, on_created=_start, on_exit=_stop,
                    startup_errors={BagError: (2, "cannot play the bag")})

if __name__ == "__main__":
    raise SystemExit(main())
