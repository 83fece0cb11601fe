"""Fleet files: the devices, links and requests that `resilient-perception plan` places a ResNet on.

A fleet file is YAML (see ``config/fleet_example.yaml``)::

    capacities_for: resnet50-imagenet  # optional, see below
    alpha: 0.5                 # weight of the normalised latency; beta = 1 - alpha
    beta: 0.5                  # weight of the expected accuracy loss
    accuracy_threshold: 0.8    # every request's expected accuracy must reach this
    compute_power_w: 8         # watts while computing (the paper's 8 W)
    transmit_power_w: 10       # watts while transmitting (the paper's 10 W)
    round_seconds: 1           # the time step: a device runs at most compute_gmacs x this
    requests: [robot0, robot3] # the device each request's image is captured on (name or index)
    devices:
      - {name: robot0, memory_mb: 100, compute_gmacs: 1.4, energy_j: 800}
      ...
    rates_mbps:                # N x N, row = sender, column = receiver; diagonal unused
      - [0, 35.2, ...]

Memory is in MB (10^6 bytes), compute in GMAC/s (10^9 multiply-accumulates per second),
rates in Mb/s (10^6 bits per second).

``capacities_for: resnet50-imagenet`` says the memory, compute and rate figures are meant
for the paper's network, ResNet-50 at 224x224 (the paper's Section V fleet), and scales
them to the profile's network: memory by the ratio of the residual blocks' weights, compute
by the ratio of their MACs and rates by the ratio of their output activations. Each device
then holds the same share of the network, computes the same share of a request per second
and each link carries the same share of a block's output per second as in the paper, so
every time and energy is the paper's. The reference is the same ``ResNet`` class at
ResNet-50's width (64) on the 56x56 maps its blocks see after ImageNet's stem.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .problem import Fleet, Network, Problem

__all__ = ["REFERENCE_MODELS", "FleetConfig", "FleetError", "load_fleet", "reference_scale"]

REFERENCE_MODELS = ("resnet50-imagenet",)
"""Values of ``capacities_for``."""

_KEYS = {"capacities_for", "alpha", "beta", "accuracy_threshold", "compute_power_w",
         "transmit_power_w", "round_seconds", "requests", "devices", "rates_mbps"}
_DEVICE_KEYS = ("name", "memory_mb", "compute_gmacs", "energy_j")


class FleetError(ValueError):
    """A fleet file is unreadable or invalid; the message says what to fix."""


@dataclass(frozen=True)
class ResourceScale:
    """Factors from the reference network's resource figures to another network's."""

    memory: float
    compute: float
    rate: float


@functools.cache
def _resnet50_blocks() -> tuple[float, float, float]:
    import torch

    from .resnet import ResNet, profile_blocks

    with torch.device("meta"):  # shapes only: no 100 MB of weights, no random numbers
        _, blocks, _ = profile_blocks(ResNet(base_width=64), (3, 56, 56))
    return (sum(b.param_bytes for b in blocks), sum(b.macs for b in blocks),
            sum(b.output_bytes for b in blocks))


def reference_scale(network: Network, reference: str = "resnet50-imagenet") -> ResourceScale:
    """Scale factors from ``reference``'s capacities to ``network``'s (residual blocks only)."""
    if reference not in REFERENCE_MODELS:
        raise FleetError(f"capacities_for must be one of {REFERENCE_MODELS}, got {reference!r}")
    params, macs, outputs = _resnet50_blocks()
    blocks = slice(1, network.n_units - 1)
    return ResourceScale(memory=float(network.param_bytes[blocks].sum()) / params,
                         compute=float(network.macs[blocks].sum()) / macs,
                         rate=float(network.output_bytes[blocks].sum()) / outputs)


@dataclass(frozen=True)
class FleetConfig:
    """A parsed fleet file: everything of a :class:`Problem` except the network."""

    fleet: Fleet
    rates_bps: np.ndarray
    sources: np.ndarray
    alpha: float = 0.5
    beta: float = 0.5
    accuracy_threshold: float = 0.0
    round_seconds: float = 1.0
    capacities_for: str | None = None

    def problem(self, network: Network) -> Problem:
        """The placement problem of this fleet and ``network`` (capacities scaled if asked).

        Raises FleetError when the accuracy threshold is above every plan's accuracy.
        """
        best = max(network.accuracy(o) for o in network.drop_options())
        if self.accuracy_threshold > best:
            raise FleetError(f"accuracy_threshold {self.accuracy_threshold} is above the best "
                             f"accuracy any plan can reach ({best:.4f}, measured in the "
                             "profile); lower it")
        fleet, rates = self.fleet, self.rates_bps
        if self.capacities_for is not None:
            scale = reference_scale(network, self.capacities_for)
            fleet = Fleet(fleet.names, fleet.memory_bytes * scale.memory,
                          fleet.macs_per_second * scale.compute, fleet.energy_j,
                          fleet.compute_power_w, fleet.transmit_power_w)
            rates = rates * scale.rate
        return Problem(network, fleet, rates, self.sources, self.alpha, self.beta,
                       self.accuracy_threshold, self.round_seconds)


def _number(value, where: str, minimum: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise FleetError(f"{where} must be a number {relation} {minimum:g}, got {value!r}")
    return float(value)


def _parse(data: Mapping) -> FleetConfig:
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise FleetError(f"unknown keys {unknown}; a fleet file has {sorted(_KEYS)}")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise FleetError("'devices' must be a list of at least one device, each with "
                         f"{list(_DEVICE_KEYS)}")
    names, memory, compute, energy = [], [], [], []
    for i, device in enumerate(devices):
        if not isinstance(device, Mapping) or any(k not in device for k in _DEVICE_KEYS):
            raise FleetError(f"devices[{i}] must have {list(_DEVICE_KEYS)}, got {device!r}")
        where = f"devices[{i}] ({device['name']})"
        names.append(str(device["name"]))
        memory.append(_number(device["memory_mb"], f"{where} memory_mb") * 1e6)
        compute.append(_number(device["compute_gmacs"], f"{where} compute_gmacs",
                               strict=True) * 1e9)
        energy.append(_number(device["energy_j"], f"{where} energy_j"))
    if len(set(names)) != len(names):
        raise FleetError(f"device names must be unique, got {names}")
    n = len(names)

    rates = data.get("rates_mbps")
    if rates is None:
        raise FleetError(f"'rates_mbps' is missing: give the {n}x{n} matrix of link rates in "
                         "Mb/s (row = sender, column = receiver)")
    if not isinstance(rates, list) or len(rates) != n or any(
            not isinstance(row, list) or len(row) != n for row in rates):
        shape = type(rates).__name__
        if isinstance(rates, list):
            lengths = [len(row) if isinstance(row, list) else "?" for row in rates]
            shape = f"{len(rates)} rows of lengths {lengths}"
        raise FleetError(f"'rates_mbps' must be {n}x{n} (one row and column per device), "
                         f"got {shape}")
    matrix = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            if i != k:
                matrix[i, k] = _number(rates[i][k], f"rates_mbps[{i}][{k}] ({names[i]} -> "
                                       f"{names[k]})", strict=True) * 1e6

    requests = data.get("requests", [0])
    if not isinstance(requests, list) or not requests:
        raise FleetError("'requests' must be a list of source devices (names or indices)")
    sources = []
    for request in requests:
        if isinstance(request, int) and not isinstance(request, bool) and 0 <= request < n:
            sources.append(request)
        elif str(request) in names:
            sources.append(names.index(str(request)))
        else:
            raise FleetError(f"request source {request!r} is not a device: use a name of "
                             f"{names} or an index 0..{n - 1}")

    alpha = _number(data.get("alpha", 0.5), "alpha")
    beta = _number(data.get("beta", 1.0 - alpha), "beta")
    if not np.isclose(alpha + beta, 1.0):
        raise FleetError(f"alpha + beta must be 1 (the paper's weights), got {alpha} + {beta}")
    threshold = _number(data.get("accuracy_threshold", 0.0), "accuracy_threshold")
    if threshold > 1:
        raise FleetError(f"accuracy_threshold is a fraction in [0, 1], got {threshold}")
    capacities_for = data.get("capacities_for")
    if capacities_for is not None and capacities_for not in REFERENCE_MODELS:
        raise FleetError(f"capacities_for must be one of {list(REFERENCE_MODELS)} or absent, "
                         f"got {capacities_for!r}")
    fleet = Fleet(tuple(names), np.array(memory), np.array(compute), np.array(energy),
                  _number(data.get("compute_power_w", 8.0), "compute_power_w"),
                  _number(data.get("transmit_power_w", 10.0), "transmit_power_w"))
    return FleetConfig(fleet, matrix, np.array(sources), alpha, beta, threshold,
                       _number(data.get("round_seconds", 1.0), "round_seconds", strict=True),
                       capacities_for)


def load_fleet(path: str | Path) -> FleetConfig:
    """Read and validate a fleet file; raises :class:`FleetError` naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the fleet file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:  # a damaged or binary file
        raise FleetError(f"{path}: not a UTF-8 text file ({exc.reason} at byte "
                         f"{exc.start})") from None
    except yaml.YAMLError as exc:
        raise FleetError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, Mapping):
        raise FleetError(f"{path}: a fleet file is a YAML mapping with 'devices' and "
                         "'rates_mbps'")
    try:
        return _parse(data)
    except FleetError as exc:
        raise FleetError(f"{path}: {exc}") from None
