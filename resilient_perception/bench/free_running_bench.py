"""The pipeline fed by the player and by free-running cameras, on the same digits, side by side.

``bench-pipeline --free-running``. Six modes in one run, each a fresh pipeline of separate
processes over DDS (fusion + six ONNX camera nodes):

* **player**: the package's player publishes each digit once, all cameras one stamp,
  RELIABLE, at the trained size (the cameras as ``pipeline_nodes`` sets them up);
* **free-running**: six ``free_running_camera_node`` drivers, each on its own timer with its
  own phase (0-15 ms) and +-3 ms jitter, 640x480 YUYV BEST_EFFORT (one JPEG on
  ``image_raw/compressed``), each digit held ``hold`` frames; the cameras subscribe best
  effort, the fusion node groups stamps within ``sync_tolerance``, and the cameras and
  drivers use ``config/fastdds_large_images.xml`` (:mod:`~..harness.free_running`);
* **free-running, every image**: the same with the cameras' ``max_image_wait`` 0, so a
  camera that falls behind works through its queue instead of skipping what waited too long;
* **free-running, sync_tolerance left at 0**: the fusion node's default, which groups exact
  stamps only: what a user who forgets the tolerance gets, and what the node says of it;
* **free-running, on the cameras' own clocks**: drivers stamping with clocks of their own
  (10 .. 1000 s at the epoch, -50 .. +50 ppm fast), the cameras translating the stamps onto
  this machine's clock from the images' arrivals (``stamp_source: camera_clock``);
* **free-running, unstamped**: drivers that stamp their images 0, the cameras stamping each
  prediction with its image's arrival (``stamp_source: arrival``), so the fusion node groups
  arrival times. Its frames are scored by the scene at their earliest arrival, and its
  latency counts from that arrival, not from the capture.

With ``busy`` > 0, that many busy-looping processes run beside the pipeline in every mode:
a machine with other work on it, where a camera node gets less CPU than its frame rate needs.
With ``starve_camera`` as well, the busy processes and that camera node's main thread are
held on one CPU (the others run where they like): one camera short of CPU among five that
are not.

Per mode: the fraction of frames fused complete (all six devices live, no surrogate), the
frames the fusion node counted as split (``split_frames`` on ``/diagnostics``),
end-to-end latency p50 / p99 (``FusedPrediction.latency``: the frame's earliest stamp to the
fused publish) and accuracy, beside the model's accuracy computed here, offline, from the same
images (:func:`~..harness.free_running.camera_probabilities`: the dataset's pixels for the
player, the drivers' enlarged YUYV and JPEG images for the cameras) and the share of complete
frames labelled as offline: what the images cost, apart from what the pipeline loses. Writes
``free_running.json`` (raw) and ``free_running.md``.
The benchmark measures; it asserts nothing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray

from resilient_perception.datasets import load_dataset
from resilient_perception.harness.free_running import (
    FREE_RUNNING_SYNC_TOLERANCE_S,
    SceneSchedule,
    camera_drivers,
    camera_probabilities,
    free_running_pipeline_nodes,
    score_fused,
)
from resilient_perception.harness.pipeline import NodeSpec, Observer, Pipeline
from resilient_perception.msg import FrameLabel, FusedPrediction
from resilient_perception.ros.free_running_camera_node import camera_clock_reading
from resilient_perception.ros.topics import (
    CAMERA_STATUS,
    DIAGNOSTICS_TOPIC,
    FUSED_TOPIC,
    FUSION_ASSEMBLY_STATUS,
    LABEL_TOPIC,
    label_qos,
    status_name,
)

__all__ = ["markdown_report", "run_free_running_benchmark", "skip_comparison"]

WARMUP_S = 8.0
"""Drivers start, the cameras match them and every device is heard before frame 0."""
MAX_PHASE_MS = 15.0
COMPRESSED = (5,)
DRIVER_SIZE = (640, 480)
FREE_RUNNING_MODES = (("free_running", None, "host", None),
                      ("free_running_every_image", 0.0, "host", None),
                      ("free_running_tolerance_0", None, "host", 0.0),
                      ("free_running_camera_clock", None, "camera", None),
                      ("free_running_unstamped", None, "none", None))
"""Key, the cameras' ``max_image_wait`` (None: the default), the drivers' stamp clock and
the fusion node's ``sync_tolerance`` (None: ``FREE_RUNNING_SYNC_TOLERANCE_S``)."""
STAMP_SOURCE_FOR_CLOCK = {"host": "header", "camera": "camera_clock", "none": "arrival"}
"""The cameras' ``stamp_source`` for each of the drivers' ``stamp_clock``."""
MODE_NAMES = {"player": "player", "free_running": "free-running",
              "free_running_every_image": "free-running, every image",
              "free_running_tolerance_0": "free-running, sync_tolerance left at 0",
              "free_running_camera_clock": "free-running, on the cameras' own clocks",
              "free_running_unstamped": "free-running, unstamped, stamped on arrival"}


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _player_mode(config: Path, onnx_pattern: str, log_dir: Path, start: int, scenes: int,
                 rate_hz: float, n: int, domain_id: int,
                 started: Callable[[Pipeline], None]) -> dict:
    overrides = {"player": {"start_index": start, "count": scenes, "rate_hz": rate_hz,
                            "on_end": "shutdown", "wait_for_label_subscribers": 1}}
    with (Observer(name="benchmark_monitor", domain_id=domain_id) as observer,
          Pipeline.from_config(config, model_path=onnx_pattern, num_cameras=n,
                               overrides=overrides, log_dir=log_dir,
                               domain_id=domain_id) as pipeline):
        labels = observer.collect(FrameLabel, LABEL_TOPIC, label_qos())
        fused = observer.collect(FusedPrediction, FUSED_TOPIC)
        pipeline.start_ready(observer, timeout=120.0)
        started(pipeline)
        observer.spin_until(lambda: not pipeline.running("player"), "the player's end",
                            60.0 + 2 * scenes / rate_hz, pipeline)
        observer.spin_for(1.0)  # frames in flight
    truth = {_stamp(m): int(m.label) for m in labels}
    scored = [m for m in fused if _stamp(m) in truth]
    complete = [list(m.live_devices) == list(range(n)) and not list(m.surrogate_devices)
                for m in scored]
    latencies = [float(m.latency) for m in scored]
    return {"frames": len(truth), "fused": len(scored),
            "complete": int(sum(complete)),
            "complete_fraction": sum(complete) / max(len(truth), len(scored), 1),
            "accuracy": (float(np.mean([int(m.label) == truth[_stamp(m)] for m in scored]))
                         if scored else None),
            "latency_s": {f"p{q}": float(np.percentile(latencies, q)) if latencies else None
                          for q in (50, 99)}}


