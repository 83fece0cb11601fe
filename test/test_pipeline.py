"""The pipeline launcher and the config files: command lines, parameters, and a live run.

The live run starts what ``launch/perception.launch.py`` starts (player, six camera nodes,
fusion node, each its own process, with ``config/mnist_6cam.yaml``) through
:class:`~resilient_perception.harness.pipeline.Pipeline` and checks every labelled frame comes
out of the fusion node, fused from all six devices, as the offline model computes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from test.conftest import ROOT, UDP_ONLY_ENV, domain_id, needs_data, require_ros

msgs = require_ros()

import rclpy  # noqa: E402

from resilient_perception.harness.pipeline import (  # noqa: E402
    NodeSpec,
    Observer,
    Pipeline,
    PipelineError,
    package_prefix,
)
from resilient_perception.ros.topics import (  # noqa: E402
    FUSED_TOPIC,
    LABEL_TOPIC,
    label_qos,
)

# The perception pipeline's params files (config/ also holds fleet descriptions).
CONFIGS = sorted(path for path in (ROOT / "config").glob("*.yaml")
                 if "ros__parameters" in path.read_text())
MNIST_CONFIG = ROOT / "config" / "mnist_6cam.yaml"
LIB = package_prefix() / "lib" / "resilient_perception"
COUNT = 30  # labelled frames of the live run
DOMAIN_ID = domain_id()

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not (LIB / "player_node").is_file(),
                       reason="nodes not installed: run scripts/setup.sh"),
]


@pytest.fixture(scope="module")
def checkpoint(briefly_trained_checkpoint) -> Path:
    return briefly_trained_checkpoint


def test_command_lines_are_the_launch_files(tmp_path):
    pipeline = Pipeline.from_config(MNIST_CONFIG, model_path="onnx/device_{}.onnx",
                                    log_dir=tmp_path,
                                    overrides={"player": {"count": 30}})
    assert pipeline.names == ["fusion", *(f"camera_{i}" for i in range(6)), "player"]
    assert pipeline.command("camera_2") == [
        str(LIB / "camera_node"), "--ros-args", "-r", "__node:=camera_2",
        "--params-file", str(MNIST_CONFIG), "--params-file", str(tmp_path / "camera_2.params.yaml"),
        "-r", "image_raw:=camera_2/image_raw", "-r", "prediction:=perception/device_2/prediction",
        "-r", "head:=perception/device_2/head"]
    camera = pipeline.nodes["camera_2"].parameters
    assert camera == {"device_id": 2, "image_reliability": "reliable", "max_image_wait": 0.0,
                      "model_path": str(Path("onnx/device_2.onnx").resolve())}
    assert pipeline.nodes["fusion"].parameters["num_devices"] == 6
    assert pipeline.nodes["player"].parameters == {
        "num_cameras": 6, "image_topic_format": "camera_{}/image_raw", "count": 30}


def test_bad_pipelines_are_rejected_with_the_reason(tmp_path):
    with pytest.raises(PipelineError, match=r"unknown nodes \['camera_9'\]"):
        Pipeline.from_config(MNIST_CONFIG, overrides={"camera_9": {"threads": 2}},
                             log_dir=tmp_path)
    with pytest.raises(PipelineError, match="params file not found"):
        Pipeline.from_config(tmp_path / "missing.yaml", log_dir=tmp_path)
    with pytest.raises(PipelineError, match="not found: build the package"):
        Pipeline([NodeSpec("x", "no_such_node")], log_dir=tmp_path)
    with pytest.raises(PipelineError, match="no node 'camera_7'"):
        Pipeline.from_config(MNIST_CONFIG, log_dir=tmp_path).kill("camera_7")


@pytest.mark.parametrize("config", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_parameters_are_declared_and_applied(config):
    """rcl parses the file, and every parameter in it is one its nodes declare and take."""
    from resilient_perception.ros.camera_node import CameraNode
    from resilient_perception.ros.fusion_node import FusionNode
    from resilient_perception.ros.player_node import PlayerNode

    sections = yaml.safe_load(config.read_text())
    assert set(sections) == {"/**", "fusion", "player"}
    context = rclpy.Context()
    context.init(args=["--ros-args", "--params-file", str(config)], domain_id=DOMAIN_ID)
    try:
        nodes = {"camera_0": CameraNode("camera_0", context=context),
                 "fusion": FusionNode("fusion", context=context),
                 "player": PlayerNode("player", context=context)}
        declared = {name: set(node.list_parameters([], 0).names) for name, node in nodes.items()}
        shared = sections["/**"]["ros__parameters"]
        assert set(shared) <= set().union(*declared.values())
        for name, node in nodes.items():
            own = sections.get(name, {}).get("ros__parameters", {})
            assert set(own) <= declared[name], f"{config.name}: {name} does not declare " \
                f"{sorted(set(own) - declared[name])}"
            for key, value in {**shared, **own}.items():
                if key in declared[name]:
                    assert node.get_parameter(key).value == value, (name, key)
        for node in nodes.values():
            node.destroy_node()
    finally:
        context.try_shutdown()


def stamp(msg) -> int:
    """A message's header stamp in ns (the player stamps frames with the system clock)."""
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@contextlib.contextmanager
def live_run(checkpoint: Path, log_dir: Path, count: int,
             env: dict[str, dict[str, str]] | None = None):
    """The MNIST pipeline playing ``count`` labelled frames: ``(pipeline, observer, labels,
    fused)``, the player started once the fusion node is ready; ``env`` per node name."""
    overrides = {"player": {"count": count, "on_end": "shutdown",
                            "wait_for_label_subscribers": 1}}
    with (Observer(domain_id=DOMAIN_ID) as observer,
          Pipeline.from_config(MNIST_CONFIG, model_path=checkpoint, overrides=overrides,
                               env=env, log_dir=log_dir, domain_id=DOMAIN_ID) as pipeline):
        labels = observer.collect(msgs.FrameLabel, LABEL_TOPIC, label_qos())
        fused = observer.collect(msgs.FusedPrediction, FUSED_TOPIC)
        pipeline.start_ready(observer, timeout=60.0)
        yield pipeline, observer, labels, fused


