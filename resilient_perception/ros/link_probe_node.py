"""Link probe node: measures throughput and round-trip time from each peer robot over DDS.

One runs on every robot (parameter ``robot``, peers in ``peers``). Probes travel on the
receiver's ``<robot>/link_probe`` topic (``LinkProbe`` messages):

* echo: every ``echo_period_s`` it sends each peer a small ECHO_REQUEST stamped with its
  own monotonic clock; the peer answers with an ECHO_REPLY carrying the stamp back, so the
  round-trip time needs no synchronised clocks;
* burst: every ``burst_period_s`` on average (each interval drawn from 0.5-1.5 periods, so
  that robots do not keep bursting into one receiver together) it sends the next peer
  (round robin, so two bursts of one robot never share its uplink) messages of
  ``burst_bytes`` back to back, as many as last ``burst_s`` at the rate the peer last
  measured (between ``min_burst_count`` and ``max_burst_count``; ``min_burst_count`` in a
  SIZING_BURST while no measurement has arrived, whose rough rate the peer uses only until
  it has timed a sized burst); each message fits one
  Ethernet frame (a fragmented one would fill the receiver's IP reassembly memory on a
  link that drops packets, see :mod:`..placement.link_estimation`);
  the peer times their arrivals (:class:`..placement.link_estimation.BurstTimer`) with the
  middleware's reception timestamps. Part of a burst that overlapped another peer's burst
  into the same robot shared its downlink and would time it too low: the burst is timed
  from its part that arrived alone; one with no such part is counted in ``contended`` and
  left to the median of the window.

A peer's measurement older than ``feedback_timeout_s`` sizes the bursts for half its rate,
a quarter after twice as long, and so on
(:func:`..placement.link_estimation.sizing_rate`): when a link slows down, bursts sized for
the old rate fill it both ways, and the measurements that would size them down wait in the
same queues.

The bursts take about ``burst_s / burst_period_s`` (10% by default) of each robot's uplink,
at least ``min_burst_count x burst_bytes x 8 / burst_period_s`` bits/s (0.2 Mbit/s), and
delay the activations they meet on a link. With ``max_burst_period_s`` above
``burst_period_s`` the period doubles at each burst while the peers' measurements of this
robot's outgoing links stay within ``stable_change`` of those at the previous burst, up to
that maximum, and returns to ``burst_period_s`` at the first change
(:func:`..placement.link_estimation.next_burst_period`): less probing on a steady network, at the
price of noticing a change later. Probes
are best effort: when a link slows down, a burst sized for the old rate overflows its queue
and loses its tail; what arrived still times the link (the burst is closed when the next
one starts), and the next bursts are sized for the new rate.

Every ``publish_period_s`` it publishes, per peer, a ``LinkMeasurement`` on
``link_measurements``: the rate from the peer to this robot (measured here, as receiver)
and the round-trip time to it, each the median of the last ``window`` samples.

Probes addressed to another robot, from an unknown peer or with inconsistent fields are
logged (throttled), counted and ignored.
"""

from __future__ import annotations

import array
import random
import time

from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from rclpy.serialization import serialize_message
from rclpy.subscription import MessageInfo

from resilient_perception.msg import LinkMeasurement, LinkProbe
from resilient_perception.placement.link_estimation import (
    PROBE_TRANSPORT_BYTES,
    BurstTimer,
    SampleWindow,
    burst_count,
    fits_one_frame,
    next_burst_period,
    round_trip_s,
    sizing_rate,
)
from resilient_perception.ros.node_utils import THROTTLE_S, descriptor, run_node
from resilient_perception.ros.topics import PROBE_TOPIC_FORMAT, probe_qos

__all__ = ["LinkProbeNode", "main"]


