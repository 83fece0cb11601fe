"""Link measurement math for the link probes: burst goodput, round-trip time, smoothing.

A probe node measures the link *into* its robot from a peer with timed bursts: the peer
sends ``count`` messages of equal size back to back; the receiver notes each arrival time.
The first message only starts the clock (its transfer began before anyone could time it),
so the rate is the bytes of messages 2..n over the time from the first arrival to the last.
The sender sizes bursts to last about a fixed time at the last measured rate
(:func:`burst_count`). A burst shorter than the link's queue (``tc tbf``'s ``latency`` x
rate) is not dropped, so this measures the shaped rate, not the sender's speed. Round-trip
times come from echoed probes on the sender's own clock. Both are reported as the median
of a short window of samples (:class:`SampleWindow`), so that one disturbed sample does not
re-plan the fleet.

Bursts share the links with the activations and delay the requests they meet. While the
measured rates hold still, a probe can burst less often (:func:`next_burst_period`): the
period doubles up to a maximum and drops back to the base at the first change.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence

__all__ = [
    "SampleWindow",
    "burst_count",
    "burst_rate_bps",
    "next_burst_period",
    "relative_change",
    "round_trip_s",
]


def burst_rate_bps(arrival_ns: Sequence[int], message_bytes: int) -> float | None:
    """Goodput in bits/s of one burst from the arrival times of its messages.

    Args:
        arrival_ns: Receiver's monotonic arrival times of the burst's messages (any order;
            lost messages simply missing).
        message_bytes: Bytes per message (the payload the sender sent).

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
    ignores such outliers, where a moving average would drift with each.
    """

    def __init__(self, size: int) -> None:
        """Keep at most ``size`` (>= 1) samples."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0
        """Samples added in total (not only those still in the window)."""

    def add(self, sample: float) -> None:
        """Add a sample, forgetting the oldest one when the window is full."""
        self._samples.append(float(sample))
        self.count += 1

    @property
    def value(self) -> float | None:
        """Median of the window, None before the first sample."""
        return statistics.median(self._samples) if self._samples else None


def relative_change(reference: float, value: float) -> float:
    """``|value - reference| / reference`` (infinite when the reference is not positive)."""
    if reference <= 0:
        return float("inf")
    return abs(value - reference) / reference


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
