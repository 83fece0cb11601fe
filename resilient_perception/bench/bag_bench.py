"""The bag benchmark behind ``resilient-perception bench-bag``: record, read, replay, record.

Five measurements on MNIST camera bags (``cameras`` cameras, ``rate`` frames per second,
test split from frame 0):

1. **record**: ``record_frames`` frames (already cut and encoded) -> bag, MCAP and sqlite3
   (frames/s, MB/s of the bag written);
2. **read**: that MCAP bag's raw messages read back (frames/s, MB/s);
3. **replay throughput**: ``replay_node`` at ``rate`` x 1000 (as fast as it can) into a
   subscriber of every camera and the label topic (frames/s and MB/s published, messages
   the Python subscriber did not get);
4. **replay timing** at the recorded rate, with normal scheduling, with SCHED_FIFO
   (``realtime_priority``) for the replay thread, and with SCHED_FIFO for the receiver's
   DDS threads too: the inter-frame interval error, published (the middleware's source
   timestamps) and received (its reception timestamps, free of executor delays),
   p50/p99/max, plus the node's own lateness statistics;
5. **pipeline recording**: the bag replayed into the six camera nodes and the fusion node
   while ``recorder_node`` records their outputs; the recorder's counts of labels and of
   the camera and fused predictions of labelled frames are compared with the frames played
   to give the lost messages (unlabelled warm-up frames are left out: the recorder gets
   them from whenever DDS matched it).

Processes are started with :class:`~resilient_perception.harness.pipeline.Pipeline`; the
receivers are an :class:`~resilient_perception.harness.pipeline.Observer` in this process.
Numbers depend on the machine and its load: the result records the CPU count and the load
average before and after.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from resilient_perception.ros.bags import (
    LABEL_TOPIC,
    camera_topic,
    count_labelled,
    dataset_frames,
    iter_messages,
    score_bag,
    summarize,
    write_frames,
)
from resilient_perception.ros.topics import FUSED_TOPIC, PREDICTION_TOPIC_FORMAT

__all__ = ["bench_bags", "markdown_table"]

WARMUP = 10


def _percentiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}


def _interval_error_ms(times_ns: list[int], period_ns: float) -> dict:
    """|interval between consecutive frames - period|, milliseconds."""
    diffs = np.diff(np.sort(np.asarray(times_ns, np.int64))).astype(np.float64)
    return _percentiles(np.abs(diffs - period_ns) / 1e6)


def _record(data, args, folder: Path) -> dict:
    results = {}
    # Frames made first: this times the bag writer, not the cutting and encoding of images.
    # A bag of record_frames (long enough that opening and closing it do not dominate) per
    # storage; the replays use its first `frames` frames, written again as its own bag.
    frames = list(dataset_frames(data, range(args.record_frames), args.cameras, args.rate,
                                 time.time_ns()))
    write_frames(folder / "replayed", frames[:args.frames], args.cameras, "mcap",
                 {"dataset": "mnist", "split": "test", "rate_hz": f"{args.rate:g}"})
    for storage in ("mcap", "sqlite3"):
        stats = write_frames(folder / storage, frames, args.cameras, storage,
                             {"dataset": "mnist", "split": "test", "rate_hz": f"{args.rate:g}"})
        results[storage] = {"frames": stats.frames, "messages": stats.messages,
                            "bytes": stats.bytes, "seconds": stats.seconds,
                            "frames_per_s": stats.frames / stats.seconds,
                            "mb_per_s": stats.bytes / 1e6 / stats.seconds}
    return results


def _read(bag: Path) -> dict:
    start = time.perf_counter()
    messages, payload = 0, 0
    for _, _, _, data in iter_messages(bag):
        messages += 1
        payload += len(data)
    seconds = time.perf_counter() - start
    frames = summarize(bag).topics[f"/{LABEL_TOPIC}"].count
    return {"messages": messages, "payload_bytes": payload, "seconds": seconds,
            "frames_per_s": frames / seconds, "mb_per_s": payload / 1e6 / seconds}


class _Receiver:
    """Subscriptions to every camera topic and the labels, recording middleware timestamps."""

    def __init__(self, observer, cameras: int) -> None:
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import Image

        from resilient_perception.msg import FrameLabel

        self.node = observer.node
        self.received: dict[str, list[tuple[int, int, int]]] = {}
        self.subscriptions = []
        topics = [(camera_topic(i), Image) for i in range(cameras)] + [(LABEL_TOPIC, FrameLabel)]
        for topic, kind in topics:
            self.received[topic] = []
            self.subscriptions.append(self.node.create_subscription(
                kind, topic, lambda msg, info, t=topic: self.received[t].append(
                    (info["source_timestamp"], info["received_timestamp"],
                     len(msg.data) if hasattr(msg, "data") else 0)),
                QoSProfile(depth=10000)))

    def count(self) -> int:
        return sum(len(v) for v in self.received.values())

    def close(self) -> None:
        for subscription in self.subscriptions:
            self.node.destroy_subscription(subscription)


def _replay(pipeline, observer, receiver, name: str, expected: int, timeout: float) -> None:
    pipeline.start(name)
    observer.spin_until(lambda: pipeline.returncode(name) is not None, f"{name} to end",
                        timeout, pipeline)
    if pipeline.returncode(name) != 0:
        raise RuntimeError(f"{name} exited with {pipeline.returncode(name)}:\n"
                           f"{pipeline.log_tails()}")
    end = time.monotonic() + 5.0
    while receiver.count() < expected and time.monotonic() < end:
        observer.spin_for(0.05)


@contextlib.contextmanager
def _realtime(priority: int):
    """SCHED_FIFO for the calling thread meanwhile: threads it starts inherit it."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        print(f"warning: no SCHED_FIFO for the receiver ({exc}); normal scheduling")
    try:
        yield
    finally:
        os.sched_setscheduler(0, before[0], before[1])


