"""Camera node: one device CNN on one camera's images, publishing its predictions.

Subscribes ``image_raw`` (``sensor_msgs/Image``; remap it, e.g.
``-r image_raw:=camera_2/image_raw``), crops this device's view out of the full image
(per the model's view spec; an image of another size than the training images is first
resized to theirs, stretched) and runs the device CNN with ONNX Runtime or torch. The image
subscription is BEST_EFFORT by default (REP-2003: every camera driver matches it),
``image_reliability:=reliable`` for a publisher whose every frame counts (the package's
player; set by ``pipeline_nodes``); ``qos_overrides`` parameters apply too, and a
publisher the subscription cannot match is reported once, with the fix. Images come in
every encoding of :mod:`.image_conversion` (YUV 4:2:2 and Bayer from drivers included), or
with ``image_transport:=compressed`` as ``sensor_msgs/CompressedImage`` (JPEG, PNG) on the
remapped input topic plus ``/compressed``. Publishes

* ``prediction`` (``DevicePrediction``): one per accepted image, ``header`` copied from the
  image (stamp and frame_id), with :func:`~resilient_perception.ros.topics.prediction_qos`
  (deadline and liveliness lease from the parameters);
* ``head`` (``ClassifierHead``): on activation and again every ``head_period`` s, transient
  local (:func:`~resilient_perception.ros.topics.head_qos`), for the fusion node's Modifier
  (the repeats cover a latched sample the middleware failed to deliver).

A lifecycle node: ``configure`` loads and validates the model, ``activate`` creates the
subscription and publishers. Publishers exist only while active, so a deactivated camera
stops asserting liveliness and the fusion node sees it as gone. With ``autostart`` (the
default) the node configures and activates itself, so it runs without a lifecycle manager;
if that fails the process exits with code 1.

An image that waited in the queue longer than ``max_image_wait`` (0.1 s) is skipped as
``late``: a camera short of CPU stays within that much of its driver instead of publishing
predictions too old to be fused (``max_image_wait:=0`` works through every image, as the
package's player pipelines do).

A prediction carries its image's ``header.stamp``, by which the fusion node groups the
cameras' frames; an image stamped 0 (a driver that does not stamp) is rejected as
``unstamped``, since every such frame would share one stamp. A driver that stamps on a clock
of its own (time since the camera started, a hardware counter) needs
``stamp_source:=camera_clock``: its stamps are moved onto this machine's clock by an offset
estimated from their arrivals (:class:`~..perception.camera_clock.CameraClock`), keeping
their spacing. ``stamp_source:=arrival`` stamps each prediction with its image's arrival in
this process, for a driver that does not stamp at all.

Bad images are counted per reason on ``/diagnostics`` (``accepted``, ``rejected`` and one
counter per reason) and logged at most once per reason every few seconds, with the text
they echo clipped; the node never crashes on a message. An image whose serialised size is
over ``max_image_bytes`` is dropped before it is deserialised (``oversize``: a 20 MB image
is never copied), one that does not deserialise is ``malformed``; an unknown encoding,
inconsistent sizes or a view of the wrong size are ``bad_image``; a failure of the model
``inference_error``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image

from resilient_perception.msg import ClassifierHead, DevicePrediction
from resilient_perception.perception.camera_clock import CameraClock
from resilient_perception.ros.image_conversion import (
    DeviceInput,
    ImageConversionError,
    decode_compressed,
    decode_image,
)
from resilient_perception.ros.node_utils import (
    InputStats,
    Rejections,
    capped_subscription,
    run_node,
    stamp_time,
)
from resilient_perception.ros.node_utils import descriptor as _descriptor
from resilient_perception.ros.node_utils import publish_counters as _publish_counters
from resilient_perception.ros.topics import (
    CAMERA_HEAD_TOPIC,
    CAMERA_IMAGE_TOPIC,
    CAMERA_PREDICTION_TOPIC,
    CAMERA_STATUS,
    IMAGE_QUEUE_DEPTH,
    IMAGE_TRANSPORTS,
    head_qos,
    image_qos,
    prediction_qos,
)

__all__ = ["CameraNode", "autostart", "main"]

BACKENDS = ("onnxruntime", "torch")
STAMP_SOURCES = ("header", "camera_clock", "arrival")
REJECTION_REASONS = ("late", "oversize", "malformed", "unstamped", "bad_image",
                     "inference_error", "callback_error")


class _Model:
    """What configure loaded: the runner and how to make its input from an image."""

    def __init__(self, runner, classes: list[str], device_input: DeviceInput) -> None:
        self.runner, self.classes, self.device_input = runner, classes, device_input


class CameraNode(Node):
    """Lifecycle node running one device CNN on one camera topic."""

    def __init__(self, node_name: str = "camera_node", **kwargs) -> None:
        """Declare the parameters; the model is loaded in ``on_configure``."""
        super().__init__(node_name, **kwargs)
        # Parameter types: integer, double, string, string array, bool.
        i, d, s, p, b = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE,
                         ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_STRING_ARRAY,
                         ParameterType.PARAMETER_BOOL)
        self.declare_parameter("device_id", 0, _descriptor(
            "Index of this device in the fleet (which view of the model it runs).", i, (0, 63)))
        self.declare_parameter("model_path", "", _descriptor(
            "A .onnx from `resilient-perception export`, or a .safetensors training "
            "checkpoint (device `device_id` is taken from it and run with torch).", s))
        self.declare_parameter("backend", "onnxruntime", _descriptor(
            "Inference backend for .onnx models: 'onnxruntime' or 'torch'.", s))
        self.declare_parameter("providers", ["CPUExecutionProvider"], _descriptor(
            "ONNX Runtime execution providers in order of preference; unavailable ones are "
            "skipped and CPU is always the last resort.", p))
        self.declare_parameter("provider_options", [""], _descriptor(
            "Execution provider options as PROVIDER:OPTION=VALUE entries, e.g. "
            "TensorrtExecutionProvider:trt_fp16_enable=True; [''] for none.", p))
        self.declare_parameter("threads", 1, _descriptor(
            "Intra-op threads of the inference backend.", i, (1, 64)))
        self.declare_parameter("input_topic", CAMERA_IMAGE_TOPIC, _descriptor(
            "Camera image topic (sensor_msgs/Image); remap rather than change it.", s))
        self.declare_parameter("output_topic", CAMERA_PREDICTION_TOPIC, _descriptor(
            "DevicePrediction topic.", s))
        self.declare_parameter("head_topic", CAMERA_HEAD_TOPIC, _descriptor(
            "ClassifierHead topic (transient local, published on activation and every "
            "head_period s).", s))
        self.declare_parameter("head_period", 1.0, _descriptor(
            "The head is published again every this many s; 0 = once, on activation. It is "
            "latched, but Fast DDS can fail to deliver a latched sample to a reader that "
            "joins later (eProsima/Fast-DDS#3822), and the fusion node rejects this "
            "device's predictions until it has the head; a repeat reaches every matched "
            "reader at once.", d, float_range=(0.0, 3600.0)))
        self.declare_parameter("crop_view", True, _descriptor(
            "Crop this device's view from a full image per the model's view spec; false "
            "when the image already is the view.", b))
        self.declare_parameter("deadline", 0.5, _descriptor(
            "Offered QoS deadline of predictions, s; must be <= the fusion node's.", d,
            float_range=(0.001, 3600.0)))
        self.declare_parameter("liveliness_lease", 1.0, _descriptor(
            "Offered liveliness lease of predictions, s; must be <= the fusion node's.", d,
            float_range=(0.001, 3600.0)))
        self.declare_parameter("autostart", True, _descriptor(
            "Configure and activate at start-up (no lifecycle manager needed).", b))
        self.declare_parameter("image_transport", "raw", _descriptor(
            "'raw': sensor_msgs/Image on input_topic; 'compressed': "
            "sensor_msgs/CompressedImage (JPEG, PNG) on input_topic + '/compressed', as "
            "image_transport's compressed plugin publishes it.", s))
        self.declare_parameter("image_reliability", "best_effort", _descriptor(
            "Reliability of the image subscription: 'best_effort' (REP-2003 for sensor "
            "data; matched by every publisher) or 'reliable' (every frame of a RELIABLE "
            "publisher such as the package's player; never matched by a BEST_EFFORT one). "
            "qos_overrides.<topic>.subscription.* parameters apply on top.", s))
        self.declare_parameter("image_queue_depth", IMAGE_QUEUE_DEPTH, _descriptor(
            "Images the subscription holds while the node is busy.", i, (1, 10000)))
        self.declare_parameter("max_image_wait", 0.1, _descriptor(
            "An image that waited longer than this in the subscription's queue (s, from its "
            "arrival in this process) is skipped and counted 'late': its prediction would "
            "reach the fusion node after the frame timeout (0.1 s by default) released its "
            "frame, and working through such a backlog keeps a camera short of CPU behind "
            "for seconds. 0 = every image (a replay where every frame counts).", d,
            float_range=(0.0, 3600.0)))
        self.declare_parameter("stamp_source", "header", _descriptor(
            "Stamp of the predictions, by which the fusion node groups the cameras' frames: "
            "'header': the image's header.stamp (a driver's capture time on this machine's "
            "clock; an image stamped 0 is rejected as 'unstamped'); 'camera_clock': "
            "header.stamp taken on a clock of the camera's own, moved onto this machine's "
            "clock by the least (arrival - stamp) of the last 10 s (its offset is on "
            "/diagnostics); 'arrival': the image's arrival in this process, for a driver that "
            "leaves the stamp at 0 (every delay before the arrival enters the stamp, so the "
            "cameras' arrivals must fall within the fusion node's sync_tolerance).", s))
        self.declare_parameter("max_image_bytes", 8 << 20, _descriptor(
            "Larger serialised images are rejected before they are deserialised, bytes "
            "(the default takes 1920x1080 at 4 bytes a pixel).", i, (1024, 1 << 31)))
        self._model: _Model | None = None
        self._sub = self._pred_pub = self._head_pub = self._head_timer = None
        self._incompatible_logged = False
        self._decode = decode_image
        self._stamp_source = "header"
        self._camera_clock: CameraClock | None = None  # with stamp_source 'camera_clock'
        self._arrival_ns = 0  # of the image being handled, unless stamp_source is 'header'
        self.accepted = 0
        self.rejections = Rejections(self, REJECTION_REASONS)
        self.inputs = InputStats()
        _publish_counters(self, CAMERA_STATUS,
                          f"device_{self.get_parameter('device_id').value}", self._counters)

    def _counters(self) -> dict[str, object]:
        """Counts (received = accepted + rejected), input rate and inference p50/p99 (10 s).

        ``image_publishers`` is how many image publishers the subscription has matched: 0
        with images expected tells a topic, transport or QoS mismatch from lost images. With
        ``stamp_source: camera_clock``, also the camera clock's estimated offset from this
        machine's and how often the estimate started again (the camera clock jumped back).
        """
        matched = self._sub.get_publisher_count() if self._sub is not None else 0
        clock = self._camera_clock
        offset = None if clock is None else clock.offset_ns
        return {"image_publishers": matched,
                "received": self.accepted + self.rejections.total, "accepted": self.accepted,
                "rejected": self.rejections.total, **self.rejections.counts,
                **{("inference_" + k if k.endswith("_ms") else k): v
                   for k, v in self.inputs.summary(time.monotonic()).items()},
                **({} if clock is None else {
                    "camera_clock_offset_s": None if offset is None else offset / 1e9,
                    "camera_clock_restarts": clock.restarts})}

    # -- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load and validate the model; FAILURE (with the reason logged) if it cannot be."""
        try:
            self._model = self._load_model()
        except Exception as exc:  # any load error must become FAILURE, never a crash
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Create publishers and the image subscription; publish the head, and repeat it."""
        param = self.get_parameter
        try:
            qos = prediction_qos(param("deadline").value, param("liveliness_lease").value)
            images = image_qos(param("image_reliability").value,
                               param("image_queue_depth").value)
            transport = param("image_transport").value
            if transport not in IMAGE_TRANSPORTS:
                raise ValueError(f"image_transport must be one of {IMAGE_TRANSPORTS}, got "
                                 f"{transport!r}")
            if param("stamp_source").value not in STAMP_SOURCES:
                raise ValueError(f"stamp_source must be one of {STAMP_SOURCES}, got "
                                 f"{param('stamp_source').value!r}")
            if param("stamp_source").value != "header" and param("use_sim_time").value:
                # Arrivals are on this machine's clock, the fusion node's on /clock.
                raise ValueError(f"stamp_source {param('stamp_source').value!r} stamps on "
                                 "this machine's clock, not the simulation's: with "
                                 "use_sim_time use stamp_source 'header'")
        except ValueError as exc:
            self.get_logger().error(f"activate failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._pred_pub = self.create_lifecycle_publisher(
            DevicePrediction, param("output_topic").value, qos)
        self._head_pub = self.create_lifecycle_publisher(
            ClassifierHead, param("head_topic").value, head_qos())
        result = super().on_activate(state)  # activates the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        head, publisher = self._head_message(), self._head_pub
        publisher.publish(head)
        if param("head_period").value > 0:
            self._head_timer = self.create_timer(param("head_period").value,
                                                 lambda: publisher.publish(head))
        self._incompatible_logged = False
        compressed = transport == "compressed"
        self._decode = decode_compressed if compressed else decode_image
        self._stamp_source = param("stamp_source").value
        self._camera_clock = CameraClock() if self._stamp_source == "camera_clock" else None
        # As image_transport does: the base topic remapped first, then "/compressed" added.
        topic = param("input_topic").value
        self._sub = capped_subscription(
            self, CompressedImage if compressed else Image,
            self.resolve_topic_name(topic) + "/compressed" if compressed else topic,
            self._on_image, images, param("max_image_bytes").value, self.rejections, "image",
            max_wait_s=param("max_image_wait").value,
            on_info=None if self._stamp_source == "header" else self._note_arrival,
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible))
        self.get_logger().info(f"active: {self._sub.topic_name} -> {self._pred_pub.topic_name}")
        return TransitionCallbackReturn.SUCCESS

    def _on_incompatible(self, event: Any) -> None:
        # Once per activation: a publisher on the image topic that this subscription will
        # never match (a BEST_EFFORT driver against image_reliability 'reliable').
        if not self._incompatible_logged:
            self._incompatible_logged = True
            self.get_logger().error(
                f"a publisher on {self._sub.topic_name} offers a QoS this image "
                f"subscription cannot match ({event.last_policy_kind.name}): its images never "
                "arrive; for a BEST_EFFORT camera driver set image_reliability:=best_effort")

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop listening and remove the publishers (liveliness of this device ends)."""
        result = super().on_deactivate(state)
        self._destroy_endpoints()
        return result

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Release the model."""
        self._model = None
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Release everything."""
        self._destroy_endpoints()
        self._model = None
        return super().on_shutdown(state)

    def _destroy_endpoints(self) -> None:
        if self._head_timer is not None:
            self.destroy_timer(self._head_timer)
        if self._sub is not None:
            self.destroy_subscription(self._sub)
        for pub in (self._pred_pub, self._head_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._sub = self._pred_pub = self._head_pub = self._head_timer = None

    # -- model -----------------------------------------------------------------------------
    def _load_model(self) -> _Model:
        # Imported here: onnxruntime takes a while to import, and only configure needs it.
        # The runtime module is torch-free; torch comes in below, for the torch backend only.
        from resilient_perception.perception.runtime import (
            DeviceRunner,
            ExportError,
            parse_provider_options,
            view_hw,
        )

        param = self.get_parameter
        device_id, backend = param("device_id").value, param("backend").value
        if not param("model_path").value:
            raise ValueError("parameter model_path is not set")
        path, threads = Path(param("model_path").value), param("threads").value
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if path.suffix == ".safetensors":
            import torch

            from resilient_perception.perception.checkpoint import load_checkpoint

            model, meta = load_checkpoint(path)
            if not device_id < model.n_devices:
                raise ValueError(f"device_id {device_id} out of range: {path} has devices "
                                 f"0..{model.n_devices - 1}")
            torch.set_num_threads(threads)
            runner = DeviceRunner.from_torch(model.device(device_id))
            try:
                input_hw = view_hw(meta)
            except (ExportError, KeyError):
                input_hw = None  # unknown image size: any view size is accepted
        elif path.suffix == ".onnx":
            if backend != "onnxruntime":
                raise ValueError(f"backend {backend!r} needs a .safetensors checkpoint, "
                                 f"got {path}")
            providers = param("providers").value
            runner = DeviceRunner.from_onnx(
                path, providers, threads,
                parse_provider_options(param("provider_options").value, providers))
            meta, input_hw = runner.metadata, runner.input_hw
            if meta["device_id"] != device_id:
                raise ValueError(f"{path} holds device {meta['device_id']}, but device_id "
                                 f"is {device_id}")
        else:
            raise ValueError(f"model_path must be a .onnx or .safetensors file, got {path}")
        device_input = DeviceInput.from_metadata(meta, device_id, runner.in_channels, input_hw,
                                                 crop=param("crop_view").value)
        if input_hw is not None:
            # The first forward pass builds the backend's kernels for this shape (hundreds of
            # ms with several cameras starting on one CPU): do it now, not on the first
            # frame, which would otherwise miss its fusion deadline.
            runner.run(np.zeros((1, runner.in_channels, *input_hw), np.uint8))
        size = "any size" if input_hw is None else f"{input_hw[0]}x{input_hw[1]}"
        cut = "cropped from the full image" if device_input.view_spec else "image used as the view"
        self.get_logger().info(
            f"device {device_id}: {path.name} on {runner.provider}, view {size}, {cut}")
        return _Model(runner, list(meta.get("classes") or ()), device_input)

    def _head_message(self) -> ClassifierHead:
        weight, bias = self._model.runner.head()
        msg = ClassifierHead(
            device_id=self.get_parameter("device_id").value,
            num_classes=weight.shape[0], feature_dim=weight.shape[1],
            weight=weight.ravel().tolist(), bias=bias.tolist(),
            class_names=self._model.classes)
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    # -- images ----------------------------------------------------------------------------
    def _note_arrival(self, info: Any) -> None:
        # Called just before the image's own callback (one executor thread).
        self._arrival_ns = info.get("received_timestamp") or time.time_ns()

    def _on_image(self, msg: Image) -> None:
        start = time.perf_counter()
        if self._stamp_source == "arrival":
            msg.header.stamp = stamp_time(self._arrival_ns)
        elif not (msg.header.stamp.sec or msg.header.stamp.nanosec):
            self.rejections.reject("image", "unstamped",
                                   "header.stamp is 0: the driver does not stamp its images "
                                   "(stamp_source:=arrival stamps them on arrival)")
            self.inputs.add(time.monotonic(), None)
            return
        elif (clock := self._camera_clock) is not None:
            restarts = clock.restarts
            stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            msg.header.stamp = stamp_time(clock.translate(stamp_ns, self._arrival_ns))
            if clock.restarts > restarts:
                self.get_logger().warning(
                    "the camera's clock jumped back or paused (a stamp earlier than the last, "
                    "or 1 s of images all over 1 s later than its offset says): its offset is "
                    "estimated again, now "
                    f"{clock.offset_ns / 1e9:.3f} s ({clock.restarts} restarts)",
                    throttle_duration_sec=5.0)
        try:
            model = self._model
            probs, features = model.runner.run(model.device_input(*self._decode(msg))[None])
        except (ImageConversionError, ValueError) as exc:
            self.rejections.reject("image", "bad_image", str(exc))
            self.inputs.add(time.monotonic(), None)
            return
        except Exception as exc:  # inference failures are counted too, never fatal
            self.rejections.reject("image", "inference_error", f"{type(exc).__name__}: {exc}")
            self.inputs.add(time.monotonic(), None)
            return
        out = DevicePrediction(
            header=msg.header, device_id=self.get_parameter("device_id").value,
            probabilities=probs[0].tolist(), features=features[0].tolist(),
            inference_time=time.perf_counter() - start)
        self._pred_pub.publish(out)
        self.accepted += 1
        self.inputs.add(time.monotonic(), out.inference_time)


def autostart(node: CameraNode) -> int | None:
    """Configure and activate unless ``autostart`` is off; 1 if that fails."""
    if node.get_parameter("autostart").value and not (
        node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        and node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    ):
        node.get_logger().fatal("autostart failed (see above); exiting")
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    """Run a camera node until SIGINT/SIGTERM; return the process exit code.

    Exit codes: 0 after SIGINT/SIGTERM, 1 when autostart cannot configure or activate the
    node, 2 for a parameter of the wrong type or out of its range.
    """
    return run_node(CameraNode, "camera_node", argv, on_created=autostart)


if __name__ == "__main__":
    raise SystemExit(main())
