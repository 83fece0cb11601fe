"""Seeded random fleets of any size, for measuring the placement solvers at scale.

:func:`generate_fleet` draws a fleet of ``n_robots`` from :class:`FleetRanges`, each figure
uniformly and independently from its stated range (numpy ``default_rng(seed)``, drawn in
the order memory, compute, battery, rates, request sources):

* memory (MB of weights), compute (GMAC/s) and battery (J) per robot, on the scale of the
  paper's Section V fleet (100-200 MB, 1.4-2.8 GMAC/s, 800-1000 J) but spread wider and
  continuous, so that no two robots are alike;
* link rates (Mb/s) per pair of robots, the same both ways (the paper's 7.2-72.2 Mb/s);
* one request (an image to classify in this time step) per ``robots_per_request`` robots,
  at least three, on distinct robots drawn at random.

Like ``config/fleet_example.yaml`` the figures are meant for ResNet-50 at 224x224
(``capacities_for: resnet50-imagenet``): :meth:`FleetConfig.problem` scales them to the
profiled network. :func:`fleet_document` gives the same fleet as a fleet file's mapping,
so ``resilient-perception plan`` can solve a generated fleet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fleet_config import FleetConfig
from .problem import Fleet

__all__ = ["FleetRanges", "fleet_document", "generate_fleet"]


@dataclass(frozen=True)
class FleetRanges:
    """The uniform ranges (low, high) a generated fleet's figures are drawn from."""

    memory_mb: tuple[float, float] = (100.0, 250.0)
    compute_gmacs: tuple[float, float] = (1.0, 3.0)
    energy_j: tuple[float, float] = (500.0, 1200.0)
    rates_mbps: tuple[float, float] = (7.2, 72.2)
    robots_per_request: int = 10
    min_requests: int = 3
    compute_power_w: float = 8.0
    transmit_power_w: float = 10.0


def generate_fleet(n_robots: int, seed: int, ranges: FleetRanges = FleetRanges(),
                   alpha: float = 0.5, accuracy_threshold: float = 0.0) -> FleetConfig:
    """A fleet of ``n_robots`` drawn from ``ranges`` with ``seed`` (see the module doc)."""
    if n_robots < ranges.min_requests:
        raise ValueError(f"a generated fleet needs at least {ranges.min_requests} robots "
                         f"(one per request), got {n_robots}")
    rng = np.random.default_rng(seed)

    def draw(pair: tuple[float, float], size) -> np.ndarray:
        return rng.uniform(pair[0], pair[1], size)

    memory = draw(ranges.memory_mb, n_robots) * 1e6
    compute = draw(ranges.compute_gmacs, n_robots) * 1e9
    energy = draw(ranges.energy_j, n_robots)
    upper = np.triu(draw(ranges.rates_mbps, (n_robots, n_robots)), 1)
    rates = (upper + upper.T) * 1e6
    n_requests = max(ranges.min_requests, n_robots // ranges.robots_per_request)
    sources = np.sort(rng.choice(n_robots, n_requests, replace=False))
    fleet = Fleet(tuple(f"robot{i}" for i in range(n_robots)), memory, compute, energy,
                  ranges.compute_power_w, ranges.transmit_power_w)
    return FleetConfig(fleet, rates, sources, alpha, 1.0 - alpha, accuracy_threshold, 1.0,
                       "resnet50-imagenet")


def fleet_document(config: FleetConfig) -> dict:
    """The fleet as the mapping of a fleet file (``load_fleet`` reads it back)."""
    fleet = config.fleet
    return {
        "capacities_for": config.capacities_for,
        "alpha": config.alpha, "beta": config.beta,
        "accuracy_threshold": config.accuracy_threshold,
        "compute_power_w": fleet.compute_power_w, "transmit_power_w": fleet.transmit_power_w,
        "round_seconds": config.round_seconds,
        "requests": [fleet.names[s] for s in config.sources],
        "devices": [{"name": name, "memory_mb": round(float(m) / 1e6, 3),
                     "compute_gmacs": round(float(c) / 1e9, 4), "energy_j": round(float(e), 1)}
                    for name, m, c, e in zip(fleet.names, fleet.memory_bytes,
                                             fleet.macs_per_second, fleet.energy_j,
                                             strict=True)],
        "rates_mbps": np.round(config.rates_bps / 1e6, 2).tolist(),
    }
