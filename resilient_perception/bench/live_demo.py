"""The live demo: the whole pipeline over DDS while cameras die and come back on a schedule.

Processes: the dataset player, N camera nodes, and two fusion nodes fed by the same
cameras: ``fusion`` (Modifier surrogates for dead or late devices, ``perception/fused``)
and ``fusion_no_modifier`` (fuses the present devices only,
``perception/fused_no_modifier``), so the Modifier's effect is measured on the very same
frames. A :class:`~.stream_monitor.StreamMonitor` scores both against the player's labels;
every second a row of the live table is printed, and at the end a report (JSON + Markdown)
gives accuracy per failed-device set for both streams, failure reaction times, latency and
lost frames.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from resilient_perception.harness.browser import HeadlessBrowser
from resilient_perception.harness.dashboard import (
    dashboard_node,
    wait_for_dashboard_url,
)
from resilient_perception.harness.pipeline import NodeSpec, Observer, Pipeline, pipeline_nodes
from resilient_perception.harness.stream_monitor import StreamMonitor
from resilient_perception.perception.stream_score import StreamScore
from resilient_perception.ros.topics import FUSED_TOPIC

__all__ = [
    "DEFAULT_SCHEDULE",
    "STREAMS",
    "FailureEvent",
    "demo_nodes",
    "parse_schedule",
    "run_live_demo",
]

STREAMS = {"modifier": FUSED_TOPIC, "no_modifier": f"{FUSED_TOPIC}_no_modifier"}
ACTIONS = ("kill", "restart")


@dataclass(frozen=True)
class FailureEvent:
    """At ``at`` seconds after the first labelled frame, ``kill`` -9 or ``restart`` a node."""

    at: float
    action: str
    node: str


DEFAULT_SCHEDULE = (
    FailureEvent(6.0, "kill", "camera_1"),
    FailureEvent(12.0, "kill", "camera_4"),
    FailureEvent(18.0, "restart", "camera_1"),
)


def parse_schedule(text: str, actions: Sequence[str] = ACTIONS) -> tuple[FailureEvent, ...]:
    """Parse ``"6:kill:camera_1,12:kill:camera_4,18:restart:camera_1"`` (sorted by time).

    ``actions`` are the allowed actions (the soak adds ``stop`` and ``cont``).

    Raises:
        ValueError: naming the entry that is not ``SECONDS:ACTION:NODE``.
    """
    form = f"SECONDS:{'|'.join(actions)}:NODE"
    events = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        parts = entry.split(":")
        try:
            at, action, node = float(parts[0]), parts[1], parts[2]
        except (ValueError, IndexError):
            raise ValueError(f"schedule entry {entry!r}: expected {form}") from None
        if len(parts) != 3 or action not in actions or at < 0 or not node:
            raise ValueError(f"schedule entry {entry!r}: expected {form} with SECONDS >= 0")
        events.append(FailureEvent(at, action, node))
    return tuple(sorted(events, key=lambda e: e.at))


def demo_nodes(config: Path, model_path: str, num_cameras: int, rate_hz: float,
               count: int, bag: Path | None = None,
               dashboard_port: int | None = None) -> list[NodeSpec]:
    """The pipeline of :func:`~.pipeline.pipeline_nodes` plus a fusion node without Modifier.

    The second fusion node gets the config's ``fusion`` parameters with ``use_modifier``
    off and its own output topic, so both fuse under the same timeouts. With ``bag`` the
    frames come from a ``replay_node`` playing it (looped, recorded timing) instead of the
    dataset player; the source node is named ``player`` either way. With
    ``dashboard_port`` (0: a free one) a dashboard node serves the page on that port.
    """
    nodes = pipeline_nodes(num_cameras, model_path=model_path)
    sections = yaml.safe_load(Path(config).read_text()) or {}
    fusion_params = dict((sections.get("fusion") or {}).get("ros__parameters") or {})
    out = []
    for spec in nodes:
        if spec.name == "fusion":
            out.append(NodeSpec("fusion", spec.executable, {
                **spec.parameters, "output_topic": STREAMS["modifier"]}))
            out.append(NodeSpec("fusion_no_modifier", spec.executable, {
                **fusion_params, **spec.parameters, "use_modifier": False,
                "output_topic": STREAMS["no_modifier"]}))
        elif spec.name == "player" and bag is not None:
            out.append(NodeSpec("player", "replay_node", {
                "bag_path": os.fspath(Path(bag).resolve()), "loop": True,
                "warmup_frames": 10, "warmup_fused_topic": STREAMS["modifier"],
                "wait_for_subscribers": 1, "wait_for_label_subscribers": 1}))
        elif spec.name == "player":
            out.append(NodeSpec("player", spec.executable, {
                **spec.parameters, "rate_hz": rate_hz, "count": count,
                "wait_for_label_subscribers": 1}))
        else:
            out.append(spec)
    if dashboard_port is not None:
        out.append(dashboard_node(num_cameras, dashboard_port))
    return out


def _pct(value: float | None) -> str:
    return "  -  " if value is None else f"{100 * value:5.1f}"


def _devices(score: StreamScore) -> str:
    """The newest fused frame's devices: digit if used live, ``.`` if not (e.g. ``0.23.5``)."""
    if not score.fused:
        return "-" * score.n_devices
    live = score.fused[max(score.fused)].live
    return "".join(str(d) if d in live else "." for d in range(score.n_devices))


