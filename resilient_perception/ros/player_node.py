"""Player node: a dataset split played as synchronised camera streams, with ground truth.

Publishes, for every played frame, at ``rate_hz`` (a wall-clock timer):

* one ``sensor_msgs/Image`` per camera ``i`` in ``0..num_cameras-1`` on
  ``image_topic_format.format(i)`` (default ``camera_{i}/image_raw``), all with the same
  ``header.stamp`` (the node clock when the frame is published) and ``header.frame_id``
  ``frame_id_format.format(i)``, with :func:`~resilient_perception.ros.topics.image_qos`;
* then one ``FrameLabel`` on ``label_topic`` (default ``perception/label``) with the same
  stamp, the frame's index in the split and its class, with
  :func:`~resilient_perception.ros.topics.label_qos`.

What each camera sees follows the dataset (loaded with
:func:`~resilient_perception.datasets.load_dataset`, exactly as training does):

* single-view datasets (MNIST, CIFAR-10, IDX pairs): every camera gets the full image and
  each ``camera_node`` crops its own view per the model's view spec (``crop_view``);
* MVMC: camera ``i`` gets camera ``i``'s own image. A camera that has no image for a frame
  (a handful of MVMC frames) publishes nothing for it, so the fusion node treats it as
  failed for that frame, as the offline evaluation does.

Images keep the dataset's pixels: ``mono8`` for grayscale and ``rgb8`` for colour unless
``encoding`` asks for ``mono8``, ``rgb8`` or ``bgr8`` (converted as the camera node converts
back, see :func:`~resilient_perception.ros.image_conversion.to_model_input`).

Played frames are ``start_index .. start_index + count - 1`` (``count`` 0: to the end of the
split), repeated forever with ``loop``. Before them, ``warmup_frames`` frames of the first
played image are published *without* a label: the fusion node does not wait for a device it
has never heard from, so a scoring run lets every device be heard once before the first
labelled frame. With ``warmup_fused_topic`` the warm-up lasts (at least ``warmup_frames``)
until a fused prediction on that topic has every camera live, or ``warmup_timeout_s`` has
passed (see :mod:`~resilient_perception.ros.warmup`). With ``wait_for_subscribers`` the
player waits until every image topic has that many subscribers before its first frame, and
with ``wait_for_label_subscribers`` until the label topic has that many (a scorer started
with the pipeline must not miss the first labels). After the last frame it stops publishing,
or with ``on_end: shutdown`` waits until its messages are acknowledged and exits with code
0.
"""

from __future__ import annotations

from collections.abc import Iterator

from rcl_interfaces.msg import ParameterType
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import Image

from resilient_perception.datasets import (
    DatasetError,
    load_dataset,
)
from resilient_perception.msg import FrameLabel
from resilient_perception.ros.image_conversion import array_to_image, camera_images, encode
from resilient_perception.ros.node_utils import descriptor, run_node
from resilient_perception.ros.topics import (
    FRAME_ID_FORMAT,
    IMAGE_TOPIC_FORMAT,
    LABEL_TOPIC,
    image_qos,
    label_qos,
)
from resilient_perception.ros.warmup import declare_warmup

__all__ = ["ENCODINGS", "ON_END", "PlayerNode", "main"]

ENCODINGS = ("mono8", "rgb8", "bgr8")
ON_END = ("stop", "shutdown")