class LinkProbeNode(Node):
    """Sends probes to the peers, answers theirs, publishes the measured links."""

    DEFAULT_BURST_BYTES = 1200
    """Payload of a burst message that keeps it in one 1500-byte Ethernet frame."""

    def __init__(self) -> None:
        """Declare parameters, create the topics and timers; ValueError for a bad setup."""
        super().__init__("link_probe")
        string, strings = ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_STRING_ARRAY
        double, integer = ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_INTEGER
        self.robot = self.declare_parameter("robot", "", descriptor(
            "This robot's name (as in the fleet file).", string)).value
        self.peers = list(self.declare_parameter("peers", [""], descriptor(
            "Names of the robots to measure the links from.", strings)).value)
        burst_period = self.declare_parameter("burst_period_s", 1.0, descriptor(
            "Seconds between two bursts (to the next peer in turn).", double,
            float_range=(0.01, 60.0))).value
        self.max_burst_period = self.declare_parameter("max_burst_period_s", 0.0, descriptor(
            "Longest period the bursts back off to while the rates hold still (<= "
            "burst_period_s: never back off).", double, float_range=(0.0, 3600.0))).value
        self.stable_change = self.declare_parameter("stable_change", 0.1, descriptor(
            "Relative change of a measured rate that resets the burst period.", double,
            float_range=(0.0, 100.0))).value
        self.burst_s = self.declare_parameter("burst_s", 0.1, descriptor(
            "Target duration of a burst at the link's last measured rate.", double,
            float_range=(0.001, 10.0))).value
        self.burst_counts = (
            # 16 messages outlast a shaper's token bucket (a few KB pass at line rate).
            self.declare_parameter("min_burst_count", 16, descriptor(
                "Messages per burst at least (and while the rate is unknown).", integer,
                int_range=(2, 10_000))).value,
            self.declare_parameter("max_burst_count", 512, descriptor(
                "Messages per burst at most.", integer, int_range=(2, 10_000))).value)
        self.burst_bytes = self.declare_parameter(
            "burst_bytes", self.DEFAULT_BURST_BYTES, descriptor(
                "Payload bytes per burst message; the default keeps a message in one "
                "1500-byte Ethernet frame, larger ones are split into IP fragments.", integer,
                int_range=(1, 1_000_000))).value
        echo_period = self.declare_parameter("echo_period_s", 0.2, descriptor(
            "Seconds between two echo probes to each peer.", double,
            float_range=(0.01, 60.0))).value
        self.echo_bytes = self.declare_parameter("echo_bytes", 64, descriptor(
            "Payload bytes of an echo probe.", integer, int_range=(0, 65_000))).value
        window = self.declare_parameter("window", 5, descriptor(
            "Samples whose median is published.", integer, int_range=(1, 1000))).value
        publish_period = self.declare_parameter("publish_period_s", 0.5, descriptor(
            "Seconds between two published measurements.", double,
            float_range=(0.01, 60.0))).value
        self.feedback_timeout = self.declare_parameter("feedback_timeout_s", 2.0, descriptor(
            "A peer's measurement of a link from this robot older than this sizes the bursts "
            "for half its rate, a quarter after twice as long, ... (the measurements are "
            "stuck behind bursts sized for a link that has slowed down).", double,
            float_range=(0.01, 600.0))).value
        self.peers = [peer for peer in self.peers if peer]
        if not self.robot:
            raise ValueError("parameter 'robot' (this robot's name) is required")
        if self.burst_counts[0] > self.burst_counts[1]:
            raise ValueError(f"min_burst_count > max_burst_count: {self.burst_counts}")
        if not self.peers or self.robot in self.peers or len(set(self.peers)) != len(
                self.peers):
            raise ValueError(f"'peers' must name other robots, each once; got {self.peers}")

        # Arrays are assigned to uint8[] fields as they are (bytes are checked one by one).
        self._burst_payload = array.array("B", bytes(self.burst_bytes))
        self._echo_payload = array.array("B", bytes(self.echo_bytes))
        # Rates count the bytes a burst message takes on the link, headers included.
        self._framing = {peer: _serialized_bytes(peer, self.robot) + PROBE_TRANSPORT_BYTES
                         for peer in self.peers}
        self._sent_bytes = {peer: _serialized_bytes(self.robot, peer, self._burst_payload)
                            for peer in self.peers}
        if not all(fits_one_frame(size) for size in self._sent_bytes.values()):
            self.get_logger().warning(
                f"burst messages of {max(self._sent_bytes.values())} serialized bytes are "
                "split into IP fragments: on a link that drops packets, their remains fill "
                "the receivers' reassembly memory until no burst gets through; lower "
                "burst_bytes")
        self.throughput = {peer: SampleWindow(window) for peer in self.peers}
        self.rtt = {peer: SampleWindow(window) for peer in self.peers}
        self.outbound_bps: dict[str, float] = {}  # peer -> rate to it, as the peer measured
        self._outbound_heard: dict[str, float] = {}  # peer -> monotonic time of that
        self.rejected = 0
        self.contended = 0
        """Burst samples timed while other peers' bursts arrived all through them."""
        self._bursts = BurstTimer()
        self._sequence = 0
        self._burst = 0
        self._next_peer = 0
        qos = probe_qos(max(self.burst_counts[1], 10) * 2)
        self._to_peer = {peer: self.create_publisher(LinkProbe, PROBE_TOPIC_FORMAT.format(peer),
                                                     qos) for peer in self.peers}
        self.create_subscription(LinkProbe, PROBE_TOPIC_FORMAT.format(self.robot),
                                 self._on_probe, qos)
        self._measurements = self.create_publisher(LinkMeasurement, "link_measurements", 10)
        self.create_subscription(LinkMeasurement, "link_measurements", self._on_measurement, 50)
        self.create_timer(echo_period, self._send_echoes)
        # Bursts start at random intervals (0.5-1.5 periods): robots that started together
        # would otherwise keep bursting into the same receiver at the same moments.
        self._base_burst_period = self._burst_period = burst_period
        self._outbound_at_last_burst: dict[str, float] = {}
        self._random = random.Random()
        self._next_burst = time.monotonic() + burst_period * self._random.uniform(0.5, 1.5)
        self.create_timer(0.01, self._maybe_burst)
        self.create_timer(publish_period, self._publish)
        self.get_logger().info(f"probing links of {self.robot} from {self.peers}")

    def _probe(self, kind: int, peer: str, payload: array.array) -> LinkProbe:
        self._sequence += 1
        return LinkProbe(kind=kind, from_robot=self.robot, to_robot=peer,
                         sequence=self._sequence, sent_ns=time.monotonic_ns(), payload=payload)

    def _send_echoes(self) -> None:
        for peer, publisher in self._to_peer.items():
            publisher.publish(self._probe(LinkProbe.ECHO_REQUEST, peer, self._echo_payload))

    def _maybe_burst(self) -> None:
        if time.monotonic() >= self._next_burst:
            self._burst_period = next_burst_period(
                self._burst_period, self._base_burst_period, self.max_burst_period,
                self._outbound_at_last_burst, self.outbound_bps, self.stable_change)
            self._outbound_at_last_burst = dict(self.outbound_bps)
            self._next_burst += self._burst_period * self._random.uniform(0.5, 1.5)
            self._send_burst()

    def _send_burst(self) -> None:
        peer = self.peers[self._next_peer]
        self._next_peer = (self._next_peer + 1) % len(self.peers)
        self._burst += 1
        rate = sizing_rate(self.outbound_bps.get(peer),
                           time.monotonic() - self._outbound_heard.get(peer, 0.0),
                           self.feedback_timeout)
        count = burst_count(rate, self._sent_bytes[peer] + PROBE_TRANSPORT_BYTES, self.burst_s,
                            *self.burst_counts)
        kind = LinkProbe.BURST if rate is not None else LinkProbe.SIZING_BURST
        for index in range(count):
            probe = self._probe(kind, peer, self._burst_payload)
            probe.burst, probe.index, probe.count = self._burst, index, count
            self._to_peer[peer].publish(probe)

    def _on_measurement(self, msg: LinkMeasurement) -> None:
        # The peers' measurements of the links from this robot size the next bursts.
        if msg.from_robot == self.robot and msg.to_robot in self._to_peer and (
                msg.throughput_bps > 0):
            self.outbound_bps[msg.to_robot] = msg.throughput_bps
            self._outbound_heard[msg.to_robot] = time.monotonic()

    def _on_probe(self, probe: LinkProbe, info: MessageInfo) -> None:
        now = time.monotonic_ns()
        if probe.to_robot != self.robot or probe.from_robot not in self._to_peer:
            self._reject(f"probe from {probe.from_robot!r} to {probe.to_robot!r} ignored: "
                         f"this is {self.robot}, peers {self.peers}")
            return
        peer = probe.from_robot
        if probe.kind == LinkProbe.ECHO_REQUEST:
            reply = LinkProbe(kind=LinkProbe.ECHO_REPLY, from_robot=self.robot, to_robot=peer,
                              sequence=probe.sequence, sent_ns=probe.sent_ns)
            self._to_peer[peer].publish(reply)
        elif probe.kind == LinkProbe.ECHO_REPLY:
            rtt = round_trip_s(probe.sent_ns, now)
            if rtt is None:
                self._reject(f"echo reply from {peer} stamped in the future")
            else:
                self.rtt[peer].add(rtt)
        elif probe.kind in (LinkProbe.BURST, LinkProbe.SIZING_BURST):
            # The middleware's reception time, not this callback's: the executor may pick
            # up the burst's first messages late, which would shorten the timed span.
            self._on_burst(peer, probe, info["received_timestamp"])
        else:
            self._reject(f"probe of unknown kind {probe.kind} from {peer}")

    def _on_burst(self, peer: str, probe: LinkProbe, now: int) -> None:
        if probe.count < 2 or probe.index >= probe.count:
            self._reject(f"burst message {probe.index} of {probe.count} from {peer}")
            return
        for sample in self._bursts.add(peer, probe.burst, probe.index, probe.count, now,
                                       self._framing[peer] + len(probe.payload),
                                       sizing=probe.kind == LinkProbe.SIZING_BURST):
            # A contended sample is kept, and left to the window's median. Dropping it held
            # back the first low samples after a link slowed down (every burst into that
            # robot is then long and overlaps others), bursts sized for the old rate went on
            # overflowing the link, and in one test run no burst into that robot completed
            # again (perhaps its IP reassembly memory full of fragments of lost messages).
            self.contended += sample.contended
            self.throughput[sample.peer].add(sample.rate_bps, provisional=sample.sizing)

    def _publish(self) -> None:
        stamp = self.get_clock().now().to_msg()
        for peer in self.peers:
            rate, rtt = self.throughput[peer].value, self.rtt[peer].value
            if rate is None and rtt is None:
                continue
            msg = LinkMeasurement(from_robot=peer, to_robot=self.robot,
                                  throughput_bps=rate or 0.0, rtt_s=rtt or 0.0,
                                  throughput_samples=self.throughput[peer].count,
                                  rtt_samples=self.rtt[peer].count)
            msg.header.stamp = stamp
            msg.header.frame_id = self.robot
            self._measurements.publish(msg)

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.get_logger().warning(f"{reason} ({self.rejected} rejected so far)",
                                  throttle_duration_sec=THROTTLE_S)


def _serialized_bytes(sender: str, receiver: str, payload: array.array | None = None) -> int:
    """CDR size of a burst message from ``sender`` to ``receiver``."""
    probe = LinkProbe(kind=LinkProbe.BURST, from_robot=sender, to_robot=receiver)
    if payload is not None:
        probe.payload = payload
    return len(serialize_message(probe))


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0); exit 2 for invalid parameters."""
    return run_node(LinkProbeNode, "link_probe", argv)


if __name__ == "__main__":
    raise SystemExit(main())
