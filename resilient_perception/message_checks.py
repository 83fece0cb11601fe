"""What a message from outside may mean: checks of its values, and the rejections' bookkeeping.

The nodes receive data from any process on their DDS domain (DDS security is not available
with these wheels), so every value that comes in is checked against what it can mean before
it may change any state. The checks are plain functions on numbers and arrays that return
the *reason* of a rejection (a short ``snake_case`` name, counted per reason on
``/diagnostics``) or None; the nodes only convert messages, call them, count and log.

* :func:`stamp_problem`: a stamp must lie within a window around the receiver's clock. One
  prediction stamped a minute ahead would otherwise become the newest frame, and every valid
  prediction after it would be "stale".
* :func:`probabilities_problem`, :func:`values_problem`: a probability vector has the agreed
  length, finite non-negative entries and sums to 1 within a tolerance; features and head
  weights are finite and bounded in magnitude (so a surrogate computed from them stays
  finite).
* :class:`HeadShapes`: which classifier-head shape ``(classes, features)`` the fusion node
  uses: the configured one, else the shape most devices' latest heads have (one early bad
  head is outvoted as soon as two real ones arrived, and a device's head is replaced by its
  later heads).
* :func:`link_rate_problem`: a measured link rate lies in a plausible range.
* :class:`RejectionLog`: counts rejections per reason and throttles the log *per reason*, so
  that one frequent reason never hides another; :func:`clip_text` bounds the text a log line
  echoes from a message.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

__all__ = [
    "MAX_ECHO_CHARS",
    "HeadShapes",
    "RejectionLog",
    "clip_text",
    "head_problem",
    "link_rate_problem",
    "probabilities_problem",
    "stamp_problem",
    "values_problem",
]

MAX_ECHO_CHARS = 80
"""Longest piece of a message (a name, an encoding) a log line repeats."""


def clip_text(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: for log lines."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def stamp_problem(stamp_ns: int, now_ns: int, max_ahead_s: float,
                  max_age_s: float) -> str | None:
    """``"stamp_ahead"`` / ``"stamp_too_old"`` if ``stamp_ns`` is outside the window, else None.

    The window is ``[now - max_age_s, now + max_ahead_s]``. ``now_ns <= 0`` means the clock
    has no time yet (simulated time before the first ``/clock``): nothing is rejected then,
    since nothing can be compared.
    """
    if now_ns <= 0:
        return None
    if stamp_ns > now_ns + round(max_ahead_s * 1e9):
        return "stamp_ahead"
    if stamp_ns < now_ns - round(max_age_s * 1e9):
        return "stamp_too_old"
    return None


def values_problem(values: np.ndarray, length: int, max_abs: float,
                   length_reason: str) -> str | None:
    """Why ``values`` (features, head weights) cannot be used, or None.

    Returns ``length_reason`` for a length other than ``length``, ``"non_finite"`` for
    NaN/Inf and ``"value_out_of_range"`` for a magnitude above ``max_abs``.
    """
    if np.shape(values) != (length,):
        return length_reason
    if not np.isfinite(values).all():
        return "non_finite"
    if length and float(np.abs(values).max()) > max_abs:
        return "value_out_of_range"
    return None


def probabilities_problem(probs: np.ndarray, n_classes: int, tolerance: float) -> str | None:
    """Why ``probs`` is not a probability vector over ``n_classes`` classes, or None.

    ``"bad_probs_length"``, ``"non_finite"``, or ``"bad_probabilities"`` when an entry is
    negative or the sum is off 1 by more than ``tolerance`` (float32 softmax outputs are
    within ~1e-6 of 1).
    """
    if np.shape(probs) != (n_classes,):
        return "bad_probs_length"
    if not np.isfinite(probs).all():
        return "non_finite"
    if float(probs.min()) < 0.0 or abs(float(probs.sum(dtype=np.float64)) - 1.0) > tolerance:
        return "bad_probabilities"
    return None


def head_problem(weight: np.ndarray, bias: np.ndarray, n_classes: int, feature_dim: int,
                 max_abs: float) -> str | None:
    """Why a classifier head (flat ``weight``, ``bias``) of the shape it claims is unusable.

    A head that claims ``n_classes`` x ``feature_dim`` must carry that many weights and
    ``n_classes`` biases, all finite and at most ``max_abs`` in magnitude. Returns a short
    description (heads are rare: one reason, ``bad_head``, is counted for all), or None.
    """
    if n_classes < 1 or feature_dim < 1:
        return f"empty shape {n_classes}x{feature_dim}"
    if np.shape(weight) != (n_classes * feature_dim,) or np.shape(bias) != (n_classes,):
        return (f"{np.size(weight)} weights and {np.size(bias)} biases for a "
                f"{n_classes}x{feature_dim} head")
    for name, values in (("weights", weight), ("biases", bias)):
        problem = values_problem(values, len(values), max_abs, "")
        if problem:
            return f"{name}: {problem.replace('_', ' ')} (limit {max_abs:g})"
    return None


class HeadShapes:
    """The devices' latest classifier heads and the shape ``(classes, features)`` in use.

    The rule, so that one bad head cannot decide the shape for everybody:

    * with a ``fixed`` shape (the node's parameters), heads of another shape are refused;
    * otherwise every device votes with the shape of its *latest* well-formed head, and the
      shape in use is the one with most votes; on a tie the shape in use stays (so the
      first head decides only until a second device disagrees with it, and one early bad
      head is outvoted by the second real one).

    Per device the latest head of each of its last ``shapes_per_device`` shapes is kept, so
    a later head of a shape nobody else has does not take away the device's usable head.
    """

    def __init__(self, n_devices: int, fixed: tuple[int, int] | None = None,
                 shapes_per_device: int = 2) -> None:
        """Heads of ``n_devices`` devices, none known; ``fixed`` is the configured shape."""
        if n_devices < 1 or shapes_per_device < 1:
            raise ValueError("need n_devices >= 1 and shapes_per_device >= 1")
        self.fixed = fixed
        self.shape: tuple[int, int] | None = fixed
        """The shape in use, or None while no head (and no fixed shape) is known."""
        self._shapes_per_device = shapes_per_device
        # device -> shape -> (weight (K, D), bias (K,)), most recent shape last
        self._heads: list[OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]]] = [
            OrderedDict() for _ in range(n_devices)]

    def add(self, device: int, weight: np.ndarray, bias: np.ndarray) -> bool:
        """Record ``device``'s head (weight ``(K, D)``, bias ``(K,)``, already checked).

        Returns:
            Whether the shape in use changed (the caller then rebuilds what depends on it).

        Raises:
            ValueError: for a shape other than the fixed one.
        """
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        if self.fixed is not None and shape != self.fixed:
            raise ValueError(f"a {shape[0]}x{shape[1]} head; the configured shape is "
                             f"{self.fixed[0]}x{self.fixed[1]}")
        heads = self._heads[device]
        heads.pop(shape, None)
        heads[shape] = (weight, bias)
        while len(heads) > self._shapes_per_device:
            heads.popitem(last=False)
        votes: dict[tuple[int, int], int] = {}
        for device_heads in self._heads:
            if device_heads:
                latest = next(reversed(device_heads))
                votes[latest] = votes.get(latest, 0) + 1
        most = max(votes.values())
        if self.shape is not None and votes.get(self.shape, 0) == most:
            return False
        before, self.shape = self.shape, shape if votes[shape] == most else max(
            votes, key=votes.__getitem__)
        return self.shape != before

    def head(self, device: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``device``'s latest head of the shape in use, or None."""
        return None if self.shape is None else self._heads[device].get(self.shape)

    def votes_for_other_shapes(self) -> int:
        """Devices whose latest head has a shape other than the one in use."""
        return sum(1 for heads in self._heads
                   if heads and next(reversed(heads)) != self.shape)


def link_rate_problem(rate_bps: float, min_bps: float, max_bps: float) -> str | None:
    """``"implausible_rate"`` unless ``rate_bps`` is 0 (not measured) or in ``[min, max]``."""
    if rate_bps == 0.0:
        return None
    if not (math.isfinite(rate_bps) and min_bps <= rate_bps <= max_bps):
        return "implausible_rate"
    return None


class RejectionLog:
    """Counts rejections per reason and says when each reason may be logged again.

    A node logs at most one line per reason every ``period`` seconds, saying how many of
    that reason went unlogged: a flood of one kind of bad message neither floods the log
    nor hides a rarer kind (a single throttle per call site would).
    """

    def __init__(self, reasons: Iterable[str] = (), period: float = 5.0) -> None:
        """Start every reason in ``reasons`` at 0 (others are added when first seen)."""
        self.period = float(period)
        self.counts: dict[str, int] = dict.fromkeys(reasons, 0)
        """Rejections so far, per reason."""
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    @property
    def total(self) -> int:
        """All rejections so far."""
        return sum(self.counts.values())

    def add(self, reason: str, now: float) -> int | None:
        """Count one rejection for ``reason`` at ``now`` (monotonic seconds).

        Returns:
            None when this reason was logged less than ``period`` ago; otherwise how many
            rejections for it went unlogged before this one (the caller logs a line now).
        """
        self.counts[reason] = self.counts.get(reason, 0) + 1
        last = self._logged_at.get(reason)
        if last is not None and now - last < self.period:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return None
        self._logged_at[reason] = now
        return self._unlogged.pop(reason, 0)
