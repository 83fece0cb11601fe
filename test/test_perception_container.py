"""perception_container: six cameras and the fusion node in one process, over real DDS.

The one-process pipeline must be the per-process one with fewer processes: the same node
names, topics and parameters, and every labelled frame fused from all six devices as the
offline model computes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test.conftest import ROOT, domain_id, needs_data, require_ros

msgs = require_ros()

from resilient_perception.harness.pipeline import (  # noqa: E402
    CONTAINER_NAME,
    NodeSpec,
    Observer,
    Pipeline,
    package_prefix,
)
from resilient_perception.ros.perception_container import camera_arguments  # noqa: E402
from resilient_perception.ros.topics import (  # noqa: E402
    FUSED_TOPIC,
    HEAD_TOPIC_FORMAT,
    LABEL_TOPIC,
    head_qos,
    label_qos,
)

MNIST_CONFIG = ROOT / "config" / "mnist_6cam.yaml"
COUNT = 30
DOMAIN_ID = domain_id()

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not (package_prefix() / "lib/resilient_perception/perception_container").is_file(),
        reason="perception_container not installed: run scripts/setup.sh"),
]


def stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_camera_arguments_are_what_a_camera_process_gets():
    assert camera_arguments(2, "cam{}/image", "onnx/device_{}.onnx", "reliable", 0.0) == [
        "--ros-args", "-r", "__node:=camera_2", "-p", "device_id:=2",
        "-r", "image_raw:=cam2/image", "-r", "prediction:=perception/device_2/prediction",
        "-r", "head:=perception/device_2/head", "-p", "model_path:=onnx/device_2.onnx",
        "-p", "image_reliability:=reliable", "-p", "max_image_wait:=0.0"]
    assert not {"model_path", "max_image_wait"} & {
        arg.split(":=")[0] for arg in camera_arguments(0)}


@needs_data
def test_one_process_fuses_every_labelled_frame_from_all_six_devices(
        briefly_trained_onnx, briefly_trained_model, mnist_views, tmp_path):
    import torch

    from resilient_perception.perception.model import views_to_float

    overrides = {"player": {"count": COUNT, "on_end": "shutdown",
                            "wait_for_label_subscribers": 1}}
    with (Observer(domain_id=DOMAIN_ID) as observer,
          Pipeline.from_config(MNIST_CONFIG, model_path=briefly_trained_onnx, one_process=True,
                               overrides=overrides, log_dir=tmp_path,
                               domain_id=DOMAIN_ID) as pipeline):
        assert pipeline.names == [CONTAINER_NAME, "player"]
        labels = observer.collect(msgs.FrameLabel, LABEL_TOPIC, label_qos())
        fused = observer.collect(msgs.FusedPrediction, FUSED_TOPIC)
        pipeline.start_ready(observer, timeout=60.0)
        names = set(observer.node.get_node_names())
        assert {"fusion", *(f"camera_{i}" for i in range(6))} <= names, names
        seen = lambda: {stamp(m) for m in fused}  # noqa: E731
        observer.spin_until(lambda: len(labels) == COUNT
                            and {stamp(m) for m in labels} <= seen(),
                            "every labelled frame fused", timeout=60.0, pipeline=pipeline)
        assert pipeline.wait("player", timeout=10.0) == 0
        assert pipeline.interrupt(CONTAINER_NAME) == 0, pipeline.log_tails()
    views, truth = mnist_views
    assert [m.label for m in labels] == truth[:COUNT].tolist()
    with torch.no_grad():
        logits, _ = briefly_trained_model(views_to_float(views[:COUNT]))
    offline = torch.softmax(logits, dim=-1).mean(dim=1).numpy()
    by_stamp = {stamp(m): m for m in fused}
    for label, expected in zip(labels, offline, strict=True):
        msg = by_stamp[stamp(label)]
        assert list(msg.live_devices) == list(range(6)) and list(msg.surrogate_devices) == []
        np.testing.assert_allclose(msg.probabilities, expected, atol=1e-4)
    log = pipeline.log_path(CONTAINER_NAME).read_text()
    assert all(f"device {i}: device_{i}.onnx on CPUExecutionProvider" in log for i in range(6))


def test_the_container_exits_3_when_its_fusion_node_does_not_hear_a_camera(
        briefly_trained_onnx, tmp_path):
    """``exit_when_unheard`` ends the whole process, so a respawning launch restarts it."""
    config = tmp_path / "config.yaml"
    config.write_text(MNIST_CONFIG.read_text().replace(
        "unheard_timeout: 10.0", "unheard_timeout: 1.0").replace(
        "exit_when_unheard: false", "exit_when_unheard: true"))
    with (Observer(domain_id=DOMAIN_ID) as observer,
          Pipeline.from_config(config, model_path=briefly_trained_onnx, num_cameras=2,
                               player=False, one_process=True, log_dir=tmp_path,
                               domain_id=DOMAIN_ID) as pipeline):
        pipeline.start()
        # A head publisher that never sends: the container's fusion node cannot hear it.
        silent = observer.node.create_publisher(msgs.ClassifierHead,
                                                HEAD_TOPIC_FORMAT.format(1), head_qos())
        observer.spin_until(lambda: silent.get_subscription_count() > 0, "the fusion node",
                            30.0, pipeline)
        assert pipeline.wait(CONTAINER_NAME, timeout=30.0) == 3
        log = pipeline.log_path(CONTAINER_NAME).read_text()
    assert "exiting with code 3 (exit_when_unheard)" in log and "Traceback" not in log


def container_exit(tmp_path: Path, **parameters) -> tuple[int, str]:
    spec = NodeSpec("perception", "perception_container", parameters)
    with Pipeline([spec], log_dir=tmp_path, domain_id=DOMAIN_ID) as pipeline:
        pipeline.start()
        return pipeline.wait("perception", timeout=30), pipeline.log_path("perception").read_text()


def test_a_camera_that_cannot_configure_stops_the_process_with_code_1(tmp_path):
    code, log = container_exit(tmp_path, num_cameras=2,
                               model_path_format=str(tmp_path / "device_{}.onnx"))
    assert code == 1 and "no such model file" in log and "autostart failed" in log


@pytest.mark.parametrize("parameters, reason", [
    ({"fusion": True, "first_device": 3}, "first_device must be 0"),
    ({"image_reliability": "sometimes"}, "image_reliability must be"),
    ({"num_cameras": 0}, "invalid parameter"),
], ids=["fusion-offset", "reliability", "range"])
def test_bad_container_parameters_exit_2_with_the_reason(tmp_path, parameters, reason):
    code, log = container_exit(tmp_path, **parameters)
    assert code == 2 and reason in log and "Traceback" not in log
