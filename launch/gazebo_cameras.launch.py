r"""Camera nodes and the fusion node on simulated Gazebo cameras (no dataset player).

Each Gazebo camera is bridged to ROS by ros_gz_bridge; camera node ``camera_i`` reads the
bridged topic ``gz_topic_format.format(i)`` instead of ``camera_i/image_raw``: a remapping,
nothing else changes::

    ros2 launch resilient_perception gazebo_cameras.launch.py \
        model_path:=/abs/mvmc/model.safetensors gz_topic_format:=/camera_{}/image

The default config is ``config/mvmc_6cam.yaml``: every camera's image is its device's view
(``crop_view: false``), so a model trained on MVMC needs 32x32 RGB images; set the
simulated cameras to that size (``<image><width>32</width><height>32</height>`` in the
SDF) or train on your own camera size. Images of another size are rejected and counted by
the camera nodes. The camera nodes subscribe RELIABLE (see ``ros/qos.py``), which the
bridge's default publisher QoS matches. With ``use_sim_time`` (default true) the nodes use
Gazebo's ``/clock`` (bridge it too), so the fused latency is measured in simulated time.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from resilient_perception.harness.pipeline import PACKAGE, pipeline_nodes


def _nodes(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    specs = pipeline_nodes(int(arg("num_cameras")), player=False,
                           model_path=arg("model_path") or None,
                           image_topic_format=arg("gz_topic_format"),
                           image_reliability="best_effort")
    sim_time = {"use_sim_time": arg("use_sim_time") == "true"}
    # namespace="": see perception.launch.py (each node's own parameters beat the config's).
    nodes = [Node(package=PACKAGE, executable=spec.executable, name=spec.name, namespace="",
                  parameters=[arg("config"), {**spec.parameters, **sim_time}],
                  remappings=list(spec.remappings), output="screen")
             for spec in specs]
    # The bridge, for a world whose camera i publishes the Gazebo topic /camera_i/image
    # (<topic>camera_i/image</topic> in its SDF sensor) and whose clock is /clock.
    # Uncomment to start it here (needs ros_gz_bridge), or run it yourself:
    #   ros2 run ros_gz_bridge parameter_bridge /clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock \
    #       /camera_0/image@sensor_msgs/msg/Image[gz.msgs.Image ...
    #
    # nodes.append(Node(
    #     package="ros_gz_bridge", executable="parameter_bridge", name="camera_bridge",
    #     arguments=["/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock"] + [
    #         f"/camera_{i}/image@sensor_msgs/msg/Image[gz.msgs.Image"
    #         for i in range(int(arg("num_cameras")))],
    #     output="screen"))
    return nodes


def generate_launch_description() -> LaunchDescription:
    """Launch arguments config, model_path, num_cameras, gz_topic_format, use_sim_time."""
    share = Path(get_package_share_directory(PACKAGE))
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=str(share / "config" / "mvmc_6cam.yaml"),
            description="ROS 2 params file of the nodes (its player section is unused)"),
        DeclareLaunchArgument(
            "model_path", default_value="",
            description="Device model of every camera: a .safetensors checkpoint, or .onnx "
                        "files with '{}' for the device index; empty keeps the config's"),
        DeclareLaunchArgument(
            "num_cameras", default_value="6",
            description="Number of simulated cameras (camera nodes and fused devices)"),
        DeclareLaunchArgument(
            "gz_topic_format", default_value="/camera_{}/image",
            description="Bridged image topic of camera i: format(i)"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="true", choices=["true", "false"],
            description="Use Gazebo's /clock (bridged) as the nodes' clock"),
        OpaqueFunction(function=_nodes),
    ])
