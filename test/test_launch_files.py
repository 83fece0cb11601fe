"""launch_pytest tests of launch/*.launch.py, for machines with a full ROS 2 install.

The ROS 2 wheels this project installs from PyPI have no ``launch``, ``launch_ros`` or
``launch_pytest``, so here the whole module is skipped; ``test_pipeline.py`` starts the
same nodes with the same config files, parameters and remappings through
:class:`~resilient_perception.harness.pipeline.Pipeline` instead. With ROS 2 installed and the
package built in a sourced workspace: ``pytest test/test_launch_files.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test.conftest import ROOT, domain_id

launch_pytest = pytest.importorskip("launch_pytest", reason="launch_pytest is not installed")
msgs = pytest.importorskip("resilient_perception.msg", reason="messages not built")

from launch.actions import (  # noqa: E402
    IncludeLaunchDescription,
    SetEnvironmentVariable,
)
from launch.launch_description import LaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from resilient_perception.harness.pipeline import Observer  # noqa: E402
from resilient_perception.ros.image_conversion import array_to_image  # noqa: E402
from resilient_perception.ros.topics import (  # noqa: E402
    FUSED_TOPIC,
    LABEL_TOPIC,
    image_qos,
    label_qos,
)

DOMAIN_ID = domain_id()
WAIT_S = 60.0

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def checkpoint(briefly_trained_checkpoint) -> Path:
    return briefly_trained_checkpoint


def include(launch_file: str, **arguments: str) -> LaunchDescription:
    """The repository's launch file with arguments, its processes on this test's domain."""
    return LaunchDescription([
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
        SetEnvironmentVariable("ROS_DOMAIN_ID", str(DOMAIN_ID)),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(ROOT / "launch" / launch_file)),
                                 launch_arguments=arguments.items()),
        launch_pytest.actions.ReadyToTest(),
    ])


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@launch_pytest.fixture
def perception_launch(checkpoint):
    return include("perception.launch.py", model_path=str(checkpoint),
                   config=str(ROOT / "config" / "mnist_6cam.yaml"))


@pytest.mark.launch(fixture=perception_launch)
def test_perception_launch_fuses_the_players_frames_from_six_devices(mnist_views):
    _, truth = mnist_views
    with Observer(domain_id=DOMAIN_ID) as observer:
        labels = observer.collect(msgs.FrameLabel, LABEL_TOPIC, label_qos())
        fused = observer.collect(msgs.FusedPrediction, FUSED_TOPIC)

        def twenty_fused():
            stamps = {stamp_ns(m) for m in fused}
            return sum(stamp_ns(m) in stamps for m in labels) >= 20

        observer.spin_until(twenty_fused, "20 labelled frames fused", WAIT_S)
    by_stamp = {stamp_ns(m): m for m in fused}
    scored = [m for m in labels if stamp_ns(m) in by_stamp]
    assert all(m.label == truth[m.frame_index] for m in labels)
    assert all(list(by_stamp[stamp_ns(m)].live_devices) == list(range(6)) for m in scored)


@launch_pytest.fixture
def gazebo_launch(checkpoint):
    # The MVMC config's cameras use their image as the view (crop_view: false), so this test
    # plays six Gazebo cameras that each publish one device's 10x14 MNIST view.
    return include("gazebo_cameras.launch.py", model_path=str(checkpoint),
                   gz_topic_format="/camera_{}/image", use_sim_time="false")


@pytest.mark.launch(fixture=gazebo_launch)
def test_gazebo_launch_reads_the_bridged_camera_topics(mnist_views):
    views, _ = mnist_views
    with Observer(domain_id=DOMAIN_ID) as observer:
        cameras = [observer.node.create_publisher(Image, f"/camera_{i}/image", image_qos())
                   for i in range(6)]
        fused = observer.collect(msgs.FusedPrediction, FUSED_TOPIC)
        observer.spin_until(lambda: all(c.get_subscription_count() for c in cameras),
                            "the camera nodes' subscriptions", WAIT_S)
        sent = []
        for frame in range(20):
            stamp = observer.node.get_clock().now().to_msg()
            for i, camera in enumerate(cameras):
                camera.publish(array_to_image(views[frame, i, 0], "mono8", stamp))
            sent.append(stamp.sec * 1_000_000_000 + stamp.nanosec)
            observer.spin_for(0.1)
        observer.spin_until(lambda: set(sent) <= {stamp_ns(m) for m in fused},
                            "every sent frame fused", WAIT_S)
    last = {stamp_ns(m): m for m in fused}[sent[-1]]
    assert list(last.live_devices) == list(range(6))


def test_gazebo_launch_starts_the_bridge_when_asked(checkpoint):
    import importlib.util

    from launch.launch_context import LaunchContext

    spec = importlib.util.spec_from_file_location(
        "gazebo_cameras_launch", ROOT / "launch" / "gazebo_cameras.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    declared = {a.name: a.default_value[0].text
                for a in module.generate_launch_description().get_launch_arguments()}
    assert declared["bridge"] == "false"

    def nodes(bridge: str, use_sim_time: str) -> list:
        context = LaunchContext()
        context.launch_configurations.update(
            config=str(ROOT / "config" / "mvmc_6cam.yaml"), model_path=str(checkpoint),
            num_cameras="2", gz_topic_format="/world/cam_{}/image", use_sim_time=use_sim_time,
            bridge=bridge)
        return module._nodes(context)

    assert [n.node_executable for n in nodes("false", "true")] == ["fusion_node", "camera_node",
                                                                  "camera_node"]
    assert nodes("true", "true")[-1].node_executable == "parameter_bridge"
    assert module.bridge_arguments(2, "/world/cam_{}/image", clock=True) == [
        "/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock",
        "/world/cam_0/image@sensor_msgs/msg/Image[gz.msgs.Image",
        "/world/cam_1/image@sensor_msgs/msg/Image[gz.msgs.Image"]
    assert module.bridge_arguments(1, "/c{}", clock=False) == [
        "/c0@sensor_msgs/msg/Image[gz.msgs.Image"]