class PlayerNode(Node):
    """Plays a dataset split as ``num_cameras`` synchronised image topics plus labels."""

    def __init__(self, node_name: str = "player_node", **kwargs) -> None:
        """Declare and validate the parameters, load the dataset, create the publishers.

        Raises:
            InvalidParameterValueException: For a value no range can express (encoding,
                topic formats, frames outside the split, too many cameras).
            DatasetError: If the dataset cannot be loaded.
        """
        super().__init__(node_name, **kwargs)
        i, d, s, b = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE,
                      ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_BOOL)
        self.declare_parameter("dataset", "mnist", descriptor(
            "mnist, cifar10, mvmc, or idx:IMAGES:LABELS for any IDX pair.", s))
        self.declare_parameter("data_dir", "", descriptor(
            "Folder holding the datasets; empty: $RESILIENT_PERCEPTION_DATA, else "
            "../shared/datasets relative to the working directory (as the CLI).", s))
        self.declare_parameter("split", "test", descriptor("Dataset split to play.", s))
        self.declare_parameter("num_cameras", 6, descriptor(
            "Number of camera topics (MVMC: at most its 6 cameras).", i, (1, 64)))
        self.declare_parameter("rate_hz", 30.0, descriptor(
            "Frames per second (wall clock).", d, float_range=(0.01, 10000.0)))
        self.declare_parameter("start_index", 0, descriptor(
            "Index of the first played frame in the split.", i, (0, 2**31 - 1)))
        self.declare_parameter("count", 0, descriptor(
            "Number of played frames; 0 = up to the end of the split.", i, (0, 2**31 - 1)))
        self.declare_parameter("loop", False, descriptor(
            "Play the frames again and again (new stamps each time).", b))
        self.declare_parameter("wait_for_subscribers", 0, descriptor(
            "Before the first frame, wait until every image topic has this many "
            "subscribers; 0 = start at once.", i, (0, 1000)))
        self.declare_parameter("wait_for_label_subscribers", 0, descriptor(
            "Before the first frame, also wait until the FrameLabel topic has this many "
            "subscribers (a scorer); 0 = do not wait.", i, (0, 1000)))
        self.declare_parameter("image_topic_format", IMAGE_TOPIC_FORMAT, descriptor(
            "Image topic of camera i: format(i).", s))
        self.declare_parameter("frame_id_format", FRAME_ID_FORMAT, descriptor(
            "header.frame_id of camera i's images: format(i).", s))
        self.declare_parameter("label_topic", LABEL_TOPIC, descriptor(
            "FrameLabel topic (same stamp as the frame's images).", s))
        self.declare_parameter("encoding", "", descriptor(
            "Image encoding: empty = the dataset's (mono8 grey, rgb8 colour), or mono8, "
            "rgb8, bgr8.", s))
        self.declare_parameter("on_end", "stop", descriptor(
            "After the last frame: 'stop' publishing and keep running, or 'shutdown' the "
            "process (exit code 0).", s))

        self._warmup = declare_warmup(self)
        p = {name: self.get_parameter(name).value for name in (
            "dataset", "data_dir", "split", "num_cameras", "rate_hz", "start_index", "count",
            "loop", "wait_for_subscribers", "wait_for_label_subscribers", "image_topic_format",
            "frame_id_format", "label_topic", "encoding", "on_end")}
        for name, allowed in (("encoding", ("", *ENCODINGS)), ("on_end", ON_END)):
            if p[name] not in allowed:
                raise InvalidParameterValueException(name, p[name], f"must be one of {allowed}")
        for name in ("image_topic_format", "frame_id_format"):
            if p[name].format(0) == p[name].format(1):
                raise InvalidParameterValueException(name, p[name], "needs a '{}' field")

        self.data = load_dataset(p["dataset"], p["split"], p["data_dir"] or None)
        size = len(self.data.labels)
        if p["start_index"] >= size:
            raise InvalidParameterValueException(
                "start_index", p["start_index"],
                f"the {p['dataset']} {p['split']} split has frames 0..{size - 1}")
        stop = size if p["count"] == 0 else p["start_index"] + p["count"]
        if stop > size:
            raise InvalidParameterValueException(
                "count", p["count"], f"only {size - p['start_index']} frames from start_index "
                f"{p['start_index']} in the {p['dataset']} {p['split']} split")
        try:
            first = camera_images(self.data, p["start_index"], p["num_cameras"])
        except ValueError as exc:
            raise InvalidParameterValueException("num_cameras", p["num_cameras"],
                                                 str(exc)) from None
        self.num_cameras, self.encoding = p["num_cameras"], p["encoding"]
        self.frame_ids = [p["frame_id_format"].format(cam) for cam in range(self.num_cameras)]
        self.wait_for_subscribers, self.on_end = p["wait_for_subscribers"], p["on_end"]
        self.wait_for_label_subscribers = p["wait_for_label_subscribers"]
        self._frames = _schedule(p["start_index"], stop, p["loop"])
        self._warmup.live_devices = sum(image is not None for image in first)
        self._warming = self._warmup.needed  # still publishing warm-up frames
        self._first_index = p["start_index"]
        self.published = 0  # labelled frames published so far
        self._started = False  # the first frame is out (no more waiting for subscribers)
        self.finished = Future()  # done when on_end is 'shutdown' and the last frame is out

        self._image_pubs = [
            self.create_publisher(Image, p["image_topic_format"].format(cam), image_qos())
            for cam in range(self.num_cameras)]
        self._label_pub = self.create_publisher(FrameLabel, p["label_topic"], label_qos())
        # Wall clock: the rate holds even when the node clock is /clock (use_sim_time).
        self._timer = self.create_timer(1.0 / p["rate_hz"], self._on_tick,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))
        frames = "all frames" if p["count"] == 0 else f"{stop - p['start_index']} frames"
        self.get_logger().info(
            f"playing {p['dataset']} {p['split']} frames {p['start_index']}..{stop - 1} "
            f"({frames}{', looped' if p['loop'] else ''}) to {self.num_cameras} cameras at "
            f"{p['rate_hz']:g} Hz: {self._image_pubs[0].topic_name} .. "
            f"{self._image_pubs[-1].topic_name}, labels on {self._label_pub.topic_name}")

    def _on_tick(self) -> None:
        if not self._started:
            if any(pub.get_subscription_count() < self.wait_for_subscribers
                   for pub in self._image_pubs) or (
                    self._label_pub.get_subscription_count() < self.wait_for_label_subscribers):
                return
            self._started = True
        if self._warming:
            self._publish(self._first_index, labelled=False)
            self._warming = not self._warmup.frame_sent()
            return
        index = next(self._frames, None)
        if index is None:
            self._finish()
            return
        self._publish(index, labelled=True)

    def _publish(self, index: int, labelled: bool) -> None:
        stamp = self.get_clock().now().to_msg()
        for cam, image in enumerate(camera_images(self.data, index, self.num_cameras)):
            if image is not None:
                pixels, encoding = encode(image, self.encoding)
                self._image_pubs[cam].publish(
                    array_to_image(pixels, encoding, stamp, self.frame_ids[cam]))
        if labelled:  # after the images: a scorer that has the label has the frame
            label = int(self.data.labels[index])
            msg = FrameLabel(frame_index=index, label=label,
                             class_name=self.data.classes[label])
            msg.header.stamp = stamp
            self._label_pub.publish(msg)
            self.published += 1

    def _finish(self) -> None:
        self._timer.cancel()
        self.get_logger().info(f"played {self.published} labelled frames; {self.on_end}")
        if self.on_end == "shutdown":  # run_node flushes the last messages on the way out
            self.finished.set_result(True)


def _schedule(start: int, stop: int, loop: bool) -> Iterator[int]:
    """Index of every labelled frame to publish, in order."""
    while True:
        yield from range(start, stop)
        if not loop:
            return


def main(argv: list[str] | None = None) -> int:
    """Run the player until SIGINT/SIGTERM (or its end with ``on_end: shutdown``).

    Exit codes: 0 after SIGINT/SIGTERM or the end of a ``shutdown`` run, 1 when the dataset
    cannot be loaded, 2 for a parameter of the wrong type or an invalid value.
    """
    return run_node(PlayerNode, "player_node", argv,
                    startup_errors={DatasetError: (1, "cannot load the dataset")})

if __name__ == "__main__":
    raise SystemExit(main())