def _replay_benchmarks(bag: Path, args, folder: Path, domain_id: int) -> dict:
    from resilient_perception.harness.pipeline import NodeSpec, Observer, Pipeline

    common = {"bag_path": str(bag), "wait_for_subscribers": 1,
              "wait_for_label_subscribers": 1, "on_end": "shutdown"}
    fifo = {"realtime_priority": args.realtime_priority}
    # (replay parameters, receiver's DDS threads real-time too)
    runs = {"fast": ({"rate": 1000.0}, False), "normal": ({}, False),
            "fifo": (fifo, False), "fifo_both": (fifo, True)}
    nodes = [NodeSpec(f"replay_{name}", "replay_node", {
        **common, **params, "stats_path": str(folder / f"{name}.json")})
        for name, (params, _) in runs.items()]
    expected = args.frames * (args.cameras + 1)
    results = {}
    with Pipeline(nodes, log_dir=folder / "logs", domain_id=domain_id) as pipeline:
        for name, (_, realtime_receiver) in runs.items():
            with contextlib.ExitStack() as stack:
                if realtime_receiver:
                    stack.enter_context(_realtime(args.realtime_priority))
                observer = Observer(f"bag_bench_{name}", domain_id=domain_id)
            with observer:
                receiver = _Receiver(observer, args.cameras)
                _replay(pipeline, observer, receiver, f"replay_{name}", expected,
                        60.0 + 3 * args.frames / args.rate)
            node = json.loads((folder / f"{name}.json").read_text())
            received = receiver.count()
            run = {"messages_expected": expected, "messages_received": received,
                   "messages_lost": expected - received, "node": node}
            if name == "fast":  # what the node published, and how fast
                run.update(frames_per_s=node["frames"] / node["seconds"],
                           mb_per_s=node["bytes"] / 1e6 / node["seconds"])
            else:
                period = 1e9 / args.rate
                camera0 = receiver.received[camera_topic(0)]
                run.update(
                    published_interval_error_ms=_interval_error_ms([r[0] for r in camera0],
                                                                   period),
                    received_interval_error_ms=_interval_error_ms([r[1] for r in camera0],
                                                                  period))
            results[name] = run
    return results


def _pipeline_recording(bag: Path, checkpoint: Path, args, folder: Path,
                        domain_id: int) -> dict:
    from resilient_perception.harness.pipeline import (
        PACKAGE,
        NodeSpec,
        Observer,
        Pipeline,
        package_prefix,
        pipeline_nodes,
    )

    config = package_prefix() / "share" / PACKAGE / "config" / "mnist_6cam.yaml"
    nodes = [NodeSpec("recorder", "recorder_node", {"bag_path": str(folder / "outputs")}),
             *pipeline_nodes(args.cameras, player=False, model_path=checkpoint),
             NodeSpec("replay", "replay_node", {
                 "bag_path": str(bag), "warmup_frames": WARMUP,
                 "warmup_fused_topic": FUSED_TOPIC, "wait_for_subscribers": 1,
                 "wait_for_label_subscribers": 1, "on_end": "shutdown",
                 "realtime_priority": args.realtime_priority})]
    with (Observer("bag_bench_pipeline", domain_id=domain_id) as observer,
          Pipeline(nodes, config, log_dir=folder / "logs", domain_id=domain_id) as pipeline):
        pipeline.start_ready(observer, timeout=120.0)  # the replay once fusion can fuse
        observer.spin_until(lambda: pipeline.returncode("replay") is not None,
                            "the replay to end", 60.0 + 3 * args.frames / args.rate, pipeline)
        observer.spin_for(3.0)  # the last frames fused, and a /diagnostics with final counts
        pipeline.interrupt("recorder")
        pipeline.check()
    topics = summarize(folder / "outputs").topics
    scored = score_bag(folder / "outputs")
    predictions = [f"/{FUSED_TOPIC}",
                   *(f"/{PREDICTION_TOPIC_FORMAT.format(i)}" for i in range(args.cameras))]
    expected = dict.fromkeys([f"/{LABEL_TOPIC}", *predictions], args.frames)
    recorded = {f"/{LABEL_TOPIC}": topics[f"/{LABEL_TOPIC}"].count
                if f"/{LABEL_TOPIC}" in topics else 0}
    recorded.update(count_labelled(folder / "outputs", predictions))
    score = scored["score"]
    return {"expected": expected, "recorded": recorded,
            "messages_lost": sum(expected.values()) - sum(recorded.values()),
            "frames_with_surrogate": score["frames_with_surrogate"],
            "missing_frames": score["missing"], "latency_s": score["latency_s"]}


