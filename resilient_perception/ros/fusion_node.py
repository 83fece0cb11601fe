"""Fusion node: groups the devices' predictions by frame and fuses them with surrogates.

Subscribes, for each device ``i`` in ``0..num_devices-1``,

* ``prediction_topic_format.format(i)`` (``DevicePrediction``) with
  :func:`~resilient_perception.ros.topics.prediction_qos` (requested deadline and liveliness
  lease from the parameters; a camera must offer values <= these, else DDS never matches
  them; ``qos_overrides.<topic>.subscription.*`` parameters apply on top) and QoS event
  callbacks: a missed deadline or lost liveliness marks the device dead;
* ``head_topic_format.format(i)`` (``ClassifierHead``, transient local) for the Modifier.

Publishes

* ``output_topic`` (``FusedPrediction``): one per frame, in stamp order: the predictions of
  one source stamp, or with ``sync_tolerance`` of stamps at most that far apart
  (free-running cameras; the frame carries the earliest);
* ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``) every ``diagnostics_period``: one
  status per device, ``/ns/fusion: device <i>`` (OK alive, WARN "no input yet" before its
  first prediction, ERROR dead), and ``/ns/fusion: frame assembly`` for the inputs, rejections
  and frames (names with the node's namespace: two robots' fusion nodes are told apart).

Surrogates: with ``use_modifier`` (the default) a frame's missing devices get Modifier
surrogates. With ``surrogate_gate`` they get them only for the failed sets where the gate
of ``evaluate --gated`` found that they help on the model's held-out data
(:mod:`resilient_perception.perception.surrogate_gate`); elsewhere the frame is fused from
its live devices, and ``surrogates_withheld`` on ``/diagnostics`` counts those frames.

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
or, when those are 0 (the default), from the devices' classifier heads: every device votes
with the shape of its latest well-formed head and the shape most devices have is used (a
tie keeps the shape in use; :class:`~resilient_perception.message_checks.HeadShapes`),
so one early bad head is outvoted by the second real one, and a device's later head
replaces its earlier one. When the shape changes, the pending frames (of the old shape) are
dropped. Predictions that arrive before any shape is known are rejected and counted.

Every message is checked against what it can mean before it can change any state
(:mod:`resilient_perception.message_checks`): its serialised size
(``max_prediction_bytes``, ``max_head_bytes``, checked before it is deserialised), the
device id against the topic, the stamp within ``[now - max_stamp_age_s, now +
max_stamp_ahead_s]`` of the node clock, probabilities of the agreed length, finite,
non-negative and summing to 1 within ``probability_tolerance``, features and head values
finite and at most ``max_abs_value`` in magnitude. Only then may a prediction claim its
device's slot in its frame: the first *valid* prediction per device and stamp is used, later
ones are duplicates, so garbage can never displace a device's real prediction. Every
rejection is counted per reason on ``/diagnostics`` and logged with a bounded line at most
once per reason every few seconds; an exception in any callback is counted as
``callback_error``: no message stops the node or its output.

Own stalls: when this node itself stops running for a while (SIGSTOP, swapping, CPU
starvation), its middleware's deadline clocks and its pending frames' timeouts run on while
the devices' predictions wait in its queues. A gap of more than ``stall_threshold`` between
its callbacks (:class:`~resilient_perception.perception.frame_assembly.StallGuard`, wall time)
adds the gap to the devices' silences and to the timeouts of the pending frames and of the
frames stamped during the stall (their devices may have been held up too: a frozen reader
can block its writers' ``publish()``, so a camera catches up after the node does).
``own_stalls`` and their total length ``own_stall_s`` on ``/diagnostics`` count them.

Deadline events: the middleware's deadline clock runs on the arrival of messages, not on
their processing, so while the node works through a backlog (after a stall of its own, or
when it falls behind) a device whose queued predictions it is still reading can miss its
deadline in the middleware's terms only; acting on that, the node fused the rest of the
backlog from the one device it read next. A deadline event is therefore believed only
for a device silent in the node's own terms (no accepted prediction, with stalls added)
for at least half the deadline; otherwise it is counted in the diagnostics as
``deadlines_doubted``. A device that really went silent misses its next deadline too, so
its death is noticed one deadline later at most.

Second writers: DDS security is not available with the PyPI wheels, so any process on the
domain can publish on a device's topics. With every ``/diagnostics`` message the node counts
the publishers the graph shows on each device's prediction and head topic and the distinct
writers (``MessageInfo.publisher_gid``) whose messages arrived since the last one
(:class:`~resilient_perception.ros.writer_watch.WriterWatch`); more than one of either makes
that device's status WARN, naming each writer's node (``publishers``, ``writers_heard``,
``head_publishers``, ``second_writer``; ``devices_with_second_writer`` in the frame-assembly
status). A camera killed with ``kill -9`` and restarted shows two publishers until DDS
drops the dead one's endpoints (its participant lease), but only one writer heard.

Unheard cameras: a camera sends its classifier head as it starts (transient local, so a
reader that matches later gets it too) and again every ``head_period``. A head publisher
that the graph has shown for ``unheard_timeout`` without one message from it reaching this
node means this node is not receiving from that camera, although DDS matched them: Fast
DDS's shared-memory transport can stop delivering to one reader after its peers
crash-loop (docs/results.md, "Soak with chaos"), and nothing else would tell: the device
just looks dead. Its status turns ERROR ("not heard from ...", ``unheard_publishers``;
``devices_unheard`` in the frame-assembly status). With ``exit_when_unheard`` the node then
exits with code 3, so that a launch with ``respawn=True`` starts it again with a new DDS
participant. A camera killed after it was heard is not unheard (its endpoints linger in
the graph until its lease runs out, but that is its death, found by the QoS events and the
watchdog), so a node gone deaf to cameras it had heard is reported once one of them
restarts, as crash-looping cameras do.

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
from rclpy.clock import JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.task import Future

from resilient_perception.message_checks import (
    HeadShapes,
    head_problem,
    probabilities_problem,
    stamp_problem,
    values_problem,
)
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
from resilient_perception.perception.modes import FUSION_MODES
from resilient_perception.perception.surrogate_gate import SurrogateGate, SurrogateGateError
from resilient_perception.ros.node_utils import (
    Rejections,
    capped_subscription,
    descriptor,
    diagnostic_name,
    run_node,
)
from resilient_perception.ros.topics import (
    DIAGNOSTICS_TOPIC,
    FUSED_TOPIC,
    FUSION_ASSEMBLY_STATUS,
    FUSION_DEVICE_STATUS_FORMAT,
    HEAD_QUEUE_DEPTH,
    HEAD_TOPIC_FORMAT,
    PREDICTION_TOPIC_FORMAT,
    fused_qos,
    head_qos,
    prediction_qos,
)
from resilient_perception.ros.writer_watch import TopicWriters, WriterWatch

__all__ = ["FUSION_MODES", "REJECTION_REASONS", "FusionNode", "main"]

TICKS_PER_TIMEOUT = 10  # timer periods per frame_timeout and per watchdog_timeout
MIN_TICK_S = 0.002
_LEVELS = {
    DeviceHealth.ALIVE: DiagnosticStatus.OK,
    DeviceHealth.UNKNOWN: DiagnosticStatus.WARN,
    DeviceHealth.DEAD: DiagnosticStatus.ERROR,
}
_MESSAGES = {DeviceHealth.UNKNOWN: "no input yet"}
# Every rejection reason, reported from the start (0) on /diagnostics: predictions (the
# last three decided by the frame assembler), then classifier heads, then any callback.
REJECTION_REASONS = (
    "oversize", "malformed", "device_id_mismatch", "sizes_unknown", "stamp_ahead",
    "stamp_too_old", "bad_probs_length", "non_finite", "bad_probabilities",
    "bad_features_length", "value_out_of_range", "device_out_of_range", "duplicate", "stale",
    "head_oversize", "head_malformed", "bad_head", "head_shape_mismatch", "callback_error")


class FusionNode(Node):
    """Fuses ``num_devices`` device predictions per frame, with Modifier surrogates."""

    def __init__(self, node_name: str = "fusion_node", **kwargs) -> None:
        """Declare and validate the parameters, create the subscriptions and publishers.

        Raises:
            InvalidParameterValueException: for a ``fusion_mode`` not in FUSION_MODES or a
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
            "Pooling of the device probabilities: 'avg' or 'max' (the paper's), or 'geo' "
            "(renormalised geometric mean).", s))
        self.declare_parameter("use_modifier", True, descriptor(
            "Insert Modifier surrogates for dead or late devices (else fuse the present "
            "ones only).", b))
        self.declare_parameter("surrogate_gate", "", descriptor(
            "Gated result of `resilient-perception evaluate CHECKPOINT --gated MODE` for "
            "this model and fusion_mode (gated.json for avg, gated-MODE.json otherwise): "
            "surrogates only for the failed sets where they beat none on held-out data. "
            "'' = surrogates for every failed set.", s))
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
        self.declare_parameter("sync_tolerance", 0.0, descriptor(
            "Largest spread of the stamps of one frame's predictions, s: 0 groups exact "
            "stamps (the player, recorded datasets, triggered cameras); for free-running "
            "cameras, at least the spread of one scene's stamps across them and below one "
            "frame period minus that spread (e.g. 0.015 at 30 Hz for cameras up to 12 ms "
            "apart).", d,
            float_range=(0.0, 10.0)))
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
            "stalled: the gap is added to the devices' silences and to the pending frames' "
            "timeouts, s; must exceed watchdog_timeout / 10 (the watchdog's tick).", d,
            float_range=seconds))
        self.declare_parameter("diagnostics_period", 1.0, descriptor(
            "Period of /diagnostics, s.", d, float_range=seconds))
        self.declare_parameter("max_stamp_ahead_s", 1.0, descriptor(
            "Predictions stamped more than this ahead of the node clock are rejected, s "
            "(one stamped far ahead would make every later frame stale).", d,
            float_range=(0.0, 3600.0)))
        self.declare_parameter("max_stamp_age_s", 30.0, descriptor(
            "Predictions stamped more than this before the node clock are rejected, s "
            "(raise it to fuse a replay with its recorded stamps).", d,
            float_range=(0.001, 1e10)))
        self.declare_parameter("probability_tolerance", 1e-3, descriptor(
            "Probabilities must sum to 1 within this.", d, float_range=(1e-7, 1.0)))
        self.declare_parameter("max_abs_value", 1e6, descriptor(
            "Largest magnitude accepted in features and classifier heads (keeps the "
            "surrogates finite).", d, float_range=(1.0, 1e18)))
        self.declare_parameter("max_prediction_bytes", 65536, descriptor(
            "Larger serialised DevicePredictions are rejected before they are deserialised, "
            "bytes.", i, (256, 1 << 30)))
        self.declare_parameter("max_head_bytes", 1 << 20, descriptor(
            "Larger serialised ClassifierHeads are rejected before they are deserialised, "
            "bytes.", i, (256, 1 << 30)))
        self.declare_parameter("unheard_timeout", 10.0, descriptor(
            "A device's classifier-head publisher (QoS-compatible) in the graph this long "
            "with nothing received from it makes the device ERROR on /diagnostics: this "
            "node is not receiving from a camera that runs, s; 0 = off. Cameras send their "
            "head at start and every head_period.", d, float_range=(0.0, 3600.0)))
        self.declare_parameter("exit_when_unheard", False, descriptor(
            "Exit with code 3 when a device is unheard (unheard_timeout), for a launch "
            "with respawn=True to start the node again with a new DDS participant.", b))

        p = {name: self.get_parameter(name).value for name in (
            "num_devices", "fusion_mode", "use_modifier", "surrogate_gate", "deadline",
            "liveliness_lease",
            "watchdog_timeout", "frame_timeout", "sync_tolerance", "num_classes",
            "feature_dim",
            "prediction_topic_format", "head_topic_format", "output_topic",
            "stall_threshold", "diagnostics_period", "max_stamp_ahead_s", "max_stamp_age_s",
            "probability_tolerance", "max_abs_value", "max_prediction_bytes",
            "max_head_bytes", "unheard_timeout", "exit_when_unheard")}
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
        self.surrogate_gate = None
        if p["surrogate_gate"]:
            try:
                self.surrogate_gate = SurrogateGate.load(p["surrogate_gate"], self.mode,
                                                         self.n_devices)
            except SurrogateGateError as exc:
                raise InvalidParameterValueException(
                    "surrogate_gate", p["surrogate_gate"], str(exc)) from None
            self.get_logger().info(
                f"surrogate gate {p['surrogate_gate']}: no surrogates for "
                f"{self.surrogate_gate.withheld} of "
                f"{len(self.surrogate_gate.failed_sets)} failed sets")
        self.surrogates_withheld = 0  # frames the gate fused from their live devices only
        self.stall_guard = StallGuard(p["stall_threshold"])
        self.deadlines_doubted = 0
        self.frame_timeout = p["frame_timeout"]
        self.sync_tolerance_ns = round(p["sync_tolerance"] * 1e9)
        self.monitor = DeviceMonitor(self.n_devices, p["watchdog_timeout"])
        self.stamp_window = (p["max_stamp_ahead_s"], p["max_stamp_age_s"])
        self.probability_tolerance = p["probability_tolerance"]
        self.max_abs = p["max_abs_value"]
        self.assembler: FrameAssembler | None = None
        self._splits_reported = 0  # the assembler's split_frames at the last diagnostics
        # Silences and frame waits are measured on the node clock, and a simulated clock
        # jumps: to the simulation's time at the first /clock message, back when a bag loops
        # or a simulation resets. A jump is not silence: what is measured moves with it
        # (else the first /clock message made every device silent for the whole simulated
        # time, and the watchdog declared them all dead).
        self._clock_jumps = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=Duration(seconds=p["watchdog_timeout"] / 2),
                          min_backward=Duration(nanoseconds=-1)),
            post_callback=self._on_clock_jump)
        self.heads: ClassifierHeads | None = None
        self.rejections = Rejections(self, REJECTION_REASONS)
        self.accepted = 0
        self.fused_count = 0
        # Seconds from the start of the callback that released a frame to its publish: the
        # fusion node's own share of the end-to-end latency (reported in the diagnostics).
        self._fusion_times: deque[float] = deque(maxlen=1000)
        self._bad_heads = [0] * self.n_devices
        # (time, accepted-message counts) at the previous diagnostics, for the rates
        self._last_counts: tuple[float, list[int]] | None = None
        configured = (p["num_classes"], p["feature_dim"])
        self.head_shapes = HeadShapes(self.n_devices, configured if min(configured) > 0
                                      else None)
        if self.head_shapes.shape is not None:
            self._use_shape()

        self._pub = self.create_publisher(FusedPrediction, p["output_topic"], fused_qos())
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._subs = []
        self._deadlines: list[float] = []
        watched = {}  # (device, "prediction" | "head") -> subscription, for the writer watch
        for device in range(self.n_devices):
            events = SubscriptionEventCallbacks(
                deadline=self.rejections.guard(
                    lambda info, dev=device: self._mark_dead(dev, "deadline"),
                    f"device {device}: deadline event"),
                liveliness=self.rejections.guard(
                    lambda info, dev=device: self._on_liveliness(dev, info),
                    f"device {device}: liveliness event"))
            predictions = capped_subscription(
                self, DevicePrediction, p["prediction_topic_format"].format(device),
                # A profile of its own: qos_overrides change the profile they are given.
                lambda msg, dev=device: self._on_prediction(dev, msg),
                prediction_qos(p["deadline"], p["liveliness_lease"]),
                p["max_prediction_bytes"], self.rejections, f"device {device}: prediction",
                on_info=lambda info, dev=device: self.writers.heard((dev, "prediction"), info),
                event_callbacks=events,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
            heads = capped_subscription(
                self, ClassifierHead, p["head_topic_format"].format(device),
                lambda msg, dev=device: self._on_head(dev, msg), head_qos(HEAD_QUEUE_DEPTH),
                p["max_head_bytes"], self.rejections, f"device {device}: classifier head",
                reason_prefix="head_",
                on_info=lambda info, dev=device: self.writers.heard((dev, "head"), info))
            self._subs += [predictions, heads]
            # The deadline in force (qos_overrides may have changed the parameter's), s
            self._deadlines.append(predictions.qos_profile.deadline.nanoseconds * 1e-9)
            watched[device, "prediction"] = predictions
            watched[device, "head"] = heads
        # No DDS security in these wheels: anyone on the domain may write a device's topics.
        # Who does, and whose heads never arrive, is checked with every diagnostics message.
        self.writers = WriterWatch(self, watched, p["unheard_timeout"])
        self.exit_when_unheard = p["exit_when_unheard"]
        self._unheard_logged: dict[int, tuple[str, ...]] = {}
        # Done when the node should exit on its own (exit_when_unheard); run_node waits on
        # it, and exit_code is the process's exit code then.
        self.finished = Future()
        self.exit_code: int | None = None
        # Cancelled while no frame is pending: in steady state every frame completes as
        # its last device reports, and the timer never fires.
        on_tick = self.rejections.guard(self._on_tick, "timer")
        self._release_timer = self.create_timer(
            max(self.frame_timeout / TICKS_PER_TIMEOUT, MIN_TICK_S), on_tick)
        self._release_timer.cancel()
        self.create_timer(tick, on_tick)
        self.create_timer(p["diagnostics_period"],
                          self.rejections.guard(self._publish_diagnostics, "diagnostics"))
        self.get_logger().info(
            f"fusing {self.n_devices} devices ({self.mode}, modifier "
            f"{'on' if self.use_modifier else 'off'}) -> {self._pub.topic_name}")

    # -- helpers ---------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_clock_jump(self, jump: TimeJump) -> None:
        delta = jump.delta.nanoseconds * 1e-9
        self.monitor.postpone(delta)
        if self.assembler is not None:
            self.assembler.postpone(delta)
        self.get_logger().info(f"the node clock jumped {delta:+.3f} s: device silences and "
                               "frame waits moved with it")

    def _check_stall(self) -> None:
        """Called first in every callback that fuses: undo what a stall of this node did."""
        stall = self.stall_guard.observe(time.monotonic())
        if stall:
            # Wall time: the node clock may be simulated, and the stall was real.
            self.monitor.postpone(stall)
            if self.assembler is not None:
                self.assembler.stalled(stall, round(self._now() * 1e9))
            # Not throttled with the rejections (one call site): each stall is news.
            self.get_logger().warning(
                f"this node stalled for {stall:.2f} s: the devices' silences exclude it, and "
                "the frames stamped up to now wait that much longer")

    def _use_shape(self) -> None:
        """Start frame assembly and the heads over for the shape the heads agree on."""
        n_classes, feature_dim = self.head_shapes.shape
        dropped = self.assembler.pending_count if self.assembler is not None else 0
        self.assembler = FrameAssembler(self.n_devices, n_classes, feature_dim,
                                        self.frame_timeout,
                                        sync_tolerance_ns=self.sync_tolerance_ns)
        self._splits_reported = 0
        self.heads = ClassifierHeads.empty(self.n_devices, n_classes, feature_dim)
        for device in range(self.n_devices):
            if (head := self.head_shapes.head(device)) is not None:
                self.heads.set_head(device, *head)
        self.get_logger().info(f"{n_classes} classes, {feature_dim} features"
                               + (f" ({dropped} pending frames dropped)" if dropped else ""))

    def _reject(self, device: int, reason: str, detail: str = "") -> None:
        self.monitor.record_rejection(device)
        self.rejections.reject(f"device {device}: prediction", reason, detail)

    # -- callbacks -------------------------------------------------------------------------
    def _on_head(self, device: int, msg: ClassifierHead) -> None:
        what = f"device {device}: classifier head"
        k, dim = int(msg.num_classes), int(msg.feature_dim)
        weight = np.asarray(msg.weight, np.float32)
        bias = np.asarray(msg.bias, np.float32)
        problem = (f"device_id {msg.device_id} on device {device}'s topic"
                   if msg.device_id != device
                   else head_problem(weight, bias, k, dim, self.max_abs))
        if problem:
            self._bad_heads[device] += 1
            self.rejections.reject(what, "bad_head", problem)
            return
        try:
            changed = self.head_shapes.add(device, weight.reshape(k, dim), bias)
        except ValueError as exc:  # not the configured shape
            self.rejections.reject(what, "head_shape_mismatch", str(exc))
            return
        if changed:
            self._use_shape()
        elif (k, dim) != self.head_shapes.shape:
            agreed = self.head_shapes.shape
            self.rejections.reject(what, "head_shape_mismatch",
                                   f"a {k}x{dim} head; the devices agree on "
                                   f"{agreed[0]}x{agreed[1]} (kept as this device's vote)")
            return
        elif not self.heads.set_head(device, weight.reshape(k, dim), bias):
            return  # the camera's periodic repeat of the head in use
        self.get_logger().info(f"device {device}: classifier head received")

    def _on_prediction(self, device: int, msg: DevicePrediction) -> None:
        started = time.perf_counter()
        self._check_stall()
        now = self._now()
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if msg.device_id != device:
            self._reject(device, "device_id_mismatch",
                         f"device_id {msg.device_id} on device {device}'s topic")
        elif self.assembler is None:
            self._reject(device, "sizes_unknown", "no classifier head received yet")
        else:
            probs = np.asarray(msg.probabilities, np.float32)
            features = np.asarray(msg.features, np.float32)
            # Checked in full before the frame assembler sees it: only a valid prediction
            # may claim the device's slot in its frame (the first one wins).
            problem = (stamp_problem(stamp_ns, round(now * 1e9), *self.stamp_window)
                       or probabilities_problem(probs, self.assembler.n_classes,
                                                self.probability_tolerance)
                       or values_problem(features, self.assembler.feature_dim, self.max_abs,
                                         "bad_features_length"))
            if problem:
                self._reject(device, problem, f"at stamp {stamp_ns}")
            else:
                self._add(device, stamp_ns, probs, features, now)
        self._emit(now, started)

    def _add(self, device: int, stamp_ns: int, probs: np.ndarray, features: np.ndarray,
             now: float) -> None:
        result = self.assembler.add(stamp_ns, device, probs, features, now)
        if result is AddResult.ACCEPTED:
            self.accepted += 1
            if self.monitor.heard(device, now):
                self.get_logger().info(f"device {device}: alive")
            return
        self._reject(device, result.value, f"at stamp {stamp_ns}")
        if result is AddResult.STALE and self.monitor.health(device) is not DeviceHealth.ALIVE:
            # Frames do not wait for a dead (or never heard) device, so its predictions
            # arrive after their frame was released and would stay stale forever: a timely,
            # valid prediction for a released frame revives it, and the next frames wait
            # for it again. One that keeps missing the frame timeout is retired again by
            # the watchdog.
            self.monitor.heard(device, now)
            self.get_logger().info(f"device {device}: alive again")

    def _on_liveliness(self, device: int, info) -> None:
        if info.alive_count == 0:  # the device's last writer is gone (or its lease expired)
            self._mark_dead(device, "liveliness")

    def _mark_dead(self, device: int, reason: str) -> None:
        started = time.perf_counter()
        self._check_stall()
        now = self._now()
        if reason == "deadline" and self.monitor.silence(device, now) < self._deadlines[device] / 2:
            # The middleware's clock counts arrivals; predictions may still wait in the queue
            self.deadlines_doubted += 1
        elif self.monitor.mark_dead(device, reason, now):
            self.get_logger().warning(f"device {device}: dead ({reason})")
        self._emit(now, started)  # frames need not wait for it any more

    def _on_tick(self) -> None:
        started = time.perf_counter()
        self._check_stall()
        now = self._now()
        for device in self.monitor.check_watchdog(now):
            self.get_logger().warning(f"device {device}: dead (watchdog)")
        self._emit(now, started)

    # -- output ----------------------------------------------------------------------------
    def _surrogates_for(self, frame) -> bool:
        """Whether ``frame``'s missing devices get surrogates (Modifier on, gate allows)."""
        if not self.use_modifier or self.surrogate_gate is None or frame.present.all():
            return self.use_modifier
        allowed = self.surrogate_gate.allows(tuple(np.flatnonzero(~frame.present)))
        self.surrogates_withheld += not allowed
        return allowed

    def _emit(self, now: float, started: float) -> None:
        if self.assembler is None:
            return
        splits = self.assembler.split_frames
        for frame in self.assembler.ready(now, self.monitor.live_devices()):
            probs, surrogates = fuse_frame(frame, self.heads, self.mode,
                                           self._surrogates_for(frame))
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
        if self.assembler.split_frames > splits:
            self.get_logger().warning(
                f"{self.assembler.split_frames} frames split: one scene's stamps spread up to "
                f"{self.assembler.widest_split_ns / 1e6:.1f} ms across the cameras, wider than "
                f"sync_tolerance ({self.sync_tolerance_ns / 1e6:g} ms), so its predictions "
                "were fused as separate frames with surrogates. For free-running cameras set "
                "sync_tolerance to cover that spread and stay below one frame period minus it.",
                throttle_duration_sec=10.0)
        if not self.assembler.pending_count:
            self._release_timer.cancel()
        elif self._release_timer.is_canceled():
            self._release_timer.reset()

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        now, snapshot = self._now(), self.monitor.snapshot()
        counts_now = [rec["messages"] for rec in snapshot.values()]
        rates = [0.0] * self.n_devices
        if self._last_counts is not None and now > self._last_counts[0]:
            then, before = self._last_counts
            rates = [(c - b) / (now - then) for c, b in zip(counts_now, before, strict=True)]
        self._last_counts = (now, counts_now)
        writers = self.writers.check()
        contested, unheard_devices = [], []
        for device, rec in snapshot.items():
            health = DeviceHealth(rec["health"])
            mine = [writers[device, "prediction"], writers[device, "head"]]
            second = "; ".join(w.describe() for w in mine if w.contested)
            if second:
                contested.append(str(device))
            unheard = self._unheard(device, mine[1])
            if unheard:
                unheard_devices.append(str(device))
            level = _LEVELS[health]
            if second:
                level = max(level, DiagnosticStatus.WARN)
            status = DiagnosticStatus(
                level=DiagnosticStatus.ERROR if unheard else level,
                name=diagnostic_name(self, FUSION_DEVICE_STATUS_FORMAT.format(device)),
                hardware_id=f"device_{device}",
                message="; ".join(part for part in (
                    _MESSAGES.get(health, health.value)
                    + (f" ({rec['reason']})" if rec["reason"] else ""), second, unheard)
                    if part))
            head = self.heads is not None and bool(self.heads.known[device])
            values = {"health": health.value, "messages": rec["messages"],
                      "rate_hz": round(rates[device], 2),
                      "rejected": rec["rejected"], "deaths": rec["deaths"],
                      "reason": rec["reason"], "head_known": head,
                      "bad_heads": self._bad_heads[device],
                      "publishers": len(mine[0].publishers),
                      "writers_heard": len(mine[0].heard),
                      "head_publishers": len(mine[1].publishers),
                      "unheard_publishers": len(mine[1].unheard),
                      "second_writer": second}
            status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
            array.status.append(status)
        rejected = self.rejections.total
        counts = {"accepted": self.accepted, "rejected": rejected, **self.rejections.counts}
        counts["fused"] = self.fused_count
        counts["pending"] = self.assembler.pending_count if self.assembler else 0
        counts["heads_known"] = int(self.heads.known.sum()) if self.heads else 0
        shape = self.head_shapes.shape
        counts["head_shape"] = f"{shape[0]}x{shape[1]}" if shape else ""
        counts["heads_of_other_shapes"] = self.head_shapes.votes_for_other_shapes()
        counts["sync_tolerance_s"] = self.sync_tolerance_ns / 1e9  # score-bag matches with it
        splits = self.assembler.split_frames if self.assembler else 0
        counts["split_frames"] = splits
        counts["widest_split_ms"] = (round(self.assembler.widest_split_ns / 1e6, 3)
                                     if self.assembler else 0.0)
        counts["own_stalls"] = self.stall_guard.stalls
        counts["own_stall_s"] = round(self.stall_guard.stalled_s, 3)
        counts["deadlines_doubted"] = self.deadlines_doubted
        counts["surrogates_withheld"] = self.surrogates_withheld
        counts["devices_with_second_writer"] = ",".join(contested)
        counts["devices_unheard"] = ",".join(unheard_devices)
        if self._fusion_times:
            times_ms = 1e3 * np.asarray(self._fusion_times)
            counts["fusion_ms_p50"] = round(float(np.percentile(times_ms, 50)), 4)
            counts["fusion_ms_p99"] = round(float(np.percentile(times_ms, 99)), 4)
        splitting = splits > self._splits_reported  # since the last report
        self._splits_reported = splits
        array.status.append(DiagnosticStatus(
            level=DiagnosticStatus.WARN if splitting else DiagnosticStatus.OK,
            name=diagnostic_name(self, FUSION_ASSEMBLY_STATUS), hardware_id="fusion",
            message=f"{self.fused_count} frames fused, {rejected} inputs rejected"
            + ("; frames split: raise sync_tolerance" if splitting else ""),
            values=[KeyValue(key=k, value=str(v)) for k, v in counts.items()]))
        self._diag_pub.publish(array)
        if unheard_devices and self.exit_when_unheard and not self.finished.done():
            self.get_logger().fatal(f"not receiving from device(s) {', '.join(unheard_devices)}"
                                    ": exiting with code 3 (exit_when_unheard)")
            self.exit_code = 3
            self.finished.set_result(True)

    def _unheard(self, device: int, head: TopicWriters) -> str:
        """What to say of ``head``'s unheard publishers ('' if none), logged once each."""
        if not head.unheard:
            self._unheard_logged.pop(device, None)
            return ""
        said = (f"not heard from {', '.join(head.unheard)} on {head.topic} in "
                f"{self.writers.unheard_after_s:g} s although DDS shows it: this node is not "
                "receiving from it")
        if self._unheard_logged.get(device) != head.unheard:
            self._unheard_logged[device] = head.unheard
            self.get_logger().error(f"device {device}: {said}")
        return said


def main(argv: list[str] | None = None) -> int:
    """Run a fusion node until SIGINT/SIGTERM; return the process exit code.

    Exit codes: 0 after SIGINT/SIGTERM, 2 for a parameter of the wrong type or an invalid
    value, 3 when a device was unheard and ``exit_when_unheard`` is set.
    """
    return run_node(FusionNode, "fusion_node", argv, on_exit=lambda node: node.exit_code)


if __name__ == "__main__":
    raise SystemExit(main())
