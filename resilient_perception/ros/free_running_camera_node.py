"""Free-running camera: what a camera driver publishes, for trying the pipeline as users do.

Not the player: no shared stamps, no labels, no RELIABLE QoS, nothing of the package's image
conversion. It stands in for one usb_cam or v4l2_camera process on its own clock:

* captures at ``rate_hz`` that sit ``phase_ms`` after the shared ``epoch_ns`` grid, each a
  further uniform ``+-jitter_ms`` off (seeded by ``seed``), stamped with the capture time,
  as a V4L2 driver stamps a frame with its buffer's capture timestamp (``stamp_clock``:
  ``host``, this machine's clock; ``camera``, a clock of the camera's own that reads
  ``camera_clock_at_epoch_s`` at the epoch and runs ``camera_clock_drift_ppm`` fast, as
  cameras that stamp with their hardware clock do; ``none``: stamped 0, as a driver that
  does not stamp). The sensor keeps its clock when the process is short of CPU: a timer
  tick that comes late publishes the frames captured since the last one (late, but stamped
  when they were taken), up to ``QUEUED_FRAMES`` of them, as a driver's queue of capture
  buffers holds them; older ones are lost (``dropped``);
* the scene of :class:`SceneSchedule` at that stamp: dataset frame ``start_index + s`` for
  scene ``s``, each held for ``hold_frames`` frames (real scenes change slower than the
  frame rate); the first scene before the epoch, the last one after the schedule;
* scaled to ``width`` x ``height`` (nearest neighbour) and packed as YUYV
  (``yuv422_yuy2``, usb_cam's default; BT.601 video range, as V4L2 cameras send it), or
  with ``transport: compressed`` JPEG-encoded on ``image_raw/compressed``
  (``sensor_msgs/CompressedImage``, as image_transport's compressed plugin publishes it);
* BEST_EFFORT, depth 5 (``qos_profile_sensor_data``, what drivers offer).

The ground truth is the schedule: :meth:`SceneSchedule.scene_of` maps any stamp of a frame
(a fused frame carries its earliest) to its scene, so a scorer needs no label topic. Scene
changes fall in the middle of the gap between two frames' captures, so no frame mixes two
scenes while the phases stay within ``max_phase_ms`` and the jitter within ``jitter_ms``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from resilient_perception.datasets import DatasetError, load_dataset
from resilient_perception.ros.image_conversion import bgr_to_yuyv
from resilient_perception.ros.node_utils import descriptor, run_node, stamp_time
from resilient_perception.ros.topics import IMAGE_TRANSPORTS

__all__ = ["STAMP_CLOCKS", "FreeRunningCameraNode", "SceneSchedule", "camera_clock_reading",
           "driver_image", "main"]

QUEUED_FRAMES = 4
"""Frames a late tick still publishes (V4L2 drivers queue about four capture buffers)."""
STAMP_CLOCKS = ("host", "camera", "none")
"""The clocks a driver can stamp its images with (``stamp_clock``)."""


@dataclass(frozen=True)
class SceneSchedule:
    """Which scene free-running cameras show at a time: the shared clock of the test.

    Frame ``k`` is captured ``phase`` (``0 .. max_phase_ns``, plus jitter) after
    ``epoch_ns + k * period_ns``; it is frame ``k`` from half the gap after frame ``k - 1``'s
    last capture to half the gap after its own. Scene ``s`` is frames ``s * hold_frames`` to
    ``(s + 1) * hold_frames - 1``, for ``s`` in ``0 .. scenes - 1``.
    """

    epoch_ns: int
    period_ns: int
    hold_frames: int
    scenes: int
    max_phase_ns: int

    def __post_init__(self) -> None:
        """Reject schedules without a gap between frames."""
        if min(self.period_ns, self.hold_frames, self.scenes) < 1:
            raise ValueError("period_ns, hold_frames and scenes must be >= 1")
        if not 0 <= self.max_phase_ns < self.period_ns:
            raise ValueError(f"max_phase_ns must be in [0, period_ns), got {self.max_phase_ns}")

    @classmethod
    def at_rate(cls, epoch_ns: int, rate_hz: float, hold_frames: int, scenes: int,
                max_phase_ms: float) -> SceneSchedule:
        """A schedule of ``scenes`` scenes at ``rate_hz`` from ``epoch_ns``."""
        return cls(epoch_ns, round(1e9 / rate_hz), hold_frames, scenes,
                   round(max_phase_ms * 1e6))

    @property
    def frames(self) -> int:
        """Frames of the whole schedule."""
        return self.scenes * self.hold_frames

    @property
    def end_ns(self) -> int:
        """When the last scene ends (the start of frame :attr:`frames`)."""
        return self.frame_start_ns(self.frames)

    def frame_start_ns(self, frame: int) -> int:
        """When frame ``frame`` begins: half way between two frames' captures."""
        return self.epoch_ns + frame * self.period_ns - (self.period_ns - self.max_phase_ns) // 2

    def frame_of(self, stamp_ns: int) -> int:
        """The frame a capture stamped ``stamp_ns`` belongs to (negative before the epoch)."""
        return (stamp_ns - self.frame_start_ns(0)) // self.period_ns

    def scene_of(self, stamp_ns: int) -> int | None:
        """The scene shown at ``stamp_ns``, or None outside the schedule."""
        frame = self.frame_of(stamp_ns)
        return frame // self.hold_frames if 0 <= frame < self.frames else None

    def shown_scene(self, stamp_ns: int) -> int:
        """The scene a camera shows at ``stamp_ns``: the first before, the last after."""
        return min(max(self.frame_of(stamp_ns), 0) // self.hold_frames, self.scenes - 1)


def driver_image(image: np.ndarray, size: tuple[int, int], compressed: bool = False,
                 jpeg_quality: int = 80) -> Image | CompressedImage:
    """A dataset image ``(C, H, W)`` as this driver sends it, header unset.

    Enlarged to ``size`` (width, height) with nearest neighbour (the scene's own pixels: a
    bilinear blur cost the small MNIST model 3 points), then YUYV ``Image`` or, with
    ``compressed``, a JPEG ``CompressedImage`` of ``jpeg_quality``.
    """
    import cv2

    pixels = np.ascontiguousarray(image.transpose(1, 2, 0))
    bgr = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR if pixels.shape[2] == 1
                       else cv2.COLOR_RGB2BGR)
    bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_NEAREST)
    if compressed:
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode the image")
        return CompressedImage(format="bgr8; jpeg compressed bgr8", data=encoded.tobytes())
    width, height = size
    return Image(height=height, width=width, encoding="yuv422_yuy2", is_bigendian=0,
                 step=2 * width, data=bgr_to_yuyv(bgr).tobytes())


