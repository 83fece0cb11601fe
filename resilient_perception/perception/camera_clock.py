"""Stamps taken on a camera's own clock, put on this machine's clock.

Many cameras stamp a frame with their own clock (time since the sensor powered up, a
hardware counter), not with the host's. The fusion node groups the cameras' frames by
stamp, so six such clocks give six unrelated time lines and no frame is ever complete.
Stamping on arrival instead puts every delay between capture and arrival into the stamp,
and a scene's six arrivals spread further than its captures did.

:class:`CameraClock` keeps the camera's stamps and adds one offset, estimated from the
arrivals: each image gives ``arrival - stamp`` = (the clocks' offset) + (this image's
delay), and the delay is never negative, so the smallest ``arrival - stamp`` seen recently
is the offset plus the least delay. The translated stamps keep the capture stamps' spacing
(the camera's own precision), shifted by that least delay: 1-2 ms for the package's test
drivers on one machine, more for a camera whose readout, transfer or encoder takes longer,
so cameras of different kinds differ by that much. The minimum is taken over a sliding
window, so a camera clock running slower than the host's (drift) is followed; a faster one
lowers the minimum at once. A camera clock that jumps back (the camera restarted) starts the
estimate again from that image, as does one that paused (offsets above the estimate by more
than ``restart_s`` for ``restart_s`` of arrivals). An image that is merely late (a driver
that stalled and sends its queued frames) keeps the estimate, so its stamp is still its
capture.

No ROS here: the camera node calls :meth:`CameraClock.translate` with the image's stamp and
its arrival (``MessageInfo.received_timestamp``), both in nanoseconds.
"""

from __future__ import annotations

from collections import deque

__all__ = ["CameraClock"]


class CameraClock:
    """Translates one camera's stamps onto this machine's clock from their arrivals."""

    def __init__(self, window_s: float = 10.0, restart_s: float = 1.0) -> None:
        """The offset is the least ``arrival - stamp`` of the last ``window_s`` seconds.

        A stamp earlier than the previous image's starts the estimate again, as do images
        whose ``arrival - stamp`` all exceed the estimate by more than ``restart_s`` for
        ``restart_s`` seconds of arrivals.
        """
        if window_s <= 0 or restart_s <= 0:
            raise ValueError(f"need window_s > 0 and restart_s > 0, got {window_s}, "
                             f"{restart_s}")
        self.window_ns = round(window_s * 1e9)
        self.restart_ns = round(restart_s * 1e9)
        self.restarts = 0
        """How many times the estimate started again after the first image."""
        # (arrival, arrival - stamp), offsets increasing: the front is the window's minimum.
        self._window: deque[tuple[int, int]] = deque()
        self._last_stamp_ns: int | None = None
        self._above_since_ns: int | None = None  # arrival of the first of the images in a
        # row whose offsets exceed the estimate by more than restart_ns

    @property
    def offset_ns(self) -> int | None:
        """The estimate of (this machine's clock - the camera's) + the least delay, ns.

        None before the first image.
        """
        return self._window[0][1] if self._window else None

    def translate(self, stamp_ns: int, arrival_ns: int) -> int:
        """The camera's stamp ``stamp_ns``, moved onto this machine's clock.

        ``arrival_ns`` is the image's arrival on this machine's clock. Both in nanoseconds;
        the result is never later than ``arrival_ns``.
        """
        offset = arrival_ns - stamp_ns
        estimate = self.offset_ns
        if estimate is not None:
            if offset - estimate <= self.restart_ns:
                self._above_since_ns = None
            elif self._above_since_ns is None:
                self._above_since_ns = arrival_ns
            if (stamp_ns < self._last_stamp_ns or self._above_since_ns is not None
                    and arrival_ns - self._above_since_ns >= self.restart_ns):
                self._window.clear()
                self._above_since_ns = None
                self.restarts += 1
        self._last_stamp_ns = stamp_ns
        while self._window and self._window[-1][1] >= offset:
            self._window.pop()
        self._window.append((arrival_ns, offset))
        while arrival_ns - self._window[0][0] > self.window_ns:
            self._window.popleft()
        return stamp_ns + self._window[0][1]
