"""``bench-distributed``: distributed ResNet inference on shaped links (needs root).

The benchmark itself is :mod:`..bench.distributed_benchmark`; it is imported when the
command runs, so building the parser starts nothing and imports no ROS.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def cmd_bench_distributed(args: argparse.Namespace) -> int:
    """Distributed ResNet inference on shaped links: monolithic vs heuristic vs exact plan."""
    from ..bench.distributed_benchmark import run_distributed_benchmark

    return run_distributed_benchmark(args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``bench-distributed`` to the CLI's subparsers."""
    p = sub.add_parser("bench-distributed", help=cmd_bench_distributed.__doc__,
                       description=cmd_bench_distributed.__doc__ + " Needs root (network "
                       "namespaces and tc).")
    p.add_argument("--model", type=Path, required=True,
                   help="ResNet checkpoint (train-resnet's checkpoint.safetensors)")
    p.add_argument("--profile", type=Path, required=True,
                   help="the model's block profile (drop-study's profile.json)")
    p.add_argument("--fleet", type=Path, default=Path("config/fleet_distributed.yaml"),
                   help="fleet file (default config/fleet_distributed.yaml)")
    p.add_argument("--rate-mbit", type=float, default=None,
                   help="shape every link to this rate, Mbit/s (default: the fleet's rates)")
    p.add_argument("--requests", type=int, default=40, help="timed requests per placement")
    p.add_argument("--rate-hz", type=float, default=2.0, help="requests per second")
    p.add_argument("--time-limit", type=float, default=5.0, help="solver time limit, s")
    p.add_argument("--probe-max-period", type=float, default=4.0,
                   help="link probes back off to one burst per this many seconds while the "
                   "rates hold still (default 4; 0 = a burst every second throughout)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--domain-id", type=int, default=(os.getpid() % 90) + 110,
                   help="ROS_DOMAIN_ID of the nodes")
    p.add_argument("--out", type=Path, default=Path("docs/results/distributed"),
                   help="results folder (default docs/results/distributed)")
    p.add_argument("--log-dir", type=Path, default=Path("runs/bench-distributed"),
                   help="node logs (default runs/bench-distributed)")
    p.set_defaults(func=cmd_bench_distributed)