def camera_clock_reading(host_ns: int, epoch_ns: int, at_epoch_s: float,
                         drift_ppm: float) -> int:
    """What a camera clock reads at ``host_ns`` (this machine's clock), ns.

    The clock reads ``at_epoch_s`` at ``epoch_ns`` and runs ``drift_ppm`` parts per million
    faster than this machine's (``stamp_clock: camera``).
    """
    return round(at_epoch_s * 1e9 + (host_ns - epoch_ns) * (1.0 + drift_ppm * 1e-6))


class FreeRunningCameraNode(Node):
    """Publishes a dataset's frames as one free-running camera driver would."""

    def __init__(self, node_name: str = "free_running_camera", **kwargs) -> None:
        """Declare the parameters, load the dataset, start the timer on the epoch's grid.

        Raises:
            InvalidParameterValueException: For a transport, size or schedule that cannot be.
            DatasetError: If the dataset cannot be loaded.
        """
        super().__init__(node_name, **kwargs)
        i, d, s = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE,
                   ParameterType.PARAMETER_STRING)
        ms = (0.0, 1000.0)
        for name, default, text, kind, int_range, float_range in (
            ("dataset", "mnist", "mnist, cifar10, or idx:IMAGES:LABELS.", s, None, None),
            ("data_dir", "", "Datasets folder; empty: $RESILIENT_PERCEPTION_DATA or "
             "../shared/datasets.", s, None, None),
            ("split", "test", "Dataset split.", s, None, None),
            ("start_index", 0, "Dataset frame of scene 0.", i, (0, 2**31 - 1), None),
            ("scenes", 100, "Scenes of the schedule.", i, (1, 2**31 - 1), None),
            ("hold_frames", 5, "Frames each scene holds.", i, (1, 100000), None),
            ("epoch_ns", 0, "System time of frame 0 of the schedule, ns (every camera of a "
             "run gets the same); 0: the node's start.", i, (0, 2**63 - 1), None),
            ("rate_hz", 30.0, "Frames per second.", d, None, (0.1, 1000.0)),
            ("phase_ms", 0.0, "This camera's capture offset after each tick of the grid, ms.",
             d, None, ms),
            ("max_phase_ms", 15.0, "Largest phase of any camera of the run (places the scene "
             "changes between frames), ms.", d, None, ms),
            ("jitter_ms", 3.0, "Each capture a uniform +-this off its phase, ms.", d, None,
             ms),
            ("seed", 0, "Seed of the jitter.", i, (0, 2**31 - 1), None),
            ("width", 640, "Published image width (even).", i, (2, 16384), None),
            ("height", 480, "Published image height.", i, (1, 16384), None),
            ("transport", "raw", "'raw': YUYV sensor_msgs/Image on image_raw; 'compressed': "
             "JPEG sensor_msgs/CompressedImage on image_raw/compressed.", s, None, None),
            ("jpeg_quality", 80, "JPEG quality of the compressed transport (image_transport's "
             "default).", i, (1, 100), None),
            ("frame_id", "camera", "header.frame_id of the images.", s, None, None),
            ("stamp_clock", "host", "header.stamp is the capture time on 'host': this "
             "machine's clock; 'camera': the camera's own clock (camera_clock_*); 'none': "
             "0, as a driver that does not stamp its images.", s, None, None),
            ("camera_clock_at_epoch_s", 100.0, "With stamp_clock 'camera': what the camera's "
             "clock reads at epoch_ns, s.", d, None, (1.0, 1e6)),
            ("camera_clock_drift_ppm", 0.0, "With stamp_clock 'camera': how much faster the "
             "camera's clock runs than this machine's, parts per million.", d, None,
             (-1000.0, 1000.0)),
        ):
            self.declare_parameter(name, default, descriptor(text, kind, int_range,
                                                             float_range))
        p = {name: self.get_parameter(name).value for name in self._parameters}
        if p["transport"] not in IMAGE_TRANSPORTS:
            raise InvalidParameterValueException("transport", p["transport"],
                                                 f"must be one of {IMAGE_TRANSPORTS}")
        if p["stamp_clock"] not in STAMP_CLOCKS:
            raise InvalidParameterValueException("stamp_clock", p["stamp_clock"],
                                                 f"must be one of {STAMP_CLOCKS}")
        if p["width"] % 2:
            raise InvalidParameterValueException("width", p["width"], "YUYV needs it even")
        epoch = p["epoch_ns"] or time.time_ns()
        try:
            self.schedule = SceneSchedule.at_rate(epoch, p["rate_hz"], p["hold_frames"],
                                                  p["scenes"], p["max_phase_ms"])
        except ValueError as exc:
            raise InvalidParameterValueException("max_phase_ms", p["max_phase_ms"],
                                                 str(exc)) from None
        if p["phase_ms"] > p["max_phase_ms"]:
            raise InvalidParameterValueException("phase_ms", p["phase_ms"],
                                                 f"must be <= max_phase_ms {p['max_phase_ms']}")
        data = load_dataset(p["dataset"], p["split"], p["data_dir"] or None)
        stop = p["start_index"] + p["scenes"]
        if stop > len(data.labels):
            raise InvalidParameterValueException(
                "scenes", p["scenes"], f"the split has {len(data.labels)} frames, "
                f"start_index {p['start_index']} + scenes needs {stop}")
        self._images = data.images[p["start_index"]:stop]
        self._size = (p["width"], p["height"])
        self._compressed = p["transport"] == "compressed"
        self._jpeg_quality, self._frame_id = p["jpeg_quality"], p["frame_id"]
        self._stamp_clock = p["stamp_clock"]
        self._camera_clock = (p["camera_clock_at_epoch_s"], p["camera_clock_drift_ppm"])
        self._phase_ns = round(p["phase_ms"] * 1e6)
        self._jitter_ns = round(p["jitter_ms"] * 1e6)
        self._random = random.Random(p["seed"])
        self._shown: tuple[int, Image | CompressedImage] | None = None  # (scene, image)
        self.published = self.dropped = 0
        topic = "image_raw/compressed" if self._compressed else "image_raw"
        self._pub = self.create_publisher(CompressedImage if self._compressed else Image,
                                          topic, qos_profile_sensor_data)
        # Ticks at phase + jitter after the grid: the latest a frame of that tick is taken.
        period_ns = self.schedule.period_ns
        offset_ns = self._phase_ns + self._jitter_ns
        now = time.time_ns()
        self._next_frame = (now - epoch - self._phase_ns) // period_ns + 2
        self._next_capture_ns = self._capture_ns(self._next_frame)
        first = epoch + offset_ns + self._next_frame * period_ns
        time.sleep(max(first - period_ns - time.time_ns(), 0) * 1e-9)
        self._timer = self.create_timer(period_ns * 1e-9, self._capture)
        self.get_logger().info(
            f"{p['dataset']} frames {p['start_index']}..{stop - 1}, {p['hold_frames']} "
            f"frames each, as {p['width']}x{p['height']} "
            f"{'JPEG' if self._compressed else 'YUYV'} at {p['rate_hz']:g} Hz, phase "
            f"{p['phase_ms']:.1f} +- {p['jitter_ms']:g} ms, on {self._pub.topic_name}")

    _parameters = ("dataset", "data_dir", "split", "start_index", "scenes", "hold_frames",
                   "epoch_ns", "rate_hz", "phase_ms", "max_phase_ms", "jitter_ms", "seed",
                   "width", "height", "transport", "jpeg_quality", "frame_id", "stamp_clock",
                   "camera_clock_at_epoch_s", "camera_clock_drift_ppm")

    def _message(self, scene: int) -> Image | CompressedImage:
        """The scene's image message (made once per scene; each publish sets its header)."""
        if self._shown is None or self._shown[0] != scene:
            self._shown = (scene, driver_image(self._images[scene], self._size,
                                               self._compressed, self._jpeg_quality))
        return self._shown[1]

    def _capture_ns(self, frame: int) -> int:
        """Capture time of ``frame`` of the grid: its phase plus this frame's jitter."""
        jitter = self._random.uniform(-1.0, 1.0) * self._jitter_ns
        return self.schedule.epoch_ns + frame * self.schedule.period_ns + self._phase_ns + round(
            jitter)

    def _stamp_ns(self, capture_ns: int) -> int:
        """The stamp a frame captured at ``capture_ns`` (this machine's clock) carries."""
        if self._stamp_clock == "host":
            return capture_ns
        if self._stamp_clock == "none":
            return 0
        return camera_clock_reading(capture_ns, self.schedule.epoch_ns, *self._camera_clock)

    def _capture(self) -> None:
        """Publish the frames captured since the last tick, oldest first."""
        now = time.time_ns()
        while self._next_capture_ns <= now:
            if now - self._next_capture_ns > QUEUED_FRAMES * self.schedule.period_ns:
                self.dropped += 1
                self.get_logger().warning(
                    f"{self.dropped} frames dropped: this process was short of CPU for over "
                    f"{QUEUED_FRAMES} frames", throttle_duration_sec=5.0)
            else:
                self._publish(self._next_capture_ns)
            self._next_frame += 1
            self._next_capture_ns = self._capture_ns(self._next_frame)

    def _publish(self, capture_ns: int) -> None:
        msg = self._message(self.schedule.shown_scene(capture_ns))
        msg.header.stamp = stamp_time(self._stamp_ns(capture_ns))
        msg.header.frame_id = self._frame_id
        self._pub.publish(msg)
        self.published += 1


def main(argv: list[str] | None = None) -> int:
    """Run the camera until SIGINT/SIGTERM.

    Exit codes: 0 after SIGINT/SIGTERM, 1 when the dataset cannot be loaded, 2 for an
    invalid parameter.
    """
    return run_node(FreeRunningCameraNode, "free_running_camera", argv,
                    startup_errors={DatasetError: (1, "cannot load the dataset")})


if __name__ == "__main__":
    raise SystemExit(main())
