"""Helpers shared by the package's nodes: descriptors, counters, a main loop."""

from __future__ import annotations

import faulthandler
import functools
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from resilient_perception.message_checks import RejectionLog, clip_text
from resilient_perception.ros.shm_ports import SHM_DIR, clear_dead_segments, removal_summary
from resilient_perception.ros.topics import DIAGNOSTICS_TOPIC, status_name

__all__ = [
    "InputStats",
    "DIAGNOSTICS_PERIOD_S",
    "FLUSH_S",
    "MAX_LOG_DETAIL_CHARS",
    "SHUTDOWN_GRACE_S",
    "THROTTLE_S",
    "Rejections",
    "capped_subscription",
    "descriptor",
    "diagnostic_name",
    "flush_publishers",
    "publish_counters",
    "run_node",
    "run_nodes",
    "stamp_time",
]

def stamp_time(stamp_ns: int) -> Time:
    """A ``header.stamp`` of ``stamp_ns`` nanoseconds."""
    return Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)


# Period of throttled warnings about bad messages, seconds.
THROTTLE_S = 5.0

SHUTDOWN_GRACE_S = 5.0
"""Longest a node may take to clean up and leave the middleware after its spin ended; past
it, it dumps its threads' stacks and exits with code 1."""

WAKE_S = 0.1
"""Longest a node's executor waits for work before it checks for a stop request."""

FLUSH_S = 1.0
"""Longest a node leaving waits, in all, for subscribers to acknowledge its last reliable
messages (a player's last frame, a camera's last prediction)."""

DIAGNOSTICS_PERIOD_S = 1.0
"""Period of the counters that :func:`publish_counters` puts on ``/diagnostics``, s."""


def descriptor(
    description: str,
    kind: int,
    int_range: tuple[int, int] | None = None,
    float_range: tuple[float, float] | None = None,
    read_only: bool = True,
) -> ParameterDescriptor:
    """A parameter descriptor with a type and, optionally, an inclusive value range.

    The nodes read their parameters when they start (a camera when it activates), so they
    are read-only by default: ``ros2 param set`` then answers that the parameter is
    read-only instead of succeeding and changing nothing. A parameter the node applies
    while running passes ``read_only=False``.

    Args:
        description: Text shown by ``ros2 param describe``.
        kind: A ``rcl_interfaces.msg.ParameterType`` constant.
        int_range: Inclusive (from, to) for integer parameters.
        float_range: Inclusive (from, to) for double parameters.
        read_only: Refuse changes after start-up.

    Returns:
        The descriptor; rclpy then rejects values of another type or outside the range,
        and any change of a read-only parameter.
    """
    result = ParameterDescriptor(description=description, type=kind, read_only=read_only)
    if int_range is not None:
        result.integer_range = [
            IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range is not None:
        result.floating_point_range = [
            FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)]
    return result


def diagnostic_name(node: Any, what: str) -> str:
    """Name of ``node``'s ``/diagnostics`` status about ``what``: ``/ns/node: what``.

    Every node names its statuses here, with its fully qualified name
    (:func:`~resilient_perception.ros.topics.status_name`), so two robots' ``camera_0``
    are told apart.
    """
    return status_name(node.get_fully_qualified_name(), what)


def publish_counters(node: Any, what: str, hardware_id: str,
                     counters: Callable[[], Mapping[str, object]]) -> None:
    """Put ``counters()`` on ``/diagnostics`` every :data:`DIAGNOSTICS_PERIOD_S`.

    One ``DiagnosticStatus`` named :func:`diagnostic_name` (``node``, ``what``),
    ``hardware_id`` as given. Warnings about bad messages are throttled, so the counts
    (``rejected`` above all) are what monitors and tests read. The level is WARN while
    ``rejected`` is non-zero, and while a ``received`` count is 0 (message "no input yet":
    nothing has arrived, which is not a failure of the node).
    """
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)

    def publish() -> None:
        values = dict(counters())
        rejected = int(values.get("rejected", 0))
        # A node that counts its inputs has had none yet: that is news, not "0 rejected".
        idle = "received" in values and not int(values["received"])
        array = DiagnosticArray(status=[DiagnosticStatus(
            level=DiagnosticStatus.WARN if rejected or idle else DiagnosticStatus.OK,
            name=diagnostic_name(node, what), hardware_id=hardware_id,
            message="no input yet" if idle else f"{rejected} messages rejected",
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])])
        array.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(array)

    node.create_timer(DIAGNOSTICS_PERIOD_S, publish)


