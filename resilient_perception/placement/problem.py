"""The adaptive-ResNet placement problem (the paper's Section IV) as data, and how to score a plan.

A ResNet is a chain of *units*: the stem, the M residual blocks and the head. N devices
serve R inference requests in one time step; each request's image starts on its *source*
device. A :class:`Plan` says, per request and unit, which device computes it or that it is
dropped (``-1``: the residual block's direct connection is skipped and its input passes on
unchanged, the paper's downsizing decision). :func:`evaluate_plan` computes everything the
paper's Eq. 5-19 name for a plan:

* latency per request = computation (MACs / device MAC rate, Eq. 9) + input transfer (the
  image from its source to the stem's device) + direct-connection transfers (the output of
  unit j to unit j+1 on another device, Eq. 10) + skip-connection transfers (the output of
  the last computed unit before a run of dropped blocks to the next computed unit, Eq. 11);
* expected accuracy from the drop study's table (the profile's ``drop_accuracy``);
* objective = alpha * mean latency / reference latency + beta * mean accuracy loss (Eq. 5);
* the constraints: memory (Eq. 13), computation per time step (Eq. 14), one device per
  computed unit and only measured drop sets (Eq. 15), accuracy threshold (Eq. 16) and
  energy (Eq. 17, 19).

The readings we chose where the paper is silent or its equations were lost are listed in
``docs/design.md`` ("Block placement"). :func:`evaluate_batch` scores many plans at once
(the genetic algorithm's population, brute force in the tests) with the same code.

Units: bytes, MACs, seconds, joules, watts, bits per second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .block_profile import BlockProfile

__all__ = [
    "CONSTRAINTS",
    "BatchScores",
    "ConstraintStatus",
    "Fleet",
    "Network",
    "Plan",
    "PlanEvaluation",
    "Problem",
    "evaluate_batch",
    "evaluate_plan",
]

CONSTRAINTS = ("assignment", "memory", "compute", "energy", "accuracy")
"""Constraint families, in the order of :attr:`BatchScores.violation`'s columns.

