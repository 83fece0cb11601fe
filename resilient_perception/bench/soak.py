"""Soak with chaos: the whole pipeline for minutes while its processes are killed and frozen.

Processes: the dataset player (looping the split at ``rate_hz``), six camera nodes, the
fusion node and the recorder (writing a bag of the outputs). A schedule in the demo's
format (:func:`~.live_demo.parse_schedule`, with the actions ``kill`` (-9), ``restart``,
``stop`` (SIGSTOP) and ``cont`` (SIGCONT)) hits cameras and the fusion node itself; by
default :func:`soak_schedule` repeats a one-minute cycle. Every second every process's
resident memory, CPU and open file descriptors are sampled (psutil), and the fused stream
is scored against the player's labels with the demo's
:class:`~..harness.stream_monitor.StreamMonitor` (no second scorer).

What the report says (``report.json``, ``report.md``, ``samples.csv``, ``latency.csv``,
``soak.png``):

* labelled frames lost (never fused) or duplicated (fused twice) outside every event's
  reaction window (target 0). A window starts :data:`IN_FLIGHT_S` before the event (frames
  in flight) and ends :data:`REACTION_S` after it; a ``stop`` lasts until its ``cont``; a
  kill of the fusion node lasts until its restarted instance fuses complete frames again,
  and at least until :data:`FUSION_RESTART_BOUND_S` after it is active (its output
  publisher appears on the graph): how soon it fuses them is the restart's own target
  below, so a slow restart is counted there, not again as frames lost outside a window;
* for a camera's kill or stop, how many of the frames stamped while it was down carry its
  surrogate (all of them, when the Modifier is on);
* reaction times: kill/stop of a camera to the first frame with its surrogate (and how long
  the fusion process reported itself stalled meanwhile, ``own_stall_s`` on its
  ``/diagnostics``), restart/cont to the first frame with it live again, fusion restart to
  active, to all classifier heads known again (its ``/diagnostics``) and to the first
  complete frame;
* memory growth and file-descriptor growth per node (target < 5% and 0), measured on each
  node's process alive at the end from :func:`warmup_s` into the run or 60 s after that
  process started, whichever is later (a restarted process warms up again), between the
  medians of the first and the last 30 s of that span (a third of it when shorter; spans
  under 45 s are not measured). The FD count is the steady one (the median), as a leaked
  descriptor stays open: a descriptor open for a moment (a module loaded, a DDS probe) is
  not a leak, and with one-second samples a maximum would count it in one run of many.
  The peak is reported beside it, and the descriptors open at the end that were not at the
  start are named (``/proc/<pid>/fd``), so a growth says what grew;
* how often the fusion node reported a second publisher or writer on a device's topic
  (after a camera's kill -9 its dead endpoints stay in the graph for a few seconds), and a
  camera it did not hear although DDS showed it (``unheard_publishers``: the node is not
  receiving from it), with when it first and last said so;
* a plot of memory and latency over time with the events marked (:func:`plot_report`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import psutil
from diagnostic_msgs.msg import DiagnosticArray

from ..commands.common import write_csv, write_json
from ..harness.pipeline import (
    NodeSpec,
    Observer,
    Pipeline,
    PipelineError,
    pipeline_nodes,
    transport_env,
)
from ..harness.stream_monitor import StreamMonitor
from ..perception.stream_score import StreamScore
from ..ros.topics import DIAGNOSTICS_TOPIC, FUSED_TOPIC, FUSION_ASSEMBLY_STATUS
from .live_demo import FailureEvent, parse_schedule

__all__ = ["SOAK_ACTIONS", "markdown_report", "parse_soak_schedule", "plot_report", "run_soak",
           "soak_nodes", "soak_schedule", "stalled_between", "warmup_s"]

SOAK_ACTIONS = ("kill", "restart", "stop", "cont")
IN_FLIGHT_S = 0.5  # frames stamped this long before an event may still be in flight
REACTION_S = 1.0  # the liveliness lease: by then the fusion node no longer waits for a device
STALL_NOTED_S = 0.25  # the fusion node's default stall_threshold: shorter gaps are not stalls
FUSION_RESTART_BOUND_S = 2.0  # a restarted fusion node fuses complete frames within this
INSTANCE_WARMUP_S = 60.0  # a (re)started process's own warm-up before its memory counts
EDGE_S = 30.0  # RSS and FD medians over the first and last this-many seconds ...
MIN_SPAN_S = 45.0  # ... or a third of the span when shorter; shorter spans are not measured
GROWTH_LIMIT = 0.05
CYCLE_S = 60.0
# One cycle of the default schedule: (offset s, action, node); {a}, {b} are the cycle's
# cameras. The fusion node's kill/restart runs in every FUSION_RESTART_EVERY-th cycle only,
# so its last process lives long enough for its memory to be measured.
_CYCLE = ((2.0, "kill", "fusion"), (3.0, "restart", "fusion"),
          (15.0, "kill", "{a}"), (21.0, "restart", "{a}"),
          (30.0, "stop", "{b}"), (32.0, "cont", "{b}"),
          (42.0, "stop", "fusion"), (43.0, "cont", "fusion"))
FUSION_RESTART_EVERY = 10
SPARED_CAMERA = 5  # never hit: one camera process that lives the whole run


def warmup_s(minutes: float) -> float:
    """The run's warm-up before memory counts: 5 minutes, or 1 for runs under 10 minutes."""
    return 300.0 if minutes >= 10 else 60.0


