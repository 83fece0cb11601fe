"""The live pipeline: ``demo`` and ``bench-pipeline``.

Both start the installed node executables as processes (:mod:`..harness`) and so need ROS 2
and the built package; they import rclpy only when they run, and say so clearly when it is
missing (a ``pip install .`` without ROS).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import onnx_models, positive_int, schedule
from .perception import cmd_train, evaluate_checkpoint, parse


def cmd_demo(args: argparse.Namespace) -> int:
    """Train (or reuse) an MNIST model, print its offline failure table, then run it live.

    Live: player + 6 camera processes + fusion with and without the Modifier over DDS;
    cameras are killed and restarted on a schedule; a live table is printed every second
    and a report is written to OUT/live/.
    """
    checkpoint = args.out / "model.safetensors"
    if checkpoint.exists():
        print(f"reusing {checkpoint} (delete it to retrain)")
    else:
        # The same defaults as `resilient-perception train`, from the one parser.
        train_args = ["train", "--epochs", str(args.epochs), "--out", str(args.out)]
        if args.data_root:
            train_args += ["--data-root", str(args.data_root)]
        cmd_train(parse(train_args))
    eval_args = ["evaluate", str(checkpoint)]
    if args.data_root:
        eval_args += ["--data-root", str(args.data_root)]
    evaluate_checkpoint(checkpoint, parse(eval_args), args.out / "eval-test")
    if args.no_live:
        return 0
    live_demo, pipeline, _ = _live_imports()
    if args.duration <= 0 or args.rate <= 0:
        raise ValueError("--duration and --rate must be > 0")
    schedule = args.schedule or live_demo.DEFAULT_SCHEDULE
    models = onnx_models(checkpoint, args.out / "onnx")
    config = _installed_config(args, pipeline)
    print(f"\nlive pipeline: {args.duration:g} s at {args.rate:g} Hz, failures: "
          + ", ".join(f"{e.action} {e.node} at {e.at:g} s" for e in schedule))
    if args.bag is not None and not args.bag.exists():
        raise ValueError(f"{args.bag}: no such bag (record one with `resilient-perception "
                         "record-dataset`)")
    report = live_demo.run_live_demo(config, models, args.out / "live", args.duration,
                                     args.rate, schedule, bag=args.bag)
    print()
    print((args.out / "live" / "report.md").read_text(), end="")
    lost = report["streams"]["modifier"]["missing"]
    return 0 if lost == 0 else 1


def _live_imports():
    """The ROS modules of the live commands, or a clear error without ROS (pip install .)."""
    try:
        from ..bench import live_demo, pipeline_benchmark
        from ..harness import pipeline
    except ImportError as exc:
        raise ValueError(f"this command needs ROS 2 and the built package ({exc}); run "
                         "scripts/setup.sh") from exc
    return live_demo, pipeline, pipeline_benchmark


def _installed_config(args: argparse.Namespace, pipeline) -> Path:
    config = args.config or (pipeline.package_prefix()
                             / "share/resilient_perception/config/mnist_6cam.yaml")
    if not config.is_file():
        raise ValueError(f"{config}: config file not found")
    return config


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    """Benchmark the live pipeline (6 camera processes + fusion at 30 Hz over DDS).

    Measures end-to-end and fusion-only latency, failure reaction time, max sustained
    frame rate, CPU and memory per process, and the Modifier's cost vs a device forward.
    Writes benchmark.json and benchmark.md to --out.
    """
    _, pipeline, pipeline_benchmark = _live_imports()
    if not args.checkpoint.is_file():
        raise ValueError(f"{args.checkpoint}: no such checkpoint (train one with "
                         "`resilient-perception train`)")
    models = onnx_models(args.checkpoint, args.checkpoint.parent / "onnx")
    result = pipeline_benchmark.run_pipeline_benchmark(
        _installed_config(args, pipeline), models, args.out, args.rate, args.steady,
        args.kills, log_dir=args.log_dir)
    print((args.out / "benchmark.md").read_text(), end="")
    return 0 if pipeline_benchmark.frames_lost(result) == 0 else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the live-pipeline subcommands on the main parser's subparsers."""
    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--epochs", type=positive_int, default=2,
                   help="epochs when a model must be trained (default 2)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="output folder (default runs/demo)")
    p.add_argument("--duration", type=float, default=24.0,
                   help="seconds of live streaming (default 24)")
    p.add_argument("--rate", type=float, default=30.0, help="frames per second (default 30)")
    p.add_argument("--schedule", type=schedule(), default=None,
                   help="failures as SECONDS:kill|restart:NODE,... (default "
                   "6:kill:camera_1,12:kill:camera_4,18:restart:camera_1)")
    p.add_argument("--config", type=Path, default=None,
                   help="params file (default the installed config/mnist_6cam.yaml)")
    p.add_argument("--no-live", action="store_true",
                   help="only train/reuse and print the offline failure table")
    p.add_argument("--bag", type=Path, default=None,
                   help="replay this camera bag (from `record-dataset`, same cameras) instead "
                   "of the dataset player; looped, at its recorded timing")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench-pipeline", help="benchmark the live pipeline (latency, failure "
                       "reaction, max rate, CPU/memory, Modifier cost)",
                       description=cmd_bench_pipeline.__doc__)
    p.add_argument("checkpoint", type=Path, help="model.safetensors written by `train` "
                   "(exported to ONNX beside it)")
    p.add_argument("--out", type=Path, default=Path("docs/results/pipeline"),
                   help="output folder (default docs/results/pipeline)")
    p.add_argument("--rate", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--steady", type=float, default=20.0,
                   help="seconds of steady-state streaming (default 20)")
    p.add_argument("--kills", type=positive_int, default=3,
                   help="cameras killed one at a time for the reaction time (default 3)")
    p.add_argument("--log-dir", type=Path, default=Path("runs/bench-pipeline/logs"),
                   help="node logs (default runs/bench-pipeline/logs)")
    p.add_argument("--config", type=Path, default=None,
                   help="params file (default the installed config/mnist_6cam.yaml)")
    p.set_defaults(func=cmd_bench_pipeline)
