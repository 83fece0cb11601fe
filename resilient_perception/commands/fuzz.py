"""``fuzz``: malformed messages from outside sent into the live pipeline, and what it did.

The work is in :mod:`..bench.fuzz` (it imports rclpy, so only when the command runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import checkpoint_file, onnx_models, positive_float, positive_int
from .live import _installed_config

__all__ = ["add_parsers", "cmd_fuzz"]


def cmd_fuzz(args: argparse.Namespace) -> int:
    """Fuzz the live pipeline: N malformed messages of every subscribed type between frames.

    Starts player, 6 cameras and fusion; sends --messages malformed images, predictions and
    heads; checks that every node stays up, its /diagnostics counts match what was sent per
    reason, every labelled frame is fused identically to the offline computation, and RSS
    stays bounded. Writes fuzz.json, counts.csv and rss.csv to --out; exit 1 if a check fails.
    """
    try:
        from ..bench import fuzz
        from ..harness import pipeline
    except ImportError as exc:
        raise ValueError(f"this command needs ROS 2 and the built package ({exc}); run "
                         "scripts/setup.sh") from exc
    models = onnx_models(args.checkpoint, args.checkpoint.parent / "onnx")
    report = fuzz.run_fuzz(
        _installed_config(args, pipeline), models, args.out, messages=args.messages,
        rate_hz=args.rate, frame_rate_hz=args.frame_rate, seed=args.seed,
        data_root=args.data_root, rss_growth_limit_mb=args.rss_limit_mb,
        progress=not args.no_progress)
    fuzz.markdown_report(report, emit=print)
    return 0 if report["passed"] else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``fuzz`` on the main parser's subparsers."""
    p = sub.add_parser("fuzz", help="send malformed messages into the live pipeline and check "
                       "it (counts, output, memory)", description=cmd_fuzz.__doc__)
    p.add_argument("checkpoint", type=checkpoint_file, help="model.safetensors written by `train` "
                   "(exported to ONNX beside it)")
    p.add_argument("--messages", type=positive_int, default=1000,
                   help="malformed messages to send (default 1000)")
    p.add_argument("--rate", type=positive_float, default=100.0,
                   help="malformed messages per second (default 100)")
    p.add_argument("--frame-rate", type=positive_float, default=10.0,
                   help="valid frames per second from the player meanwhile (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kinds drawn (default 0)")
    p.add_argument("--rss-limit-mb", type=positive_float, default=5.0,
                   help="largest RSS growth per process after the warm-up (default 5 MB)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--config", type=Path, default=None,
                   help="params file (default the installed config/mnist_6cam.yaml)")
    p.add_argument("--out", type=Path, default=Path("runs/fuzz"),
                   help="output folder (default runs/fuzz)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fuzz)
