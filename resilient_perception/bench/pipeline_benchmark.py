"""Benchmark of the live pipeline: latency, failure reaction, max rate, CPU/memory, Modifier cost.

All nodes run as separate processes over DDS (as deployed): six camera nodes on ONNX
Runtime and the fusion node, fed by player processes. Phases, in one run:

1. steady state at ``rate_hz``: end-to-end latency (image stamp -> fused publish, the
   ``FusedPrediction.latency`` field), the fusion node's own processing time (its
   ``/diagnostics``), CPU (% of one core) and resident memory per process;
2. failure reaction: cameras are killed one at a time (and restarted): time from the
   ``kill -9`` to the first fused frame carrying that device's surrogate, and frames lost;
3. max sustained rate: players at increasing rates; a rate is sustained when every
   labelled frame is fused and the p99 latency stays below ``frame_timeout``;
4. Modifier cost, in this process: one device CNN forward pass (ONNX Runtime, batch 1) vs
   the surrogate synthesis and the whole per-frame fusion with and without surrogates;

and, with ``dashboard``, after the steady state: the same stream without, with the
dashboard open in headless Chromium, and without again (:mod:`.dashboard_bench`); with
``compare_one_process``, at the end: the pipeline deployed as one process per node and as
one ``perception_container`` process, measured the same way (:mod:`.deployment_comparison`).

The benchmark measures; it asserts nothing. Results go to ``benchmark.json`` (raw) and
``benchmark.md`` (tables) in the output folder.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import yaml

from resilient_perception.bench.dashboard_bench import markdown_lines as dashboard_lines
from resilient_perception.bench.dashboard_bench import measure_dashboard_cost
from resilient_perception.bench.deployment_comparison import (
    compare_deployments,
    deployment_markdown,
)
from resilient_perception.bench.played_pipeline import PlayedPipeline, fusion_diagnostics
from resilient_perception.paper.device_cost import measure_modifier_cost
from resilient_perception.perception.runtime import DeviceRunner

__all__ = ["frames_lost", "markdown_report", "run_pipeline_benchmark"]


def run_pipeline_benchmark(
    config: Path,
    onnx_pattern: str,
    out_dir: Path,
    rate_hz: float = 30.0,
    steady_s: float = 20.0,
    kills: int = 3,
    rates: tuple[float, ...] = (30.0, 60.0, 90.0, 120.0, 180.0, 240.0),
    rate_step_s: float = 5.0,
    n_cameras: int = 6,
    emit: Callable[[str], None] = print,
    log_dir: Path | None = None,
    dashboard: bool = False,
    compare_one_process: bool = False,
) -> dict:
    """Run the four phases (see the module docstring) and write the results; returns them.

    Node logs go to ``log_dir`` (default ``out_dir/logs``); ``dashboard`` adds the
    dashboard's with/without phase, ``compare_one_process`` the deployments' comparison.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = yaml.safe_load(Path(config).read_text()) or {}
    shared = (sections.get("/**") or {}).get("ros__parameters") or {}
    fusion = (sections.get("fusion") or {}).get("ros__parameters") or {}
    deadline, frame_timeout = float(shared["deadline"]), float(fusion["frame_timeout"])
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": psutil.cpu_count(), "python": platform.python_version(),
                    # other load skews every timing here: record it
                    "load_average_1min_start": os.getloadavg()[0]},
        "config": {"rate_hz": rate_hz, "cameras": n_cameras, "deadline_s": deadline,
                   "frame_timeout_s": frame_timeout, "steady_s": steady_s},
    }
    bench = PlayedPipeline(config, onnx_pattern, n_cameras, log_dir or out_dir / "logs")
    try:
        with bench.pipeline:
            emit(f"starting fusion + {n_cameras} cameras ...")
            bench.pipeline.start_ready(bench.observer, timeout=120.0)

            emit(f"steady state: {steady_s:g} s at {rate_hz:g} Hz")
            procs = bench.processes()
            for p in procs.values():
                p.cpu_percent(None)
            span = bench.play(rate_hz, int(rate_hz * steady_s))
            usage = {name: {"cpu_percent_of_one_core": p.cpu_percent(None),
                            "rss_mb": p.memory_info().rss / 2**20} for name, p in procs.items()}
            bench.observer.spin_for(1.5)  # a diagnostics period
            diag = fusion_diagnostics(bench.diagnostics)
            result["steady"] = {"stream": bench.window(span), "processes": usage,
                                "fusion_ms_p50": float(diag.get("fusion_ms_p50", "nan")),
                                "fusion_ms_p99": float(diag.get("fusion_ms_p99", "nan"))}
            if dashboard:
                emit(f"dashboard: {steady_s:g} s without, with the page open, without again")
                result["dashboard"] = measure_dashboard_cost(bench, rate_hz, steady_s, emit)

            emit(f"failure reaction: {kills} kills and restarts")
            reactions = []
            for i in range(kills):
                device = i % n_cameras
                state: dict = {}

                def inject(t: float, device: int = device, state: dict = state) -> None:
                    if "killed" not in state and t >= 2.0:
                        state["killed"] = time.monotonic()
                        bench.pipeline.kill(f"camera_{device}")

                span = bench.play(rate_hz, int(rate_hz * 5.0), inject)
                first = bench.monitor.first_arrival_with_surrogate("fused", device,
                                                                   state["killed"])
                window = bench.window(span)
                reactions.append({"device": device, "reaction_s": None if first is None
                                  else first - state["killed"], "lost": window["missing"],
                                  "frames": window["labelled_frames"]})
                bench.pipeline.restart(f"camera_{device}")
                bench.observer.spin_until(
                    lambda device=device: fusion_diagnostics(bench.diagnostics).get(
                        "heads_known") == str(n_cameras) and bench.pipeline.running(
                        f"camera_{device}"), "the restarted camera", 60.0, bench.pipeline)
            result["failure_reaction"] = {"bound_s": deadline + 1.0 / rate_hz,
                                          "kills": reactions}

            emit("max sustained rate: " + ", ".join(f"{r:g}" for r in rates) + " Hz")
            steps = []
            for rate in rates:
                bench.observer.spin_for(2.0)  # let restarted cameras rejoin between steps
                window = bench.window(bench.play(rate, int(rate * rate_step_s)))
                p99 = window["latency_s"]["p99"]
                ok = window["missing"] == 0 and p99 is not None and p99 < frame_timeout
                steps.append({"rate_hz": rate, "lost": window["missing"], "latency_s": window[
                    "latency_s"], "frames_with_surrogate": window["frames_with_surrogate"],
                              "sustained": ok})
                emit(f"  {rate:g} Hz: lost {window['missing']}, p99 "
                     f"{'-' if p99 is None else f'{1e3 * p99:.1f} ms'}"
                     f"{'' if ok else ' (not sustained)'}")
            sustained = [s["rate_hz"] for s in steps if s["sustained"]]
            result["max_rate"] = {"steps": steps, "max_sustained_hz": max(sustained, default=None)}
    finally:
        bench.observer.close()
    if compare_one_process:
        result["deployments"] = compare_deployments(
            config, onnx_pattern, (log_dir or out_dir / "logs") / "deployments", n_cameras,
            rate_hz, steady_s, emit)
    emit("Modifier cost ...")
    # Times do not depend on the values: zero views stand in for camera images.
    runners = [DeviceRunner.from_onnx(onnx_pattern.format(i), threads=1)
               for i in range(n_cameras)]
    views = np.zeros((n_cameras, runners[0].in_channels, *runners[0].input_hw), np.uint8)
    result["modifier_cost"] = measure_modifier_cost(runners, views)
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    (out_dir / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "benchmark.md").write_text(markdown_report(result))
    return result