def soak_schedule(minutes: float, num_cameras: int = 6) -> tuple[FailureEvent, ...]:
    """The default chaos: one cycle per minute, cameras taking turns (one is spared).

    Each cycle kills -9 one camera and restarts it 6 s later, freezes another for 2 s
    (SIGSTOP/SIGCONT) and freezes the fusion node for 1 s; every
    :data:`FUSION_RESTART_EVERY`-th cycle (the first included) also kills -9 the fusion
    node and restarts it. Nothing happens in the last 10 s, so the run ends settled.
    """
    victims = [i for i in range(num_cameras) if i != SPARED_CAMERA] or [0]
    events, end = [], minutes * 60.0 - 10.0
    for cycle in range(int(np.ceil(minutes * 60.0 / CYCLE_S))):
        a, b = victims[cycle % len(victims)], victims[(cycle + 2) % len(victims)]
        for offset, action, node in _CYCLE:
            at = cycle * CYCLE_S + offset
            if node == "fusion" and action in ("kill", "restart") and \
                    cycle % FUSION_RESTART_EVERY:
                continue
            if at < end:
                events.append(FailureEvent(at, action, node.format(a=f"camera_{a}",
                                                                   b=f"camera_{b}")))
    return tuple(events)


def parse_soak_schedule(text: str) -> tuple[FailureEvent, ...]:
    """The demo's ``SECONDS:ACTION:NODE,...`` with the soak's actions (:data:`SOAK_ACTIONS`)."""
    return parse_schedule(text, SOAK_ACTIONS)


def soak_nodes(model_path: str, num_cameras: int, rate_hz: float, bag: Path,
               fusion_transport: str = "shm") -> list[NodeSpec]:
    """Fusion, cameras and the looping player (:func:`pipeline_nodes`) plus the recorder.

    The fusion node takes its samples over ``fusion_transport`` (:func:`transport_env`):
    shared memory by default, as the pipeline deploys it.
    """
    nodes = []
    for spec in pipeline_nodes(num_cameras, model_path=model_path):
        if spec.name == "player":
            spec = NodeSpec("player", spec.executable, {
                **spec.parameters, "rate_hz": rate_hz, "count": 0, "loop": True,
                "wait_for_label_subscribers": 1})
        elif spec.name == "fusion":
            spec = replace(spec, env={**spec.env, **transport_env(fusion_transport)})
        nodes.append(spec)
    nodes.insert(1, NodeSpec("recorder", "recorder_node", {
        "bag_path": os.fspath(bag), "num_devices": num_cameras}))
    return nodes


def _fd_targets(pid: int) -> frozenset[str]:
    """What each open descriptor of ``pid`` points to (empty where ``/proc`` is not)."""
    folder = Path(f"/proc/{pid}/fd")
    targets = set()
    with contextlib.suppress(OSError):
        for fd in folder.iterdir():
            with contextlib.suppress(OSError):
                targets.add(os.readlink(fd))
    return frozenset(targets)