def bench_bags(args, data) -> dict:
    """Run the five measurements of the module docstring; returns the JSON-safe result.

    Args:
        args: The ``bench-bag`` options (frames, cameras, rate, checkpoint,
            realtime_priority, domain_id).
        data: The MNIST test split (``load_dataset``).
    """
    domain_id = args.domain_id if args.domain_id is not None else os.getpid() % 90 + 110
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_bag_") as tmp:
        folder = Path(tmp)
        result = {"config": {"dataset": "mnist", "split": "test", "frames": args.frames,
                             "record_frames": args.record_frames,
                             "cameras": args.cameras, "rate_hz": args.rate,
                             "warmup_frames": WARMUP,
                             "realtime_priority": args.realtime_priority,
                             "checkpoint": str(args.checkpoint)},
                  "machine": {"cpus": os.cpu_count(), "load_average_before": load_before}}
        print("recording ...")
        result["record"] = _record(data, args, folder)
        result["read"] = _read(folder / "mcap")
        bag = folder / "replayed"
        print("replaying (throughput, then timing with normal and SCHED_FIFO scheduling) ...")
        result["replay"] = _replay_benchmarks(bag, args, folder, domain_id)
        print("replaying into the pipeline while recording its outputs ...")
        result["pipeline_recording"] = _pipeline_recording(bag, args.checkpoint, args, folder,
                                                           domain_id)
    result["machine"]["load_average_after"] = os.getloadavg()
    return result


def markdown_table(result: dict) -> str:
    """The benchmark result as Markdown tables (what docs/results/bags/bench.md holds)."""
    c, rec, rd, rp = result["config"], result["record"], result["read"], result["replay"]
    pipe = result["pipeline_recording"]

    def ms(stats: dict) -> str:
        return " / ".join("n/a" if stats[k] is None else f"{stats[k]:.3f}"
                          for k in ("p50", "p99", "max"))

    lines = [
        f"MNIST test frames x {c['cameras']} cameras (28x28 mono8, every "
        f"camera the full image) + labels, {c['rate_hz']:g} Hz; {result['machine']['cpus']} "
        f"CPUs, load average {result['machine']['load_average_before'][0]:.1f} before and "
        f"{result['machine']['load_average_after'][0]:.1f} after.",
        "",
        f"Record and read: {c['record_frames']} frames; replay and pipeline: {c['frames']}.",
        "",
        "| step | frames/s | MB/s | lost messages |",
        "|---|---:|---:|---:|",
        f"| record, MCAP | {rec['mcap']['frames_per_s']:.0f} | {rec['mcap']['mb_per_s']:.1f} "
        "| |",
        f"| record, sqlite3 | {rec['sqlite3']['frames_per_s']:.0f} | "
        f"{rec['sqlite3']['mb_per_s']:.1f} | |",
        f"| read, MCAP | {rd['frames_per_s']:.0f} | {rd['mb_per_s']:.1f} | |",
        f"| replay as fast as possible (published; lost = not received by a Python "
        f"subscriber) | {rp['fast']['frames_per_s']:.0f} | {rp['fast']['mb_per_s']:.1f} | "
        f"{rp['fast']['messages_lost']} of {rp['fast']['messages_expected']} |",
        f"| pipeline outputs recorded (recorder_node) | | | {pipe['messages_lost']} of "
        f"{sum(pipe['expected'].values())} |",
        "",
        f"Replay at {c['rate_hz']:g} Hz, inter-frame interval error in ms (p50 / p99 / max):",
        "",
        "| scheduling | published | received | node: lateness | lost messages |",
        "|---|---|---|---|---:|",
    ]
    fifo = f"SCHED_FIFO {c['realtime_priority']}"
    for name, label in (("normal", "normal"), ("fifo", f"replay {fifo}"),
                        ("fifo_both", f"replay and receiver {fifo}")):
        run = rp[name]
        lines.append(f"| {label} | {ms(run['published_interval_error_ms'])} | "
                     f"{ms(run['received_interval_error_ms'])} | "
                     f"{ms(run['node']['lateness_ms'])} | {run['messages_lost']} |")
    latency = pipe["latency_s"]
    lines += ["", f"Pipeline run: {pipe['missing_frames']} labelled frames not fused, "
              f"{pipe['frames_with_surrogate']} fused frames with a surrogate; end-to-end "
              f"latency p50 {1e3 * latency['p50']:.1f} ms, p99 {1e3 * latency['p99']:.1f} ms.",
              ""]
    return "\n".join(lines)