``assignment``: every unit that cannot be dropped has one device, and the dropped set was
measured by the drop study (Eq. 15); ``memory``: weights stored on a device (Eq. 13);
``compute``: MACs a device runs in one time step (Eq. 14); ``energy``: joules a device
spends computing and transmitting (Eq. 17, 19); ``accuracy``: every request's expected
accuracy reaches the threshold (Eq. 16).
"""

DROPPED = -1
"""The device index of a dropped unit in :attr:`Plan.devices`."""

TIE_BREAK = 1e-6
"""The weight that replaces alpha or beta = 0 in the objective (see :attr:`Problem.weights`)."""


@dataclass(frozen=True)
class Network:
    """Per-image costs of the units (stem, residual blocks, head) and the drop-accuracy table.

    ``drop_accuracy`` is keyed by sorted tuples of *unit* indices (block ``b`` is unit
    ``b + 1``). Only identity blocks are ``droppable``: a projection block's shortcut is a
    convolution that changes the tensor's shape, so its input cannot simply pass on.
    """

    names: tuple[str, ...]
    param_bytes: np.ndarray
    macs: np.ndarray
    output_bytes: np.ndarray
    input_bytes: int
    droppable: np.ndarray
    clean_accuracy: float
    drop_accuracy: Mapping[tuple[int, ...], float] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, profile: BlockProfile) -> Network:
        """The units of a drop-study profile, with its measured accuracies."""
        parts = [profile.stem, *profile.blocks, profile.head]
        droppable = [False, *(not b.has_projection for b in profile.blocks), False]
        for part, can_drop in zip(parts, droppable, strict=True):
            if can_drop and part.input_bytes != part.output_bytes:
                raise ValueError(f"{part.name}: an identity block must output as many bytes "
                                 f"as it takes ({part.input_bytes} != {part.output_bytes})")
        return cls(
            names=tuple(p.name for p in parts),
            param_bytes=np.array([p.param_bytes for p in parts], dtype=np.int64),
            macs=np.array([p.macs for p in parts], dtype=np.int64),
            output_bytes=np.array([p.output_bytes for p in parts], dtype=np.int64),
            input_bytes=profile.stem.input_bytes,
            droppable=np.array(droppable),
            clean_accuracy=float(profile.clean_accuracy),
            drop_accuracy={tuple(b + 1 for b in key): float(acc)
                           for key, acc in profile.drop_accuracy.items()},
        )

    @property
    def n_units(self) -> int:
        """Number of units U = M + 2 (stem, M residual blocks, head)."""
        return len(self.names)

    def drop_options(self, min_accuracy: float | None = None) -> list[tuple[int, ...]]:
        """Drop sets a plan may use: none, plus every measured set of droppable units.

        Sorted by size, then unit indices. With ``min_accuracy``, only the sets whose
        measured accuracy reaches it.
        """
        options = [()] + sorted(
            (key for key in self.drop_accuracy if all(self.droppable[u] for u in key)),
            key=lambda key: (len(key), key))
        if min_accuracy is None:
            return options
        return [key for key in options if self.accuracy(key) >= min_accuracy]

    def accuracy(self, dropped: Sequence[int]) -> float:
        """Measured accuracy with these units dropped (NaN if the set was not measured)."""
        key = tuple(sorted(dropped))
        if not key:
            return self.clean_accuracy
        return self.drop_accuracy.get(key, float("nan"))


@dataclass(frozen=True)
class Fleet:
    """N devices: weight memory, MAC rate and energy budget each; shared power figures."""

    names: tuple[str, ...]
    memory_bytes: np.ndarray
    macs_per_second: np.ndarray
    energy_j: np.ndarray
    compute_power_w: float = 8.0
    transmit_power_w: float = 10.0

    def __post_init__(self) -> None:
        """Check sizes and signs; raises ValueError naming the bad field."""
        n = len(self.names)
        if n < 1:
            raise ValueError("a fleet needs at least one device")
        if len(set(self.names)) != n:
            raise ValueError(f"device names must be unique, got {list(self.names)}")
        for key in ("memory_bytes", "macs_per_second", "energy_j"):
            value = np.asarray(getattr(self, key), dtype=float)
            if value.shape != (n,):
                raise ValueError(f"{key} needs one value per device ({n}), got {value.shape}")
            if not np.all(np.isfinite(value)) or np.any(value < 0):
                bad = self.names[int(np.argmax(~np.isfinite(value) | (value < 0)))]
                raise ValueError(f"{key} must be finite and >= 0 (device {bad})")
            object.__setattr__(self, key, value)
        if np.any(self.macs_per_second <= 0):
            bad = self.names[int(np.argmin(self.macs_per_second))]
            raise ValueError(f"macs_per_second must be > 0 (device {bad})")
        for key in ("compute_power_w", "transmit_power_w"):
            if not np.isfinite(getattr(self, key)) or getattr(self, key) < 0:
                raise ValueError(f"{key} must be finite and >= 0")

    @property
    def n_devices(self) -> int:
        """Number of devices N."""
        return len(self.names)


@dataclass(frozen=True)
class Problem:
    """One time step: a network, a fleet, the link rates and the requests to serve.

    ``rates_bps[i, k]`` is the rate from device i to device k (the diagonal is ignored and
    stored as infinity: a device hands data to itself for free). ``sources[r]`` is the
    device holding request r's image. ``round_seconds`` is the time step's length, the
    window of Eq. 14's computation limit (a device runs at most ``macs_per_second *
    round_seconds`` MACs per step).
    """

    network: Network
    fleet: Fleet
    rates_bps: np.ndarray
    sources: np.ndarray
    alpha: float = 0.5
    beta: float = 0.5
    accuracy_threshold: float = 0.0
    round_seconds: float = 1.0

    def __post_init__(self) -> None:
        """Check shapes and ranges; raises ValueError naming the bad field."""
        n = self.fleet.n_devices
        rates = np.asarray(self.rates_bps, dtype=float)
        if rates.shape != (n, n):
            raise ValueError(f"the rate matrix must be {n}x{n} (one row and column per "
                             f"device), got {'x'.join(map(str, rates.shape))}")
        off = ~np.eye(n, dtype=bool)
        if not np.all(np.isfinite(rates[off])) or np.any(rates[off] <= 0):
            i, k = np.argwhere(off & ~(np.isfinite(rates) & (rates > 0)))[0]
            raise ValueError(f"rates must be finite and > 0 between different devices "
                             f"({self.fleet.names[i]} -> {self.fleet.names[k]})")
        # A device hands data to itself instantly; an infinite rate makes every
        # bytes / rate on the diagonal 0 without special cases.
        object.__setattr__(self, "rates_bps", np.where(off, rates, np.inf))
        sources = np.asarray(self.sources, dtype=np.int64).reshape(-1)
        if sources.size < 1 or np.any((sources < 0) | (sources >= n)):
            raise ValueError(f"needs at least one request, each with a source device in "
                             f"0..{n - 1}; got {sources.tolist()}")
        object.__setattr__(self, "sources", sources)
        if min(self.alpha, self.beta) < 0 or not np.isclose(self.alpha + self.beta, 1.0):
            raise ValueError(f"alpha and beta must be >= 0 with alpha + beta = 1, got "
                             f"{self.alpha} and {self.beta}")
        if not 0.0 <= self.accuracy_threshold <= 1.0:
            raise ValueError(f"accuracy_threshold must be in [0, 1], got "
                             f"{self.accuracy_threshold}")
        if not self.round_seconds > 0:
            raise ValueError(f"round_seconds must be > 0, got {self.round_seconds}")

    @property
    def weights(self) -> tuple[float, float]:
        """(alpha, beta) as the objective uses them: a weight of 0 becomes :data:`TIE_BREAK`.

        With alpha = 0 the paper's objective ignores latency, so any placement of the most
        accurate drop sets would be optimal and the reported latency, shared data and
        energy arbitrary; a tiny weight picks the fastest of them. It never trades a
        measurable amount of the other term (accuracies are counts over a 10k test set).
        """
        return max(self.alpha, TIE_BREAK), max(self.beta, TIE_BREAK)

    @property
    def n_requests(self) -> int:
        """Number of requests R in this time step."""
        return int(self.sources.size)

    def transfer_seconds(self, n_bytes: np.ndarray | float) -> np.ndarray:
        """Seconds to send ``n_bytes`` over every link (N x N; zero on the diagonal)."""
        return np.asarray(n_bytes, dtype=float)[..., None, None] * 8.0 / self.rates_bps

    @property
    def reference_latency_s(self) -> float:
        """The latency that normalises the objective: an upper bound on any plan's.

        Every unit computed on the slowest device, and the image plus every unit's output
        sent over the slowest link: no plan's per-request latency exceeds it, so the
        normalised latency lies in (0, 1].
        """
        net = self.network
        compute = float(net.macs.sum()) / float(self.fleet.macs_per_second.min())
        n = self.fleet.n_devices
        if n == 1:
            return compute
        slowest = float(self.rates_bps[~np.eye(n, dtype=bool)].min())
        sent = net.input_bytes + float(net.output_bytes[:-1].sum())
        return compute + sent * 8.0 / slowest


@dataclass(frozen=True)
class Plan:
    """Per request and unit: the device that computes it, or ``-1`` if it is dropped."""

    devices: np.ndarray

    def __post_init__(self) -> None:
        """Store the device table as an (R, U) integer array."""
        devices = np.asarray(self.devices, dtype=np.int64)
        if devices.ndim != 2:
            raise ValueError(f"plan devices must be a (requests, units) table, got shape "
                             f"{devices.shape}")
        object.__setattr__(self, "devices", devices)

    def dropped(self, request: int) -> tuple[int, ...]:
        """Unit indices request ``request`` drops."""
        return tuple(int(u) for u in np.flatnonzero(self.devices[request] == DROPPED))


@dataclass(frozen=True)
class BatchScores:
    """Scores of P plans at once; every array has the plans on its first axis.

    Per request (P, R): ``compute_s``, ``input_s``, ``direct_s``, ``skip_s`` (latency
    parts), ``latency_s`` (their sum), ``accuracy`` (NaN where the drop set was not
    measured). Per device (P, N): ``memory_bytes``, ``macs``, ``energy_j``. Per plan (P,):
    ``shared_bytes`` (bytes sent between different devices), ``objective``; ``violation``
    (P, 5) is each constraint family's violation (0 = satisfied; relative excess over the
    limit, or a count for ``assignment``), columns in :data:`CONSTRAINTS` order.
    """

    compute_s: np.ndarray
    input_s: np.ndarray
    direct_s: np.ndarray
    skip_s: np.ndarray
    latency_s: np.ndarray
    accuracy: np.ndarray
    memory_bytes: np.ndarray
    macs: np.ndarray
    energy_j: np.ndarray
    shared_bytes: np.ndarray
    objective: np.ndarray
    violation: np.ndarray

    @property
    def feasible(self) -> np.ndarray:
        """(P,) bool: every constraint holds."""
        return ~np.any(self.violation > 0, axis=1)


def _excess(used: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Largest relative excess of ``used`` over ``limit`` across devices (0 if none)."""
    over = np.maximum(used - limit, 0.0) / np.maximum(limit, 1.0)
    # A tiny tolerance: limits and loads are sums of floats.
    return np.where(over > 1e-9, over, 0.0).max(axis=-1)


