"""Distributed ResNet inference: what each robot's stage runs, and plans for the live robots.

A plan row (one request: its image's robot) gives, per unit (stem, residual blocks, head),
the robot that computes it or ``-1`` (:data:`.placement.DROPPED`: the block's residual
branch is skipped and its input passes on). A request travels as one activation tensor:
a stage receives it with the index of the next unit to run, runs every following unit that
is its own or skipped, and hands the result to the robot of the next computed unit
(:func:`stage_work`, :func:`run_units`). A residual block always runs whole on one robot,
so its shortcut input never crosses a link.

When robots die the planner solves the same problem for the live robots only
(:func:`live_problem`) and maps the plan back to the fleet's robot indices
(:func:`fleet_plan`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .problem import DROPPED, Fleet, Plan, Problem
from .resnet import ResNet

__all__ = [
    "TENSOR_DTYPES",
    "StageWork",
    "decode_tensor",
    "encode_tensor",
    "fleet_plan",
    "live_problem",
    "monolithic_plan",
    "run_units",
    "stage_work",
    "star_link_rates",
]

TENSOR_DTYPES = ("float32", "float64", "float16", "uint8")
"""dtype strings an activation tensor message may carry."""


@dataclass(frozen=True)
class StageWork:
    """What one robot does with a request arriving at ``units[0]``.

    ``units``: the units it runs, in order (skipped ones included: they pass the tensor
    on); ``next_unit``/``next_robot``: where the tensor goes next, both None after the head.
    """

    units: tuple[int, ...]
    next_unit: int | None
    next_robot: int | None


def stage_work(row: Sequence[int], robot: int, start: int) -> StageWork:
    """The units ``robot`` runs for a request whose next unit is ``start``.

    Raises:
        ValueError: If ``start`` is out of range or computed by another robot (the tensor
            was sent to the wrong stage).
    """
    if not 0 <= start < len(row):
        raise ValueError(f"unit {start} is not in 0..{len(row) - 1}")
    if row[start] not in (robot, DROPPED):
        raise ValueError(f"unit {start} is assigned to robot {row[start]}, not to {robot}")
    units = []
    unit = start
    while unit < len(row) and row[unit] in (robot, DROPPED):
        units.append(unit)
        unit += 1
    if unit == len(row):
        return StageWork(tuple(units), None, None)
    return StageWork(tuple(units), unit, int(row[unit]))


def run_units(model: ResNet, x: torch.Tensor, units: Sequence[int],
              dropped: Collection[int]) -> torch.Tensor:
    """Run ``units`` (0 = stem, 1..M = blocks, M + 1 = head) of ``model`` on ``x`` in order.

    A unit in ``dropped`` runs with its residual branch dropped (``relu(shortcut(x))``,
    which is ``x`` itself for an identity block), exactly as ``model(x, drop_dc=...)``.
    """
    head = model.n_blocks + 1
    with torch.inference_mode():
        for unit in units:
            if unit == 0:
                x = model.stem(x)
            elif unit == head:
                x = model.head(x)
            else:
                x = model.run_block(unit - 1, x, "dc" if unit in dropped else "none")
    return x


def encode_tensor(array: np.ndarray) -> tuple[list[int], str, bytes]:
    """``(shape, dtype string, C-order bytes)`` of an array, for an ActivationTensor."""
    array = np.ascontiguousarray(array)
    if array.dtype.name not in TENSOR_DTYPES:
        raise ValueError(f"dtype must be one of {TENSOR_DTYPES}, got {array.dtype.name}")
    return list(array.shape), array.dtype.name, array.tobytes()


def decode_tensor(shape: Sequence[int], dtype: str, data: bytes) -> np.ndarray:
    """The array of an ActivationTensor's fields.

    Raises:
        ValueError: For an unknown dtype, a size that does not match the shape, or
            non-finite values.
    """
    if dtype not in TENSOR_DTYPES:
        raise ValueError(f"dtype must be one of {TENSOR_DTYPES}, got {dtype!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if not shape or len(data) != expected:
        raise ValueError(f"shape {list(shape)} of {dtype} needs {expected} bytes, got "
                         f"{len(data)}")
    array = np.frombuffer(data, dtype=dtype).reshape(tuple(shape))
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError("tensor holds NaN or Inf")
    return array


def live_problem(problem: Problem, alive: Sequence[bool]) -> tuple[Problem, np.ndarray,
                                                                   np.ndarray]:
    """The placement problem on the live robots only.

    Requests whose image is on a dead robot are left out (there is no image to classify).

    Returns:
        ``(problem, robots, requests)``: the smaller problem, the fleet indices of its
        robots and the original indices of its requests.

    Raises:
        ValueError: If no robot is alive or no live robot holds a request's image.
    """
    alive = np.asarray(alive, dtype=bool)
    robots = np.flatnonzero(alive)
    if robots.size == 0:
        raise ValueError("no robot is alive")
    requests = np.flatnonzero(alive[problem.sources])
    if requests.size == 0:
        raise ValueError("no live robot holds a request's image")
    fleet = problem.fleet
    live_fleet = Fleet(tuple(fleet.names[i] for i in robots), fleet.memory_bytes[robots],
                       fleet.macs_per_second[robots], fleet.energy_j[robots],
                       fleet.compute_power_w, fleet.transmit_power_w)
    index = np.full(fleet.n_devices, -1)
    index[robots] = np.arange(robots.size)
    rates = problem.rates_bps[np.ix_(robots, robots)]
    return (Problem(problem.network, live_fleet, rates, index[problem.sources[requests]],
                    problem.alpha, problem.beta, problem.accuracy_threshold,
                    problem.round_seconds), robots, requests)


def fleet_plan(plan: Plan, robots: np.ndarray) -> np.ndarray:
    """A live problem's plan with the fleet's robot indices (-1 stays -1)."""
    devices = plan.devices
    return np.where(devices == DROPPED, DROPPED, np.asarray(robots)[np.maximum(devices, 0)])


def monolithic_plan(problem: Problem) -> Plan:
    """The baseline: every unit of each request on the robot holding its image.

    It ignores the memory, compute and energy limits (the plan a fleet without placement
    would run); nothing is skipped and nothing but the classification leaves the robot.
    """
    units = problem.network.n_units
    return Plan(np.repeat(problem.sources[:, None], units, axis=1))


def star_link_rates(rates: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """Each robot's own link rate, for rates that come from a star network.

    Robots on a switch, each behind its own link, send to each other at the slower of the
    two links: ``rates[i, k] = min(r[i], r[k])``. Returns ``r`` (the largest rate in each
    robot's row and column; the fastest robot's own link is then the second fastest, which
    gives the same matrix).

    Raises:
        ValueError: If ``rates`` (N x N, N >= 2, diagonal ignored) is not of that form.
    """
    rates = np.asarray(rates, dtype=float)
    n = len(rates)
    if rates.shape != (n, n) or n < 2:
        raise ValueError(f"need an N x N rate matrix with N >= 2, got shape {rates.shape}")
    off = ~np.eye(n, dtype=bool)
    own = np.array([max(rates[i, off[i]].max(), rates[off[:, i], i].max()) for i in range(n)])
    star = np.minimum.outer(own, own)
    if not np.allclose(rates[off], star[off], rtol=rtol, atol=0.0):
        raise ValueError("the rates are not those of robots on one switch (each link the "
                         f"slower of its two robots' links); closest such rates: {own.tolist()}")
    return own
