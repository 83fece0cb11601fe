"""Footprint of the runtime nodes on an edge board: resident memory and start-up time.

Starts the fusion node, then the camera nodes one at a time (each with its ONNX model),
then a dataset player streaming at ``rate_hz``; samples every node process's resident
memory while frames flow. Per node it reports

* ``exec_to_ready_s``: from starting the process to its ready line in the log (a camera's
  ``active:``, the fusion node's ``fusing N devices``), each started alone, so it is the
  start-up of one node, not of several competing for the cores;
* ``rss_mb``: the largest resident set sampled while streaming, and ``peak_rss_mb`` the
  kernel's high-water mark (``VmHWM``, start-up included);
* ``libraries``: which of torch, onnx and ONNX Runtime the process has mapped (read from
  ``/proc/PID/maps``: the node's own ``sys.modules`` cannot be seen from outside).

The command that runs it is ``resilient-perception bench-footprint``; its raw result is one
JSON file per ``label`` (for example ``before`` and ``after`` a change) and
:func:`markdown_table` puts several side by side.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import psutil

from resilient_perception.harness.pipeline import Observer, Pipeline

__all__ = ["LIBRARY_MARKERS", "markdown_table", "mapped_libraries", "measure_footprint"]

# A shared object whose path contains the marker is mapped iff the package was imported.
LIBRARY_MARKERS = {"torch": "libtorch_cpu", "onnx": "onnx_cpp2py_export",
                   "onnxruntime": "onnxruntime_pybind11_state"}
READY_LINES = {"camera_node": "active:", "fusion_node": "fusing "}
_SAMPLE_S = 0.25


def mapped_libraries(pid: int) -> list[str]:
    """Which of :data:`LIBRARY_MARKERS` the process ``pid`` has mapped (Linux only)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name, marker in LIBRARY_MARKERS.items() if marker in maps]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def _wait_ready(pipeline: Pipeline, name: str, timeout: float) -> float:
    """Start ``name`` alone and return the seconds until its ready line is in its log."""
    marker = READY_LINES[pipeline.nodes[name].executable]
    log = pipeline.log_path(name)
    offset = log.stat().st_size if log.exists() else 0
    started = time.monotonic()
    pipeline.start(name)
    # Polled at 10 ms: the log is written line by line (PYTHONUNBUFFERED), so the delay
    # between the node's log call and this read is at most one poll.
    pipeline.wait_until(lambda: marker in log.read_text(errors="replace")[offset:],
                        f"{name} to log {marker!r}", timeout, period=0.01)
    return time.monotonic() - started


def measure_footprint(
    config: Path,
    onnx_pattern: str,
    *,
    cameras: int = 2,
    rate_hz: float = 30.0,
    seconds: float = 10.0,
    log_dir: Path | None = None,
    domain_id: int | None = None,
    timeout: float = 60.0,
) -> dict:
    """Run the fusion node, ``cameras`` camera nodes and a player; return the footprint.

    Args:
        config: Params file of the pipeline (e.g. the installed ``config/mnist_6cam.yaml``).
        onnx_pattern: Camera models, ``{}`` for the device index (``device_{}.onnx``).
        cameras: Camera nodes (devices of the fusion node).
        rate_hz: Player frame rate while memory is sampled.
        seconds: How long the player streams.
        log_dir: Node logs (default: a temporary folder).
        domain_id: ``ROS_DOMAIN_ID`` of the nodes (default: derived from this pid, so two
            runs on one machine do not see each other).
        timeout: Seconds a node may take to become ready.

    Returns:
        JSON-ready result: settings, machine, and per node ``exec_to_ready_s``, ``rss_mb``,
        ``peak_rss_mb``, ``libraries``.
    """
    domain_id = (os.getpid() % 90) + 110 if domain_id is None else domain_id
    count = max(1, round(rate_hz * seconds))
    pipeline = Pipeline.from_config(
        config, model_path=onnx_pattern, num_cameras=cameras, log_dir=log_dir,
        domain_id=domain_id,
        overrides={"player": {"rate_hz": rate_hz, "count": count, "on_end": "shutdown"}})
    nodes: dict[str, dict] = {}
    with pipeline, Observer(name="footprint_monitor", domain_id=domain_id) as observer:
        for name in [n for n in pipeline.names if n != "player"]:
            nodes[name] = {"exec_to_ready_s": _wait_ready(pipeline, name, timeout)}
        observer.wait_for_fusion(cameras, timeout, pipeline)
        procs = {name: psutil.Process(pipeline.pid(name)) for name in nodes}
        rss = dict.fromkeys(nodes, 0.0)
        pipeline.start("player")
        while pipeline.running("player"):
            for name, proc in procs.items():
                rss[name] = max(rss[name], proc.memory_info().rss / 2**20)
            observer.spin_for(_SAMPLE_S)
        pipeline.check()
        for name, proc in procs.items():
            nodes[name].update(rss_mb=rss[name], peak_rss_mb=_peak_rss_mb(proc.pid),
                               libraries=mapped_libraries(proc.pid))
    return {
        "cameras": cameras, "rate_hz": rate_hz, "seconds": seconds, "frames": count,
        "machine": {"cores": psutil.cpu_count(), "python": platform.python_version(),
                    "load_average_1min_at_end": os.getloadavg()[0]},
        "nodes": nodes,
    }


def markdown_table(results: dict[str, dict]) -> str:
    """One row per node, one column group per labelled result (e.g. before / after)."""
    labels = list(results)
    head = ["node"] + [f"{what} ({label})" for label in labels
                       for what in ("RSS MB", "peak RSS MB", "exec to ready s", "loaded")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = list(next(iter(results.values()))["nodes"]) if results else []
    for name in names:
        cells = [name]
        for label in labels:
            node = results[label]["nodes"].get(name)
            if node is None:
                cells += ["-"] * 4
                continue
            cells += [f"{node['rss_mb']:.0f}", f"{node['peak_rss_mb']:.0f}",
                      f"{node['exec_to_ready_s']:.2f}", ", ".join(node["libraries"]) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
