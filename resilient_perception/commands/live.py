"""The live pipeline: ``demo``, ``dashboard`` and ``bench-pipeline``.

Both start the installed node executables as processes (:mod:`..harness`) and so need ROS 2
and the built package; they import rclpy only when they run, and say so clearly when it is
missing (a ``pip install .`` without ROS).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..ros.topics import IMAGE_TRANSPORTS
from .common import (
    checkpoint_file,
    non_negative_int,
    onnx_models,
    port,
    positive_int,
    require_onnx,
    schedule,
    write_json,
)
from .perception import cmd_train, evaluate_checkpoint, parse


def cmd_demo(args: argparse.Namespace) -> int:
    """Train (or reuse) an MNIST model, print its offline failure table, then run it live.

    Live: player + 6 camera processes + fusion with and without the Modifier over DDS;
    cameras are killed and restarted on a schedule; a live table is printed every second
    and a report is written to OUT/live/.
    """
    if args.screenshot is not None and args.dashboard is None:
        raise ValueError("--screenshot needs --dashboard")
    if not args.no_live:  # say what is missing before training, not after it
        require_onnx("demo")
        _live_imports()
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
                                     args.rate, schedule, bag=args.bag,
                                     dashboard_port=args.dashboard, screenshot=args.screenshot)
    print()
    print((args.out / "live" / "report.md").read_text(), end="")
    lost = report["streams"]["modifier"]["missing"]
    return 0 if lost == 0 else 1


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the live dashboard of a running pipeline (the same ROS domain) until Ctrl-C.

    One page on http://BIND:PORT/: a tile per camera (image, live / late / dead / no input,
    surrogates, rate, inference time), the fused output with rolling accuracy with and
    without the Modifier (when labels are published), end-to-end latency and events over
    the last minute, and the distributed ResNet's plan and links. Runs the dashboard node
    in this process.
    """
    try:
        from ..ros import dashboard_node
    except ImportError as exc:
        raise ValueError(f"this command needs ROS 2 and the built package ({exc}); run "
                         "scripts/setup.sh") from exc
    return dashboard_node.main([
        "resilient-perception", "--ros-args", "-r", "__node:=dashboard",
        "-p", f"port:={args.port}", "-p", f"bind_address:={args.bind}",
        "-p", f"num_devices:={args.cameras}", "-p", f"fusion_node:={args.fusion_node}",
        "-p", f"image_transport:={args.image_transport}"])


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
    Writes benchmark.json and benchmark.md to --out. With --free-running, instead: the same
    digits from the player and from six free-running camera drivers, side by side
    (free_running.json and free_running.md).
    """
    if (args.busy or args.starve_camera is not None) and not args.free_running:
        raise ValueError("--busy and --starve-camera go with --free-running")
    if args.starve_camera is not None and not args.busy:
        raise ValueError("--starve-camera needs --busy 1 or more (the processes it shares a "
                         "CPU with)")
    models = onnx_models(args.checkpoint, args.checkpoint.parent / "onnx")  # inputs first
    _, pipeline, pipeline_benchmark = _live_imports()
    if args.free_running:
        from ..bench.free_running_bench import run_free_running_benchmark

        run_free_running_benchmark(_installed_config(args, pipeline), models, args.out,
                                   args.rate, args.digits, args.hold, log_dir=args.log_dir,
                                   busy=args.busy, starve_camera=args.starve_camera)
        print((args.out / "free_running.md").read_text(), end="")
        return 0
    result = pipeline_benchmark.run_pipeline_benchmark(
        _installed_config(args, pipeline), models, args.out, args.rate, args.steady,
        args.kills, log_dir=args.log_dir, dashboard=args.dashboard,
        compare_one_process=args.compare_one_process)
    print((args.out / "benchmark.md").read_text(), end="")
    return 0 if pipeline_benchmark.frames_lost(result) == 0 else 1


def cmd_bench_footprint(args: argparse.Namespace) -> int:
    """Resident memory and start-up time of the fusion and camera (ONNX) node processes.

    Starts the fusion node and the camera nodes one at a time, then streams frames; writes
    footprint-LABEL.json and footprint.md (every footprint-*.json in --out side by side, in
    the order they were written).
    """
    _, pipeline, _ = _live_imports()
    from ..bench.node_footprint import markdown_table, measure_footprint

    models = onnx_models(args.checkpoint, args.checkpoint.parent / "onnx")
    result = measure_footprint(_installed_config(args, pipeline), models,
                               cameras=args.cameras, rate_hz=args.rate, seconds=args.seconds,
                               log_dir=args.log_dir)
    result["command"] = (f"resilient-perception bench-footprint CHECKPOINT --cameras "
                         f"{args.cameras} --rate {args.rate:g} --seconds {args.seconds:g} "
                         f"--label {args.label}")
    write_json(args.out / f"footprint-{args.label}.json", result)
    # side by side in the order they were measured (e.g. before, after)
    results = {path.stem.removeprefix("footprint-"): json.loads(path.read_text())
               for path in sorted(args.out.glob("footprint-*.json"),
                                  key=lambda path: path.stat().st_mtime)}
    table = markdown_table(results)
    (args.out / "footprint.md").write_text(table)
    print(table, end="")
    return 0


def _add_bench_options(p: argparse.ArgumentParser, command: str) -> None:
    """The options every live benchmark has: its model, frame rate, logs and params file."""
    p.add_argument("checkpoint", type=checkpoint_file, help="model.safetensors written by `train` "
                   "(exported to ONNX beside it)")
    p.add_argument("--rate", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--log-dir", type=Path, default=Path(f"runs/{command}/logs"),
                   help=f"node logs (default runs/{command}/logs)")
    p.add_argument("--config", type=Path, default=None,
                   help="params file (default the installed config/mnist_6cam.yaml)")


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
    p.add_argument("--dashboard", type=port, nargs="?", const=8080, default=None,
                   metavar="PORT", help="also serve the live dashboard on http://127.0.0.1:"
                   "PORT/ (default 8080; 0 picks a free port; the URL is printed)")
    p.add_argument("--screenshot", type=Path, default=None,
                   help="with --dashboard: save a PNG of the page (headless Chromium) one "
                   "second before the end")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("dashboard", help="serve the live dashboard of a running pipeline",
                       description=cmd_dashboard.__doc__)
    p.add_argument("--port", type=port, default=8080,
                   help="TCP port (default 8080; 0 picks a free one, logged)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="bind address (default 127.0.0.1, this machine only; 0.0.0.0 serves "
                   "every network of the robot)")
    p.add_argument("--cameras", type=positive_int, default=6,
                   help="camera devices (default 6)")
    p.add_argument("--fusion-node", default="fusion",
                   help="name of the fusion node whose /diagnostics give the devices' health "
                   "(default fusion)")
    p.add_argument("--image-transport", choices=IMAGE_TRANSPORTS, default="raw",
                   help="read the camera previews as sensor_msgs/Image (raw, default) or from "
                   "image_transport's compressed topics (IMAGE/compressed)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("bench-pipeline", help="benchmark the live pipeline (latency, failure "
                       "reaction, max rate, CPU/memory, Modifier cost)",
                       description=cmd_bench_pipeline.__doc__)
    _add_bench_options(p, "bench-pipeline")
    p.add_argument("--out", type=Path, default=Path("docs/results/pipeline"),
                   help="output folder (default docs/results/pipeline)")
    p.add_argument("--steady", type=float, default=20.0,
                   help="seconds of steady-state streaming (default 20)")
    p.add_argument("--kills", type=positive_int, default=3,
                   help="cameras killed one at a time for the reaction time (default 3)")
    p.add_argument("--dashboard", action="store_true",
                   help="after the steady state, play it again with the dashboard open in "
                   "headless Chromium and once more without: end-to-end latency side by side")
    p.add_argument("--compare-one-process", action="store_true",
                   help="at the end, deploy fusion + cameras as one process per node and as "
                   "one perception_container process: start-up, latency, CPU, memory and a "
                   "camera's deactivation side by side")
    p.add_argument("--free-running", action="store_true",
                   help="instead, the same digits from the player and from six free-running "
                   "camera drivers (640x480 YUYV, best effort, own phases): frames fused "
                   "complete, latency and accuracy side by side (free_running.md)")
    p.add_argument("--digits", type=positive_int, default=200,
                   help="with --free-running: test digits played (default 200)")
    p.add_argument("--hold", type=positive_int, default=5,
                   help="with --free-running: frames each digit holds (default 5)")
    p.add_argument("--busy", type=non_negative_int, default=0,
                   help="with --free-running: busy-looping processes beside the pipeline, "
                   "other work on the machine (default 0)")
    p.add_argument("--starve-camera", type=non_negative_int, default=None, metavar="K",
                   help="with --free-running and --busy: the busy processes and camera K's "
                   "main thread on one CPU, one camera short of CPU among the others")
    p.set_defaults(func=cmd_bench_pipeline)

    p = sub.add_parser("bench-footprint", help="resident memory and start-up time of the "
                       "fusion and camera node processes", description=cmd_bench_footprint.__doc__)
    _add_bench_options(p, "bench-footprint")
    p.add_argument("--cameras", type=positive_int, default=2, help="camera nodes (default 2)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="seconds of streaming while memory is sampled (default 10)")
    p.add_argument("--label", default="current",
                   help="name of this run in footprint-LABEL.json and the table "
                   "(default current)")
    p.add_argument("--out", type=Path, default=Path("docs/results/edge"),
                   help="output folder (default docs/results/edge)")
    p.set_defaults(func=cmd_bench_footprint)