def frames_lost(result: dict) -> int:
    """Labelled frames never fused in the steady state and the kills (should be 0)."""
    return (result["steady"]["stream"]["missing"]
            + sum(k["lost"] for k in result["failure_reaction"]["kills"]))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.2f}"


def markdown_report(result: dict) -> str:
    """The benchmark's tables, with the pipeline's targets beside the measurements."""
    cfg, steady = result["config"], result["steady"]
    lat = steady["stream"]["latency_s"]
    reaction = result["failure_reaction"]
    worst = max((k["reaction_s"] for k in reaction["kills"] if k["reaction_s"] is not None),
                default=None)
    cost = result["modifier_cost"]
    lines = [
        f"# Pipeline benchmark: {cfg['cameras']} cameras at {cfg['rate_hz']:g} Hz, every node "
        "a process",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, 1-minute "
        f"load average {result['machine']['load_average_1min_start']:.1f} at the start and "
        f"{result['machine']['load_average_1min_end']:.1f} at the end (the pipeline's own "
        "processes included). Raw data: `benchmark.json`.",
        "",
        "| measure | target | measured |",
        "|---|---|---|",
        f"| end-to-end latency p50 / p99 (image stamp -> fused publish), ms | p99 <= 10 | "
        f"{_ms(lat['p50'])} / {_ms(lat['p99'])} |",
        f"| fusion node processing p50 / p99, ms | p99 <= 1 | {steady['fusion_ms_p50']:.3f} / "
        f"{steady['fusion_ms_p99']:.3f} |",
        f"| failure reaction (kill -9 -> first surrogate frame), worst of "
        f"{len(reaction['kills'])}, ms | <= {1e3 * reaction['bound_s']:.0f} | {_ms(worst)} |",
        f"| frames lost (steady + kills) | 0 | {frames_lost(result)} |",
        f"| max sustained frame rate, Hz | - | {result['max_rate']['max_sustained_hz']} |",
        f"| Modifier cost vs one device CNN forward | <= 5% | "
        f"{100 * cost['modifier_vs_forward']:.1f}% |",
        "",
        "| process | CPU, % of one core | memory (RSS), MB |",
        "|---|---|---|",
    ]
    for name, use in steady["processes"].items():
        lines.append(f"| {name} | {use['cpu_percent_of_one_core']:.1f} | {use['rss_mb']:.0f} |")
    lines += ["", "| rate, Hz | lost | latency p50 / p99, ms | sustained |", "|---|---|---|---|"]
    for s in result["max_rate"]["steps"]:
        lines.append(f"| {s['rate_hz']:g} | {s['lost']} | {_ms(s['latency_s']['p50'])} / "
                     f"{_ms(s['latency_s']['p99'])} | {'yes' if s['sustained'] else 'no'} |")
    lines += ["", f"Device forward {1e6 * cost['device_forward_s']:.1f} us ({cost['provider']}, "
              f"batch 1), Modifier {1e6 * cost['modifier_s']:.1f} us: fuse_frame with / "
              f"without surrogate {1e6 * cost['fuse_frame_with_modifier_s']:.1f} / "
              f"{1e6 * cost['fuse_frame_without_modifier_s']:.1f} us (medians of "
              f"{cost['repeats']})."]
    if "dashboard" in result:
        lines += dashboard_lines(result["dashboard"])
    if "deployments" in result:
        lines += ["", "## One process per node vs one process (perception_container)", "",
                  deployment_markdown(result["deployments"]).rstrip()]
    return "\n".join(lines) + "\n"