class _Sampler:
    """Every node's RSS, CPU, FDs and threads, once per call (``psutil``, by current pid).

    ``fd_targets[pid]`` keeps ``(t, targets)`` each time a process's descriptor count
    changes, to name what was opened.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.rows: list[dict] = []
        self.fd_targets: dict[int, list[tuple[float, frozenset[str]]]] = {}
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, t: float) -> None:
        for name in self.pipeline.names:
            pid = self.pipeline.pid(name)
            if pid is None or not self.pipeline.running(name):
                continue
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only starts the measurement
                with proc.oneshot():
                    self.rows.append({
                        "t": round(t, 2), "node": name, "pid": pid,
                        "rss_mb": round(proc.memory_info().rss / 2**20, 3),
                        "cpu_percent": proc.cpu_percent(None), "fds": proc.num_fds(),
                        "threads": proc.num_threads(), "status": proc.status()})
                changes = self.fd_targets.setdefault(pid, [])
                if not changes or len(changes[-1][1]) != self.rows[-1]["fds"]:
                    changes.append((round(t, 2), _fd_targets(pid)))
            except psutil.Error:  # exited between the check and the sample
                self._procs.pop(pid, None)


class _FusionWatch:
    """When a restarted fusion node is active again and knows every classifier head.

    Active: a new publisher (endpoint gid) appears on the fused topic; a killed node's
    endpoint stays in the graph until DDS drops it, so the count alone would not tell.
    Heads: its first ``/diagnostics`` with every head known (the old process is dead, so
    any after the restart are the new one's).
    """

    def __init__(self, observer: Observer, num_devices: int) -> None:
        self.observer, self.n = observer, num_devices
        self.pending: dict | None = None  # the restart waiting for its publisher
        self.awaiting_heads: dict | None = None  # the restart waiting for every head
        self.counters: dict[str, str] = {}  # the fusion node's newest frame-assembly status
        # (arrival, own_stall_s): the fusion process's stalled seconds so far, per /diagnostics
        self.stall_totals: list[tuple[float, float]] = []
        # device -> diagnostics messages reporting a second publisher or writer, and the last
        self.second_writer: dict[str, dict] = {}
        # device -> diagnostics messages saying the fusion node does not hear its camera
        # (unheard_publishers): their count, the first's and the last's arrival, the last
        self.unheard: dict[str, dict] = {}
        observer.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                          self._on_diagnostics, 50)

    def _gids(self) -> set[tuple[int, ...]]:
        return {tuple(info.endpoint_gid)
                for info in self.observer.node.get_publishers_info_by_topic(FUSED_TOPIC)}

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if values.get("second_writer"):
                entry = self.second_writer.setdefault(status.hardware_id, {"reports": 0})
                entry["reports"] += 1
                entry["last"] = values["second_writer"]
            if values.get("unheard_publishers", "0") != "0":
                entry = self.unheard.setdefault(status.hardware_id,
                                                {"reports": 0, "first": time.monotonic()})
                entry["reports"] += 1
                entry["last"], entry["message"] = time.monotonic(), status.message
            if status.name.endswith(f": {FUSION_ASSEMBLY_STATUS}"):
                self.counters = {kv.key: kv.value for kv in status.values}
                if "own_stall_s" in self.counters:
                    self.stall_totals.append((time.monotonic(),
                                              float(self.counters["own_stall_s"])))
                if self.awaiting_heads is not None and \
                        self.counters.get("heads_known") == str(self.n):
                    self.awaiting_heads["heads_monotonic"] = time.monotonic()
                    self.awaiting_heads = None

    def restarting(self, record: dict) -> None:
        """Before the restart: remember the graph's publishers, watch for a new one."""
        self.pending = self.awaiting_heads = record
        record["known_gids"] = self._gids()

    def poll(self) -> None:
        """Notice the restarted node's output publisher (call often while one is pending)."""
        if self.pending is not None and self._gids() - self.pending["known_gids"]:
            self.pending["active_monotonic"] = time.monotonic()
            self.pending = None


def stalled_between(totals: Sequence[tuple[float, float]], start: float,
                    end: float) -> float | None:
    """Seconds the fusion process reported itself stalled around ``[start, end]``.

    ``totals`` are ``(arrival, own_stall_s)`` of its ``/diagnostics`` in arrival order
    (monotonic s). Counted from its last report at or before ``start`` to its first at or
    after ``end``, so a stall shortly before ``start`` may be counted too; a total that fell
    is a restarted process counting from 0. None without a report on each side.
    """
    before = [i for i, (t, _) in enumerate(totals) if t <= start]
    after = [i for i, (t, _) in enumerate(totals) if t >= end]
    if not before or not after:
        return None
    seen = [total for _, total in totals[before[-1]:after[0] + 1]]
    return round(sum(b - a if b >= a else b for a, b in zip(seen[:-1], seen[1:], strict=True)), 3)


def _apply(pipeline: Pipeline, event: FailureEvent) -> None:
    if event.action == "kill":
        pipeline.kill(event.node)
    elif event.action == "restart":
        pipeline.restart(event.node)
    else:
        pipeline.signal(event.node, signal.SIGSTOP if event.action == "stop" else signal.SIGCONT,
                        timeout=None)


def run_soak(
    config: Path,
    model_path: str,
    out_dir: Path,
    log_dir: Path,
    minutes: float = 30.0,
    rate_hz: float = 30.0,
    schedule: Sequence[FailureEvent] | None = None,
    num_cameras: int = 6,
    emit: Callable[[str], None] = print,
    progress_every: float = 30.0,
    fusion_transport: str = "shm",
) -> dict:
    """Run the pipeline for ``minutes`` under ``schedule`` (default :func:`soak_schedule`).

    Args:
        config: params file (``config/mnist_6cam.yaml``).
        model_path: camera models, e.g. ``runs/soak/onnx/device_{}.onnx``.
        out_dir: gets ``report.json``, ``report.md``, ``samples.csv``, ``latency.csv`` and
            ``soak.png``.
        log_dir: node logs and the recorder's bag (replaced if there).
        minutes: length of the run, from the first labelled frame.
        rate_hz: player frame rate.
        schedule: chaos events (times in s from the first labelled frame).
        num_cameras: cameras (devices).
        emit: where progress lines go (one every ``progress_every`` s).
        progress_every: seconds between progress lines.
        fusion_transport: ``udp`` or ``shm``, how the fusion node takes its samples
            (:func:`soak_nodes`).

    Returns:
        The report (also in ``out_dir/report.json``); ``report["passed"]`` says whether
        every target was met.
    """
    duration = minutes * 60.0
    schedule = tuple(soak_schedule(minutes, num_cameras) if schedule is None else schedule)
    log_dir.mkdir(parents=True, exist_ok=True)
    bag = log_dir / "bag"
    shutil.rmtree(bag, ignore_errors=True)  # the recorder refuses an existing bag folder
    nodes = soak_nodes(model_path, num_cameras, rate_hz, bag, fusion_transport)
    unknown = sorted({e.node for e in schedule} - {n.name for n in nodes})
    if unknown:
        raise ValueError(f"schedule names unknown nodes {unknown}; nodes are "
                         f"{[n.name for n in nodes]}")
    events: list[dict] = []
    aborted = None
    with (Observer(name="soak_monitor") as observer,
          Pipeline(nodes, config, log_dir=log_dir) as pipeline):
        monitor = StreamMonitor(observer, {"fused": FUSED_TOPIC}, num_cameras)
        score = monitor.scores["fused"]
        watch = _FusionWatch(observer, num_cameras)
        sampler = _Sampler(pipeline)
        emit(f"starting {len(nodes)} processes (logs in {log_dir}) ...")
        pipeline.start_ready(observer, timeout=120.0)
        observer.spin_until(lambda: monitor.labels() > 0, "the first labelled frame", 60.0,
                            pipeline)
        t0, wall0 = time.monotonic(), time.time()
        emit(f"soaking {minutes:g} min at {rate_hz:g} Hz, {len(schedule)} events")
        pending, next_sample, next_progress = list(schedule), 0.0, progress_every
        try:
            while (t := time.monotonic() - t0) < duration:
                observer.spin_for(0.02)
                watch.poll()
                while pending and t >= pending[0].at:
                    event = pending.pop(0)
                    record = {**asdict(event), "monotonic": time.monotonic()}
                    if event.node == "fusion" and event.action == "restart":
                        watch.restarting(record)
                    _apply(pipeline, event)
                    events.append(record)
                if t >= next_sample:
                    sampler.sample(t)
                    pipeline.check()
                    next_sample += 1.0
                if t >= next_progress:
                    emit(_progress(t, score, sampler, events, time.time() - 2.0))
                    next_progress += progress_every
        except PipelineError as exc:  # a node died on its own: the finding, reported
            aborted = str(exc)
            emit(f"aborted: {aborted}")
        with contextlib.suppress(PipelineError):
            pipeline.interrupt("player")
        with contextlib.suppress(TimeoutError, PipelineError):
            monitor.drain(observer, 10.0)
        ended = time.monotonic() - t0
    report = _report(monitor, watch, sampler, events, t0, wall0, ended, minutes,
                     rate_hz, schedule)
    report["aborted"] = aborted
    report["fusion_transport"] = fusion_transport
    report["passed"] = aborted is None and all(c["passed"] for c in report["criteria"].values())
    _write(out_dir, report, sampler.rows, _latency_rows(monitor, t0))
    return report


def _progress(t: float, score, sampler: _Sampler, events: list[dict], settled: float) -> str:
    """One progress line: frames, frames missing so far, memory and FDs of the newest sample."""
    cutoff = int(settled * 1e9)  # frames younger than this may still be in flight
    missing = sum(1 for s in score.unfused() if s < cutoff)
    newest = sampler.rows[-1]["t"] if sampler.rows else None
    now = [r for r in sampler.rows if r["t"] == newest]
    last = events[-1] if events else None
    return (f"{t:7.0f} s  labelled {len(score.truth):6d}  fused {len(score.fused):6d}  "
            f"missing {missing:4d}  duplicates {score.duplicates}  "
            f"RSS {sum(r['rss_mb'] for r in now):7.1f} MB  FDs {sum(r['fds'] for r in now):4d}"
            + (f"  last event: {last['action']} {last['node']} at {last['at']:g} s"
               if last else ""))


def _windows(events: list[dict], ended: float) -> None:
    """Each event's reaction window ``[start, end]`` (monotonic s) into its record."""
    for i, e in enumerate(events):
        end = e["monotonic"] + REACTION_S
        if e["action"] == "stop":
            cont = next((c for c in events[i + 1:] if c["node"] == e["node"]
                         and c["action"] == "cont"), None)
            end = (cont["monotonic"] if cont else ended) + REACTION_S
        elif e["node"] == "fusion" and e["action"] in ("kill", "restart"):
            restart = e if e["action"] == "restart" else next(
                (r for r in events[i + 1:] if r["node"] == "fusion"
                 and r["action"] == "restart"), None)
            active = restart and restart.get("active_monotonic")
            # Until the restarted node fuses complete frames again, and at least the bound:
            # a slower return is the restart target's miss, not a loss outside any event.
            complete = restart and restart.get("complete_monotonic")
            end = (max(active + FUSION_RESTART_BOUND_S, complete or 0.0) if active
                   else ended)
        e["window"] = (e["monotonic"] - IN_FLIGHT_S, end)


def _reactions(monitor: StreamMonitor, watch: _FusionWatch, events: list[dict]) -> None:
    """Reaction times (s) of every event, into its record.

    A camera's kill or stop also gets the seconds the fusion process itself was stalled
    meanwhile (``fusion_stalled_s``): after a peer's ``kill -9`` Fast DDS can hold the
    fusion node in a ``publish()`` for up to a second, and the frames wait that long
    whatever the node does.
    """
    n = watch.n
    for e in events:
        at, node = e["monotonic"], e["node"]
        device = int(node.removeprefix("camera_")) if node.startswith("camera_") else None
        if device is not None and e["action"] in ("kill", "stop"):
            first = monitor.first_arrival_with_surrogate("fused", device, at)
            e["reaction"] = "first frame with its surrogate"
            e["fusion_stalled_s"] = (None if first is None
                                     else stalled_between(watch.stall_totals, at, first))
        elif device is not None:
            first = monitor.first_arrival("fused", at, lambda r, d=device: d in r.live)
            e["reaction"] = "first frame with it live again"
        elif e["action"] == "cont":
            first = monitor.first_arrival("fused", at, lambda r: True)
            e["reaction"] = "first fused frame after"
        elif e["action"] == "restart":
            active = e.get("active_monotonic")
            e["reaction"] = "active (new output publisher) -> first complete frame"
            e["active_after_s"] = None if active is None else round(active - at, 3)
            heads = e.get("heads_monotonic")
            e["heads_known_after_s"] = None if heads is None else round(heads - at, 3)
            first = None if active is None else monitor.first_arrival(
                "fused", active, lambda r: len(r.live) == n)
            e["complete_monotonic"] = first
            at = active if active is not None else at
        else:
            first, e["reaction"] = None, "-"
        e["reaction_s"] = None if first is None else round(first - at, 4)


def _replacements(score: StreamScore, events: list[dict], to_run: float,
                  ended: float) -> None:
    """Per camera kill or stop: frames stamped while it was down, and those with its surrogate.

    Into the event's record. Down: from :data:`IN_FLIGHT_S` after the event (frames stamped
    before may have been predicted) to the camera's next event (its restart or cont), on
    the source stamps, so however late the frames were fused.
    """
    for i, e in enumerate(events):
        if not (e["node"].startswith("camera_") and e["action"] in ("kill", "stop")):
            continue
        device = int(e["node"].removeprefix("camera_"))
        back = next((b["monotonic"] for b in events[i + 1:] if b["node"] == e["node"]), ended)
        down = [r for stamp, r in score.fused.items()
                if e["monotonic"] + IN_FLIGHT_S <= stamp * 1e-9 + to_run < back]
        e["frames_while_down"] = len(down)
        e["with_its_surrogate"] = sum(device in r.surrogates for r in down)


def _targets_at(changes: list[tuple[float, frozenset[str]]], t: float) -> frozenset[str]:
    """The descriptors open at ``t``: the last change recorded at or before it."""
    return next((targets for at, targets in reversed(changes) if at <= t), frozenset())


def _growth(rows: list[dict], start_s: float,
            fd_targets: dict[int, list[tuple[float, frozenset[str]]]]) -> dict:
    """Memory and FD growth of each node's last process, CPU over all its processes.

    Measured from ``start_s`` or the process's own warm-up, whichever is later, to the
    last sample; ``fd_targets`` (:attr:`_Sampler.fd_targets`) names the descriptors opened.
    """
    out = {}
    for node in dict.fromkeys(r["node"] for r in rows):
        mine = [r for r in rows if r["node"] == node]
        proc = [r for r in mine if r["pid"] == mine[-1]["pid"]]
        start = max(start_s, proc[0]["t"] + INSTANCE_WARMUP_S)
        span = [r for r in proc if r["t"] >= start]
        entry = {"processes": len(dict.fromkeys(r["pid"] for r in mine)),
                 "cpu_percent_mean": round(float(np.mean([r["cpu_percent"] for r in mine])), 1),
                 "rss_mb_last": proc[-1]["rss_mb"], "fds_last": proc[-1]["fds"],
                 "measured_from_s": round(start, 1), "rss_growth": None, "fd_growth": None}
        length = span[-1]["t"] - span[0]["t"] if span else 0.0
        if length >= MIN_SPAN_S:
            edge = min(EDGE_S, length / 3)
            first = [r for r in span if r["t"] <= span[0]["t"] + edge]
            last = [r for r in span if r["t"] >= span[-1]["t"] - edge]
            before = float(np.median([r["rss_mb"] for r in first]))
            after = float(np.median([r["rss_mb"] for r in last]))
            changes = fd_targets.get(proc[-1]["pid"], [])
            opened = _targets_at(changes, span[-1]["t"]) - _targets_at(changes, span[0]["t"])
            entry.update(rss_mb_start=round(before, 2), rss_mb_end=round(after, 2),
                         rss_growth=round((after - before) / before, 4),
                         fds_start=int(np.median([r["fds"] for r in first])),
                         fds_end=int(np.median([r["fds"] for r in last])),
                         fds_peak=max(r["fds"] for r in span), fds_opened=sorted(opened))
            entry["fd_growth"] = entry["fds_end"] - entry["fds_start"]
        out[node] = entry
    return out


def _report(monitor: StreamMonitor, watch: _FusionWatch, sampler: _Sampler,
            events: list[dict], t0: float, wall0: float, ended: float, minutes: float,
            rate_hz: float, schedule: Sequence[FailureEvent]) -> dict:
    score, n = monitor.scores["fused"], watch.n
    _reactions(monitor, watch, events)
    _windows(events, t0 + ended)
    to_run = t0 - wall0  # stamps are wall-clock ns; windows are monotonic s
    _replacements(score, events, to_run, t0 + ended)

    def outside(stamps: list[int]) -> list[int]:
        return sorted(s for s in stamps if not any(
            e["window"][0] <= s * 1e-9 + to_run <= e["window"][1] for e in events))

    lost = score.unfused()
    lost_outside, dup_outside = outside(lost), outside(score.duplicate_stamps)
    for e in events:
        lo, hi = e["window"]
        e["lost_in_window"] = sum(1 for s in lost if lo <= s * 1e-9 + to_run <= hi)
        e["window_s"] = [round(lo - t0, 3), round(hi - t0, 3)]
        for key in ("active_monotonic", "heads_monotonic", "complete_monotonic", "known_gids",
                    "monotonic", "window"):
            e.pop(key, None)
    warm = min(warmup_s(minutes), ended)
    processes = _growth(sampler.rows, warm, sampler.fd_targets)
    measured = {k: v for k, v in processes.items() if v["rss_growth"] is not None}
    restarts = [e for e in events if e["node"] == "fusion" and e["action"] == "restart"]
    worst_rss = max((v["rss_growth"] for v in measured.values()), default=None)
    worst_fd = max((v["fd_growth"] for v in measured.values()), default=None)
    restart_s = [e["reaction_s"] for e in restarts]
    summary = score.summary()
    return {
        "minutes": minutes, "ran_s": round(ended, 1), "rate_hz": rate_hz, "num_cameras": n,
        "warmup_s": warm, "schedule": [asdict(e) for e in schedule], "events": events,
        "frames": {
            "labelled": summary["labelled_frames"], "fused": summary["fused_frames"],
            "lost": len(lost), "lost_outside_windows": len(lost_outside),
            "lost_outside_stamps": lost_outside[:20], "duplicated": score.duplicates,
            "duplicated_outside_windows": len(dup_outside),
            "duplicated_outside_stamps": dup_outside[:20],
            "frames_with_surrogate": summary["frames_with_surrogate"],
            "accuracy": summary["accuracy"], "latency_s": summary["latency_s"]},
        "processes": processes,
        "fusion_counters_at_end": watch.counters,
        # a killed camera's endpoints stay in the graph until DDS drops them: expected here
        "second_writer_reports": watch.second_writer,
        # a camera the fusion node does not hear although DDS shows it (not receiving)
        "unheard_reports": {
            device: {"reports": e["reports"], "first_s": round(e["first"] - t0, 1),
                     "last_s": round(e["last"] - t0, 1), "last": e["message"]}
            for device, e in watch.unheard.items()},
        "criteria": {
            "lost_outside_windows": {"value": len(lost_outside), "target": "0",
                                     "passed": not lost_outside},
            "duplicated_outside_windows": {"value": len(dup_outside), "target": "0",
                                           "passed": not dup_outside},
            "max_rss_growth": {"value": worst_rss, "target": f"< {GROWTH_LIMIT:.0%}",
                               "passed": worst_rss is not None and worst_rss < GROWTH_LIMIT},
            "max_fd_growth": {"value": worst_fd, "target": "0",
                              "passed": worst_fd is not None and worst_fd <= 0},
            "fusion_restart_to_complete_frames_s": {
                "value": max(restart_s, default=None) if None not in restart_s else None,
                "target": f"<= {FUSION_RESTART_BOUND_S:g}",
                "passed": all(r is not None and r <= FUSION_RESTART_BOUND_S
                              for r in restart_s)},
        },
    }


def _latency_rows(monitor: StreamMonitor, t0: float) -> list[dict]:
    """Per second of the run (by arrival): frames fused, with a surrogate, latency."""
    score = monitor.scores["fused"]
    by_second: dict[int, list] = {}
    for stamp, arrived in monitor.arrivals["fused"].items():
        by_second.setdefault(int(arrived - t0), []).append(score.fused[stamp])
    rows = []
    for second in sorted(by_second):
        records = by_second[second]
        ms = 1e3 * np.asarray([r.latency for r in records])
        rows.append({"t": second, "frames": len(records),
                     "with_surrogate": sum(1 for r in records if r.surrogates),
                     "latency_ms_p50": round(float(np.percentile(ms, 50)), 2),
                     "latency_ms_p99": round(float(np.percentile(ms, 99)), 2),
                     "latency_ms_max": round(float(ms.max()), 2)})
    return rows


def _write(out_dir: Path, report: dict, rows: list[dict], latency: list[dict]) -> None:
    write_json(out_dir / "report.json", report)
    if rows:
        write_csv(out_dir / "samples.csv", rows)
    if latency:
        write_csv(out_dir / "latency.csv", latency)
    (out_dir / "report.md").write_text(markdown_report(report))
    plot_report(out_dir)


def plot_report(out_dir: Path) -> Path:
    """Draw ``soak.png`` from ``report.json``, ``samples.csv`` and ``latency.csv`` in ``out_dir``.

    Memory per node (one line per process: a restart starts a new line) and latency per
    second over the run, the events as vertical lines. Reads the raw files, so a committed
    report can be redrawn.
    """
    import csv
    import json

    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    report = json.loads((out_dir / "report.json").read_text())

    def read(name: str) -> list[dict]:
        path = out_dir / name
        return list(csv.DictReader(path.open())) if path.exists() else []

    rows, latency = read("samples.csv"), read("latency.csv")
    fig, (mem, lat) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    colours = dict(zip(dict.fromkeys(r["node"] for r in rows),
                       plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3, strict=False))
    for (node, pid) in dict.fromkeys((r["node"], r["pid"]) for r in rows):
        mine = [r for r in rows if r["node"] == node and r["pid"] == pid]
        first = pid == next(r["pid"] for r in rows if r["node"] == node)
        mem.plot([float(r["t"]) / 60 for r in mine], [float(r["rss_mb"]) for r in mine],
                 lw=0.8, color=colours[node], label=node if first else None)
    mem.set_ylabel("RSS, MB")
    mem.legend(fontsize=7, ncol=5, loc="lower right")
    mem.axvline(report["warmup_s"] / 60, color="k", ls=":", lw=0.8)
    if latency:
        t = [float(r["t"]) / 60 for r in latency]
        for q in ("p50", "p99"):
            lat.plot(t, [float(r[f"latency_ms_{q}"]) for r in latency], lw=0.6, label=q)
        lat.set_yscale("log")
        lat.legend(fontsize=7)
    lat.set_ylabel("latency per second, ms")
    lat.set_xlabel("minutes from the first labelled frame (dotted: end of the warm-up)")
    event_colours = {"kill": "red", "restart": "green", "stop": "orange", "cont": "orange"}
    for e in report["events"]:
        for ax in (mem, lat):
            ax.axvline(e["at"] / 60, color=event_colours[e["action"]],
                       lw=1.2 if e["node"] == "fusion" else 0.4, alpha=0.5)
    fig.suptitle(f"Soak: {report['num_cameras']} cameras at {report['rate_hz']:g} Hz, "
                 f"{report['ran_s'] / 60:.1f} min (red kill, green restart, orange "
                 "stop/cont; thick: fusion node)", fontsize=9)
    fig.tight_layout()
    path = out_dir / "soak.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _camera_kill_summary(events: list[dict]) -> list[str]:
    """A paragraph on the camera kills' reactions and the fusion stalls among them."""
    kills = [e for e in events if e["action"] == "kill" and e["node"].startswith("camera_")
             and e.get("reaction_s") is not None]
    if not kills:
        return []
    reactions = np.array([e["reaction_s"] for e in kills])
    stalled = [e for e in kills if (e.get("fusion_stalled_s") or 0.0) >= STALL_NOTED_S]
    down = sum(e["frames_while_down"] for e in kills)
    replaced = sum(e["with_its_surrogate"] for e in kills)
    return [f"Camera kills: {len(kills)}; of the {down} frames stamped while a killed camera "
            f"was down, {replaced} carry its surrogate. Reaction (kill to the first frame "
            f"with its surrogate) median {np.median(reactions):.3f} s, max "
            f"{reactions.max():.3f} s; the fusion node reported itself stalled for "
            f"{STALL_NOTED_S:g} s or more in {len(stalled)} of them"
            + (" (reactions " + ", ".join(f"{e['reaction_s']:.3f}" for e in stalled) + " s)"
               if stalled else "") + ".", ""]


def _unheard_summary(unheard: dict[str, dict]) -> list[str]:
    """A line on the cameras the fusion node reported it did not hear (none: none)."""
    if not unheard:
        return ["The fusion node heard every camera DDS showed it (no `unheard_publishers`).",
                ""]
    return ["The fusion node reported cameras it did not hear although DDS showed them: "
            + "; ".join(f"{device} in {e['reports']} diagnostics from {e['first_s']:g} s to "
                        f"{e['last_s']:g} s" for device, e in sorted(unheard.items())) + ".",
            ""]


def markdown_report(report: dict) -> str:
    """The soak's report as Markdown: targets, frames, processes and every event."""
    f = report["frames"]
    lat = f["latency_s"]
    lines = [
        f"# Soak: {report['num_cameras']} cameras at {report['rate_hz']:g} Hz, "
        f"{report['ran_s'] / 60:.1f} min, {len(report['events'])} chaos events",
        "",
        f"The fusion node's samples over {report.get('fusion_transport', 'shm')}.",
        "",
        ("**All targets met.**" if report["passed"] else "**Targets missed.**")
        + (f" Aborted: {report['aborted']}" if report["aborted"] else ""),
        "",
        "| target | value | required |",
        "|---|---|---|",
    ]
    for name, c in report["criteria"].items():
        value = c["value"]
        value = (f"{100 * value:.2f}%" if name == "max_rss_growth" and value is not None
                 else "-" if value is None else f"{value:g}")
        lines.append(f"| {name.replace('_', ' ')} | {value} | {c['target']} |")
    lines += [
        "",
        f"Frames labelled {f['labelled']}, fused {f['fused']}, lost {f['lost']} "
        f"({f['lost_outside_windows']} outside the reaction windows), duplicated "
        f"{f['duplicated']} ({f['duplicated_outside_windows']} outside); with a surrogate "
        f"{f['frames_with_surrogate']}. Latency (image stamp to fused publish) "
        + ("-" if lat["p50"] is None else f"p50 {1e3 * lat['p50']:.1f} ms, p99 "
           f"{1e3 * lat['p99']:.1f} ms, max {1e3 * lat['max']:.0f} ms") + ".",
        "",
        *_camera_kill_summary(report["events"]),
        *_unheard_summary(report.get("unheard_reports", {})),
        f"Memory and FDs of each node's last process, from {report['warmup_s'] / 60:g} min "
        f"(or {INSTANCE_WARMUP_S:g} s after that process started) to the end; medians of the "
        f"first and last {EDGE_S:g} s (a third of the span when shorter; spans under "
        f"{MIN_SPAN_S:g} s are not measured), the FD peak over the span, and the descriptors "
        "open at its end that were not at its start:",
        "",
        "| node | processes | CPU % (mean) | from (s) | RSS start, MB | RSS end, MB | growth "
        "| FDs start | FDs end | FDs peak | opened |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for node, p in report["processes"].items():
        growth = "-" if p["rss_growth"] is None else f"{100 * p['rss_growth']:+.2f}%"
        lines.append(f"| {node} | {p['processes']} | {p['cpu_percent_mean']:.1f} | "
                     f"{p['measured_from_s']:g} | {p.get('rss_mb_start', '-')} | "
                     f"{p.get('rss_mb_end', '-')} | {growth} | {p.get('fds_start', '-')} | "
                     f"{p.get('fds_end', '-')} | {p.get('fds_peak', '-')} | "
                     f"{', '.join(p.get('fds_opened', [])) or '-'} |")
    lines += [
        "",
        "| at (s) | event | reaction | reaction (s) | window (s) | lost in window |",
        "|---|---|---|---|---|---|",
    ]
    for e in report["events"]:
        reaction = "-" if e.get("reaction_s") is None else f"{e['reaction_s']:.3f}"
        extra = ""
        if e.get("fusion_stalled_s"):
            extra = f" (the fusion node stalled {e['fusion_stalled_s']:.2f} s meanwhile)"
        if "active_after_s" in e:
            extra = (f" (active {_secs(e['active_after_s'])} s and all heads known "
                     f"{_secs(e['heads_known_after_s'])} s after the restart)")
        lines.append(f"| {e['at']:g} | {e['action']} {e['node']} | {e['reaction']}{extra} | "
                     f"{reaction} | {e['window_s'][0]:.1f} - {e['window_s'][1]:.1f} | "
                     f"{e['lost_in_window']} |")
    return "\n".join(lines) + "\n"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
