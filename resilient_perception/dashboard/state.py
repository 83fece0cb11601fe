"""What the dashboard shows, kept from plain values: no ROS, no web server.

The dashboard node calls the ``on_*`` methods from its subscriptions (times are the node's
monotonic seconds) and the web server calls :meth:`DashboardState.snapshot` a few times a
second; a lock keeps the two threads apart, and every method holds it only for a few
dictionary updates, so the node's callbacks never wait on a browser.

Tile states, from the fusion node's ``/diagnostics`` per device and the latest fused frame:

* ``live``: alive and used in the latest fused frame;
* ``late``: alive, but the latest fused frame replaced it with a surrogate (it missed the
  frame timeout);
* ``dead``: declared dead (deadline, liveliness or watchdog; the reason is shown);
* ``no input``: never heard by the fusion node (or no fusion node heard yet).

``surrogate`` is a separate flag: the latest fused frame (of the last two seconds) carried
a Modifier surrogate for the device, whatever its health.

Accuracy: each fused frame whose label arrived is scored twice over the last
``accuracy_window`` such frames: as fused (with the Modifier's surrogates), and as the same
frame's live devices pooled without surrogates (what a fusion node without the Modifier
outputs), from the devices' own predictions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DashboardState", "DeviceView", "pool_live", "tile_state"]

SURROGATE_MEMORY_S = 2.0
"""A surrogate flag older than this is cleared (no fused frame since)."""
FUSION_SILENT_S = 3.0
"""No fusion ``/diagnostics`` for this long: the page says the fusion node is silent (and a
camera's own rate and inference time are not shown after as long without its report)."""
LATENCY_BIN_S = 0.5
"""Width of the latency plot's bins, s: the page gets a p50 and a max per bin."""
_PENDING_FRAMES = 2000  # stamps remembered for scoring (labels, fused frames, device probs)
_HEALTH_STATES = {"alive": "live", "dead": "dead", "unknown": "no input"}


def tile_state(health: str, surrogate: bool) -> str:
    """A device tile's state from the fusion node's health value and the surrogate flag."""
    state = _HEALTH_STATES.get(health, "no input")
    return "late" if state == "live" and surrogate else state


def pool_live(probs: Sequence[np.ndarray], mode: str) -> int:
    """The class a fusion without the Modifier picks from the live devices' probabilities.

    ``avg`` averages and ``max`` takes the per-class maximum, as the fusion node does for
    the devices present when no surrogate is added.
    """
    stacked = np.asarray(probs, np.float32)
    pooled = stacked.max(axis=0) if mode == "max" else stacked.mean(axis=0)
    return int(np.argmax(pooled))


@dataclass
class DeviceView:
    """One camera device as the page shows it."""

    health: str = "unknown"
    reason: str = ""
    surrogate_at: float | None = None
    input_rate_hz: float | None = None
    inference_ms: float | None = None
    received: int | None = None
    camera_at: float | None = None
    restarts: int = 0
    label: int | None = None
    confidence: float | None = None
    image_seq: int = 0

    def surrogate(self, now: float) -> bool:
        """Whether a fused frame of the last :data:`SURROGATE_MEMORY_S` replaced it."""
        return self.surrogate_at is not None and now - self.surrogate_at < SURROGATE_MEMORY_S


@dataclass
class _Fused:
    stamp_ns: int
    label: int
    confidence: float
    live: tuple[int, ...]
    surrogates: tuple[int, ...]
    latency_s: float
    mode: str
    at: float


@dataclass
class DashboardState:
    """The dashboard's model of the pipeline; thread-safe.

    Args:
        n_devices: Camera devices (tiles).
        window_s: Seconds of latency and events kept (the plot's time axis).
        accuracy_window: Scored frames of the rolling accuracy.
    """

    n_devices: int
    window_s: float = 60.0
    accuracy_window: int = 300
    devices: list[DeviceView] = field(init=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {self.n_devices}")
        self.devices = [DeviceView() for _ in range(self.n_devices)]
        self._fused: _Fused | None = None
        self._fused_count = 0
        self._fusion_heard: float | None = None
        self._latencies: deque[tuple[float, float]] = deque()
        self._events: deque[tuple[float, str, str]] = deque()
        self._labels: OrderedDict[int, int] = OrderedDict()
        self._unscored: OrderedDict[int, tuple[int, int | None]] = OrderedDict()
        self._device_probs: OrderedDict[int, dict[int, np.ndarray]] = OrderedDict()
        self._scores: deque[tuple[bool, bool | None]] = deque(maxlen=self.accuracy_window)
        self._plan: dict | None = None
        self._links: dict[tuple[str, str], dict] = {}
        self._requests: deque[tuple[float, float]] = deque()
        self._split_frames: int | None = None  # the fusion node's count at its last report
        self._splitting = False

    # -- inputs ----------------------------------------------------------------------------
    def on_device_health(self, device: int, health: str, reason: str, now: float) -> None:
        """The fusion node's view of ``device`` (``alive``, ``dead`` or ``unknown``)."""
        with self._lock:
            self._fusion_heard = now
            view = self.devices[device]
            if health != view.health:
                if health == "dead":
                    self._event(now, "deadline" if reason == "deadline" else "dead",
                                f"device {device} dead ({reason or 'unknown reason'})")
                elif health == "alive" and view.health == "dead":
                    self._event(now, "alive", f"device {device} alive again")
            view.health, view.reason = health, reason

    def on_frame_assembly(self, values: Mapping[str, str], now: float) -> None:
        """The fusion node's frame assembly counters: an event when frames start to split.

        One event when splitting starts (a report with more split frames after one without),
        not one a second while it lasts.
        """
        with self._lock:
            splits = _number(values.get("split_frames"))
            if splits is None:
                return
            before, self._split_frames = self._split_frames, int(splits)
            splitting = before is not None and splits > before  # a restart counts from 0
            if splitting and not self._splitting:
                self._event(now, "split", f"frames split: stamps up to "
                            f"{values.get('widest_split_ms', '?')} ms apart, sync_tolerance "
                            f"{values.get('sync_tolerance_s', '?')} s")
            self._splitting = splitting

    def on_camera_status(self, device: int, values: Mapping[str, str], now: float) -> None:
        """A camera node's own ``/diagnostics`` values (input rate, inference time, count)."""
        with self._lock:
            view = self.devices[device]
            view.camera_at = now
            view.input_rate_hz = _number(values.get("input_rate_hz"))
            view.inference_ms = _number(values.get("inference_p50_ms"))
            received = _number(values.get("received"))
            if received is not None:
                # A camera process counts from zero when it starts: a count that went down
                # is a restart (a restart before its first image is only seen as alive).
                if view.received is not None and received < view.received:
                    view.restarts += 1
                    self._event(now, "restart", f"camera {device} restarted")
                view.received = int(received)

    def on_prediction(self, device: int, stamp_ns: int, probs: np.ndarray, now: float) -> None:
        """Device ``device``'s prediction of the frame stamped ``stamp_ns``."""
        with self._lock:
            view = self.devices[device]
            view.label = int(np.argmax(probs)) if len(probs) else None
            view.confidence = float(np.max(probs)) if len(probs) else None
            self._device_probs.setdefault(stamp_ns, {})[device] = np.asarray(probs, np.float32)
            _trim(self._device_probs)

    def on_image(self, device: int) -> None:
        """A new image of ``device`` arrived (the page reloads its preview)."""
        with self._lock:
            self.devices[device].image_seq += 1

    def on_fused(self, stamp_ns: int, label: int, confidence: float, live: Iterable[int],
                 surrogates: Iterable[int], latency_s: float, mode: str, now: float) -> None:
        """A ``FusedPrediction``."""
        fused = _Fused(stamp_ns, int(label), float(confidence), tuple(live), tuple(surrogates),
                       float(latency_s), mode, now)
        with self._lock:
            self._fused = fused
            self._fused_count += 1
            for device in fused.surrogates:
                if 0 <= device < self.n_devices:
                    self.devices[device].surrogate_at = now
            self._latencies.append((now, 1e3 * fused.latency_s))
            probs = self._device_probs.get(stamp_ns, {})
            plain = (pool_live([probs[d] for d in fused.live], mode)
                     if fused.live and all(d in probs for d in fused.live) else None)
            self._unscored[stamp_ns] = (fused.label, plain)
            _trim(self._unscored)
            self._score(stamp_ns)
            self._forget(now)

    def on_label(self, stamp_ns: int, label: int) -> None:
        """The ground truth of the frame stamped ``stamp_ns``."""
        with self._lock:
            self._labels[stamp_ns] = int(label)
            _trim(self._labels)
            self._score(stamp_ns)

    def on_plan(self, plan: Mapping, now: float) -> None:
        """A placement plan: ``version``, ``reason``, ``robots``, ``units``, ``rows``."""
        with self._lock:
            if self._plan is None or plan.get("version") != self._plan.get("version"):
                self._event(now, "plan",
                            f"plan v{plan.get('version')} ({plan.get('reason', '')})")
            self._plan = dict(plan)

    def on_link(self, source: str, target: str, throughput_bps: float, rtt_s: float,
                now: float) -> None:
        """A measured link ``source`` -> ``target``."""
        with self._lock:
            self._links[source, target] = {"from": source, "to": target,
                                           "mbps": throughput_bps / 1e6,
                                           "rtt_ms": 1e3 * rtt_s, "at": now}

    def on_request(self, latency_s: float, now: float) -> None:
        """A distributed ResNet classification and its latency."""
        with self._lock:
            self._requests.append((now, 1e3 * latency_s))
            self._forget(now)

    def add_event(self, now: float, kind: str, text: str) -> None:
        """An event of the caller's (e.g. a kill it made) on the event strip."""
        with self._lock:
            self._event(now, kind, text)

    # -- output ----------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        """Everything the page shows, JSON-ready; times relative to ``now`` (s, <= 0)."""
        with self._lock:
            self._forget(now)
            fused = self._fused
            tiles = []
            for i, view in enumerate(self.devices):
                surrogate = view.surrogate(now)
                # a camera that stopped reporting has no current rate or inference time
                current = view.camera_at is not None and now - view.camera_at < FUSION_SILENT_S
                tiles.append({
                    "device": i, "state": tile_state(view.health, surrogate),
                    "reason": view.reason, "surrogate": surrogate,
                    "input_rate_hz": view.input_rate_hz if current else None,
                    "inference_ms": view.inference_ms if current else None,
                    "restarts": view.restarts, "label": view.label,
                    "confidence": view.confidence, "image_seq": view.image_seq,
                    "live": fused is not None and i in fused.live})
            with_mod = [a for a, _ in self._scores]
            without = [b for _, b in self._scores if b is not None]
            compared = [a for a, b in self._scores if b is not None]
            return {
                "window_s": self.window_s,
                "tiles": tiles,
                "fused": None if fused is None else {
                    "label": fused.label, "confidence": fused.confidence,
                    "live": list(fused.live), "surrogates": list(fused.surrogates),
                    "latency_ms": 1e3 * fused.latency_s, "mode": fused.mode,
                    "age_s": now - fused.at, "count": self._fused_count},
                "fusion_silent": (self._fusion_heard is None
                                  or now - self._fusion_heard > FUSION_SILENT_S),
                "accuracy": {"frames": len(with_mod),
                             "modifier": _mean(with_mod),
                             # the Modifier's accuracy on the frames both were scored on
                             "modifier_compared": _mean(compared),
                             "without_modifier": _mean(without),
                             "compared_frames": len(without)},
                "latency": self._latency_bins(now),
                "events": [{"t": t - now, "kind": kind, "text": text}
                           for t, kind, text in self._events],
                "plan": self._plan,
                "links": [{**link, "age_s": now - link["at"]} for link in self._links.values()],
                "requests": {"count": len(self._requests),
                             "p50_ms": _percentile([ms for _, ms in self._requests], 50)},
            }

    # -- internals (lock held) -------------------------------------------------------------
    def _event(self, now: float, kind: str, text: str) -> None:
        self._events.append((now, kind, text))

    def _score(self, stamp_ns: int) -> None:
        if stamp_ns in self._labels and stamp_ns in self._unscored:
            truth = self._labels.pop(stamp_ns)
            fused, plain = self._unscored.pop(stamp_ns)
            self._scores.append((fused == truth, None if plain is None else plain == truth))
            self._device_probs.pop(stamp_ns, None)

    def _forget(self, now: float) -> None:
        start = now - self.window_s
        for series in (self._latencies, self._requests, self._events):
            while series and series[0][0] < start:
                series.popleft()

    def _latency_bins(self, now: float) -> list[list[float]]:
        """``[t, p50, max]`` per :data:`LATENCY_BIN_S` bin with data, t <= 0 (its end)."""
        if not self._latencies:
            return []
        times = np.array([t for t, _ in self._latencies])
        values = np.array([ms for _, ms in self._latencies])
        bins = np.floor((times - now) / LATENCY_BIN_S).astype(int)
        out = []
        for b in np.unique(bins):
            chosen = values[bins == b]
            out.append([round(float((b + 1) * LATENCY_BIN_S), 2),
                        round(float(np.median(chosen)), 3), round(float(chosen.max()), 3)])
        return out


def _trim(table: OrderedDict) -> None:
    while len(table) > _PENDING_FRAMES:
        table.popitem(last=False)


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _mean(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
