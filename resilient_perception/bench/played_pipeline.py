"""A live pipeline to benchmark: fusion and cameras started once, players started per play.

Each :meth:`PlayedPipeline.play` starts a player process of its own for a given rate and
frame count, so one running pipeline serves every phase of a benchmark; the stream monitor
scores the fused output against the labels of each play's window.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml
from diagnostic_msgs.msg import DiagnosticArray

from resilient_perception.harness.pipeline import NodeSpec, Observer, Pipeline, pipeline_nodes
from resilient_perception.harness.stream_monitor import StreamMonitor
from resilient_perception.ros.topics import (
    DIAGNOSTICS_TOPIC,
    FUSED_TOPIC,
    FUSION_ASSEMBLY_STATUS,
)

__all__ = ["PlayedPipeline", "fusion_diagnostics"]


def fusion_diagnostics(arrays: list[DiagnosticArray]) -> dict[str, str]:
    """The newest key-values of the fusion node's "frame assembly" status ({} if none)."""
    for array in reversed(arrays):
        for status in array.status:
            if status.name.endswith(f": {FUSION_ASSEMBLY_STATUS}"):
                return {kv.key: kv.value for kv in status.values}
    return {}


class PlayedPipeline:
    """The running pipeline (fusion + cameras) and helpers to play frames through it.

    ``one_process`` runs fusion and cameras in one ``perception_container`` process.
    """

    def __init__(self, config: Path, onnx_pattern: str, n_cameras: int, log_dir: Path,
                 one_process: bool = False) -> None:
        self.config, self.log_dir, self.n = config, log_dir, n_cameras
        # The config's `player` section is keyed by that node name; every play starts a
        # player of its own name, which gets the section's parameters (its warm-up above
        # all: without it a new player's first frames reach cameras not yet matched to it).
        sections = yaml.safe_load(Path(config).read_text()) or {}
        self.player_parameters = (sections.get("player") or {}).get("ros__parameters") or {}
        nodes = pipeline_nodes(n_cameras, player=False, model_path=onnx_pattern,
                               one_process=one_process)
        self.observer = Observer(name="benchmark_monitor")
        self.pipeline = Pipeline(nodes, config, log_dir=log_dir)
        self.monitor = StreamMonitor(self.observer, {"fused": FUSED_TOPIC}, n_cameras)
        self.score = self.monitor.scores["fused"]
        self.diagnostics = self.observer.collect(DiagnosticArray, DIAGNOSTICS_TOPIC)
        self._players = 0

    def play(self, rate_hz: float, count: int, during: Callable[[float], None] | None = None,
             label_subscribers: int = 1) -> tuple[int, int]:
        """Play ``count`` labelled frames at ``rate_hz``; return the stamp window (ns).

        ``during(t)`` is called about every 20 ms with the seconds since the first label.
        The player waits for ``label_subscribers`` on the label topic: this benchmark's
        monitor, plus any other node that reads labels (the dashboard), or an already
        running one would satisfy the wait before the monitor has matched the player and
        the monitor would miss the first labels.
        """
        self._players += 1
        name = f"player_{self._players}"
        player = Pipeline([NodeSpec(name, "player_node", {
            **self.player_parameters,
            "num_cameras": self.n, "rate_hz": rate_hz, "count": count, "on_end": "shutdown",
            "wait_for_label_subscribers": label_subscribers,
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
        """The fused stream's score over a stamp window of :meth:`play` (its summary)."""
        return self.score.window(*span).summary()

    def processes(self) -> dict[str, psutil.Process]:
        """The running pipeline processes by node name (players are not among them)."""
        return {name: psutil.Process(self.pipeline.pid(name))
                for name in self.pipeline.names if self.pipeline.running(name)}