def _accuracy_table(network: Network, dropped: np.ndarray) -> np.ndarray:
    """Accuracy of each drop mask in ``dropped`` (..., U) from the measured table."""
    bits = np.left_shift(np.int64(1), np.arange(network.n_units, dtype=np.int64))
    masks = (dropped.astype(np.int64) * bits).sum(axis=-1)
    unique, inverse = np.unique(masks, return_inverse=True)
    values = np.array([network.accuracy(np.flatnonzero(int(m) & bits)) for m in unique])
    return values[inverse].reshape(masks.shape)


def evaluate_batch(problem: Problem, devices: np.ndarray) -> BatchScores:
    """Score P plans given as a (P, R, U) table of device indices (``-1`` = dropped)."""
    net, fleet = problem.network, problem.fleet
    devices = np.asarray(devices, dtype=np.int64)
    n, n_units = fleet.n_devices, net.n_units
    if devices.ndim != 3 or devices.shape[1:] != (problem.n_requests, n_units):
        raise ValueError(f"plans must be (P, {problem.n_requests} requests, {n_units} units), "
                         f"got {devices.shape}")
    if np.any((devices < DROPPED) | (devices >= n)):
        raise ValueError(f"device indices must be in 0..{n - 1} or {DROPPED} (dropped)")
    computed = devices != DROPPED
    on = devices[..., None] == np.arange(n)  # (P, R, U, N) one-hot placement
    mps = fleet.macs_per_second

    compute_s = np.where(computed, net.macs / mps[np.where(computed, devices, 0)], 0.0)
    macs = np.einsum("prun,u->pn", on, net.macs.astype(float))
    memory = np.einsum("pun,u->pn", on.any(axis=1), net.param_bytes.astype(float))

    # Follow each request's activation through its computed units: it moves whenever the
    # next computed unit is on another device. Its size is the last computed unit's output
    # (a dropped identity block passes its input on unchanged).
    n_plans, n_req = devices.shape[:2]
    holder = np.broadcast_to(problem.sources, (n_plans, n_req)).copy()
    last_unit = np.full((n_plans, n_req), -1)
    input_s, direct_s, skip_s = (np.zeros((n_plans, n_req)) for _ in range(3))
    shared = np.zeros(n_plans)
    send_s = np.zeros((n_plans, n))
    for u in range(n_units):
        target = devices[:, :, u]
        moves = computed[:, :, u] & (target != holder)
        size = np.where(last_unit < 0, net.input_bytes, net.output_bytes[last_unit])
        seconds = np.where(moves, size * 8.0 / problem.rates_bps[holder, np.maximum(target, 0)],
                           0.0)
        if u == 0:
            input_s += seconds
        else:
            direct = last_unit == u - 1
            direct_s += np.where(direct, seconds, 0.0)
            skip_s += np.where(direct, 0.0, seconds)
        shared += np.where(moves, size, 0).sum(axis=1)
        send_s += np.einsum("pr,prn->pn", seconds, holder[..., None] == np.arange(n))
        holder = np.where(computed[:, :, u], target, holder)
        last_unit = np.where(computed[:, :, u], u, last_unit)

    energy = fleet.compute_power_w * macs / mps + fleet.transmit_power_w * send_s
    accuracy = _accuracy_table(net, ~computed)
    latency = compute_s.sum(axis=2) + input_s + direct_s + skip_s

    wrongly_dropped = (~computed & ~net.droppable).sum(axis=(1, 2))
    unmeasured = np.isnan(accuracy).sum(axis=1)
    short = np.maximum(problem.accuracy_threshold - np.nan_to_num(accuracy, nan=0.0), 0.0)
    violation = np.stack([
        (wrongly_dropped + unmeasured).astype(float),
        _excess(memory, fleet.memory_bytes),
        _excess(macs, mps * problem.round_seconds),
        _excess(energy, fleet.energy_j),
        np.where(short > 1e-12, short, 0.0).max(axis=1),
    ], axis=1)
    loss = net.clean_accuracy - np.nan_to_num(accuracy, nan=0.0)
    alpha, beta = problem.weights
    objective = (alpha * latency.mean(axis=1) / problem.reference_latency_s
                 + beta * loss.mean(axis=1))
    return BatchScores(
        compute_s=compute_s.sum(axis=2), input_s=input_s, direct_s=direct_s, skip_s=skip_s,
        latency_s=latency, accuracy=accuracy, memory_bytes=memory, macs=macs,
        energy_j=energy, shared_bytes=shared, objective=objective, violation=violation,
    )


