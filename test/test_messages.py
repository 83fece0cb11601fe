"""Each of the package's messages crosses real DDS between two processes, field for field."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from test.conftest import domain_id, require_ros

msgs = require_ros()

import rclpy  # noqa: E402

PUBLISHER = r"""
import sys, rclpy
from rclpy.executors import ExternalShutdownException
from resilient_perception.msg import ClassifierHead, DevicePrediction, FusedPrediction

rclpy.init()
node = rclpy.create_node("message_test_publisher")
pred = DevicePrediction(device_id=3, probabilities=[0.25, 0.75], features=[1.0, -2.0, 3.5],
                        inference_time=0.002)
pred.header.stamp.sec, pred.header.stamp.nanosec, pred.header.frame_id = 12, 345, "camera_3"
head = ClassifierHead(device_id=3, num_classes=2, feature_dim=3,
                      weight=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], bias=[0.5, -0.5],
                      class_names=["car", "person"])
fused = FusedPrediction(probabilities=[0.1, 0.9], label=1, confidence=0.9,
                        live_devices=[0, 1, 2], surrogate_devices=[3], fusion_mode="avg",
                        latency=0.004)
fused.header.stamp.sec = 12
pubs = [(node.create_publisher(type(m), topic, 10), m) for topic, m in
        (("test/prediction", pred), ("test/head", head), ("test/fused", fused))]
node.create_timer(0.05, lambda: [p.publish(m) for p, m in pubs])
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""


@pytest.fixture
def ros_env(monkeypatch):
    """Keep DDS away from other test runs on this machine."""
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id()))
    return dict(os.environ)


def test_messages_round_trip_between_processes(ros_env, tmp_path):
    # cwd outside the repo: `python -c` puts cwd first on sys.path, and the source folder
    # has no generated `msg` module.
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=ros_env, cwd=tmp_path)
    rclpy.init()
    received: dict[str, object] = {}
    try:
        node = rclpy.create_node("message_test_subscriber")
        for topic, msg_type in (
            ("test/prediction", msgs.DevicePrediction),
            ("test/head", msgs.ClassifierHead),
            ("test/fused", msgs.FusedPrediction),
        ):
            node.create_subscription(
                msg_type, topic, lambda m, t=topic: received.setdefault(t, m), 10
            )
        deadline = time.monotonic() + 20.0
        while len(received) < 3 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        rclpy.shutdown()
        publisher.terminate()
        publisher.wait(timeout=10)

    assert set(received) == {"test/prediction", "test/head", "test/fused"}
    pred = received["test/prediction"]
    assert (pred.header.stamp.sec, pred.header.stamp.nanosec) == (12, 345)
    assert pred.header.frame_id == "camera_3" and pred.device_id == 3
    assert list(pred.probabilities) == [0.25, 0.75]
    assert list(pred.features) == [1.0, -2.0, 3.5]
    head = received["test/head"]
    assert (head.num_classes, head.feature_dim) == (2, 3)
    assert list(head.weight) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert list(head.bias) == [0.5, -0.5] and list(head.class_names) == ["car", "person"]
    fused = received["test/fused"]
    assert list(fused.live_devices) == [0, 1, 2] and list(fused.surrogate_devices) == [3]
    assert fused.label == 1 and fused.fusion_mode == "avg"
    assert fused.confidence == pytest.approx(0.9)
