"""Fusion node: groups the devices' predictions by frame and fuses them with surrogates.

Subscribes, for each device ``i`` in ``0..num_devices-1``,

* ``prediction_topic_format.format(i)`` (``DevicePrediction``) with
  :func:`~resilient_perception.ros.topics.prediction_qos` (requested deadline and liveliness
  lease from the parameters; a camera must offer values <= these, else DDS never matches
  them) and QoS event callbacks: a missed deadline or lost liveliness marks the device dead;
* ``head_topic_format.format(i)`` (``ClassifierHead``, transient local) for the Modifier.

Publishes

* ``output_topic`` (``FusedPrediction``): one per source stamp, in stamp order;
* ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``) every ``diagnostics_period``: one
  status per device (OK alive, WARN never heard, ERROR dead) and one for the rejections.

All fusion logic is in :mod:`resilient_perception.perception.frame_assembly`; this node converts
messages, forwards QoS events and runs two timers: the watchdog every
``watchdog_timeout / 10``, and, only while a frame waits for a late device, the frame
timeouts every ``frame_timeout / 10``. Every wake-up of an rclpy executor costs about a
millisecond of CPU in a node with this many subscriptions and events, so a fixed 100 Hz
timer alone took 15% of a core on an idle pipeline.

Time: every "now" (arrival times, frame and watchdog timeouts, ``latency``) is the node's
clock in seconds, i.e. system time, or ``/clock`` with ``use_sim_time`` (bag replay,
Gazebo), so latency is comparable with the source stamps. System time is not monotonic:
a clock step makes one round of timeouts fire early or late, nothing worse.

Class count and feature size come from the ``num_classes`` / ``feature_dim`` parameters,
or, when those are 0 (the default), from the first valid classifier head; predictions
that arrive before the sizes are known are rejected and counted. Bad messages (wrong
sizes, NaN/Inf, a device id that does not match the topic, duplicate or stale stamps, a
malformed head) are logged (throttled), counted and dropped; the node never crashes on a
message.

Own stalls: when this node itself stops running for a while (SIGSTOP, swapping, CPU
starvation), its middleware's deadline clocks and its pending frames' timeouts run on while
the devices' predictions wait in its queues. A gap of more than ``stall_threshold`` between
its callbacks (:class:`~resilient_perception.perception.frame_assembly.StallGuard`, wall time)
adds the gap to the pending frames' timeouts and the watchdog's silences, and deadline
events in the next ``deadline`` seconds are doubted (counted in the diagnostics as
``deadlines_doubted``): a device that really went silent misses its next deadline too, so
its death is noticed one deadline later.

Revival: only accepted predictions count as hearing from a device, except that a *stale*
prediction (its frame was already released) from a device that is not ALIVE revives it.
Frames never wait for dead or never-heard devices, so without this a device that comes
(back) up would always report after its frame was released and never be used again. A
device that keeps arriving later than ``frame_timeout`` then alternates between revival
and watchdog death (frames wait ``frame_timeout`` while it is ALIVE).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node

from resilient_perception.msg import ClassifierHead, DevicePrediction, FusedPrediction
from resilient_perception.perception.frame_assembly import (
    AddResult,
    ClassifierHeads,
    DeviceHealth,
    DeviceMonitor,
    FrameAssembler,
    StallGuard,
    fuse_frame,
)
from resilient_perception.ros.node_utils import THROTTLE_S, descriptor, run_node
from resilient_perception.ros.topics import (
    DIAGNOSTICS_TOPIC,
    FUSED_TOPIC,
    HEAD_TOPIC_FORMAT,
    PREDICTION_TOPIC_FORMAT,
    fused_qos,
    head_qos,
    prediction_qos,
)

__all__ = ["FUSION_MODES", "FusionNode", "main"]

FUSION_MODES = ("avg", "max")
TICKS_PER_TIMEOUT = 10  # timer periods per frame_timeout and per watchdog_timeout
MIN_TICK_S = 0.002
_LEVELS = {
    DeviceHealth.ALIVE: DiagnosticStatus.OK,
    DeviceHealth.UNKNOWN: DiagnosticStatus.WARN,
    DeviceHealth.DEAD: DiagnosticStatus.ERROR,
}
# Rejections the node itself decides (the assembler counts the rest).
_NODE_REJECTIONS = ("device_id_mismatch", "sizes_unknown", "bad_head", "callback_error")


class FusionNode(Node):
    """Fuses ``num_devices`` device predictions per frame, with Modifier surrogates."""

    def __init__(self, node_name: str = "fusion_node", **kwargs) -> None:
        """Declare and validate the parameters, create the subscriptions and publishers.

        Raises:
            InvalidParameterValueException: for a ``fusion_mode`` other than avg/max or a
                topic format without a ``{}`` field.
        """
        super().__init__(node_name, **kwargs)
        i, d, s, b = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE,
                      ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_BOOL)
        seconds = (0.001, 3600.0)
        self.declare_parameter("num_devices", 6, descriptor(
            "Number of camera devices (topics are formatted with 0..num_devices-1).", i,
            (1, 64)))
        self.declare_parameter("fusion_mode", "avg", descriptor(
            "Pooling of the device probabilities: 'avg' or 'max'.", s))
        self.declare_parameter("use_modifier", True, descriptor(
            "Insert Modifier surrogates for dead or late devices (else fuse the present "
            "ones only).", b))
        self.declare_parameter("deadline", 0.5, descriptor(
            "Requested QoS deadline of predictions, s; must be >= the cameras' offered.", d,
            float_range=seconds))
        self.declare_parameter("liveliness_lease", 1.0, descriptor(
            "Requested liveliness lease of predictions, s; must be >= the cameras' offered.",
            d, float_range=seconds))
        self.declare_parameter("watchdog_timeout", 1.0, descriptor(
            "A device silent (no accepted prediction) this long is declared dead, s.", d,
            float_range=seconds))
        self.declare_parameter("frame_timeout", 0.1, descriptor(
            "How long a frame waits for late devices after its first prediction, s.", d,
            float_range=seconds))
        self.declare_parameter("num_classes", 0, descriptor(
            "Number of classes; 0 = take it from the first classifier head.", i, (0, 100000)))
        self.declare_parameter("feature_dim", 0, descriptor(
            "Feature vector length; 0 = take it from the first classifier head.", i,
            (0, 1000000)))
        self.declare_parameter("prediction_topic_format", PREDICTION_TOPIC_FORMAT,
                               descriptor("DevicePrediction topic of device i: "
                                          "format(i).", s))
        self.declare_parameter("head_topic_format", HEAD_TOPIC_FORMAT, descriptor(
            "ClassifierHead topic of device i (transient local): format(i).", s))
        self.declare_parameter("output_topic", FUSED_TOPIC, descriptor(
            "FusedPrediction topic.", s))
        self.declare_parameter("stall_threshold", 0.25, descriptor(
            "A gap this long between this node's own callbacks means the node itself "
            "stalled: deadline events are then doubted for one deadline and pending frames "
            "get the gap added to their timeout, s; must exceed watchdog_timeout / 10 (the "
            "watchdog's tick).", d, float_range=seconds))
        self.declare_parameter("diagnostics_period", 1.0, descriptor(
            "Period of /diagnostics, s.", d, float_range=seconds))

        p = {name: self.get_parameter(name).value for name in (
            "num_devices", "fusion_mode", "use_modifier", "deadline", "liveliness_lease",
            "watchdog_timeout", "frame_timeout", "num_classes", "feature_dim",
            "prediction_topic_format", "head_topic_format", "output_topic",
            "stall_threshold", "diagnostics_period")}
        if p["fusion_mode"] not in FUSION_MODES:
            raise InvalidParameterValueException(
                "fusion_mode", p["fusion_mode"], f"must be one of {FUSION_MODES}")
        for name in ("prediction_topic_format", "head_topic_format"):
            if p[name].format(0) == p[name].format(1):
                raise InvalidParameterValueException(name, p[name], "needs a '{}' field")
        tick = max(p["watchdog_timeout"] / TICKS_PER_TIMEOUT, MIN_TICK_S)
        if p["stall_threshold"] <= tick:
            raise InvalidParameterValueException(
                "stall_threshold", p["stall_threshold"],
                f"must exceed the watchdog's tick (watchdog_timeout / {TICKS_PER_TIMEOUT} = "
                f"{tick:g} s): the node's callbacks are that far apart when idle")
        self.n_devices = p["num_devices"]
        self.mode, self.use_modifier = p["fusion_mode"], p["use_modifier"]
        self.stall_guard = StallGuard(p["stall_threshold"], grace=p["deadline"])
        self.deadlines_doubted = 0
        self.frame_timeout = p["frame_timeout"]
        self.monitor = DeviceMonitor(self.n_devices, p["watchdog_timeout"])
        self.monitor.start(self._now())
        self.assembler: FrameAssembler | None = None
        self.heads: ClassifierHeads | None = None
        self.rejections = dict.fromkeys(_NODE_REJECTIONS, 0)
        self.fused_count = 0
        # Seconds from the start of the callback that released a frame to its publish: the
        # fusion node's own share of the end-to-end latency (reported in the diagnostics).
        self._fusion_times: deque[float] = deque(maxlen=1000)
        self._bad_heads = [0] * self.n_devices
        # (time, accepted-message counts) at the previous diagnostics, for the rates
        self._last_counts: tuple[float, list[int]] | None = None
        if p["num_classes"] > 0 and p["feature_dim"] > 0:
            self._set_sizes(p["num_classes"], p["feature_dim"])

        self._pub = self.create_publisher(FusedPrediction, p["output_topic"], fused_qos())
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        pred_qos = prediction_qos(p["deadline"], p["liveliness_lease"])
        self._subs = []
        for device in range(self.n_devices):
            events = SubscriptionEventCallbacks(
                deadline=lambda info, dev=device: self._on_deadline(dev, info),
                liveliness=lambda info, dev=device: self._on_liveliness(dev, info))
            self._subs.append(self.create_subscription(
                DevicePrediction, p["prediction_topic_format"].format(device),
                lambda msg, dev=device: self._on_prediction(dev, msg), pred_qos,
                event_callbacks=events))
            self._subs.append(self.create_subscription(
                ClassifierHead, p["head_topic_format"].format(device),
                lambda msg, dev=device: self._on_head(dev, msg), head_qos()))
        # Cancelled while no frame is pending: in steady state every frame completes as
        # its last device reports, and the timer never fires.
        self._release_timer = self.create_timer(
            max(self.frame_timeout / TICKS_PER_TIMEOUT, MIN_TICK_S), self._on_tick)
        self._release_timer.cancel()
        self.create_timer(tick, self._on_tick)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(
            f"fusing {self.n_devices} devices ({self.mode}, modifier "
            f"{'on' if self.use_modifier else 'off'}) -> {self._pub.topic_name}")

    # -- helpers ---------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _check_stall(self) -> None:
        """Called first in every callback that fuses: undo what a stall of this node did."""
        stall = self.stall_guard.observe(time.monotonic())
        if stall:
            # Wall time: the node clock may be simulated, and the stall was real.
            self.monitor.postpone(stall)
            if self.assembler is not None:
                self.assembler.postpone(stall)
            # Not throttled with the rejections (one call site): each stall is news.
            self.get_logger().warning(
                f"this node stalled for {stall:.2f} s: pending frames wait that much longer, "
                "deadline events are doubted for one deadline")

    def _set_sizes(self, n_classes: int, feature_dim: int) -> None:
        self.assembler = FrameAssembler(self.n_devices, n_classes, feature_dim,
                                        self.frame_timeout)
        self.heads = ClassifierHeads.empty(self.n_devices, n_classes, feature_dim)

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=THROTTLE_S)

    def _reject(self, device: int, reason: str, detail: str = "") -> None:
        if reason in self.rejections:
            self.rejections[reason] += 1
        self.monitor.record_rejection(device)
        self._warn(f"device {device}: prediction rejected ({reason}){detail}")

    # -- callbacks -------------------------------------------------------------------------
    def _on_head(self, device: int, msg: ClassifierHead) -> None:
        try:
            k, dim = int(msg.num_classes), int(msg.feature_dim)
            if msg.device_id != device:
                raise ValueError(f"device_id {msg.device_id} on device {device}'s topic")
            if k < 1 or dim < 1 or len(msg.weight) != k * dim or len(msg.bias) != k:
                raise ValueError(f"inconsistent sizes: {k}x{dim} with {len(msg.weight)} "
                                 f"weights and {len(msg.bias)} biases")
            weight = np.asarray(msg.weight, np.float32).reshape(k, dim)
            bias = np.asarray(msg.bias, np.float32)
            if self.heads is None and np.isfinite(weight).all() and np.isfinite(bias).all():
                self._set_sizes(k, dim)
                self.get_logger().info(f"{k} classes, {dim} features (from device {device}'s "
                                       "head)")
            if self.heads is None:
                raise ValueError("non-finite values")
            self.heads.set_head(device, weight, bias)
        except Exception as exc:  # a bad head is logged and counted, never fatal
            self.rejections["bad_head"] += 1
            self._bad_heads[device] += 1
            self._warn(f"device {device}: classifier head rejected: {exc}")
            return
        self.get_logger().info(f"device {device}: classifier head received")

    def _on_prediction(self, device: int, msg: DevicePrediction) -> None:
        started = time.perf_counter()
        try:
            self._check_stall()
            now = self._now()
            if msg.device_id != device:
                self._reject(device, "device_id_mismatch",
                             f": device_id {msg.device_id} on device {device}'s topic")
                return
            if self.assembler is None:
                self._reject(device, "sizes_unknown", ": no classifier head received yet")
                return
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            result = self.assembler.add(
                stamp_ns, device, np.asarray(msg.probabilities, np.float32),
                np.asarray(msg.features, np.float32), now)
            if result is AddResult.ACCEPTED:
                if self.monitor.heard(device, now):
                    self.get_logger().info(f"device {device}: alive")
            else:
                self._reject(device, result.value, f" at stamp {stamp_ns}")
                if (result is AddResult.STALE
                        and self.monitor.health(device) is not DeviceHealth.ALIVE):
                    # Frames do not wait for a dead (or never heard) device, so its
                    # predictions arrive after their frame was released and would stay
                    # stale forever: a timely, valid prediction for a released frame revives
                    # it, and the next frames wait for it again. One that keeps missing the
                    # frame timeout is retired again by the watchdog.
                    self.monitor.heard(device, now)
                    self.get_logger().info(f"device {device}: alive again")
            self._emit(now, started)
        except Exception as exc:  # never crash on a message
            self.rejections["callback_error"] += 1
            self._warn(f"device {device}: prediction failed: {type(exc).__name__}: {exc}")

    def _on_deadline(self, device: int, info) -> None:
        self._mark_dead(device, "deadline")

    def _on_liveliness(self, device: int, info) -> None:
        if info.alive_count == 0:  # the device's last writer is gone (or its lease expired)
            self._mark_dead(device, "liveliness")

    def _mark_dead(self, device: int, reason: str) -> None:
        started = time.perf_counter()
        try:
            self._check_stall()
            now = self._now()
            if reason == "deadline" and self.stall_guard.in_grace(time.monotonic()):
                self.deadlines_doubted += 1
            elif self.monitor.mark_dead(device, reason, now):
                self.get_logger().warning(f"device {device}: dead ({reason})")
            self._emit(now, started)  # frames need not wait for it any more
        except Exception as exc:
            self.rejections["callback_error"] += 1
            self._warn(f"device {device}: {reason} event failed: {type(exc).__name__}: {exc}")

    def _on_tick(self) -> None:
        started = time.perf_counter()
        try:
            self._check_stall()
            now = self._now()
            for device in self.monitor.check_watchdog(now):
                self.get_logger().warning(f"device {device}: dead (watchdog)")
            self._emit(now, started)
        except Exception as exc:
            self.rejections["callback_error"] += 1
            self._warn(f"timer failed: {type(exc).__name__}: {exc}")

    # -- output ----------------------------------------------------------------------------
    def _emit(self, now: float, started: float) -> None:
        if self.assembler is None:
            return
        for frame in self.assembler.ready(now, self.monitor.live_devices()):
            probs, surrogates = fuse_frame(frame, self.heads, self.mode, self.use_modifier)
            label = int(np.argmax(probs))
            msg = FusedPrediction(
                probabilities=probs.tolist(), label=label, confidence=float(probs[label]),
                live_devices=np.flatnonzero(frame.present).tolist(),
                surrogate_devices=surrogates, fusion_mode=self.mode)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(frame.stamp_ns,
                                                                    1_000_000_000)
            msg.latency = self._now() - frame.stamp_ns * 1e-9
            self._pub.publish(msg)
            self.fused_count += 1
            self._fusion_times.append(time.perf_counter() - started)
        if not self.assembler.pending_count:
            self._release_timer.cancel()
        elif self._release_timer.is_canceled():
            self._release_timer.reset()

    def _publish_diagnostics(self) -> None:
        try:
            array = DiagnosticArray()
            array.header.stamp = self.get_clock().now().to_msg()
            name = self.get_name()
            now, snapshot = self._now(), self.monitor.snapshot()
            counts_now = [rec["messages"] for rec in snapshot.values()]
            rates = [0.0] * self.n_devices
            if self._last_counts is not None and now > self._last_counts[0]:
                then, before = self._last_counts
                rates = [(c - b) / (now - then) for c, b in zip(counts_now, before, strict=True)]
            self._last_counts = (now, counts_now)
            for device, rec in snapshot.items():
                health = DeviceHealth(rec["health"])
                status = DiagnosticStatus(
                    level=_LEVELS[health], name=f"{name}: device {device}",
                    hardware_id=f"device_{device}",
                    message=health.value + (f" ({rec['reason']})" if rec["reason"] else ""))
                head = self.heads is not None and bool(self.heads.known[device])
                values = {"health": health.value, "messages": rec["messages"],
                          "rate_hz": round(rates[device], 2),
                          "rejected": rec["rejected"], "deaths": rec["deaths"],
                          "reason": rec["reason"], "head_known": head,
                          "bad_heads": self._bad_heads[device]}
                status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
                array.status.append(status)
            counts = dict(self.assembler.counts) if self.assembler else {}
            counts.update(self.rejections)
            counts["fused"] = self.fused_count
            counts["pending"] = self.assembler.pending_count if self.assembler else 0
            counts["heads_known"] = int(self.heads.known.sum()) if self.heads else 0
            counts["own_stalls"] = self.stall_guard.stalls
            counts["deadlines_doubted"] = self.deadlines_doubted
            if self._fusion_times:
                times_ms = 1e3 * np.asarray(self._fusion_times)
                counts["fusion_ms_p50"] = round(float(np.percentile(times_ms, 50)), 4)
                counts["fusion_ms_p99"] = round(float(np.percentile(times_ms, 99)), 4)
            rejected = sum(v for k, v in counts.items()
                           if k not in ("accepted", "fused", "pending", "heads_known",
                                        "own_stalls", "deadlines_doubted")
                           and not k.startswith("fusion_ms"))
            array.status.append(DiagnosticStatus(
                level=DiagnosticStatus.OK, name=f"{name}: frame assembly",
                hardware_id="fusion",
                message=f"{self.fused_count} frames fused, {rejected} inputs rejected",
                values=[KeyValue(key=k, value=str(v)) for k, v in counts.items()]))
            self._diag_pub.publish(array)
        except Exception as exc:
            self._warn(f"diagnostics failed: {type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    """Run a fusion node until SIGINT/SIGTERM; return the process exit code.

    Exit codes: 0 after SIGINT/SIGTERM, 2 for a parameter of the wrong type or an invalid
    value.
    """
    return run_node(FusionNode, "fusion_node", argv)


if __name__ == "__main__":
    raise SystemExit(main())