@dataclass(frozen=True)
class ConstraintStatus:
    """One constraint family for one plan: its tightest use against its limit.

    ``where`` names the device (or request) where the use is closest to (or furthest past)
    the limit; ``utilisation`` = used / limit (for ``accuracy``: threshold / accuracy, so
    above 1 means violated, as for the others).
    """

    name: str
    used: float
    limit: float
    where: str
    utilisation: float
    satisfied: bool


@dataclass(frozen=True)
class PlanEvaluation:
    """Everything :func:`evaluate_plan` reports about one plan (see the module docstring)."""

    plan: Plan
    scores: BatchScores
    normalised_latency: float
    constraints: tuple[ConstraintStatus, ...]

    @property
    def objective(self) -> float:
        """The objective value (Eq. 5)."""
        return float(self.scores.objective[0])

    @property
    def feasible(self) -> bool:
        """Every constraint holds."""
        return bool(self.scores.feasible[0])

    @property
    def tightest(self) -> ConstraintStatus:
        """The resource or accuracy constraint closest to (or furthest past) its limit."""
        return max(self.constraints[1:], key=lambda c: c.utilisation)

    def metrics(self) -> dict:
        """Scalar summary: mean accuracy and latency per request, totals over devices."""
        s = self.scores
        return {
            "objective": self.objective,
            "feasible": self.feasible,
            "accuracy": float(np.mean(s.accuracy[0])),
            "latency_s": float(s.latency_s[0].mean()),
            "normalised_latency": self.normalised_latency,
            "compute_s": float(s.compute_s[0].mean()),
            "input_s": float(s.input_s[0].mean()),
            "direct_s": float(s.direct_s[0].mean()),
            "skip_s": float(s.skip_s[0].mean()),
            "shared_bytes": float(s.shared_bytes[0]),
            "macs": float(s.macs[0].sum()),
            "energy_j": float(s.energy_j[0].sum()),
            "dropped_blocks": float(np.mean([len(self.plan.dropped(r))
                                             for r in range(len(self.plan.devices))])),
        }