def wait_until_all_fused(pipeline: Pipeline, observer: Observer, labels: list, fused: list,
                         count: int) -> None:
    def missing() -> list[int]:
        seen = {stamp(m) for m in fused}
        return [m.frame_index for m in labels if stamp(m) not in seen]

    try:
        observer.spin_until(lambda: len(labels) == count and not missing(),
                            "every labelled frame fused", timeout=60.0, pipeline=pipeline)
    except TimeoutError as exc:
        raise AssertionError(f"{len(labels)} of {count} labels seen, frames not fused: "
                             f"{missing()}; {len(fused)} fused messages") from exc
    assert pipeline.wait("player", timeout=10.0) == 0
    observer.spin_for(0.3)  # a duplicate would arrive by now
    pipeline.check()


@needs_data
def test_every_labelled_frame_is_fused_from_all_six_devices(checkpoint, mnist_views,
                                                          briefly_trained_model, tmp_path):
    import torch

    from resilient_perception.perception.model import views_to_float

    with live_run(checkpoint, tmp_path, COUNT) as (pipeline, observer, labels, fused):
        wait_until_all_fused(pipeline, observer, labels, fused, COUNT)

    views, truth = mnist_views
    assert [m.frame_index for m in labels] == list(range(COUNT))
    assert [m.label for m in labels] == truth[:COUNT].tolist()
    assert [m.class_name for m in labels] == [str(k) for k in truth[:COUNT]]

    by_stamp: dict[int, list] = {}
    for msg in fused:
        by_stamp.setdefault(stamp(msg), []).append(msg)
    with torch.no_grad():
        logits, _ = briefly_trained_model(views_to_float(views[:COUNT]))
    offline = torch.softmax(logits, dim=-1).mean(dim=1).numpy()
    for label, expected in zip(labels, offline, strict=True):
        (msg,) = by_stamp[stamp(label)]  # exactly one fused prediction per frame
        assert list(msg.live_devices) == list(range(6)) and list(msg.surrogate_devices) == []
        np.testing.assert_allclose(msg.probabilities, expected, atol=1e-5)
    # The rest are the player's unlabelled warm-up frames, all before the labelled ones;
    # the warm-up ended on a fused prediction with all six devices live.
    log = pipeline.log_path("player").read_text()
    sent = re.search(r"warm-up done after (\d+) frames", log)
    assert sent, log
    extra = set(by_stamp) - {stamp(label) for label in labels}
    assert len(extra) <= int(sent.group(1)) and all(s < stamp(labels[0]) for s in extra)
    assert any(len(by_stamp[s][0].live_devices) == 6 for s in extra)
    # The cameras repeat their heads every second; the fusion node takes each one once.
    fusion_log = pipeline.log_path("fusion").read_text()
    assert [fusion_log.count(f"device {d}: classifier head received") for d in range(6)] \
        == [1] * 6, fusion_log


