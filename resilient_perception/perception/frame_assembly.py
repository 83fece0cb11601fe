"""ROS-free core of the fusion node: device health, frame assembly by source stamp, fusion.

The fusion node (DESIGN.md, "Data flow (perception)") receives one ``DevicePrediction`` per
device per camera frame, groups them by the stamp of the source image, waits until every
live device has reported or the frame's timeout passes, and fuses the frame with Modifier
surrogates for the devices that are missing. Everything that decision needs lives here,
with time passed in as float seconds, so it is testable without clocks, executors or
messages. The node only translates ROS callbacks into these calls::

    result = assembler.add(stamp_ns, device, probs, features, now)
    if result is AddResult.ACCEPTED:
        monitor.heard(device, now)
    elif 0 <= device < n_devices:
        monitor.record_rejection(device)
    monitor.check_watchdog(now)            # also from a timer, so silence is noticed
    for frame in assembler.ready(now, monitor.live_devices()):
        probs, surrogates = fuse_frame(frame, heads, mode)

Only *accepted* predictions count as hearing from a device: a device that sends nothing but
NaN, duplicates or late frames is useless to fusion, so the watchdog retires it and frames
stop waiting for it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from .modes import FUSION_MODES, PROBABILITY_FLOOR

__all__ = [
    "DEATH_REASONS",
    "AddResult",
    "ClassifierHeads",
    "DeviceHealth",
    "DeviceMonitor",
    "Frame",
    "FrameAssembler",
    "StallGuard",
    "fuse_frame",
    "nearest_fitting",
]

T = TypeVar("T")

# deadline / liveliness come from the subscription's QoS events, watchdog from check_watchdog
DEATH_REASONS = ("deadline", "liveliness", "watchdog")
STAMP_GAPS_KEPT = 16  # per device, for the median gap between its stamps (its frame period)


class DeviceHealth(enum.Enum):
    """Health of one device as seen by the fusion node."""

    UNKNOWN = "unknown"  # never heard from: "no input yet"
    ALIVE = "alive"
    DEAD = "dead"


@dataclass
class _DeviceRecord:
    health: DeviceHealth = DeviceHealth.UNKNOWN
    death_reason: str = ""  # set while DEAD
    last_death: float | None = None
    last_heard: float | None = None
    messages: int = 0
    rejected: int = 0
    deaths: int = 0


class DeviceMonitor:
    """Tracks which devices are alive, from arrivals, QoS events and a watchdog.

    A device is UNKNOWN ("no input yet") until its first accepted prediction, then ALIVE
    until it is marked dead (QoS deadline missed, liveliness lost) or the watchdog finds it
    silent for longer than ``watchdog_timeout``; a dead device that is heard again is ALIVE
    again, so it is used from its next frame on. A device never heard is not declared dead:
    frames do not wait for it either way, and "no input yet" says what is known (a camera
    still starting, or one whose images never arrive).
    """

    def __init__(self, n_devices: int, watchdog_timeout: float):
        if n_devices < 1 or watchdog_timeout <= 0:
            raise ValueError("need n_devices >= 1 and watchdog_timeout > 0")
        self.n_devices = n_devices
        self.watchdog_timeout = float(watchdog_timeout)
        self._devices = [_DeviceRecord() for _ in range(n_devices)]

    def heard(self, device: int, now: float) -> bool:
        """Record an accepted prediction from ``device``; return True if it became ALIVE."""
        record = self._devices[device]
        record.messages += 1
        record.last_heard = now
        revived = record.health is not DeviceHealth.ALIVE
        record.health = DeviceHealth.ALIVE
        record.death_reason = ""
        return revived

    def record_rejection(self, device: int) -> None:
        """Count a prediction from ``device`` that the assembler rejected."""
        self._devices[device].rejected += 1

    def mark_dead(self, device: int, reason: str, now: float) -> bool:
        """Declare ``device`` dead for ``reason`` at ``now``; return True if newly dead."""
        if reason not in DEATH_REASONS:
            raise ValueError(f"unknown death reason {reason!r}; expected one of {DEATH_REASONS}")
        record = self._devices[device]
        if record.health is DeviceHealth.DEAD:
            return False
        record.health = DeviceHealth.DEAD
        record.death_reason = reason
        record.deaths += 1
        record.last_death = now
        return True

    def check_watchdog(self, now: float) -> list[int]:
        """Mark dead every device silent for longer than the timeout; return the newly dead.

        Only devices heard before can fall silent: one never heard stays UNKNOWN.
        """
        newly_dead = []
        for device, record in enumerate(self._devices):
            if record.health is DeviceHealth.DEAD or record.last_heard is None:
                continue
            if now - record.last_heard > self.watchdog_timeout:
                self.mark_dead(device, "watchdog", now)
                newly_dead.append(device)
        return newly_dead

    def silence(self, device: int, now: float) -> float:
        """Seconds since ``device``'s last accepted prediction (infinite if never heard).

        A deadline event is believed only when this agrees (the fusion node's
        ``_mark_dead``): the middleware's deadline clock runs on the arrival of messages,
        not on their processing, so while the node works through a backlog (after its own
        stall, or when it falls behind) a device whose queued predictions it is still
        reading has missed its deadline in the middleware's terms only.
        """
        last = self._devices[device].last_heard
        return float("inf") if last is None else now - last

    def postpone(self, seconds: float) -> None:
        """Shift every silence the watchdog measures by ``seconds`` (this process stalled)."""
        for record in self._devices:
            if record.last_heard is not None:
                record.last_heard += seconds

    def health(self, device: int) -> DeviceHealth:
        """Current health of ``device``."""
        return self._devices[device].health

    def live_devices(self) -> set[int]:
        """Devices currently ALIVE (UNKNOWN ones are not waited for: they may never start)."""
        return {i for i, r in enumerate(self._devices) if r.health is DeviceHealth.ALIVE}

    def snapshot(self) -> dict[int, dict[str, object]]:
        """Per-device health, death reason, last arrival time and counters, for diagnostics."""
        return {
            i: {
                "health": r.health.value,
                "reason": r.death_reason,
                "last_heard": r.last_heard,
                "last_death": r.last_death,
                "messages": r.messages,
                "rejected": r.rejected,
                "deaths": r.deaths,
            }
            for i, r in enumerate(self._devices)
        }


class StallGuard:
    """Tells this process's own stalls from its devices' silence.

    While the fusion process is stopped (SIGSTOP, swapped out, starved of CPU) the
    middleware's deadline clocks and the pending frames' timeouts run on, though the
    devices' predictions wait in its queues: once it runs again it would see every device's
    deadline missed and fuse each waiting frame from whichever prediction it reads first.
    The node calls :meth:`observe` in its callbacks, which its timers make at least every
    tick: a longer gap than ``threshold`` since the previous one is a stall, and the node
    adds it to the devices' silences and the pending frames' timeouts.
    """

    def __init__(self, threshold: float) -> None:
        """Stalls are gaps over ``threshold`` s between callbacks."""
        if threshold <= 0:
            raise ValueError(f"need threshold > 0, got {threshold}")
        self.threshold = float(threshold)
        self.stalls = 0
        """Stalls seen so far."""
        self.stalled_s = 0.0
        """Their total length, s."""
        self._last: float | None = None

    def observe(self, now: float) -> float:
        """Note a callback at ``now`` (monotonic s); return the stall that just ended, or 0."""
        gap = 0.0 if self._last is None else now - self._last
        self._last = now
        if gap <= self.threshold:
            return 0.0
        self.stalls += 1
        self.stalled_s += gap
        return gap


class AddResult(enum.StrEnum):
    """Outcome of :meth:`FrameAssembler.add`: accepted, or why the prediction was rejected."""

    ACCEPTED = "accepted"
    DEVICE_OUT_OF_RANGE = "device_out_of_range"
    BAD_PROBS_LENGTH = "bad_probs_length"
    BAD_FEATURES_LENGTH = "bad_features_length"
    NON_FINITE = "non_finite"
    DUPLICATE = "duplicate"  # this device already reported for this stamp
    STALE = "stale"  # stamp of (or within the tolerance of) a frame already emitted


@dataclass
class Frame:
    """All device predictions for one scene (device rows that did not report are 0).

    Attributes:
        stamp_ns: source image stamp in nanoseconds (the earliest of the frame's stamps when
            they differ within the assembler's ``sync_tolerance_ns``).
        probs: (N, K) float32 device probabilities.
        features: (N, D) float32 device features.
        present: (N,) bool, the devices that reported for this frame.
        first_arrival: time (s) of the first prediction for this frame.
        latest_ns: the latest of the frame's stamps (``stamp_ns`` for one shared stamp).

    """

    stamp_ns: int
    probs: np.ndarray
    features: np.ndarray
    present: np.ndarray
    first_arrival: float
    latest_ns: int = -1

    def __post_init__(self) -> None:
        if self.latest_ns < self.stamp_ns:
            self.latest_ns = self.stamp_ns


def nearest_fitting(spans: Iterable[tuple[T, int, int]], stamp_ns: int,
                    tolerance_ns: int) -> T | None:
    """The group a message stamped ``stamp_ns`` joins, of ``(group, first_ns, last_ns)``.

    The approximate-time rule (the fusion node's and a bag reader's): of the groups whose
    stamps, with ``stamp_ns``, span at most ``tolerance_ns``, the one whose middle is nearest;
    None when none fits. The caller leaves out the groups that already hold the message's
    source (one message per device and frame).
    """
    fitting = [(group, first, last) for group, first, last in spans
               if max(last, stamp_ns) - min(first, stamp_ns) <= tolerance_ns]
    nearest = min(fitting, default=None, key=lambda span: abs((span[1] + span[2]) / 2 - stamp_ns))
    return None if nearest is None else nearest[0]


class FrameAssembler:
    """Groups device predictions by source stamp and releases frames in stamp order.

    With ``sync_tolerance_ns`` 0 a frame is the predictions of one exact stamp (synchronised
    sources: the player, recorded datasets, hardware-triggered cameras). Free-running cameras
    stamp one scene a few milliseconds apart: with a tolerance, a prediction joins the pending
    frame whose stamps, with it, span at most the tolerance and that has none from its device
    yet (the nearest such frame), else it starts a new one; each device gives a frame at most
    one prediction. The tolerance must cover the spread of one scene's stamps across the
    cameras and stay below one frame period minus that spread, so that a camera's next image
    cannot join the current frame. A prediction that could have joined a frame already
    released is stale. A camera slower than the others is missing from some frames, which are
    released at their timeout with its surrogate.

    A pending frame is ready once every live device has reported for it, or once
    ``frame_timeout`` seconds have passed since its first prediction (longer for frames
    caught in a stall of this process, :meth:`stalled`). Frames are released
    oldest first and never overtake an older pending frame (whose own timeout bounds the
    wait). At most ``max_pending`` frames are held: a new frame beyond that forces the
    oldest pending one out, and it is returned by the next :meth:`ready` call whatever its
    state (the node calls :meth:`ready` after every :meth:`add`, so that queue holds at most
    one frame).

    A frame released without a live device whose prediction sits in a newer pending frame
    less than half that device's frame period away (the median gap of its stamps) was split:
    one scene's stamps spread wider than ``sync_tolerance_ns`` (free-running cameras with the
    tolerance left at 0). :attr:`split_frames` counts them and :attr:`widest_split_ns` keeps
    the widest spread such a frame needed, so the node can say what to set.
    """

    def __init__(
        self,
        n_devices: int,
        n_classes: int,
        feature_dim: int,
        frame_timeout: float,
        max_pending: int = 32,
        sync_tolerance_ns: int = 0,
    ):
        if min(n_devices, n_classes, feature_dim, max_pending) < 1 or frame_timeout <= 0:
            raise ValueError("sizes and max_pending must be >= 1 and frame_timeout > 0")
        if sync_tolerance_ns < 0:
            raise ValueError(f"sync_tolerance_ns must be >= 0, got {sync_tolerance_ns}")
        self.n_devices = n_devices
        self.n_classes = n_classes
        self.feature_dim = feature_dim
        self.frame_timeout = float(frame_timeout)
        self.max_pending = max_pending
        self.sync_tolerance_ns = int(sync_tolerance_ns)
        self._pending: dict[int, Frame] = {}  # keyed by the frame's first stamp
        self._forced_out: list[Frame] = []
        self._last_released_ns: int | None = None  # the released frames' latest first stamp
        self._stall: tuple[int, float] | None = None  # (last stamp it covers, its seconds)
        self._counts = {result.value: 0 for result in AddResult}
        self._last_stamp: list[int | None] = [None] * n_devices
        self._gaps: list[deque[int]] = [deque(maxlen=STAMP_GAPS_KEPT) for _ in range(n_devices)]
        self.split_frames = 0
        """Frames released without a device whose prediction for the scene sat in another."""
        self.widest_split_ns = 0
        """The widest stamp spread of a split frame and its device's prediction, ns."""

    @property
    def pending_count(self) -> int:
        """Number of frames waiting for devices (never more than ``max_pending``)."""
        return len(self._pending)

    @property
    def counts(self) -> dict[str, int]:
        """How many predictions ended with each :class:`AddResult` (a copy)."""
        return dict(self._counts)

    def add(
        self,
        stamp_ns: int,
        device: int,
        probs: np.ndarray,
        features: np.ndarray,
        now: float,
    ) -> AddResult:
        """Validate one device prediction and store it in the frame for ``stamp_ns``.

        Invalid input is rejected (and counted), never raised: one misbehaving device must
        not take the fusion node down.

        Args:
            stamp_ns: stamp of the source image, nanoseconds.
            device: device index in ``[0, n_devices)``.
            probs: (K,) probabilities.
            features: (D,) features.
            now: arrival time, seconds.

        Returns:
            ``AddResult.ACCEPTED`` or the rejection reason.

        """
        result = self._validate(stamp_ns, device, probs, features)
        frame = self._frame_for(stamp_ns, device) if result is AddResult.ACCEPTED else None
        if frame is None and result is AddResult.ACCEPTED and stamp_ns in self._pending:
            result = AddResult.DUPLICATE  # this device already gave that exact stamp's frame
        self._counts[result.value] += 1
        if result is not AddResult.ACCEPTED:
            return result
        if frame is None:
            frame = Frame(
                stamp_ns=stamp_ns,
                probs=np.zeros((self.n_devices, self.n_classes), np.float32),
                features=np.zeros((self.n_devices, self.feature_dim), np.float32),
                present=np.zeros(self.n_devices, bool),
                first_arrival=now if self._stall is None or stamp_ns > self._stall[0]
                else now + self._stall[1],
            )
            self._pending[stamp_ns] = frame
            if len(self._pending) > self.max_pending:
                self._force_out_oldest()
        frame.stamp_ns = min(frame.stamp_ns, stamp_ns)
        frame.latest_ns = max(frame.latest_ns, stamp_ns)
        last = self._last_stamp[device]
        if last is not None and stamp_ns > last:
            self._gaps[device].append(stamp_ns - last)
        self._last_stamp[device] = stamp_ns
        frame.probs[device] = probs
        frame.features[device] = features
        frame.present[device] = True
        return result

    def _frame_for(self, stamp_ns: int, device: int) -> Frame | None:
        """The pending frame a prediction of ``device`` stamped ``stamp_ns`` joins, if any."""
        exact = self._pending.get(stamp_ns)
        if self.sync_tolerance_ns == 0 or exact is not None:
            return exact if exact is not None and not exact.present[device] else None
        return nearest_fitting(((frame, frame.stamp_ns, frame.latest_ns)
                                for frame in self._pending.values() if not frame.present[device]),
                               stamp_ns, self.sync_tolerance_ns)

    def _validate(
        self, stamp_ns: int, device: int, probs: np.ndarray, features: np.ndarray
    ) -> AddResult:
        if not 0 <= device < self.n_devices:
            return AddResult.DEVICE_OUT_OF_RANGE
        if np.shape(probs) != (self.n_classes,):
            return AddResult.BAD_PROBS_LENGTH
        if np.shape(features) != (self.feature_dim,):
            return AddResult.BAD_FEATURES_LENGTH
        if not (np.isfinite(probs).all() and np.isfinite(features).all()):
            return AddResult.NON_FINITE
        if (self._last_released_ns is not None
                and stamp_ns <= self._last_released_ns + self.sync_tolerance_ns):
            return AddResult.STALE
        return AddResult.ACCEPTED

    def _oldest_key(self) -> int:
        return min(self._pending, key=lambda key: self._pending[key].stamp_ns)

    def _release_oldest(self) -> Frame:
        frame = self._pending.pop(self._oldest_key())
        self._last_released_ns = max(frame.stamp_ns, self._last_released_ns or frame.stamp_ns)
        return frame

    def _force_out_oldest(self) -> None:
        # Released now (later arrivals for it are stale) and handed out by the next ready().
        self._forced_out.append(self._release_oldest())

    def postpone(self, seconds: float) -> None:
        """Give every pending frame ``seconds`` more to complete (the clock jumped).

        Stamps from before the jump no longer say when they were taken, so a stall's
        longer wait (:meth:`stalled`) ends here.
        """
        self._extend_pending(seconds)
        self._stall = None

    def stalled(self, seconds: float, until_ns: int) -> None:
        """This process stalled for ``seconds``, until stamp time ``until_ns``.

        Every pending frame, and every frame stamped up to ``until_ns`` that starts later,
        waits ``seconds`` longer: the devices' predictions for the stall's frames may have
        been held up by the same stall (a frozen reader can block its writers' publish for
        as long as it is frozen), and then arrive one device after another as each catches up.
        """
        self._extend_pending(seconds)
        self._stall = (until_ns, seconds)

    def _extend_pending(self, seconds: float) -> None:
        for frame in self._pending.values():
            frame.first_arrival += seconds

    def ready(self, now: float, live: set[int]) -> list[Frame]:
        """Return the frames to fuse now, oldest first, and forget them.

        Args:
            now: current time, seconds.
            live: devices to wait for (``DeviceMonitor.live_devices()``).

        Returns:
            Frames forced out by the ``max_pending`` bound, then every pending frame, in
            stamp order, up to the first one that is neither complete nor timed out.

        """
        released, self._forced_out = self._forced_out, []
        while self._pending:
            oldest = self._pending[self._oldest_key()]
            complete = all(oldest.present[d] for d in live)
            if not (complete or now - oldest.first_arrival >= self.frame_timeout):
                break
            released.append(self._release_oldest())
            if not complete:
                self._note_split(oldest, live)
        return released

    def _note_split(self, frame: Frame, live: set[int]) -> None:
        """Count ``frame``, released incomplete, as split if it was.

        It was if a live device it lacks reported in a newer pending frame that shares no
        device with it, less than half that device's frame period after its earliest stamp.
        """
        widest = None
        for device in live:
            if frame.present[device] or not self._gaps[device]:
                continue
            half_period = float(np.median(self._gaps[device])) / 2
            for pending in self._pending.values():
                spread = pending.latest_ns - frame.stamp_ns
                if (pending.present[device] and spread < half_period
                        and not (pending.present & frame.present).any()):
                    widest = max(spread, widest or 0)
        if widest is not None:
            self.split_frames += 1
            self.widest_split_ns = max(self.widest_split_ns, widest)