def evaluate_plan(problem: Problem, plan: Plan) -> PlanEvaluation:
    """Latency, accuracy, energy, shared bytes, objective and every constraint of a plan."""
    scores = evaluate_batch(problem, plan.devices[None])
    fleet, names = problem.fleet, problem.fleet.names

    def per_device(name: str, used: np.ndarray, limit: np.ndarray) -> ConstraintStatus:
        ratio = used / np.maximum(limit, 1e-300)
        i = int(np.argmax(ratio))
        return ConstraintStatus(name, float(used[i]), float(limit[i]), names[i],
                                float(ratio[i]), not scores.violation[0, CONSTRAINTS.index(name)])

    accuracy = scores.accuracy[0]
    worst = int(np.nanargmin(accuracy)) if not np.all(np.isnan(accuracy)) else 0
    threshold = problem.accuracy_threshold
    n_wrong = float(scores.violation[0, 0])
    constraints = (
        ConstraintStatus("assignment", n_wrong, 0.0, "all requests", n_wrong, n_wrong == 0),
        per_device("memory", scores.memory_bytes[0], fleet.memory_bytes),
        per_device("compute", scores.macs[0], fleet.macs_per_second * problem.round_seconds),
        per_device("energy", scores.energy_j[0], fleet.energy_j),
        ConstraintStatus("accuracy", float(accuracy[worst]), threshold, f"request {worst}",
                         threshold / max(float(accuracy[worst]), 1e-300)
                         if not np.isnan(accuracy[worst]) else float("inf"),
                         not scores.violation[0, 4]),
    )
    return PlanEvaluation(
        plan=plan, scores=scores,
        normalised_latency=float(scores.latency_s[0].mean()) / problem.reference_latency_s,
        constraints=constraints,
    )
