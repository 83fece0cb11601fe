"""The soak with chaos: ``soak``.

Runs the live pipeline (player, six cameras, fusion, recorder) for minutes while a schedule
kills, freezes and restarts its processes, samples every process's memory, CPU and file
descriptors, and reports lost and duplicated frames, growth and reaction times
(:mod:`..bench.soak`). It needs ROS 2 and the built package; rclpy is imported only when it
runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..harness.pipeline import TRANSPORTS
from .common import checkpoint_file, onnx_models, positive_float, schedule

# bench.soak.SOAK_ACTIONS, not imported from there: building the parser imports no ROS
ACTIONS = ("kill", "restart", "stop", "cont")


def cmd_soak(args: argparse.Namespace) -> int:
    """Soak the live pipeline for --minutes under kills, SIGSTOP/SIGCONT and restarts.

    Six cameras at 30 Hz, fusion and recorder; cameras and the fusion node itself are
    killed (-9), frozen and restarted on a schedule (default: a one-minute cycle). Every
    process's RSS, CPU and open FDs are sampled every second. Writes report.json,
    report.md, samples.csv, latency.csv and soak.png to --out; exit 1 when a target is
    missed (frames lost or duplicated outside the reaction windows, memory growth >= 5%,
    FD growth, a fusion restart slower than 2 s to complete frames).
    """
    from .live import _installed_config, _live_imports

    _, pipeline, _ = _live_imports()  # a clear error without ROS
    from ..bench import soak

    models = onnx_models(args.checkpoint, args.checkpoint.parent / "onnx")
    report = soak.run_soak(_installed_config(args, pipeline), models, args.out, args.log_dir,
                           args.minutes, args.rate, args.schedule,
                           fusion_transport=args.fusion_transport)
    print()
    print((args.out / "report.md").read_text(), end="")
    return 0 if report["passed"] else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``soak`` on the main parser's subparsers."""
    p = sub.add_parser("soak", help="soak the live pipeline under kills, freezes and "
                       "restarts; report lost frames, memory/FD growth, reaction times",
                       description=cmd_soak.__doc__)
    p.add_argument("checkpoint", type=checkpoint_file, help="model.safetensors written by `train` "
                   "(exported to ONNX beside it)")
    p.add_argument("--minutes", type=positive_float, default=30.0,
                   help="length of the run (default 30); memory growth counts from minute "
                   "5, or from minute 1 in runs under 10 minutes")
    p.add_argument("--rate", type=positive_float, default=30.0,
                   help="frames per second (default 30)")
    p.add_argument("--schedule", type=schedule(ACTIONS), default=None,
                   help="chaos as SECONDS:kill|restart|stop|cont:NODE,... (default: every "
                   "minute kill -9 and restart a camera, SIGSTOP one for 2 s and the fusion "
                   "node for 1 s; kill -9 and restart the fusion node every 10 minutes)")
    p.add_argument("--fusion-transport", choices=TRANSPORTS, default="shm",
                   help="how the fusion node takes its samples: Fast DDS's shared memory "
                   "(default, as the pipeline runs it) or UDP (config/fastdds_udp_only.xml)")
    p.add_argument("--out", type=Path, default=Path("runs/soak/report"),
                   help="report folder (default runs/soak/report)")
    p.add_argument("--log-dir", type=Path, default=Path("runs/soak/logs"),
                   help="node logs and the recorder's bag (default runs/soak/logs)")
    p.add_argument("--config", type=Path, default=None,
                   help="params file (default the installed config/mnist_6cam.yaml)")
    p.set_defaults(func=cmd_soak)
