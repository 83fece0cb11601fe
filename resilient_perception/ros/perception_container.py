"""One process for a board's cameras (and its fusion node): the pipeline without N processes.

A ROS 2 component container, done the rclpy way: cameras ``camera_i`` (and, with
``fusion:=true``, ``fusion``) are the same node classes as the separate executables,
created in one process and spun by one single-threaded executor. They keep their names,
topics and parameters: a params file's sections (``/**``, ``camera_2``, ``fusion``) reach
them by node name as they reach separate processes, and each camera gets what
``pipeline_nodes`` gives a camera process: its ``device_id``, its topic remappings and,
from ``model_path_format``, its model.

What is shared, and what that means for liveness:

* One DDS participant for all the nodes instead of one each, and one copy of rclpy, numpy
  and ONNX Runtime: the memory of six processes shrinks to about that of one.
* A crash of the process takes every camera in it at once. The fusion node (in another
  process) sees each camera's prediction writer lose liveliness after its lease and
  replaces all of them; with ``fusion:=true`` the fusion node goes too, so a watchdog
  outside the process (systemd, a launch ``respawn``) must restart it.
* The executor runs one callback at a time: a camera whose inference stalls delays its
  peers' images, and the fusion node sees *their* deadlines missed too. At 30 Hz six
  0.3 ms inferences leave the thread idle over 99% of the time, so this only matters for
  models far larger than a device CNN.
* A camera that fails to configure stops the whole process (exit code 1), as a camera
  process would stop itself.
"""

from __future__ import annotations

from rcl_interfaces.msg import ParameterType
from rclpy.node import Node

from resilient_perception.ros.camera_node import CameraNode, autostart
from resilient_perception.ros.fusion_node import FusionNode
from resilient_perception.ros.node_utils import descriptor, run_nodes
from resilient_perception.ros.topics import (
    CAMERA_HEAD_TOPIC,
    CAMERA_IMAGE_TOPIC,
    CAMERA_PREDICTION_TOPIC,
    HEAD_TOPIC_FORMAT,
    IMAGE_RELIABILITIES,
    IMAGE_TOPIC_FORMAT,
    PREDICTION_TOPIC_FORMAT,
)

__all__ = ["camera_arguments", "container_nodes", "main"]

CAMERA_NAME_FORMAT = "camera_{}"
FUSION_NAME = "fusion"


def camera_arguments(device_id: int, image_topic_format: str = IMAGE_TOPIC_FORMAT,
                     model_path_format: str = "", image_reliability: str = "",
                     max_image_wait: float = -1.0) -> list[str]:
    """The node arguments of camera ``device_id`` in the container.

    The same name, ``device_id``, remappings, model, image reliability and image wait as
    ``pipeline_nodes`` gives the camera's own process (an empty ``model_path_format`` or
    ``image_reliability``, or a negative ``max_image_wait``, leaves the camera's parameter
    to the params files); node arguments win over the process's, so ``-r __node:=...`` of
    the container does not rename its cameras.
    """
    args = ["--ros-args", "-r", f"__node:={CAMERA_NAME_FORMAT.format(device_id)}",
            "-p", f"device_id:={device_id}",
            "-r", f"{CAMERA_IMAGE_TOPIC}:={image_topic_format.format(device_id)}",
            "-r", f"{CAMERA_PREDICTION_TOPIC}:={PREDICTION_TOPIC_FORMAT.format(device_id)}",
            "-r", f"{CAMERA_HEAD_TOPIC}:={HEAD_TOPIC_FORMAT.format(device_id)}"]
    if model_path_format:
        args += ["-p", f"model_path:={model_path_format.replace('{}', str(device_id))}"]
    if image_reliability:
        args += ["-p", f"image_reliability:={image_reliability}"]
    if max_image_wait >= 0:
        args += ["-p", f"max_image_wait:={float(max_image_wait)}"]
    return args


def container_nodes() -> list[Node]:
    """The container's own node (its parameters), then the cameras and the fusion node.

    Raises ValueError for a bad combination of the container's parameters.
    """
    integer, string = ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_STRING
    container = Node("perception_container")
    num_cameras = container.declare_parameter("num_cameras", 6, descriptor(
        "Camera nodes in this process.", integer, (1, 64))).value
    first = container.declare_parameter("first_device", 0, descriptor(
        "The cameras are camera_i for i = first_device .. first_device + num_cameras - 1 "
        "(a robot running cameras 3-5 of a fleet).", integer, (0, 63))).value
    fusion = container.declare_parameter("fusion", False, descriptor(
        "Also run the fusion node in this process, fusing these cameras (needs "
        "first_device 0).", ParameterType.PARAMETER_BOOL)).value
    image_topic_format = container.declare_parameter("image_topic_format", IMAGE_TOPIC_FORMAT,
                                                     descriptor(
        "Image topic of camera i: format(i).", string)).value
    model_path_format = container.declare_parameter("model_path_format", "", descriptor(
        "Model of camera i with '{}' for i (device_{}.onnx of `resilient-perception "
        "export`); empty: each camera's model_path parameter.", string)).value
    image_reliability = container.declare_parameter("image_reliability", "", descriptor(
        "The cameras' image_reliability ('best_effort' or 'reliable'); empty: each "
        "camera's own parameter.", string)).value
    max_image_wait = container.declare_parameter("max_image_wait", -1.0, descriptor(
        "The cameras' max_image_wait (s; 0 = every image); negative: each camera's own.",
        ParameterType.PARAMETER_DOUBLE, float_range=(-1.0, 3600.0))).value
    if image_reliability not in ("", *IMAGE_RELIABILITIES):
        raise ValueError(f"image_reliability must be empty or one of {IMAGE_RELIABILITIES}, "
                         f"got {image_reliability!r}")
    if fusion and first != 0:
        raise ValueError("fusion:=true fuses this process's cameras, devices 0 .. "
                         f"num_cameras - 1: first_device must be 0, got {first}")
    if first + num_cameras > 64:
        raise ValueError(f"first_device {first} + num_cameras {num_cameras} exceeds 64 devices")
    if image_topic_format.format(0) == image_topic_format.format(1):
        raise ValueError(f"image_topic_format needs a '{{}}' field, got {image_topic_format!r}")
    nodes: list[Node] = [container]
    if fusion:
        nodes.append(FusionNode(FUSION_NAME, cli_args=[
            "--ros-args", "-r", f"__node:={FUSION_NAME}", "-p", f"num_devices:={num_cameras}"]))
    nodes += [CameraNode(CAMERA_NAME_FORMAT.format(i), cli_args=camera_arguments(
        i, image_topic_format, model_path_format, image_reliability, max_image_wait))
        for i in range(first, first + num_cameras)]
    return nodes


def _autostart_cameras(node: Node) -> int | None:
    return autostart(node) if isinstance(node, CameraNode) else None


def main(argv: list[str] | None = None) -> int:
    """Run the cameras (and fusion node) in one process until SIGINT/SIGTERM.

    Exit codes: 0 after SIGINT/SIGTERM, 1 when a camera cannot configure or activate, 2 for
    a parameter of the wrong type or out of its range, 3 when the fusion node did not hear a
    camera and its ``exit_when_unheard`` is set.
    """
    return run_nodes(container_nodes, "perception_container", argv,
                     on_created=_autostart_cameras,
                     on_exit=lambda node: getattr(node, "exit_code", None))


if __name__ == "__main__":
    raise SystemExit(main())
