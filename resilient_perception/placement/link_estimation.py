"""Link measurement math for the link probes: burst goodput, round-trip time, smoothing.

A probe node measures the link *into* its robot from a peer with timed bursts: the peer
sends ``count`` messages of equal size back to back; the receiver notes each arrival time.
The first message only starts the clock (its transfer began before anyone could time it),
so the rate is the bytes of messages 2..n over the time from the first arrival to the last,
counted as they cross the link: the serialized message plus its RTPS, UDP, IPv4 and Ethernet
headers (:data:`PROBE_TRANSPORT_BYTES`), so the measured rate is the link's own.
The sender sizes bursts to last about a fixed time at the last measured rate
(:func:`burst_count`). A burst shorter than the link's queue (``tc tbf``'s ``latency`` x
rate) is not dropped, so this measures the shaped rate, not the sender's speed. Round-trip
times come from echoed probes on the sender's own clock. Both are reported as the median
of a short window of samples (:class:`SampleWindow`), so that one disturbed sample does not
re-plan the fleet.

Two peers' bursts that reach one robot at the same time share its downlink and each time
about half of it. :class:`BurstTimer` times the bursts of all peers of one receiver, each
from a part that arrived alone, and marks those that had no such part as contended. The
median alone is not enough: peers burst at random moments, so now and then most of a
short window is contended.

Each burst message must fit one Ethernet frame (:func:`fits_one_frame`). A larger one
leaves as IP fragments, and a link that drops packets (a burst that overflows a slowed link
does) loses the message whole while the fragments that did arrive sit in the receiver's
reassembly memory until they time out (30 s). Once that memory is full (4 MB by default),
the receiver drops every fragmented datagram: no burst into that robot completes again, and
its slowed link is never measured.

Bursts share the links with the activations and delay the requests they meet. While the
measured rates hold still, a probe can burst less often (:func:`next_burst_period`): the
period doubles up to a maximum and drops back to the base at the first change.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ETHERNET_MTU",
    "MIN_CLEAN_ARRIVALS",
    "PROBE_TRANSPORT_BYTES",
    "BurstSample",
    "BurstTimer",
    "SampleWindow",
    "burst_count",
    "burst_rate_bps",
    "fits_one_frame",
    "longest_clean_run",
    "next_burst_period",
    "relative_change",
    "round_trip_s",
    "sizing_rate",
]


def burst_rate_bps(arrival_ns: Sequence[int], message_bytes: int) -> float | None:
    """Goodput in bits/s of one burst from the arrival times of its messages.

    Args:
        arrival_ns: Receiver's monotonic arrival times of the burst's messages (any order;
            lost messages simply missing).
        message_bytes: Bytes each message takes on the link.

    Returns:
        ``(n - 1) * message_bytes * 8 / (last - first)``, or None with fewer than two
        arrivals or no time between them (nothing to measure).
    """
    if len(arrival_ns) < 2 or message_bytes <= 0:
        return None
    span_ns = max(arrival_ns) - min(arrival_ns)
    if span_ns <= 0:
        return None
    return (len(arrival_ns) - 1) * message_bytes * 8.0 / (span_ns * 1e-9)


ETHERNET_MTU = 1500
"""Largest IP datagram of one Ethernet frame, bytes."""

RTPS_DATA_BYTES = 132
"""Fast DDS's RTPS header and submessages around one best-effort sample's serialized data,
bytes (read off the UDP length of probes captured with tcpdump on the test fleet's links)."""

PROBE_TRANSPORT_BYTES = RTPS_DATA_BYTES + 8 + 20 + 14
"""Bytes a probe takes on a link besides its serialized message: RTPS, UDP, IPv4 and the
Ethernet header that ``tc`` shaping counts."""


def fits_one_frame(serialized_bytes: int, mtu: int = ETHERNET_MTU) -> bool:
    """Whether a message of ``serialized_bytes`` (CDR) travels as one unfragmented datagram."""
    return serialized_bytes + RTPS_DATA_BYTES + 8 + 20 <= mtu


MIN_CLEAN_ARRIVALS = 4
"""Consecutive arrivals with no other peer's message between them that time a burst."""


@dataclass(frozen=True)
class BurstSample:
    """One timed burst from a peer."""

    peer: str
    rate_bps: float
    contended: bool
    """True when other peers' messages arrived all through this burst, so the rate is that
    of a shared downlink (about half the link's, with two peers bursting)."""
    sizing: bool = False
    """True for a sizing burst (sent before the sender knew the link's rate)."""


def longest_clean_run(arrival_ns: Sequence[int], foreign_ns: Sequence[int]) -> list[int]:
    """The longest run of consecutive arrivals with no foreign arrival between them.

    Args:
        arrival_ns: Arrival times of one burst, ascending.
        foreign_ns: Arrival times of other peers' messages, ascending.
    """
    best: list[int] = []
    run: list[int] = []
    for time in arrival_ns:
        # A foreign message that arrived since the run's last one shared the downlink.
        if run and bisect.bisect_right(foreign_ns, time) > bisect.bisect_left(
                foreign_ns, run[-1]):
            run = []
        run.append(time)
        if len(run) > len(best):
            best = list(run)
    return best


class BurstTimer:
    """Times the bursts that arrive at one receiver from its peers.

    Probes of one peer arrive in order. A burst is timed when its last message arrives, or,
    when its tail was lost (an overloaded link dropped it), when the peer's next burst
    starts: what did arrive still times the link, and discarding it would keep the last,
    too high, rate and with it bursts too long for the link.

    Messages of other peers that arrived during a burst shared the downlink with it: the
    burst is timed from its longest run of arrivals with none of those between them
    (messages queued behind another burst come back to back at the link's rate as soon as
    it ends), if that run has :data:`MIN_CLEAN_ARRIVALS`; else from all its arrivals,
    marked contended.
    """

    def __init__(self, history: int = 4) -> None:
        """Remember the arrivals of each peer's last ``history`` bursts."""
        # peer -> (burst, sizing, arrival ns)
        self._open: dict[str, tuple[int, bool, list[int]]] = {}
        self._closed: dict[str, deque[list[int]]] = defaultdict(lambda: deque(maxlen=history))

    def add(self, peer: str, burst: int, index: int, count: int, arrival_ns: int,
            message_bytes: int, sizing: bool = False) -> list[BurstSample]:
        """Add message ``index`` of ``count`` of ``burst`` from ``peer`` (a sizing burst's).

        Returns:
            The bursts this arrival completed (at most two: the peer's unfinished previous
            burst and this one); bursts with nothing to time are left out.
        """
        samples = []
        open_burst, _, arrivals = self._open.get(peer, (None, False, []))
        if open_burst != burst:
            samples += self._close(peer, message_bytes)
            arrivals = []
            self._open[peer] = (burst, sizing, arrivals)
        arrivals.append(arrival_ns)
        if index == count - 1:
            samples += self._close(peer, message_bytes)
        return samples

    def _close(self, peer: str, message_bytes: int) -> list[BurstSample]:
        _, sizing, arrivals = self._open.pop(peer, (None, False, []))
        arrivals = sorted(arrivals)
        rate = burst_rate_bps(arrivals, message_bytes)
        if rate is None:
            return []
        self._closed[peer].append(arrivals)
        others = [times for other, bursts in self._closed.items() if other != peer
                  for times in bursts]
        others += [times for other, (_, _, times) in self._open.items() if other != peer]
        foreign = sorted(time for times in others for time in times
                         if arrivals[0] <= time <= arrivals[-1])
        clean = longest_clean_run(arrivals, foreign)
        clean_rate = burst_rate_bps(clean, message_bytes)
        if len(clean) >= min(MIN_CLEAN_ARRIVALS, len(arrivals)) and clean_rate is not None:
            return [BurstSample(peer, clean_rate, contended=False, sizing=sizing)]
        return [BurstSample(peer, rate, contended=True, sizing=sizing)]


def burst_count(rate_bps: float | None, message_bytes: int, target_s: float, minimum: int,
                maximum: int) -> int:
    """Messages in a burst that lasts about ``target_s`` on a link of ``rate_bps``.

    A longer burst averages out the receiver's timing noise (a stall of a few ms while the
    CPU is busy); a burst much longer than needed loads a slow link for nothing, or
    overflows its queue. Unknown rate (None): ``minimum``.
    """
    if rate_bps is None or rate_bps <= 0:
        return minimum
    return int(min(max(round(rate_bps * target_s / (8.0 * message_bytes)), minimum), maximum))


def round_trip_s(sent_ns: int, received_ns: int) -> float | None:
    """Round-trip time in seconds of an echo sent and received on the same clock.

    Returns None for a reply that arrives before it was sent (a corrupt or foreign probe).
    """
    if received_ns < sent_ns:
        return None
    return (received_ns - sent_ns) * 1e-9


class SampleWindow:
    """The median of the last ``size`` samples of one measured quantity.

    A burst that shares a link with another robot's burst, or an echo delayed by a busy
    executor, gives a sample that is too low or too high; the median of a short window
    ignores such outliers, where a moving average would drift with each. Provisional
    samples (rough ones taken to get started, such as a sizing burst's rate) give the value
    only until the first firm sample.
    """

    def __init__(self, size: int) -> None:
        """Keep at most ``size`` (>= 1) samples."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._samples: deque[float] = deque(maxlen=size)
        self._provisional: deque[float] = deque(maxlen=size)
        self.count = 0
        """Firm samples added in total (not only those still in the window)."""

    def add(self, sample: float, provisional: bool = False) -> None:
        """Add a sample, forgetting the oldest one of its kind when the window is full."""
        if provisional:
            self._provisional.append(float(sample))
            return
        self._samples.append(float(sample))
        self._provisional.clear()
        self.count += 1

    @property
    def value(self) -> float | None:
        """Median of the firm samples (of the provisional ones before any); None if empty."""
        samples = self._samples or self._provisional
        return statistics.median(samples) if samples else None


def relative_change(reference: float, value: float) -> float:
    """``|value - reference| / reference`` (infinite when the reference is not positive)."""
    if reference <= 0:
        return float("inf")
    return abs(value - reference) / reference


def sizing_rate(measured_bps: float | None, age_s: float, timeout_s: float) -> float | None:
    """The rate to size the next burst to a peer for, from the peer's last measurement.

    The measurement of a link comes back from its receiver over the links themselves. When
    a link slows down, bursts sized for the old rate fill it, and so can bursts the other
    way: the measurements that would size them down are then stuck in the same queues. So a
    measurement older than ``timeout_s`` counts for half as much per ``timeout_s`` of age
    (``measured_bps / 2**(age_s // timeout_s)``), until fresh ones arrive. A burst sized for
    more than the link's rate still fills the link, so it still times it right.

    Returns:
        None (size for an unknown rate) without a measurement.
    """
    if measured_bps is None:
        return None
    return measured_bps / 2.0 ** (max(age_s, 0.0) // timeout_s)


def next_burst_period(period: float, base: float, maximum: float,
                      before: Mapping[str, float], now: Mapping[str, float],
                      threshold: float) -> float:
    """The probe's next burst period from the rates measured on its links.

    Args:
        period: The current period, s.
        base: The shortest period (the ``burst_period_s`` parameter), s.
        maximum: The longest period, s (``<= base``: never back off).
        before: Link -> rate at the previous decision.
        now: Link -> rate now.
        threshold: Relative change of a rate that counts as a change.

    Returns:
        ``base`` if a rate changed by more than ``threshold`` or a link was measured for the
        first time; else twice ``period``, at most ``maximum`` (and at least ``base``).
    """
    if maximum <= base:
        return base
    stable = bool(now) and all(
        link in before and relative_change(before[link], rate) <= threshold
        for link, rate in now.items())
    return min(max(2.0 * period, base), maximum) if stable else base