def _free_running_mode(config: Path, onnx_pattern: str, log_dir: Path, start: int,
                       scenes: int, hold: int, rate_hz: float, n: int, labels: np.ndarray,
                       offline: np.ndarray, profile: Path, seed: int, domain_id: int,
                       started: Callable[[Pipeline], None],
                       max_image_wait: float | None = None, stamp_clock: str = "host",
                       sync_tolerance: float | None = None) -> dict:
    tolerance = FREE_RUNNING_SYNC_TOLERANCE_S if sync_tolerance is None else sync_tolerance
    nodes = free_running_pipeline_nodes(onnx_pattern, n, compressed=COMPRESSED,
                                        sync_tolerance=tolerance,
                                        max_image_wait=max_image_wait, dds_profile=profile,
                                        stamp_source=STAMP_SOURCE_FOR_CLOCK[stamp_clock])
    with (Observer(name="benchmark_monitor", domain_id=domain_id) as observer,
          Pipeline(nodes, config, log_dir=log_dir, domain_id=domain_id) as pipeline):
        fused = observer.collect(FusedPrediction, FUSED_TOPIC)
        diagnostics = observer.collect(DiagnosticArray, DIAGNOSTICS_TOPIC)
        pipeline.start_ready(observer, timeout=120.0)
        started(pipeline)
        schedule = SceneSchedule.at_rate(time.time_ns() + round(WARMUP_S * 1e9), rate_hz,
                                         hold, scenes, MAX_PHASE_MS)
        driver_nodes = camera_drivers(schedule, n, seed=seed, compressed=COMPRESSED,
                                      size=DRIVER_SIZE, start_index=start,
                                      dds_profile=profile, stamp_clock=stamp_clock)
        with Pipeline(driver_nodes, log_dir=log_dir / "drivers",
                      domain_id=domain_id) as drivers:
            drivers.start()
            observer.spin_until(lambda: time.time_ns() > schedule.end_ns + 500_000_000,
                                "the end of the schedule",
                                WARMUP_S + schedule.frames / rate_hz + 60.0, pipeline)
    score = score_fused(fused, schedule, labels, n, offline)
    del score["records"]
    score |= _split_frames(diagnostics)
    if stamp_clock == "camera":
        score["camera_clocks"] = _camera_clock_estimates(diagnostics, driver_nodes, schedule)
    return score