@needs_data
def test_a_stalled_fusion_node_catches_up_without_losing_a_frame(checkpoint, tmp_path):
    """Frozen (SIGSTOP) three times for 0.8 s, ~24 frames at 30 Hz each: none is lost.

    The prediction queues must hold the frames (with depth 10 they did not). Nor is any
    frame from the stalls on fused without all six devices: the node knows it was stalled,
    not its devices (``StallGuard``). Without that, the missed deadlines of all six devices
    made the first frame or two after each stall one device + surrogates. The player ends
    during the third stall, so there the devices really fall silent while the node still
    reads the stall's backlog: their deadline events must not count before it has
    (``DeviceMonitor.silence``; when the backlog outlasted a deadline, as on a slowed node,
    the rest of it went out from one device).

    The fusion node takes its samples over UDP (``UDP_ONLY_ENV``). Over shared memory a
    writer to the frozen node could block in ``publish()`` for seconds, in about one freeze
    in ten (a camera, so ``qos.IMAGE_QUEUE_DEPTH``; once the player, which then published 1
    frame in a freeze), and the freeze's samples arrived only when the reliable writer
    repaired them, after their frames had gone out without them: the failures this test had
    in CI (test_fusion_node's held-up device test shows it in isolation).
    """
    count = 100
    stalls = []
    with live_run(checkpoint, tmp_path, count, env={"fusion": UDP_ONLY_ENV}) as (
            pipeline, observer, labels, fused):
        for after in (20, 50, 80):
            observer.spin_until(lambda n=after: len(labels) >= n, f"{after} labelled frames",
                                timeout=60.0, pipeline=pipeline)
            pipeline.signal("fusion", signal.SIGSTOP, timeout=None)
            stalled = time.time_ns()
            time.sleep(0.8)
            pipeline.signal("fusion", signal.SIGCONT, timeout=None)
            stalls.append((stalled, time.time_ns()))
        wait_until_all_fused(pipeline, observer, labels, fused, count)
    # more frames than queues of depth 10 held, in each stall
    for stalled, resumed in stalls:
        assert sum(stalled <= stamp(m) <= resumed for m in labels) > 10
    stamps = [stamp(m) for m in fused]
    assert len(stamps) == len(set(stamps))  # and none twice
    degraded = [(stamp(m), list(m.live_devices)) for m in fused
                if stamp(m) >= stalls[0][0] and len(m.live_devices) < 6]
    assert not degraded, (degraded, stalls, pipeline.log_path("fusion").read_text()[-2000:])
    assert pipeline.log_path("fusion").read_text().count("this node stalled") >= len(stalls)


def wait_for_log(pipeline: Pipeline, name: str, text: str, times: int = 1) -> None:
    end = time.monotonic() + 30.0
    while pipeline.log_path(name).read_text().count(text) < times:
        assert time.monotonic() < end, pipeline.log_tails()
        pipeline.check()
        time.sleep(0.05)


def test_kill_restart_and_stop_one_node(tmp_path):
    # The player alone, looping, is a cheap long-running node.
    spec = NodeSpec("player", "player_node", {"loop": True, "count": 2, "num_cameras": 1})
    with Pipeline([spec], log_dir=tmp_path, domain_id=DOMAIN_ID) as pipeline:
        first = pipeline.start().pid("player")
        wait_for_log(pipeline, "player", "playing mnist test frames")
        assert pipeline.kill("player") == -9
        pipeline.check()  # a node this object killed is not a failure
        pipeline.restart("player")
        assert pipeline.running("player") and pipeline.pid("player") != first
        wait_for_log(pipeline, "player", "playing mnist test frames", times=2)
    assert pipeline.returncode("player") == 0  # stop(): SIGINT, clean exit
    log = pipeline.log_path("player").read_text()
    assert log.count("[pipeline]") == 3  # two starts, then how the second one ended
    assert re.search(r"exited with code 0 [0-9.]+ s after SIGINT\n$", log), log