class _LiveTable:
    """Prints one row per second: accuracy so far, devices, latency of the last second."""

    HEADER = (" time  frames  acc Modifier  acc without  devices   "
              "latency p50/p99 ms  event")

    def __init__(self, monitor: StreamMonitor, emit: Callable[[str], None]) -> None:
        self.monitor, self.emit = monitor, emit
        self.rows: list[dict] = []
        self._seen: set[int] = set()

    def row(self, t: float, event: str) -> None:
        mod, nomod = (self.monitor.scores[name] for name in ("modifier", "no_modifier"))
        new = [r.latency for s, r in mod.fused.items() if s not in self._seen]
        self._seen.update(mod.fused)
        acc = {name: self.monitor.scores[name].summary()["accuracy"] for name in STREAMS}
        p50, p99 = (float(np.percentile(new, q)) * 1e3 if new else None for q in (50, 99))
        row = {"t": round(t, 1), "frames": len(mod.fused), "accuracy_modifier": acc["modifier"],
               "accuracy_no_modifier": acc["no_modifier"], "devices": _devices(mod),
               "surrogates": len(mod.fused[max(mod.fused)].surrogates) if mod.fused else 0,
               "latency_ms_p50": p50, "latency_ms_p99": p99, "event": event,
               "frames_without_modifier": len(nomod.fused)}
        self.rows.append(row)
        lat = "      -     " if p50 is None else f"{p50:6.1f} / {p99:6.1f}"
        self.emit(f"{t:5.1f}  {row['frames']:6d}  {_pct(acc['modifier']):>12}  "
                  f"{_pct(acc['no_modifier']):>11}  {row['devices']:8}  {lat:>18}  {event}")


def run_live_demo(
    config: Path,
    model_path: str,
    out_dir: Path,
    duration: float = 24.0,
    rate_hz: float = 30.0,
    schedule: Sequence[FailureEvent] = DEFAULT_SCHEDULE,
    num_cameras: int = 6,
    emit: Callable[[str], None] = print,
    bag: Path | None = None,
    dashboard_port: int | None = None,
    screenshot: Path | None = None,
) -> dict:
    """Run the live pipeline for ``duration`` seconds of frames under ``schedule``.

    Args:
        config: params file (``config/mnist_6cam.yaml``).
        model_path: camera models, e.g. ``runs/demo/onnx/device_{}.onnx``.
        out_dir: gets ``report.json``, ``report.md``, ``live.csv`` and ``logs/``.
        duration: seconds of streaming after the first labelled frame.
        rate_hz: player frame rate.
        schedule: failure events (nodes must be pipeline nodes).
        num_cameras: cameras (devices).
        emit: where the live table goes.
        bag: replay this camera bag (``record-dataset``) instead of the dataset player.
        dashboard_port: run a dashboard node on this port (0: a free one); its URL is
            printed.
        screenshot: with a dashboard, a headless Chromium keeps the page open and saves
            this PNG of it one second before the end.

    Returns:
        The report (also written to ``out_dir/report.json``).

    """
    out_dir.mkdir(parents=True, exist_ok=True)
    count = int(rate_hz * (duration + 10.0))  # enough frames; the demo stops the player
    if screenshot is not None and dashboard_port is None:
        raise ValueError("a screenshot needs the dashboard")
    nodes = demo_nodes(config, model_path, num_cameras, rate_hz, count, bag, dashboard_port)
    names = {spec.name for spec in nodes}
    unknown = sorted({e.node for e in schedule} - names)
    if unknown:
        raise ValueError(f"schedule names unknown nodes {unknown}; nodes are {sorted(names)}")
    reactions: list[dict] = []
    with (Observer(name="demo_monitor") as observer,
          Pipeline(nodes, config, log_dir=out_dir / "logs") as pipeline,
          contextlib.ExitStack() as browsers):
        monitor = StreamMonitor(observer, STREAMS, num_cameras)
        emit(f"starting {len(nodes)} processes (logs in {out_dir / 'logs'}) ...")
        pipeline.start_ready(observer, timeout=120.0)
        browser = None
        if dashboard_port is not None:
            url = wait_for_dashboard_url(observer, 30.0, pipeline)
            emit(f"dashboard: {url}")
            if screenshot is not None:
                browser = browsers.enter_context(HeadlessBrowser(out_dir / "chromium"))
                browser.open(url)
        observer.spin_until(lambda: monitor.labels() > 0, "the first labelled frame", 60.0,
                            pipeline)
        table = _LiveTable(monitor, emit)
        emit(table.HEADER)
        t0 = time.monotonic()
        pending, next_row, events_text = list(schedule), 1.0, []
        while (t := time.monotonic() - t0) < duration:
            observer.spin_for(0.02)
            while pending and t >= pending[0].at:
                event = pending.pop(0)
                if event.action == "kill":  # not waiting for the exit: keep scoring
                    pipeline.kill(event.node, timeout=None)
                else:
                    pipeline.restart(event.node)
                reactions.append({**asdict(event), "monotonic": time.monotonic()})
                events_text.append(f"{event.action} {event.node}")
            if t >= next_row:
                table.row(t, ", ".join(events_text))
                events_text, next_row = [], next_row + 1.0
            if browser is not None and t >= duration - 1.0:
                browser.screenshot(screenshot)
                emit(f"dashboard screenshot: {screenshot}")
                browser = None
        pipeline.interrupt("player")
        monitor.drain(observer, 10.0, pipeline)
        pipeline.check()
    for r in reactions:  # kill -> first frame that carries the dead device's surrogate
        device, at = _device_of(r["node"]), r.pop("monotonic")
        first = (monitor.first_arrival_with_surrogate("modifier", device, at)
                 if r["action"] == "kill" and device is not None else None)
        r["reaction_s"] = None if first is None else first - at
    report = {
        "duration_s": duration, "rate_hz": rate_hz, "num_cameras": num_cameras,
        "model_path": _relative(model_path), "config": _relative(config),
        "source": "dataset player" if bag is None else f"bag {_relative(bag)}",
        "schedule": [asdict(e) for e in schedule], "events": reactions,
        "streams": {name: score.summary() for name, score in monitor.scores.items()},
    }
    _write_report(out_dir, report, table.rows)
    return report