def _split_frames(diagnostics: list[Any]) -> dict:
    """The fusion node's last ``split_frames`` and ``widest_split_ms`` on ``/diagnostics``."""
    assembly = [{kv.key: kv.value for kv in status.values} for array in diagnostics
                for status in array.status
                if status.name.endswith(f": {FUSION_ASSEMBLY_STATUS}")]
    last = assembly[-1] if assembly else {}
    return {"split_frames": int(last["split_frames"]) if "split_frames" in last else None,
            "widest_split_ms": float(last.get("widest_split_ms", 0.0))}


def _camera_clock_estimates(diagnostics: list[Any], drivers: list[NodeSpec],
                            schedule: SceneSchedule) -> list[dict]:
    """Per camera, the least delay its clock offset estimate carried during the schedule.

    That is its ``camera_clock_offset_s`` on ``/diagnostics`` minus the true offset of its
    driver's clock, in ms; each report is compared with the driver's clock at the report's
    stamp (this machine's clock).
    """
    estimates = []
    for i, driver in enumerate(drivers):
        name = status_name(f"/camera_{i}", CAMERA_STATUS)
        clock = (driver.parameters["camera_clock_at_epoch_s"],
                 driver.parameters["camera_clock_drift_ppm"])
        least_ms, restarts = [], 0
        for array in diagnostics:
            now = array.header.stamp.sec * 10**9 + array.header.stamp.nanosec
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if (status.name != name or not schedule.epoch_ns <= now <= schedule.end_ns
                        or values.get("camera_clock_offset_s") in (None, "None")):
                    continue
                true_offset_ns = now - camera_clock_reading(now, schedule.epoch_ns, *clock)
                least_ms.append((float(values["camera_clock_offset_s"]) * 1e9
                                 - true_offset_ns) * 1e-6)
                restarts = int(values["camera_clock_restarts"])
        estimates.append({"camera": i, "reports": len(least_ms),
                          "least_delay_ms": {q: float(np.percentile(least_ms, p))
                                             if least_ms else None
                                             for q, p in (("min", 0), ("p50", 50),
                                                          ("max", 100))},
                          "restarts": restarts})
    return estimates