@dataclass
class ClassifierHeads:
    """The devices' classifier heads as received so far (heads arrive once, latched).

    Attributes:
        weights: (N, K, D) float32; rows of unknown heads are zero.
        biases: (N, K) float32; rows of unknown heads are zero.
        known: (N,) bool, which heads have been received.

    """

    weights: np.ndarray
    biases: np.ndarray
    known: np.ndarray
    # surrogate_head per live set: live sets change rarely, frames often
    _surrogate_heads: dict[bytes, tuple[np.ndarray, np.ndarray, list[int]] | None] = field(
        default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls, n_devices: int, n_classes: int, feature_dim: int) -> ClassifierHeads:
        """Heads of ``n_devices`` devices, none known yet."""
        return cls(
            weights=np.zeros((n_devices, n_classes, feature_dim), np.float32),
            biases=np.zeros((n_devices, n_classes), np.float32),
            known=np.zeros(n_devices, bool),
        )

    def set_head(self, device: int, weight: np.ndarray, bias: np.ndarray) -> bool:
        """Store ``device``'s head: weight (K, D), bias (K,).

        Returns:
            Whether it is new: False for the head already stored (cameras repeat theirs).

        Raises:
            ValueError: on a wrong device id, wrong shape or a non-finite value.

        """
        if not 0 <= device < self.weights.shape[0]:
            raise ValueError(f"device {device} out of range")
        if np.shape(weight) != self.weights.shape[1:] or np.shape(bias) != self.biases.shape[1:]:
            raise ValueError(
                f"head of device {device} has shapes {np.shape(weight)}, {np.shape(bias)}; "
                f"expected {self.weights.shape[1:]}, {self.biases.shape[1:]}"
            )
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ValueError(f"head of device {device} has non-finite values")
        if (self.known[device] and np.array_equal(self.weights[device], weight)
                and np.array_equal(self.biases[device], bias)):
            return False
        self.weights[device] = weight
        self.biases[device] = bias
        self.known[device] = True
        self._surrogate_heads.clear()
        return True

    def surrogate_head(self, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
        """The Modifier as one affine map of all devices' features, for a ``live`` set.

        The surrogate's logits are ``W_bar @ mean_live(f) + b_bar``, with ``W_bar``, ``b_bar``
        the mean of the live devices' heads. That equals ``A @ f_all + b_bar`` where
        ``f_all`` (N*D,) is every device's features end to end and ``A`` (K, N*D) holds
        ``W_bar / |live|`` in the columns of live devices and zeros elsewhere: one matrix
        product per frame instead of a gather, a mean and a product.

        Args:
            live: (N,) bool, at least one True.

        Returns:
            ``(A (K, N*D), b_bar (K,), missing devices)``, or None while a live device's
            head is unknown. Cached per live set (cleared when a head changes): live sets
            change rarely, frames arrive often.
        """
        key = live.tobytes()
        if key not in self._surrogate_heads:
            entry = None
            if self.known[live].all():
                w_bar = self.weights[live].mean(axis=0)
                a = np.where(live[:, None, None], w_bar / live.sum(), 0.0).astype(np.float32)
                entry = (np.ascontiguousarray(a.transpose(1, 0, 2).reshape(w_bar.shape[0], -1)),
                         self.biases[live].mean(axis=0), np.flatnonzero(~live).tolist())
            self._surrogate_heads[key] = entry
        return self._surrogate_heads[key]


def fuse_frame(
    frame: Frame,
    heads: ClassifierHeads | None,
    mode: str,
    use_modifier: bool = True,
) -> tuple[np.ndarray, list[int]]:
    """Fuse one frame as :func:`~.modifier.fuse_with_failures` does, live = ``frame.present``.

    The same Modifier and pooling, for one frame in numpy with the Modifier folded into one
    affine map cached per live set (:meth:`ClassifierHeads.surrogate_head`): the fusion
    node runs this once per frame, where torch's per-call overhead would cost several times
    the arithmetic (the tests check both agree).

    The devices that did not report get Modifier surrogates when ``use_modifier`` is set,
    at least one device is present and the heads of *all* present devices are known (the
    surrogate averages the present devices' heads; a missing device's own head is never
    used). If a present device's head has not arrived yet, the frame is fused from the
    present devices only and no surrogate is reported: a surrogate built from a subset of
    the present heads would be a different function from the one the devices were trained
    with.

    Args:
        frame: a frame released by :meth:`FrameAssembler.ready`.
        heads: the classifier heads received so far, or None if none.
        mode: one of :data:`.modes.FUSION_MODES` (``"avg"``, ``"max"``, ``"geo"``).
        use_modifier: substitute surrogates for the missing devices.

    Returns:
        Fused scores (K,) float32 and the devices that received a surrogate.

    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; expected one of {FUSION_MODES}")
    present = frame.present.astype(bool)
    live_probs = frame.probs[present]
    n_devices, n_live = len(present), len(live_probs)
    if n_live == 0:
        return np.full(frame.probs.shape[1], 1.0 / frame.probs.shape[1], np.float32), []
    head = heads.surrogate_head(present) if use_modifier and heads is not None else None
    surrogates = head[2] if head is not None else []
    pooled_over = n_devices if head is not None else n_live  # surrogates count in the means
    if mode == "max":
        pooled = live_probs.max(axis=0)
    elif mode == "geo":
        pooled = np.log(np.maximum(live_probs, PROBABILITY_FLOOR)).sum(axis=0)
    else:
        pooled = live_probs.sum(axis=0)
    if surrogates:  # every missing device gets the same surrogate: pooling needs it once
        a, b_bar, _ = head
        logits = a @ frame.features.reshape(-1) + b_bar
        # max() of a list: a numpy reduction costs more than the rest of this line
        surrogate = np.exp(logits - max(logits.tolist()))
        surrogate /= surrogate.sum()
        if mode == "max":
            pooled = np.maximum(pooled, surrogate)
        elif mode == "geo":
            pooled += np.log(np.maximum(surrogate, PROBABILITY_FLOOR)) * (n_devices - n_live)
        else:
            pooled += surrogate * (n_devices - n_live)
    if mode == "geo":
        mean_log = pooled / pooled_over
        pooled = np.exp(mean_log - max(mean_log.tolist()))
        pooled /= pooled.sum()
    elif mode == "avg":
        pooled /= pooled_over
    return pooled.astype(np.float32, copy=False), list(surrogates)  # the cache's is shared