def _relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when below it (no machine paths in reports)."""
    try:
        return os.fspath(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(path)


def _device_of(node: str) -> int | None:
    index = node.removeprefix("camera_")
    return int(index) if index != node and index.isdigit() else None


def _write_report(out_dir: Path, report: dict, rows: list[dict]) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out_dir / "live.csv").open("w") as fh:
        fh.write(",".join(rows[0]) + "\n" if rows else "")
        for row in rows:
            fh.write(",".join("" if v is None else str(v) for v in row.values()) + "\n")
    (out_dir / "report.md").write_text(markdown_report(report))


def markdown_report(report: dict) -> str:
    """The demo's report as Markdown: accuracy per failed set with and without the Modifier."""
    mod, nomod = report["streams"]["modifier"], report["streams"]["no_modifier"]
    lines = [
        f"# Live demo: {report['num_cameras']} cameras at {report['rate_hz']:g} Hz, "
        f"{report['duration_s']:g} s",
        "",
        f"Model `{report['model_path']}`, config `{report['config']}`, frames from the "
        f"{report['source']}.",
        "",
        "| failed devices | frames | accuracy with Modifier | accuracy without |",
        "|---|---|---|---|",
    ]
    keys = list(dict.fromkeys([*mod["accuracy_by_failed_set"], *nomod["accuracy_by_failed_set"]]))
    for key in keys:
        a, b = mod["accuracy_by_failed_set"].get(key), nomod["accuracy_by_failed_set"].get(key)
        frames = (a or b)["frames"]
        lines.append(f"| {key} | {frames} | {_pct(a and a['accuracy']).strip()} | "
                     f"{_pct(b and b['accuracy']).strip()} |")
    lines.append(f"| all | {mod['scored_frames']} | {_pct(mod['accuracy']).strip()} | "
                 f"{_pct(nomod['accuracy']).strip()} |")
    lat = mod["latency_s"]
    lines += [
        "",
        f"Frames labelled {mod['labelled_frames']}, fused {mod['fused_frames']}, lost "
        f"{mod['missing']}, duplicated {mod['duplicates']}; frames with a surrogate "
        f"{mod['frames_with_surrogate']}.",
        "",
        "Latency, image stamp to fused publish: "
        + ("-" if lat["p50"] is None else
           f"p50 {1e3 * lat['p50']:.1f} ms, p99 {1e3 * lat['p99']:.1f} ms, "
           f"max {1e3 * lat['max']:.1f} ms."),
        "",
        "| event | node | at (s) | first surrogate frame after (s) |",
        "|---|---|---|---|",
    ]
    for e in report["events"]:
        reaction = "-" if e.get("reaction_s") is None else f"{e['reaction_s']:.3f}"
        lines.append(f"| {e['action']} | {e['node']} | {e['at']:g} | {reaction} |")
    return "\n".join(lines) + "\n"

