"""The CLI's rosbag2 subcommands: record-dataset, check-bag, score-bag, bench-bag.

:func:`add_parsers` adds them to ``resilient-perception``'s parser. Building the parser
imports nothing of ROS; each command imports what it needs when it runs (``bench-bag``
starts nodes and needs rclpy, the others only ``rosbags``). Bag problems raise
:class:`~resilient_perception.ros.bags.BagError`, a ``ValueError``, so the CLI exits with
status 2 and the message.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from ..ros.topics import FUSED_TOPIC
from .common import (
    dataset_name,
    non_negative_float,
    positive_float,
    positive_int,
    write_json,
)

__all__ = ["add_parsers", "cmd_bench_bag", "cmd_check_bag", "cmd_record_dataset",
           "cmd_score_bag"]


def cmd_record_dataset(args: argparse.Namespace) -> int:
    """Write a dataset split as a camera bag: N image topics with shared stamps, plus labels."""
    from resilient_perception.datasets import load_dataset
    from resilient_perception.ros.bags import dataset_frames, write_frames

    data = load_dataset(args.dataset, args.split, args.data_root)
    size = len(data.labels)
    if args.start_index >= size:
        raise ValueError(f"--start-index {args.start_index} is past the {size} frames of "
                         f"{args.dataset} {args.split}")
    stop = size if args.count is None else min(size, args.start_index + args.count)
    indices = range(args.start_index, stop)
    frames = dataset_frames(data, indices, args.cameras, args.rate, time.time_ns())
    custom = {"dataset": args.dataset, "split": args.split, "rate_hz": f"{args.rate:g}",
              "first_frame_index": str(args.start_index)}
    bar = tqdm(frames, total=len(indices), unit="frame", desc="recording", mininterval=1.0)
    stats = write_frames(args.out, bar, args.cameras, args.storage, custom)
    megabytes = stats.bytes / 1e6
    print(f"wrote {args.out}: {stats.frames} frames x {args.cameras} cameras + labels "
          f"({stats.messages} messages, {megabytes:.1f} MB, {args.storage}) in "
          f"{stats.seconds:.2f} s: {stats.frames / stats.seconds:.0f} frames/s, "
          f"{megabytes / stats.seconds:.1f} MB/s")
    return 0


def cmd_check_bag(args: argparse.Namespace) -> int:
    """Check a camera bag (metadata, camera topics, every image decodes) and summarise it."""
    import numpy as np

    from resilient_perception.ros.bags import camera_topics, read_frames, summarize

    summary = summarize(args.bag)
    cameras = camera_topics(summary, args.cameras)
    tolerance_ns = (summary.sync_tolerance_ns() if args.sync_tolerance is None
                    else round(args.sync_tolerance * 1e9))
    spreads, complete, labelled = [], 0, 0
    for frame in tqdm(read_frames(args.bag, len(cameras), tolerance_ns), unit="frame",
                      desc="reading", mininterval=1.0):
        spreads.append(frame.spread_ns / 1e6)
        complete += all(image is not None for image in frame.images)
        labelled += frame.label >= 0
    print(f"{summary.path}: rosbag2 v{summary.version} {summary.storage}, "
          f"{summary.message_count} messages over {summary.duration_ns / 1e9:.2f} s, "
          f"{len(spreads)} frames from {len(cameras)} cameras, {complete} with every camera")
    if spreads:
        print(f"a frame's stamps lie within {tolerance_ns / 1e6:.1f} ms (--sync-tolerance); "
              f"their spread: median {np.median(spreads):.1f} ms, max {max(spreads):.1f} ms"
              + ("" if max(spreads) else " (one shared stamp per frame)"))
    print(f"{labelled} frames labelled" if labelled else
          "no labels: the bag plays, but score-bag needs labelled frames")
    for topic in summary.topics.values():
        camera = " (camera)" if topic.name in cameras else ""
        print(f"  {topic.name}: {topic.msgtype} x {topic.count}{camera}")
    return 0


def cmd_score_bag(args: argparse.Namespace) -> int:
    """Score a bag of pipeline outputs: accuracy, availability, surrogate use, latency."""
    from resilient_perception.ros.bags import score_bag

    result = score_bag(args.bag, args.fused_topic, None if args.sync_tolerance is None
                       else round(args.sync_tolerance * 1e9))
    out = args.out or args.bag.with_name(f"{args.bag.name}_score.json")
    write_json(out, result)
    score = result["score"]
    accuracy = score["accuracy"]
    latency = score["latency_s"]
    print(f"{args.bag}: {score['scored_frames']} of {score['labelled_frames']} labelled "
          f"frames fused ({score['missing']} missing), accuracy "
          + ("n/a" if accuracy is None else f"{100 * accuracy:.2f}%"))
    print("device availability (live in fused frames): " + ", ".join(
        f"{i}: {100 * a:.1f}%" for i, a in enumerate(score["device_availability"])))
    print(f"frames with a surrogate: {score['frames_with_surrogate']}; per device: "
          f"{score['device_surrogate_frames']}")
    if latency["p50"] is not None:
        print(f"latency p50 {1e3 * latency['p50']:.1f} ms, p99 {1e3 * latency['p99']:.1f} ms, "
              f"max {1e3 * latency['max']:.1f} ms")
    print(f"wrote {out}")
    return 0


def cmd_bench_bag(args: argparse.Namespace) -> int:
    """Benchmark bag record, read and replay (throughput, timing) and pipeline recording."""
    from resilient_perception.bench.bag_bench import bench_bags, markdown_table
    from resilient_perception.datasets import load_dataset

    if not args.checkpoint.is_file():
        raise ValueError(f"{args.checkpoint} not found: pass --checkpoint, e.g. a model from "
                         "`resilient-perception train` or `resilient-perception demo`")
    data = load_dataset("mnist", "test", args.data_root)
    if max(args.frames, args.record_frames) > len(data.labels):
        raise ValueError(f"--frames and --record-frames must be at most the "
                         f"{len(data.labels)} frames of the MNIST test split")
    result = bench_bags(args, data)
    write_json(args.out / "bench.json", result)
    table = markdown_table(result)
    command = (f"resilient-perception bench-bag --checkpoint {args.checkpoint} --frames "
               f"{args.frames} --record-frames {args.record_frames} --cameras {args.cameras} "
               f"--rate {args.rate:g} "
               f"--realtime-priority {args.realtime_priority}")
    (args.out / "bench.md").write_text(f"# Bags: record and replay benchmark\n\nGenerated by "
                                       f"`{command}` (no randomness: frames 0.. of the MNIST "
                                       "test split); raw results in [bench.json](bench.json)."
                                       f"\n\n{table}")
    print(table)
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the bag subcommands to the CLI's subparsers."""
    from resilient_perception.datasets import DATASET_NAMES

    p = sub.add_parser("record-dataset", help=cmd_record_dataset.__doc__,
                       description=cmd_record_dataset.__doc__ + " The bag holds what the "
                       "dataset player publishes, so replay_node can stand in for it.")
    p.add_argument("--dataset", type=dataset_name, default="mnist",
                   help=f"one of {', '.join(DATASET_NAMES)} or idx:IMAGES:LABELS "
                   "(default mnist)")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--cameras", type=positive_int, default=6,
                   help="camera topics (default 6; MVMC has at most 6)")
    p.add_argument("--rate", type=positive_float, default=30.0,
                   help="frames per second of the recording (default 30)")
    p.add_argument("--count", type=positive_int, default=None,
                   help="frames to record (default: to the end of the split)")
    p.add_argument("--start-index", type=int, default=0, help="first frame (default 0)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap",
                   help="rosbag2 storage (default mcap)")
    p.add_argument("--out", type=Path, required=True, help="new bag folder")
    p.set_defaults(func=cmd_record_dataset)

    p = sub.add_parser("check-bag", help=cmd_check_bag.__doc__,
                       description=cmd_check_bag.__doc__)
    p.add_argument("bag", type=Path, help="bag folder")
    p.add_argument("--cameras", type=positive_int, default=None,
                   help="expected cameras (default: as recorded in the bag)")
    p.add_argument("--sync-tolerance", type=non_negative_float, default=None,
                   metavar="SECONDS", help="largest spread of one frame's image stamps "
                   "(default: half the frame period; 0: one shared stamp)")
    p.set_defaults(func=cmd_check_bag)

    p = sub.add_parser("score-bag", help=cmd_score_bag.__doc__,
                       description=cmd_score_bag.__doc__ + " Fused predictions are matched "
                       "to labels by stamp.")
    p.add_argument("bag", type=Path, help="bag written by recorder_node")
    p.add_argument("--fused-topic", default=FUSED_TOPIC,
                   help=f"FusedPrediction topic to score (default {FUSED_TOPIC})")
    p.add_argument("--sync-tolerance", type=non_negative_float, default=None,
                   metavar="SECONDS", help="match fused and device predictions to the "
                   "nearest label stamped at most this far from them (default: the fusion "
                   "node's sync_tolerance as recorded on /diagnostics, else 0: the same "
                   "stamp)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result (default BAG_score.json beside the bag folder)")
    p.set_defaults(func=cmd_score_bag)

    p = sub.add_parser("bench-bag", help=cmd_bench_bag.__doc__,
                       description=cmd_bench_bag.__doc__ + " Starts replay_node, "
                       "recorder_node, camera and fusion nodes as processes (needs the built "
                       "package); takes about a minute plus the nodes' start-up.")
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/model.safetensors"),
                   help="model of the camera nodes (default runs/demo/model.safetensors)")
    p.add_argument("--frames", type=positive_int, default=300,
                   help="frames in the bag (default 300: 10 s at 30 Hz)")
    p.add_argument("--record-frames", type=positive_int, default=3000,
                   help="frames of the bags whose recording and reading are timed "
                   "(default 3000)")
    p.add_argument("--cameras", type=positive_int, default=6, help="cameras (default 6)")
    p.add_argument("--rate", type=positive_float, default=30.0,
                   help="frames per second (default 30)")
    p.add_argument("--realtime-priority", type=int, choices=range(1, 100), default=10,
                   metavar="1-99", help="SCHED_FIFO priority of the replay thread in the "
                   "real-time runs (default 10; needs root or CAP_SYS_NICE)")
    p.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID of the benchmark's nodes (default: from the pid)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--out", type=Path, default=Path("docs/results/bags"),
                   help="folder for bench.json and bench.md (default docs/results/bags)")
    p.set_defaults(func=cmd_bench_bag)
