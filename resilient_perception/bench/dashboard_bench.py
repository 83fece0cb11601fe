"""The dashboard's cost to the pipeline: end-to-end latency with and without the page open.

A phase of ``bench-pipeline --dashboard``, after its steady state: the same stream is
played three times in a row on the running pipeline: without a dashboard, then with the
dashboard node running and its page open in headless Chromium (so the push channel and
the previews are live), then without again. The dashboard is off the critical path when
the middle run's p50 / p99 lie within the spread of the two runs around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil

from resilient_perception.harness.browser import HeadlessBrowser
from resilient_perception.harness.dashboard import (
    DASHBOARD_NODE,
    all_tiles_live,
    dashboard_node,
    wait_for_dashboard_url,
)
from resilient_perception.harness.pipeline import Pipeline

__all__ = ["RUNS", "markdown_lines", "measure_dashboard_cost"]

RUNS = ("without", "with_dashboard", "without_again")


def measure_dashboard_cost(bench: Any, rate_hz: float, steady_s: float,
                           emit: Callable[[str], None] = print) -> dict:
    """Play ``steady_s`` at ``rate_hz`` without, with and again without the dashboard open.

    ``bench`` is the pipeline benchmark's running pipeline (``play``, ``window``,
    ``observer``, ``config``, ``log_dir``, ``n``). Returns per run the stream summary
    (latency, lost frames) and, with the dashboard, its and Chromium's CPU use.
    """
    count = int(rate_hz * steady_s)
    runs: dict[str, dict] = {"without": {"stream": bench.window(bench.play(rate_hz, count))}}
    emit(f"  without the dashboard: {_latency_text(runs['without'])}")
    dashboard = Pipeline([dashboard_node(bench.n)], bench.config, log_dir=bench.log_dir)
    with dashboard:
        dashboard.start()
        url = wait_for_dashboard_url(bench.observer, 30.0, dashboard)
        with HeadlessBrowser(bench.log_dir / "chromium") as browser:
            browser.open(url)
            browser.wait_for(f"document.querySelectorAll('.tile').length == {bench.n}", 30.0)
            node = psutil.Process(dashboard.pid(DASHBOARD_NODE))
            chromium = [psutil.Process(browser.process.pid)]
            chromium += chromium[0].children(recursive=True)
            for process in (node, *chromium):
                process.cpu_percent(None)
            seen: dict[str, bool] = {}

            def look(t: float) -> None:
                # Halfway through the stream the page must show every camera live: it is
                # really open and pushed to, not a page that stopped updating.
                if t >= steady_s / 2 and not seen:
                    seen["tiles_live"] = bool(browser.evaluate(all_tiles_live(bench.n)))

            started = time.monotonic()
            span = bench.play(rate_hz, count, look, label_subscribers=2)  # + dashboard
            runs["with_dashboard"] = {
                "stream": bench.window(span), "url": url,
                "tiles_live_halfway": seen.get("tiles_live", False),
                "seconds": time.monotonic() - started,
                "dashboard_cpu_percent_of_one_core": node.cpu_percent(None),
                "chromium_cpu_percent_of_one_core": sum(
                    _cpu(process) for process in chromium)}
    emit(f"  with the dashboard open: {_latency_text(runs['with_dashboard'])}")
    runs["without_again"] = {"stream": bench.window(bench.play(rate_hz, count))}
    emit(f"  without again: {_latency_text(runs['without_again'])}")
    return {"rate_hz": rate_hz, "seconds_each": steady_s, "runs": runs}


def _cpu(process: psutil.Process) -> float:
    try:
        return process.cpu_percent(None)
    except psutil.NoSuchProcess:  # a helper process Chromium ended meanwhile
        return 0.0


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.2f}"


def _latency_text(run: dict) -> str:
    lat = run["stream"]["latency_s"]
    return f"p50 {_ms(lat['p50'])} ms, p99 {_ms(lat['p99'])} ms, lost {run['stream']['missing']}"


def markdown_lines(cost: dict) -> list[str]:
    """The with/without table of :func:`measure_dashboard_cost`'s result."""
    lines = ["", f"End-to-end latency with the dashboard open ({cost['seconds_each']:g} s at "
             f"{cost['rate_hz']:g} Hz each, in this order):", "",
             "| run | frames | lost | latency p50 / p99, ms |", "|---|---|---|---|"]
    names = {"without": "without dashboard", "with_dashboard": "dashboard + page open",
             "without_again": "without dashboard again"}
    for key in RUNS:
        stream = cost["runs"][key]["stream"]
        lines.append(f"| {names[key]} | {stream['labelled_frames']} | {stream['missing']} | "
                     f"{_ms(stream['latency_s']['p50'])} / {_ms(stream['latency_s']['p99'])} |")
    run = cost["runs"]["with_dashboard"]
    lines += ["", f"Dashboard node {run['dashboard_cpu_percent_of_one_core']:.1f}% of one core, "
              f"headless Chromium {run['chromium_cpu_percent_of_one_core']:.1f}% (all its "
              f"processes); every tile live on the page halfway: {run['tiles_live_halfway']}."]
    return lines