def _interrupt_script_node(tmp_path: Path, node_body: str, started_ignoring_sigint: bool = False,
                           env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run a ``run_node`` node defined by ``node_body`` (a class ``Script``), SIGINT it once
    it prints its first line, and return its exit code, seconds to exit and stderr.

    ``started_ignoring_sigint``: start it as a shell's background job is started, so that
    Python raises no KeyboardInterrupt and only the node's own handler acts on SIGINT.
    ``env``: the node's environment (default: this one, with the test's domain id).
    """
    script = tmp_path / "script_node.py"
    script.write_text(
        "import sys, time\n"
        "from rclpy.node import Node\n"
        "from std_msgs.msg import String\n"
        "from resilient_perception.ros.node_utils import run_node\n"
        f"{node_body}\n"
        "sys.exit(run_node(Script, 'script', on_exit=globals().get('on_exit')))\n")
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env=env or {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID)},
                          preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                          if started_ignoring_sigint else None) as process:
        assert process.stdout.readline() == "spinning\n"
        process.send_signal(signal.SIGINT)
        start = time.monotonic()
        code = process.wait(timeout=30.0)
        waited = time.monotonic() - start
        stderr = process.stderr.read()
    return code, waited, stderr


def test_sigint_during_a_burst_of_publishes_is_a_clean_stop(tmp_path):
    # The burst runs to its end (its publishes would fail if the context were shut down
    # under it, as rclpy's own handler does), then the node leaves with exit code 0; started
    # as a shell's background job, with SIGINT ignored, it still stops.
    code, _, stderr = _interrupt_script_node(tmp_path, started_ignoring_sigint=True, node_body=(
        "class Script(Node):\n"
        "    def __init__(self):\n"
        "        super().__init__('script')\n"
        "        self.publisher = self.create_publisher(String, 'burst', 10)\n"
        "        self.create_timer(0.05, self.burst)\n"
        "    def burst(self):\n"
        "        print('spinning', flush=True)\n"
        "        end = time.monotonic() + 2.0\n"
        "        while time.monotonic() < end:\n"
        "            self.publisher.publish(String(data='x' * 1000))\n"))
    assert code == 0, stderr


def test_a_node_leaving_waits_for_its_last_reliable_messages_to_be_acknowledged(tmp_path):
    # The subscriber is stopped (SIGSTOP) once matched, so the node's last message is never
    # acknowledged: the node waits FLUSH_S for it, then leaves cleanly.
    from resilient_perception.ros.node_utils import FLUSH_S

    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID)}
    with subprocess.Popen([sys.executable, "-c", (
            "import rclpy\n"
            "from std_msgs.msg import String\n"
            "rclpy.init()\n"
            "node = rclpy.create_node('stopped_subscriber')\n"
            "node.create_subscription(String, 'flushed', lambda msg: None, 10)\n"
            "print('subscribed', flush=True)\n"
            "rclpy.spin(node)\n")], stdout=subprocess.PIPE, text=True, env=env) as subscriber:
        try:
            assert subscriber.stdout.readline() == "subscribed\n"
            env["STOPPED_SUBSCRIBER"] = str(subscriber.pid)
            code, waited, stderr = _interrupt_script_node(tmp_path, env=env, node_body=(
                "import os, signal\n"
                "class Script(Node):\n"
                "    def __init__(self):\n"
                "        super().__init__('script')\n"
                "        self.publisher = self.create_publisher(String, 'flushed', 10)\n"
                "        self.timer = self.create_timer(0.05, self.publish_once_matched)\n"
                "    def publish_once_matched(self):\n"
                "        if self.publisher.get_subscription_count():\n"
                "            self.timer.cancel()\n"
                "            os.kill(int(os.environ['STOPPED_SUBSCRIBER']), signal.SIGSTOP)\n"
                "            self.publisher.publish(String(data='last'))\n"
                "            print('spinning', flush=True)\n"))
        finally:
            subscriber.send_signal(signal.SIGCONT)
            subscriber.kill()
    assert code == 0, stderr
    assert waited >= FLUSH_S


def test_a_node_stuck_leaving_the_middleware_exits_within_the_grace_period(tmp_path):
    from resilient_perception.ros.node_utils import SHUTDOWN_GRACE_S

    code, waited, stderr = _interrupt_script_node(tmp_path, (
        "class Script(Node):\n"
        "    def __init__(self):\n"
        "        super().__init__('script')\n"
        "        self.create_timer(0.1, lambda: print('spinning', flush=True))\n"
        "    def destroy_node(self):\n"
        "        time.sleep(60)\n"))
    assert code == 1, stderr
    assert SHUTDOWN_GRACE_S <= waited < SHUTDOWN_GRACE_S + 5.0
    assert "in destroy_node" in stderr  # the stacks say what held it up


def test_a_node_stuck_in_its_clean_up_exits_within_the_grace_period(tmp_path):
    from resilient_perception.ros.node_utils import SHUTDOWN_GRACE_S

    code, waited, stderr = _interrupt_script_node(tmp_path, (
        "class Script(Node):\n"
        "    def __init__(self):\n"
        "        super().__init__('script')\n"
        "        self.create_timer(0.1, lambda: print('spinning', flush=True))\n"
        "def on_exit(node):\n"
        "    time.sleep(60)\n"))
    assert code == 1, stderr
    assert SHUTDOWN_GRACE_S <= waited < SHUTDOWN_GRACE_S + 5.0
    assert "in on_exit" in stderr


def test_check_reports_a_node_that_failed_with_its_log(tmp_path):
    spec = NodeSpec("player", "player_node", {"encoding": "yuv422"})
    with Pipeline([spec], log_dir=tmp_path, domain_id=DOMAIN_ID) as pipeline:
        pipeline.start()
        assert pipeline.wait("player", timeout=30.0) == 2
        with pytest.raises(PipelineError, match=r"(?s)player exited with code 2.*encoding"):
            pipeline.check()
