"""The ``bench-cost`` subcommand: size, latency and int8 accuracy of one device (Table 3).

Registered on the main parser by :func:`add_parsers` (see :mod:`..cli`); the work is
:func:`..paper.device_cost.run_cost_benchmark`, this module only parses and writes files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import checkpoint_file, onnx_models, positive_int, require_onnx, write_json


def cmd_bench_cost(args: argparse.Namespace) -> int:
    """Measure one device CNN's size, latency and int8 accuracy against the Modifier's cost.

    Size: fp32 and int8 ONNX. Latency at batch 1 on one thread: torch, ONNX Runtime fp32 and
    int8 vs the Modifier. Accuracy: int8 vs float on the test split. Writes cost.json and
    cost.md to --out.
    """
    require_onnx("bench-cost")
    from ..paper.device_cost import cost_markdown, run_cost_benchmark

    result = run_cost_benchmark(
        args.checkpoint, onnx_models(args.checkpoint, args.checkpoint.parent / "onnx"),
        args.checkpoint.parent / "onnx-int8", args.data_root, args.repeats,
        args.calibration_samples, args.per_channel, args.seed, args.limit)
    write_json(args.out / "cost.json", result)
    text = cost_markdown(result)
    (args.out / "cost.md").write_text(text)
    print(text, end="")
    print(f"wrote {args.out / 'cost.json'} and {args.out / 'cost.md'}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``bench-cost`` to the CLI's subparsers."""
    p = sub.add_parser("bench-cost", help="size, latency and int8 accuracy of one device CNN "
                       "vs the Modifier (the paper's Table 3)",
                       description=cmd_bench_cost.__doc__)
    p.add_argument("checkpoint", type=checkpoint_file, help="model.safetensors written by `train` "
                   "(exported to onnx/ and quantised to onnx-int8/ beside it)")
    p.add_argument("--out", type=Path, default=Path("docs/results/paper/cost"),
                   help="output folder for cost.json and cost.md "
                   "(default docs/results/paper/cost)")
    p.add_argument("--repeats", type=positive_int, default=2000,
                   help="timed calls per measurement, after a warm-up (default 2000)")
    p.add_argument("--calibration-samples", type=positive_int, default=1000,
                   help="random training views per device for int8 calibration (default 1000)")
    p.add_argument("--per-tensor", dest="per_channel", action="store_false",
                   help="quantise weights per tensor (default: per output channel)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score only the first N test samples (quick runs)")
    p.set_defaults(func=cmd_bench_cost)
