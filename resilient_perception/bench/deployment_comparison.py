"""One process per node against one process for all: the same pipeline deployed both ways.

Six cameras and the fusion node run first as seven processes (as the launch file starts
them), then as one ``perception_container`` process; in each deployment, in turn:

1. start-up: exec of the processes -> the fusion node knows every camera's classifier head
   (every camera configured, active and matched: the pipeline can fuse);
2. steady state at ``rate_hz`` from a player process: end-to-end latency p50/p99 (image
   stamp -> fused publish), frames lost, and CPU (% of one core) and resident memory summed
   over the deployment's processes (the player, the same in both, is left out);
3. failure reaction: a camera is deactivated through its lifecycle service (a kill is not
   possible inside the shared process): time from the request to the first fused frame
   carrying that device's surrogate; then it is activated again.

Measures; asserts nothing. :func:`compare_deployments` returns the raw results,
:func:`deployment_markdown` their table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

from resilient_perception.bench.played_pipeline import PlayedPipeline

__all__ = ["DEPLOYMENTS", "compare_deployments", "deployment_markdown"]

DEPLOYMENTS = ("per_process", "one_process")
_TRANSITION_ACTIVATE, _TRANSITION_DEACTIVATE = 3, 4  # lifecycle_msgs/msg/Transition ids


def _change_state(bench: PlayedPipeline, node: str, transition: int) -> None:
    from lifecycle_msgs.srv import ChangeState

    client = bench.observer.node.create_client(ChangeState, f"/{node}/change_state")
    try:
        bench.observer.spin_until(lambda: client.service_is_ready(),
                                  f"{node}'s lifecycle service", 30.0, bench.pipeline)
        request = ChangeState.Request()
        request.transition.id = transition
        future = client.call_async(request)
        bench.observer.spin_until(future.done, f"{node}'s transition {transition}", 30.0,
                                  bench.pipeline)
        if not future.result().success:
            raise RuntimeError(f"{node} refused lifecycle transition {transition}")
    finally:
        bench.observer.node.destroy_client(client)


def _deployment(config: Path, onnx_pattern: str, n_cameras: int, one_process: bool,
                rate_hz: float, steady_s: float, log_dir: Path) -> dict:
    bench = PlayedPipeline(config, onnx_pattern, n_cameras, log_dir, one_process=one_process)
    try:
        with bench.pipeline:
            started = time.monotonic()
            bench.pipeline.start_ready(bench.observer, timeout=120.0)
            startup_s = time.monotonic() - started
            procs = bench.processes()
            for p in procs.values():
                p.cpu_percent(None)
            window = bench.window(bench.play(rate_hz, int(rate_hz * steady_s)))
            cpu = sum(p.cpu_percent(None) for p in procs.values())
            rss = sum(p.memory_info().rss for p in procs.values()) / 2**20

            device, state = 1, {}

            def deactivate(t: float) -> None:
                if "at" not in state and t >= 2.0:
                    state["at"] = time.monotonic()
                    _change_state(bench, f"camera_{device}", _TRANSITION_DEACTIVATE)

            bench.play(rate_hz, int(rate_hz * 5.0), deactivate)
            first = bench.monitor.first_arrival_with_surrogate("fused", device, state["at"])
            _change_state(bench, f"camera_{device}", _TRANSITION_ACTIVATE)
    finally:
        bench.observer.close()
    return {
        "processes": sorted(procs), "startup_to_fusion_ready_s": startup_s,
        "latency_s": window["latency_s"], "lost": window["missing"],
        "frames": window["labelled_frames"], "cpu_percent_of_one_core": cpu,
        "rss_mb": rss, "deactivation_reaction_s": None if first is None else first - state["at"],
    }


def compare_deployments(
    config: Path,
    onnx_pattern: str,
    log_dir: Path,
    n_cameras: int = 6,
    rate_hz: float = 30.0,
    steady_s: float = 20.0,
    emit: Callable[[str], None] = print,
) -> dict:
    """Both deployments of fusion + ``n_cameras`` cameras, measured the same way."""
    result = {"rate_hz": rate_hz, "cameras": n_cameras, "steady_s": steady_s}
    for name in DEPLOYMENTS:
        emit(f"deployment {name}: start-up, {steady_s:g} s at {rate_hz:g} Hz, a deactivation")
        result[name] = _deployment(config, onnx_pattern, n_cameras, name == "one_process",
                                   rate_hz, steady_s, log_dir / name)
    result["cores"] = psutil.cpu_count()
    return result


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.1f}"


def deployment_markdown(result: dict) -> str:
    """The two deployments side by side, with the one-process targets."""
    per, one = result["per_process"], result["one_process"]
    rows = [
        ("processes (fusion + cameras)", "-", str(len(per["processes"])),
         str(len(one["processes"]))),
        ("start-up: exec -> fusion ready, s", "-",
         f"{per['startup_to_fusion_ready_s']:.1f}", f"{one['startup_to_fusion_ready_s']:.1f}"),
        ("end-to-end latency p50, ms", "-", _ms(per["latency_s"]["p50"]),
         _ms(one["latency_s"]["p50"])),
        ("end-to-end latency p99, ms", "<= 10", _ms(per["latency_s"]["p99"]),
         _ms(one["latency_s"]["p99"])),
        ("frames lost (steady state)", "0", f"{per['lost']} of {per['frames']}",
         f"{one['lost']} of {one['frames']}"),
        ("CPU, % of one core (sum)", "-", f"{per['cpu_percent_of_one_core']:.0f}",
         f"{one['cpu_percent_of_one_core']:.0f}"),
        ("memory (RSS, sum), MB", "<= 300", f"{per['rss_mb']:.0f}", f"{one['rss_mb']:.0f}"),
        ("camera deactivated -> first surrogate frame, ms", "-",
         _ms(per["deactivation_reaction_s"]), _ms(one["deactivation_reaction_s"])),
    ]
    lines = [f"Fusion + {result['cameras']} cameras at {result['rate_hz']:g} Hz, "
             f"{result['steady_s']:g} s steady state each, on {result['cores']} cores "
             "(targets are the one-process mode's).", "",
             "| measure | target | one process per node | one process |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"
