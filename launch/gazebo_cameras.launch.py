r"""Camera nodes and the fusion node on simulated Gazebo cameras (no dataset player).

Each Gazebo camera is bridged to ROS by ros_gz_bridge; camera node ``camera_i`` reads the
bridged topic ``gz_topic_format.format(i)`` instead of ``camera_i/image_raw``: a remapping,
nothing else changes::

    ros2 launch resilient_perception gazebo_cameras.launch.py \
        model_path:=/abs/mvmc/model.safetensors gz_topic_format:=/camera_{}/image

With ``bridge:=true`` the launch starts that bridge too (``ros_gz_bridge``'s
``parameter_bridge``, which must be installed): every camera topic from Gazebo's
``gz.msgs.Image`` to ``sensor_msgs/Image`` under the same name, and ``/clock`` when
``use_sim_time``. Without it, run the bridge yourself::

    ros2 run ros_gz_bridge parameter_bridge /clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock \
        /camera_0/image@sensor_msgs/msg/Image[gz.msgs.Image ...

The default config is ``config/mvmc_6cam.yaml``: every camera's image is its device's view
(``crop_view: false``), so a model trained on MVMC takes 32x32 RGB images; images of another
size are resized to it. The camera nodes subscribe best effort, which every publisher QoS
matches. With ``use_sim_time`` (default true) the nodes use Gazebo's ``/clock`` (bridged),
so the fused latency is measured in simulated time.
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
    if arg("bridge") == "true":
        nodes.append(Node(package="ros_gz_bridge", executable="parameter_bridge",
                          name="camera_bridge", output="screen",
                          arguments=bridge_arguments(int(arg("num_cameras")),
                                                     arg("gz_topic_format"),
                                                     arg("use_sim_time") == "true")))
    return nodes


def bridge_arguments(num_cameras: int, topic_format: str, clock: bool) -> list[str]:
    """parameter_bridge's arguments: every camera topic Gazebo -> ROS, and /clock.

    Camera ``i`` of the world publishes ``topic_format.format(i)`` (its SDF sensor's
    ``<topic>``); the bridged ROS topic has the same name.
    """
    return ((["/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock"] if clock else [])
            + [f"{topic_format.format(i)}@sensor_msgs/msg/Image[gz.msgs.Image"
               for i in range(num_cameras)])


def generate_launch_description() -> LaunchDescription:
    """The launch arguments and the nodes.

    Arguments: config, model_path, num_cameras, gz_topic_format, use_sim_time, bridge.
    """
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
        DeclareLaunchArgument(
            "bridge", default_value="false", choices=["true", "false"],
            description="Also start ros_gz_bridge's parameter_bridge for the camera topics "
                        "(and /clock with use_sim_time)"),
        OpaqueFunction(function=_nodes),
    ])
