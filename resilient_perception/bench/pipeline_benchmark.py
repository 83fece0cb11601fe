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
dashboard open in headless Chromium, and without again (:mod:`.dashboard_bench`).

The benchmark measures; it asserts nothing. Results go to ``benchmark.json`` (raw) and
``benchmark.md`` (tables) in the output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import yaml
from diagnostic_msgs.msg import DiagnosticArray

from resilient_perception.bench.dashboard_bench import markdown_lines as dashboard_lines
from resilient_perception.bench.dashboard_bench import measure_dashboard_cost
from resilient_perception.harness.pipeline import NodeSpec, Observer, Pipeline, pipeline_nodes
from resilient_perception.harness.stream_monitor import StreamMonitor
from resilient_perception.paper.device_cost import measure_modifier_cost
from resilient_perception.perception.runtime import DeviceRunner
from resilient_perception.ros.topics import DIAGNOSTICS_TOPIC, FUSED_TOPIC

__all__ = ["frames_lost", "markdown_report", "run_pipeline_benchmark"]

FUSED = FUSED_TOPIC


def _fusion_diagnostics(arrays: list[DiagnosticArray]) -> dict[str, str]:
    for array in reversed(arrays):
        for status in array.status:
            if status.name.endswith(": frame assembly"):
                return {kv.key: kv.value for kv in status.values}
    return {}


class _Bench:
    """The running pipeline (fusion + cameras) and helpers to play frames through it."""

    def __init__(self, config: Path, onnx_pattern: str, n_cameras: int, log_dir: Path):
        self.config, self.log_dir, self.n = config, log_dir, n_cameras
        # The config's `player` section is keyed by that node name; every play starts a
        # player of its own name, which gets the section's parameters (its warm-up above
        # all: without it a new player's first frames reach cameras not yet matched to it).
        sections = yaml.safe_load(Path(config).read_text()) or {}
        self.player_parameters = (sections.get("player") or {}).get("ros__parameters") or {}
        nodes = pipeline_nodes(n_cameras, player=False, model_path=onnx_pattern)
        self.observer = Observer(name="benchmark_monitor")
        self.pipeline = Pipeline(nodes, config, log_dir=log_dir)
        self.monitor = StreamMonitor(self.observer, {"fused": FUSED}, n_cameras)
        self.score = self.monitor.scores["fused"]
        self.diagnostics = self.observer.collect(DiagnosticArray, DIAGNOSTICS_TOPIC)
        self._players = 0

    def play(self, rate_hz: float, count: int, during: Callable[[float], None] | None = None,
             ) -> tuple[int, int]:
        """Play ``count`` labelled frames at ``rate_hz``; return the stamp window (ns).

        ``during(t)`` is called about every 20 ms with the seconds since the first label.
        """
        self._players += 1
        name = f"player_{self._players}"
        player = Pipeline([NodeSpec(name, "player_node", {
            **self.player_parameters,
            "num_cameras": self.n, "rate_hz": rate_hz, "count": count, "on_end": "shutdown",
            "wait_for_label_subscribers": 1,
            "start_index": (self._players * 997) % 5000})], self.config, log_dir=self.log_dir)
        start_ns = time.time_ns()
        labels0 = self.monitor.labels()
        with player:
            player.start()
            self.observer.spin_until(lambda: self.monitor.labels() > labels0,
                                     "the first labelled frame", 60.0, self.pipeline)
            t0 = time.monotonic()
            while player.running(name):
                self.observer.spin_for(0.02)
                if during is not None:
                    during(time.monotonic() - t0)
            self.pipeline.check()
        end_ns = time.time_ns()
        labelled = self.score.window(start_ns, end_ns).truth.keys()
        # Drain: frames still in flight are not lost; what is missing after 5 s is.
        with contextlib.suppress(TimeoutError):
            self.observer.spin_until(lambda: not (labelled - self.score.fused.keys()),
                                     "every labelled frame fused", 5.0, self.pipeline)
        return start_ns, end_ns

    def window(self, span: tuple[int, int]) -> dict:
        return self.score.window(*span).summary()

    def processes(self) -> dict[str, psutil.Process]:
        return {name: psutil.Process(self.pipeline.pid(name))
                for name in self.pipeline.names if self.pipeline.running(name)}


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
) -> dict:
    """Run the four phases (see the module docstring) and write the results; returns them.

    Node logs go to ``log_dir`` (default ``out_dir/logs``); ``dashboard`` adds the
    dashboard's with/without phase.
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
    bench = _Bench(config, onnx_pattern, n_cameras, log_dir or out_dir / "logs")
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
            diag = _fusion_diagnostics(bench.diagnostics)
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
                    lambda device=device: _fusion_diagnostics(bench.diagnostics).get(
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
    return "\n".join(lines) + "\n"