def run_free_running_benchmark(
    config: Path,
    onnx_pattern: str,
    out_dir: Path,
    rate_hz: float = 30.0,
    scenes: int = 200,
    hold: int = 5,
    start_index: int = 0,
    seed: int = 1,
    n_cameras: int = 6,
    log_dir: Path | None = None,
    busy: int = 0,
    starve_camera: int | None = None,
    emit: Callable[[str], None] = print,
) -> dict:
    """Run the modes on digits ``start_index .. start_index + scenes - 1``; write the results.

    ``config`` is the pipeline's params file; the Fast DDS profile is the
    ``fastdds_large_images.xml`` beside it. ``seed`` draws the drivers' phases and jitter;
    ``busy`` busy-looping processes run beside every mode, on one CPU with camera
    ``starve_camera``'s main thread if that is given.
    """
    if starve_camera is not None and not 0 <= starve_camera < n_cameras:
        raise ValueError(f"--starve-camera takes a camera 0..{n_cameras - 1}, got "
                         f"{starve_camera}")
    cpu = max(os.sched_getaffinity(0))

    def started(pipeline: Pipeline) -> None:
        if starve_camera is not None:
            os.sched_setaffinity(pipeline.pid(f"camera_{starve_camera}"), {cpu})

    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or out_dir / "logs"
    profile = Path(config).parent / "fastdds_large_images.xml"
    data = load_dataset("mnist", "test")
    labels = data.labels[start_index:start_index + scenes]
    emit("the model offline, on the dataset's pixels and on the drivers' images ...")
    images = data.images[start_index:start_index + scenes]
    player_offline, offline = (
        camera_probabilities(onnx_pattern, images, n_cameras, compressed=COMPRESSED,
                             size=size).mean(axis=1).argmax(-1)
        for size in (None, DRIVER_SIZE))
    domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0"))
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_1min_start": os.getloadavg()[0]},
        "config": {"rate_hz": rate_hz, "cameras": n_cameras, "digits": scenes,
                   "start_index": start_index, "hold_frames": hold, "seed": seed,
                   "max_phase_ms": MAX_PHASE_MS, "jitter_ms": 3.0,
                   "size": "x".join(map(str, DRIVER_SIZE)),
                   "compressed_cameras": list(COMPRESSED),
                   "sync_tolerance_s": FREE_RUNNING_SYNC_TOLERANCE_S,
                   "busy_processes": busy, "starved_camera": starve_camera},
        "offline": {"dataset_pixels_accuracy": float(np.mean(player_offline == labels)),
                    "driver_images_accuracy": float(np.mean(offline == labels)),
                    "digits_labelled_otherwise": [
                        start_index + int(i) for i in np.flatnonzero(player_offline != offline)]},
    }
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        for hog in hogs if starve_camera is not None else ():
            os.sched_setaffinity(hog.pid, {cpu})
        emit(f"player: {scenes} digits at {rate_hz:g} Hz ...")
        result["player"] = _player_mode(config, onnx_pattern, log_dir / "player", start_index,
                                        scenes, rate_hz, n_cameras, domain_id, started)
        for key, max_image_wait, stamp_clock, sync_tolerance in FREE_RUNNING_MODES:
            emit(f"{MODE_NAMES[key]}: the same digits, {hold} frames each ...")
            result[key] = _free_running_mode(
                config, onnx_pattern, log_dir / key, start_index, scenes, hold, rate_hz,
                n_cameras, labels, offline, profile, seed, domain_id, started, max_image_wait,
                stamp_clock, sync_tolerance)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    (out_dir / "free_running.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "free_running.md").write_text(markdown_report(result))
    return result


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.1f}"