class InputStats:
    """A node's input rate and processing-time percentiles over the last ``window_s``.

    ROS-free: the node calls :meth:`add` per input and puts :meth:`summary` on
    ``/diagnostics`` beside its counters.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        """Remember the inputs of the last ``window_s`` seconds."""
        self.window_s = window_s
        self._inputs: deque[tuple[float, float | None]] = deque()

    def add(self, now: float, processing_s: float | None) -> None:
        """One input at ``now`` (s, monotonic); ``processing_s`` None if it was rejected."""
        self._inputs.append((now, processing_s))
        while self._inputs and self._inputs[0][0] <= now - self.window_s:
            self._inputs.popleft()

    def summary(self, now: float) -> dict[str, float]:
        """``input_rate_hz`` and the processing time's ``p50_ms`` / ``p99_ms`` (0: none)."""
        recent = [(t, s) for t, s in self._inputs if t > now - self.window_s]
        times = [s for _, s in recent if s is not None]
        span = min(self.window_s, now - recent[0][0]) if len(recent) > 1 else self.window_s
        p50, p99 = np.percentile(times, [50, 99]) * 1e3 if times else (0.0, 0.0)
        return {"input_rate_hz": round(len(recent) / max(span, 1e-9), 2),
                "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


MAX_LOG_DETAIL_CHARS = 300
"""Longest detail a rejection's log line carries (messages' own text is clipped shorter)."""


class Rejections:
    """A node's rejected messages, counted and logged per reason.

    At most one line per reason every :data:`THROTTLE_S`, of bounded length
    (:class:`..message_checks.RejectionLog`).
    """

    def __init__(self, node: Any, reasons: Iterable[str] = ()) -> None:
        """Count for ``node`` (its logger is used); ``reasons`` start at 0 on /diagnostics."""
        self._logger = node.get_logger()
        self.log = RejectionLog(reasons, THROTTLE_S)

    @property
    def counts(self) -> dict[str, int]:
        """Rejections per reason (a copy)."""
        return dict(self.log.counts)

    @property
    def total(self) -> int:
        """All rejections so far."""
        return self.log.total

    def reject(self, what: str, reason: str, detail: str = "") -> None:
        """Count one rejection of ``what`` (e.g. "device 2: prediction") for ``reason``."""
        unlogged = self.log.add(reason, time.monotonic())
        if unlogged is None:
            return
        detail = clip_text(detail, MAX_LOG_DETAIL_CHARS)
        more = f", {unlogged} not logged since the last line" if unlogged else ""
        self._logger.warning(f"{what} rejected ({reason}){': ' if detail else ''}{detail} "
                             f"[{self.log.counts[reason]} {reason} so far{more}]")

    def guard(self, callback: Callable[..., None], what: str) -> Callable[..., None]:
        """``callback`` that counts and logs any exception as ``callback_error``.

        An exception escaping a callback ends ``spin`` and with it the node: no message
        may do that, whatever a check missed.
        """
        @functools.wraps(callback)
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self.reject(what, "callback_error", f"{type(exc).__name__}: {exc}")
        return guarded


def capped_subscription(node: Any, msg_type: type, topic: str,
                        callback: Callable[[Any], None], qos: Any, max_bytes: int,
                        rejections: Rejections, what: str, reason_prefix: str = "",
                        on_info: Callable[[Mapping[str, Any]], None] | None = None,
                        max_wait_s: float = 0.0, **kwargs: Any) -> Any:
    """A subscription that refuses messages over ``max_bytes`` before deserialising them.

    The subscription takes the serialised (CDR) message; one longer than ``max_bytes`` is
    counted as ``oversize`` and dropped without being turned into Python objects or arrays
    (a 20 MB image would otherwise be copied several times before any check saw it), and one
    that does not deserialise is counted as ``malformed`` (both reasons with
    ``reason_prefix`` in front, for a node that tells its topics apart). The rest reach
    ``callback`` as messages, through :meth:`Rejections.guard`. ``on_info``, if given, sees
    every message's ``MessageInfo`` first, rejected ones included (a second writer is news
    whatever it sends; :class:`.writer_watch.WriterWatch`). With ``max_wait_s`` > 0, a
    message that waited longer than that between its arrival in this process
    (``MessageInfo.received_timestamp``, this machine's clock, whatever the sender's) and its
    turn is counted as ``late`` and dropped before it is deserialised: a node that fell
    behind skips what it can no longer use instead of staying behind. ``kwargs`` go to
    ``create_subscription`` (e.g. ``event_callbacks``).
    """
    from rclpy.serialization import deserialize_message

    guarded = rejections.guard(callback, what)

    def receive(data: bytes) -> None:
        if len(data) > max_bytes:
            rejections.reject(what, f"{reason_prefix}oversize",
                              f"{len(data)} bytes, limit {max_bytes}")
            return
        try:
            msg = deserialize_message(data, msg_type)
        except Exception as exc:
            rejections.reject(what, f"{reason_prefix}malformed", f"{type(exc).__name__}: {exc}")
            return
        guarded(msg)

    if on_info is not None or max_wait_s > 0:
        guarded_info = rejections.guard(on_info, what) if on_info is not None else None
        max_wait_ns = round(max_wait_s * 1e9)

        # rclpy passes MessageInfo to a callback that takes two arguments
        def receive_with_info(data: bytes, info: Mapping[str, Any]) -> None:
            if guarded_info is not None:
                guarded_info(info)
            if max_wait_ns:
                arrived = info.get("received_timestamp", 0)  # 0: the middleware does not say
                waited = time.time_ns() - arrived
                if arrived and waited > max_wait_ns:
                    rejections.reject(what, f"{reason_prefix}late",
                                      f"waited {waited * 1e-9:.3f} s, limit {max_wait_s:g} s")
                    return
            receive(data)

        return node.create_subscription(msg_type, topic, receive_with_info, qos, raw=True,
                                        **kwargs)
    return node.create_subscription(msg_type, topic, receive, qos, raw=True, **kwargs)


def run_node(
    node_class: type,
    name: str,
    argv: list[str] | None = None,
    on_created: Callable[[Any], int | None] | None = None,
    on_exit: Callable[[Any], int | None] | None = None,
    startup_errors: Mapping[type[Exception], tuple[int, str]] | None = None,
) -> int:
    """Create ``node_class()`` and spin it until SIGINT/SIGTERM; return the exit code.

    A node with a ``finished`` future (a player that ends) is spun until it completes.

    Args:
        node_class: The node class, constructed without arguments.
        name: Logger name for start-up failures.
        argv: Command-line arguments for ``rclpy.init``.
        on_created: Runs before spinning (e.g. a lifecycle node's autostart); a non-None
            result is returned as the exit code without spinning.
        on_exit: Runs on the way out, before the node is destroyed (e.g. close a file); a
            non-None result replaces the exit code.
        startup_errors: Exceptions of the constructor -> (exit code, what it means),
            checked before the defaults below.

    SIGINT/SIGTERM end the spin once the running callback returns (within :data:`WAKE_S`),
    not by shutting the context down under it: the node then leaves in order, with its
    context still valid. ``on_exit`` runs, the node's reliable publishers get up to
    :data:`FLUSH_S` to have their last messages acknowledged, and only then is the node
    destroyed. A second signal ends the process at once.

    Returns:
        0 after SIGINT/SIGTERM (or the end of ``finished``); 2 for a parameter of the wrong
        type or out of its range, or another invalid configuration (a ``ValueError`` from
        the constructor); or what the hooks and ``startup_errors`` say. 1 when ``on_exit``
        and leaving the middleware took over :data:`SHUTDOWN_GRACE_S` (plus the flush; the
        stacks are on stderr).
    """
    return run_nodes(lambda: [node_class()], name, argv, on_created, on_exit, startup_errors)


def run_nodes(
    create_nodes: Callable[[], list[Any]],
    name: str,
    argv: list[str] | None = None,
    on_created: Callable[[Any], int | None] | None = None,
    on_exit: Callable[[Any], int | None] | None = None,
    startup_errors: Mapping[type[Exception], tuple[int, str]] | None = None,
) -> int:
    """:func:`run_node` for several nodes in one process, on one executor.

    ``create_nodes`` makes them (after ``rclpy.init``); ``on_created`` and ``on_exit`` run
    for each in order, and the first non-None result of ``on_created`` ends the process
    with that code. The process ends when any node's ``finished`` future is done.
    """
    import rclpy
    from rclpy.exceptions import (
        InvalidParameterTypeException,
        InvalidParameterValueException,
    )
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    errors = {**(startup_errors or {}),
              InvalidParameterTypeException: (2, "invalid parameter"),
              InvalidParameterValueException: (2, "invalid parameter"),
              ValueError: (2, "invalid parameter or configuration")}
    # `kill -USR1` prints every thread's Python stack to the log: what a node that does
    # not stop on SIGINT is doing (the pipeline harness asks before it kills one).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # A shared-memory segment that a killed process left half-made would hang this process
    # inside DDS as it creates its node, on any domain, and whole ones left by dead
    # processes fill /dev/shm and can crash it (shm_ports says why).
    defused, removed = clear_dead_segments()
    # rclpy's own handlers would shut the context down from another thread at once: a
    # callback then fails mid-way and reliable messages still unacknowledged are lost.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    for segment in defused:
        rclpy.logging.get_logger(name).warning(
            f"{SHM_DIR / segment}: a Fast DDS shared-memory segment left half-made by a "
            "killed process; marked corrupted so that DDS skips it")
    if removed:
        rclpy.logging.get_logger(name).info(f"removed {removal_summary(removed)} from {SHM_DIR}")
    stop_requested = _handle_stop_signals()
    nodes: list[Any] = []
    code = 0
    try:
        try:
            nodes = create_nodes()
        except tuple(errors) as exc:
            code, meaning = next(v for k, v in errors.items() if isinstance(exc, k))
            rclpy.logging.get_logger(name).fatal(f"{meaning}: {exc}")
            return code
        for node in nodes:
            if on_created is not None and (early := on_created(node)) is not None:
                return early
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        # A node that can end on its own (a player at the end of its split, a fusion node
        # that stopped hearing a camera) has a `finished` future; the process ends with the
        # first one done. It is polled after every callback: rclpy's
        # spin_until_future_complete adds a done-callback to the future on each call, which
        # bounded waits would pile up for as long as the node runs.
        finished = [future for node in nodes
                    if (future := getattr(node, "finished", None)) is not None]
        # A signal handler runs between Python instructions, not inside the executor's wait,
        # so waits are bounded: a stop request is seen within WAKE_S.
        while not stop_requested.is_set() and not any(future.done() for future in finished):
            executor.spin_once(timeout_sec=WAKE_S)
    finally:
        # Leaving (the nodes' own clean-up, the flush, then DDS: destroying the participant)
        # has no time limit of its own: bound it, and leave the threads' stacks in the log
        # if something held the process up.
        faulthandler.dump_traceback_later(SHUTDOWN_GRACE_S + FLUSH_S, exit=True)
        for node in nodes:
            if on_exit is not None and (late := on_exit(node)) is not None:
                code = late
        flush_publishers(nodes, FLUSH_S)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
        # The participant leaves DDS here (peers learn it at once), not in the interpreter's
        # final garbage collection, which nothing bounds.
        rclpy.utilities.get_default_context().destroy()
        faulthandler.cancel_dump_traceback_later()
    return code


def _handle_stop_signals() -> threading.Event:
    """Make SIGINT/SIGTERM set the returned event; a second one ends the process at once."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    return stop


def flush_publishers(nodes: Iterable[Any], timeout: float) -> bool:
    """Wait until the nodes' reliable publishers have their messages acknowledged.

    Publishers are polled in turn, so one whose subscriber never answers (a stopped process)
    does not use up the time of the others. Best-effort publishers count as acknowledged.

    Returns:
        Whether all were acknowledged within ``timeout`` seconds.
    """
    from rclpy.duration import Duration

    pending = [pub for node in nodes for pub in node.publishers]
    end = time.monotonic() + timeout
    poll = Duration(seconds=min(0.02, timeout))
    while pending and time.monotonic() < end:
        pending = [pub for pub in pending if not pub.wait_for_all_acked(poll)]
    return not pending
