r"""The perception pipeline: N camera nodes and the fusion node, plus the dataset player.

    ros2 launch resilient_perception perception.launch.py model_path:=/abs/model.safetensors
    ros2 launch resilient_perception perception.launch.py model_path:=/abs/onnx_dir/device_{}.onnx
    ros2 launch resilient_perception perception.launch.py player:=false \
        config:=/abs/my_params.yaml num_cameras:=4 use_sim_time:=true namespace:=robot1
    ros2 launch resilient_perception perception.launch.py one_process:=true \
        model_path:=/abs/onnx_dir/device_{}.onnx
    ros2 launch resilient_perception perception.launch.py dashboard:=true dashboard_port:=8080
    ros2 launch resilient_perception perception.launch.py player:=false respawn:=true

Nodes (names, executables, per-node parameters, remappings) come from
``resilient_perception.harness.pipeline.pipeline_nodes``, the function ``Pipeline`` uses to
start the same processes without ``launch`` (tests, demo, benchmark): node ``camera_i``
reads ``camera_i/image_raw`` and publishes ``perception/device_i/{prediction,head}``, the
``fusion`` node publishes ``perception/fused`` and ``/diagnostics``, and the ``player``
publishes the images and ``perception/label``; with ``dashboard:=true`` the ``dashboard``
node serves the live page on ``http://127.0.0.1:<dashboard_port>/``. Everything else is in
the config file.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from resilient_perception.harness.dashboard import dashboard_node
from resilient_perception.harness.pipeline import PACKAGE, pipeline_nodes


def _nodes(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    player = arg("player") == "true"
    # Your own cameras: a BEST_EFFORT image subscription, which every driver matches.
    specs = pipeline_nodes(int(arg("num_cameras")), player=player,
                           model_path=arg("model_path") or None,
                           image_reliability="reliable" if player else "best_effort",
                           one_process=arg("one_process") == "true")
    if arg("dashboard") == "true":
        specs.append(dashboard_node(int(arg("num_cameras")), int(arg("dashboard_port"))))
    # A namespace (even "") makes launch_ros key each node's own parameters by its full
    # name (/camera_2, /robot1/camera_2), which beats the config file's sections; without
    # one it would use /**, which the config file's `fusion:` / `player:` sections beat.
    # use_sim_time is a process-wide -p: it reaches every node of a one-process container.
    # The player ends with its split; every other node is restarted when it exits, if asked
    # (a crashed camera, or a fusion node with exit_when_unheard).
    respawn = arg("respawn") == "true"
    return [Node(package=PACKAGE, executable=spec.executable, name=spec.name,
                 namespace=arg("namespace"), parameters=[arg("config"), spec.parameters],
                 ros_arguments=["-p", f"use_sim_time:={arg('use_sim_time')}"],
                 remappings=list(spec.remappings), output="screen",
                 respawn=respawn and spec.name != "player", respawn_delay=1.0)
            for spec in specs]


def generate_launch_description() -> LaunchDescription:
    """The pipeline, with the launch arguments declared below."""
    share = Path(get_package_share_directory(PACKAGE))
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=str(share / "config" / "mnist_6cam.yaml"),
            description="ROS 2 params file of the nodes (see config/)"),
        DeclareLaunchArgument(
            "model_path", default_value="",
            description="Device model of every camera: a .safetensors checkpoint, or .onnx "
                        "files with '{}' for the device index; empty keeps the config's"),
        DeclareLaunchArgument(
            "num_cameras", default_value="6",
            description="Number of camera nodes, fused devices and player image topics"),
        DeclareLaunchArgument(
            "player", default_value="true", choices=["true", "false"],
            description="Start the dataset player (else bring your own camera topics)"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"],
            description="Every node on /clock (Gazebo, a bag played with --clock)"),
        DeclareLaunchArgument(
            "one_process", default_value="false", choices=["true", "false"],
            description="The cameras and the fusion node in one process "
                        "(perception_container) instead of one process each"),
        DeclareLaunchArgument(
            "respawn", default_value="false", choices=["true", "false"],
            description="Restart every node but the player 1 s after it exits (a crash, "
                        "or the fusion node's exit_when_unheard)"),
        DeclareLaunchArgument(
            "dashboard", default_value="false", choices=["true", "false"],
            description="Also serve the live dashboard (a web page of the pipeline)"),
        DeclareLaunchArgument(
            "dashboard_port", default_value="8080",
            description="TCP port of the dashboard on 127.0.0.1 (0: a free one, logged)"),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of every node and relative topic (e.g. robot1)"),
        OpaqueFunction(function=_nodes),
    ])