def _splits(mode: dict) -> str:
    if mode.get("split_frames") is None:  # the player, or runs from before the counter
        return "-"
    return f"{mode['split_frames']} ({mode['widest_split_ms']:.1f})"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def markdown_report(result: dict) -> str:
    """The modes side by side, one row each, with what the run recorded besides."""
    cfg, machine = result["config"], result["machine"]
    lines = [
        f"# Player vs free-running cameras: {cfg['cameras']} cameras at {cfg['rate_hz']:g} "
        f"Hz, MNIST test digits {cfg['start_index']}..{cfg['start_index'] + cfg['digits'] - 1}",
        "",
        f"Free-running: {cfg['size']} YUYV BEST_EFFORT (camera(s) "
        f"{', '.join(map(str, cfg['compressed_cameras']))} JPEG), phases 0-"
        f"{cfg['max_phase_ms']:g} ms (seed {cfg['seed']}), +-{cfg['jitter_ms']:g} ms jitter, "
        f"each digit held {cfg['hold_frames']} frames, sync_tolerance "
        f"{cfg['sync_tolerance_s']:g} s"
        + (" (0 in its row)" if "free_running_tolerance_0" in result else "")
        + "; the cameras skip images that waited over their max_image_wait, except in the "
        "every-image row. "
        f"{cfg.get('busy_processes', 0)} busy-looping processes beside the pipeline"
        + ("" if cfg.get("starved_camera") is None else
           f", on one CPU with camera {cfg['starved_camera']}'s main thread") + ". "
        f"Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"1-minute load average {machine['load_average_1min_start']:.1f} at the start and "
        f"{machine['load_average_1min_end']:.1f} at the end. Raw data: `free_running.json`.",
        "",
        "| mode | frames | fused | complete (6 live, no surrogate), % | latency p50 / p99, ms "
        "| accuracy, % | the model offline on the same images, % | complete frames labelled "
        "as offline, % | split frames counted by the fusion node (widest spread, ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    offline = result.get("offline", {})
    for key, name in MODE_NAMES.items():
        if key not in result:  # runs from before that mode
            continue
        r = result[key]
        same_images = (offline.get("dataset_pixels_accuracy") if key == "player"
                       else r.get("offline_accuracy"))
        lines.append(f"| {name} | {r['frames']} | {r['fused']} | {_pct(r['complete_fraction'])} "
                     f"| {_ms(r['latency_s']['p50'])} / {_ms(r['latency_s']['p99'])} | "
                     f"{_pct(r['accuracy'])} | {_pct(same_images)} | "
                     f"{_pct(r.get('complete_as_offline'))} | {_splits(r)} |")
    clocks = result.get("free_running_camera_clock", {}).get("camera_clocks")
    if clocks:
        lines += ["", "On their own clocks, the least delay each camera's estimate carried "
                  "(its `camera_clock_offset_s` on `/diagnostics` minus the true offset of its "
                  "driver's clock), p50 / max over the schedule, ms: " + "; ".join(
                      f"camera {c['camera']} {c['least_delay_ms']['p50']:.1f} / "
                      f"{c['least_delay_ms']['max']:.1f}"
                      + (f" ({c['restarts']} restarts)" if c["restarts"] else "")
                      for c in clocks if c["reports"]) + "."]
    if offline:
        lines += ["", "Offline, the model labels "
                  f"{_pct(offline['dataset_pixels_accuracy'])}% of the digits right from the "
                  f"dataset's pixels (what the player sends) and "
                  f"{_pct(offline['driver_images_accuracy'])}% from the drivers' images, "
                  "decoded and cut as the camera nodes do; digits labelled otherwise: "
                  f"{', '.join(map(str, offline['digits_labelled_otherwise'])) or 'none'}."]
    return "\n".join(lines) + "\n"


def skip_comparison(runs: dict[str, dict]) -> str:
    """Runs of the benchmark (name -> ``free_running.json``) as one markdown table.

    Per run the complete frames and latency p99 with and without skipping images that
    waited too long, then the means and a paired t-test over the runs.
    """
    from resilient_perception.paper.reproduction import paired_t_test

    keys = ("free_running", "free_running_every_image")
    complete = {key: [100 * r[key]["complete_fraction"] for r in runs.values()] for key in keys}
    p99 = {key: [1e3 * r[key]["latency_s"]["p99"] for r in runs.values()] for key in keys}
    lines = ["| run | busy processes | starved camera | load at start / end "
             "| complete %, skipping / every image | latency p99 ms, skipping / every image |",
             "|---|---|---|---|---|---|"]
    for i, (name, r) in enumerate(runs.items()):
        starved = r["config"].get("starved_camera")
        lines.append(
            f"| {name} | {r['config'].get('busy_processes', 0)} | "
            f"{'-' if starved is None else starved} | "
            f"{r['machine']['load_average_1min_start']:.1f} / "
            f"{r['machine']['load_average_1min_end']:.1f} | {complete[keys[0]][i]:.1f} / "
            f"{complete[keys[1]][i]:.1f} | {p99[keys[0]][i]:.1f} / {p99[keys[1]][i]:.1f} |")
    lines.append(f"| mean | | | | {np.mean(complete[keys[0]]):.1f} / "
                 f"{np.mean(complete[keys[1]]):.1f} | {np.mean(p99[keys[0]]):.1f} / "
                 f"{np.mean(p99[keys[1]]):.1f} |")
    tests = [(what, *paired_t_test(values[keys[0]], values[keys[1]]))
             for what, values in (("complete", complete), ("latency p99", p99))]
    lines += ["", "Paired t-test over the runs, skipping vs every image: " + "; ".join(
        f"{what} t = {t:.2f}, p = {p:.3f}" for what, t, p in tests) + "."]
    return "\n".join(lines) + "\n"
