"""Live fuzzing of the perception pipeline: malformed messages from outside, between real frames.

The pipeline runs as deployed (:class:`~..harness.pipeline.Pipeline`: the dataset player,
six camera nodes on ONNX Runtime, the fusion node, each its own process over DDS). While
the player streams the test digits, this process publishes ``messages`` malformed messages
on every topic the nodes subscribe to: camera images, device predictions and classifier
heads (:data:`KINDS`: wrong lengths, NaN/Inf, huge arrays, unknown device ids, stamps an
hour ahead and in 1970, unknown and 1000-character encodings, serialised messages cut short
and published as raw CDR bytes, which rclpy's ``Publisher.publish`` takes as they are).
Each kind says which node must reject it and for which reason, so the expected
``/diagnostics`` counts are known per node and reason. It then checks:

* every node stays up (no exit, and the harness sees no error);
* every node's rejection counters grew by exactly what was sent (per reason), and each
  camera's ``accepted`` equals the player's images plus the fuzz images it had to accept
  (valid pixels with a bad stamp, which the fusion node then rejects);
* every labelled frame is fused exactly once, from all six devices, with output identical
  (bit for bit) to the offline computation: the same ONNX models run in this process on the
  same pixels, fused with :func:`~..perception.frame_assembly.fuse_frame`;
* RSS of every node stays bounded: sampled every second with psutil, the growth after the
  warm-up (the first minute, or the first half of a shorter run) is reported per process.

The fusion node runs with ``frame_timeout`` 1 s and ``watchdog_timeout`` 2 s (the config's
are 0.1 s and 1 s) so that CPU contention on a shared 2-core machine cannot turn a late
valid prediction into a surrogate: what this measures is what the messages do, not
latency. Results: ``fuzz.json`` (everything), ``counts.csv`` (per node and reason) and
``rss.csv`` (samples) in the output folder.
"""

from __future__ import annotations

import array
import contextlib
import csv
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from tqdm import tqdm

from resilient_perception.datasets import load_dataset
from resilient_perception.harness.pipeline import Observer, Pipeline
from resilient_perception.msg import (
    ClassifierHead,
    DevicePrediction,
    FrameLabel,
    FusedPrediction,
)
from resilient_perception.perception.export import DeviceRunner
from resilient_perception.perception.frame_assembly import ClassifierHeads, Frame, fuse_frame
from resilient_perception.perception.views import ViewSpec, crop_view
from resilient_perception.ros.image_conversion import (
    array_to_image,
    encode,
    image_to_array,
    to_model_input,
)
from resilient_perception.ros.topics import (
    CAMERA_STATUS,
    DIAGNOSTICS_TOPIC,
    FUSED_TOPIC,
    FUSION_ASSEMBLY_STATUS,
    HEAD_QUEUE_DEPTH,
    HEAD_TOPIC_FORMAT,
    IMAGE_TOPIC_FORMAT,
    LABEL_TOPIC,
    PREDICTION_TOPIC_FORMAT,
    head_qos,
    image_qos,
    label_qos,
    prediction_qos,
    status_node,
)

__all__ = ["KINDS", "FuzzKind", "markdown_report", "run_fuzz"]

CAMERA_MAX_IMAGE_BYTES = 1 << 16
"""The cameras' ``max_image_bytes`` in the run: MNIST images are 784 bytes, so a 100 kB
image is already "huge"; the default (8 MB) would make every oversize image cost 8 MB of
shared memory traffic."""
FUSION_OVERRIDES = {"frame_timeout": 1.0, "watchdog_timeout": 2.0}
HOUR_NS = 3600 * 10**9


@dataclass(frozen=True)
class FuzzKind:
    """One kind of malformed message: its topic, the node that rejects it, and why.

    ``node`` is ``"camera"`` (the camera of the device the message goes to) or
    ``"fusion"``; ``reason`` the rejection counter that must grow by one.
    """

    name: str
    topic: str  # "image", "prediction" or "head"
    node: str
    reason: str


KINDS = (
    FuzzKind("image_unknown_encoding", "image", "camera", "bad_image"),
    FuzzKind("image_1000_char_encoding", "image", "camera", "bad_image"),
    FuzzKind("image_data_too_short", "image", "camera", "bad_image"),
    FuzzKind("image_zero_height", "image", "camera", "bad_image"),
    FuzzKind("image_step_too_small", "image", "camera", "bad_image"),
    FuzzKind("image_too_small_for_the_grid", "image", "camera", "bad_image"),
    FuzzKind("image_huge", "image", "camera", "oversize"),
    FuzzKind("image_truncated_cdr", "image", "camera", "malformed"),
    FuzzKind("image_stamp_hour_ahead", "image", "fusion", "stamp_ahead"),
    FuzzKind("image_stamp_1970", "image", "fusion", "stamp_too_old"),
    FuzzKind("image_nan_inf_32fc1_stamp_1970", "image", "fusion", "stamp_too_old"),
    FuzzKind("prediction_unknown_device_id", "prediction", "fusion", "device_id_mismatch"),
    FuzzKind("prediction_stamp_hour_ahead", "prediction", "fusion", "stamp_ahead"),
    FuzzKind("prediction_stamp_1970", "prediction", "fusion", "stamp_too_old"),
    FuzzKind("prediction_wrong_probs_length", "prediction", "fusion", "bad_probs_length"),
    FuzzKind("prediction_nan_probs", "prediction", "fusion", "non_finite"),
    FuzzKind("prediction_inf_features", "prediction", "fusion", "non_finite"),
    FuzzKind("prediction_negative_probs", "prediction", "fusion", "bad_probabilities"),
    FuzzKind("prediction_unnormalised_probs", "prediction", "fusion", "bad_probabilities"),
    FuzzKind("prediction_wrong_features_length", "prediction", "fusion",
             "bad_features_length"),
    FuzzKind("prediction_huge_features", "prediction", "fusion", "value_out_of_range"),
    FuzzKind("prediction_huge_array", "prediction", "fusion", "oversize"),
    FuzzKind("prediction_truncated_cdr", "prediction", "fusion", "malformed"),
    FuzzKind("head_nan_weights", "head", "fusion", "bad_head"),
    FuzzKind("head_wrong_lengths", "head", "fusion", "bad_head"),
    FuzzKind("head_unknown_device_id", "head", "fusion", "bad_head"),
    FuzzKind("head_zero_classes", "head", "fusion", "bad_head"),
    FuzzKind("head_huge_values", "head", "fusion", "bad_head"),
    FuzzKind("head_other_shape", "head", "fusion", "head_shape_mismatch"),
    FuzzKind("head_huge_array", "head", "fusion", "head_oversize"),
    FuzzKind("head_truncated_cdr", "head", "fusion", "head_malformed"),
)
"""Every kind of malformed message the fuzzer sends, drawn uniformly."""


def _f32(values: np.ndarray) -> array.array:
    # An array.array is taken as it is; a list is checked element by element in Python
    # (a second for the 300,000 floats of a huge head).
    return array.array("f", np.asarray(values, np.float32).tobytes())


def _u8(data: bytes) -> array.array:
    return array.array("B", data)


def _truncated(msg: Any, rng: random.Random) -> bytes:
    """``msg`` serialised and cut short so that it no longer deserialises.

    Checked here (a cut inside trailing padding can still deserialise): the node must count
    it as ``malformed``, so only cuts that fail here are sent. Cuts are whole 4-byte words:
    the middleware pads a serialised payload to a multiple of 4 bytes, and the zeros it
    appends to a cut elsewhere can complete the message again (one truncated prediction
    then arrived whole enough to be fused).
    """
    data = serialize_message(msg)
    for _ in range(20):
        cut = data[:rng.randrange(4, len(data) - 1, 4)]
        try:
            deserialize_message(cut, type(msg))
        except Exception:  # rclpy raises a bare RuntimeError/ValueError for bad CDR
            return cut
    return data[:4]  # the encapsulation header alone never deserialises


class _Fuzzer:
    """Builds the malformed messages; knows the valid shapes they deviate from."""

    def __init__(self, rng: random.Random, image: np.ndarray, n_classes: int,
                 feature_dim: int) -> None:
        self.rng, self.image = rng, image  # image: (H, W, C) uint8 of a real frame
        self.k, self.d = n_classes, feature_dim

    def _stamp(self, offset_ns: int = 0) -> Any:
        from builtin_interfaces.msg import Time

        # Half a second back: inside the fusion node's stamp window, so only the defect
        # under test is wrong.
        sec, nanosec = divmod(time.time_ns() - 500_000_000 + offset_ns, 10**9)
        return Time(sec=max(sec, 0), nanosec=nanosec)

    def _image(self, array: np.ndarray, encoding: str, stamp: Any = None) -> Image:
        msg = array_to_image(array, encoding, stamp if stamp is not None else self._stamp(),
                             frame_id="fuzz")
        msg.data = _u8(bytes(msg.data))
        return msg

    def _softmax(self) -> np.ndarray:
        logits = np.asarray([self.rng.gauss(0, 3) for _ in range(self.k)], np.float32)
        e = np.exp(logits - logits.max())
        return (e / e.sum()).astype(np.float32)

    def _prediction(self, device: int, probs: np.ndarray | None = None,
                    features: np.ndarray | None = None, stamp: Any = None,
                    device_id: int | None = None) -> DevicePrediction:
        msg = DevicePrediction(
            device_id=device if device_id is None else device_id,
            probabilities=_f32(self._softmax() if probs is None else probs),
            features=_f32(np.ones(self.d, np.float32) if features is None else features))
        msg.header.stamp = stamp if stamp is not None else self._stamp()
        return msg

    def _head(self, device: int, k: int | None = None, d: int | None = None,
              weight: np.ndarray | None = None, bias: np.ndarray | None = None,
              device_id: int | None = None) -> ClassifierHead:
        k = self.k if k is None else k
        d = self.d if d is None else d
        msg = ClassifierHead(
            device_id=device if device_id is None else device_id, num_classes=k,
            feature_dim=d,
            weight=_f32(np.zeros(k * d, np.float32) if weight is None else weight),
            bias=_f32(np.zeros(k, np.float32) if bias is None else bias))
        msg.header.stamp = self._stamp()
        return msg

    def build(self, kind: str, device: int) -> Any:
        """The message (or raw CDR bytes) of ``kind`` for ``device``'s topic."""
        rng, image, k, d = self.rng, self.image, self.k, self.d
        old = self._stamp(-time.time_ns() + 10**9)  # 1970-01-01T00:00:01
        ahead = self._stamp(HOUR_NS)
        if kind == "image_unknown_encoding":
            msg = self._image(image, "mono8")
            # not "mono8\\x00": a ROS string ends at its first NUL, so that arrives as "mono8"
            msg.encoding = rng.choice(["nv21", "", "MONO8", "jpeg", "mono 8"])
            return msg
        if kind == "image_1000_char_encoding":
            msg = self._image(image, "mono8")
            msg.encoding = "x" * 1000
            return msg
        if kind == "image_data_too_short":
            msg = self._image(image, "mono8")
            msg.data = _u8(bytes(msg.data)[:rng.randrange(0, len(msg.data))])
            return msg
        if kind == "image_zero_height":
            msg = self._image(image, "mono8")
            msg.height = 0
            return msg
        if kind == "image_step_too_small":
            msg = self._image(image, "mono8")
            msg.step = rng.randrange(0, msg.width)
            return msg
        if kind == "image_too_small_for_the_grid":
            # Other sizes are resized to the model's input: only a grid cell without a
            # pixel (3x2 grid) is an error.
            h, w = rng.choice([(1, 1), (2, 2), (2, 5), (5, 1)])
            return self._image(np.zeros((h, w), np.uint8), "mono8")
        if kind == "image_huge":
            side = rng.choice([400, 700, 1200])  # 160 kB .. 1.4 MB, all over the 64 kB cap
            return self._image(np.zeros((side, side), np.uint8), "mono8")
        if kind == "image_truncated_cdr":
            return _truncated(self._image(image, "mono8"), rng)
        if kind == "image_stamp_hour_ahead":
            return self._image(image, "mono8", ahead)
        if kind == "image_stamp_1970":
            return self._image(image, "mono8", old)
        if kind == "image_nan_inf_32fc1_stamp_1970":
            pixels = np.full(image.shape[:2], np.nan, np.float32)
            pixels[::2] = np.inf
            return self._image(pixels, "32FC1", old)
        if kind == "prediction_unknown_device_id":
            return self._prediction(device, device_id=rng.choice([device + 6, 99, 65535]))
        if kind == "prediction_stamp_hour_ahead":
            return self._prediction(device, stamp=ahead)
        if kind == "prediction_stamp_1970":
            return self._prediction(device, stamp=old)
        if kind == "prediction_wrong_probs_length":
            n = rng.choice([0, 1, k - 1, k + 1, 3 * k])
            return self._prediction(device, probs=np.full(n, 1.0 / max(n, 1), np.float32))
        if kind == "prediction_nan_probs":
            probs = self._softmax()
            probs[rng.randrange(k)] = rng.choice([np.nan, np.inf, -np.inf])
            return self._prediction(device, probs=probs)
        if kind == "prediction_inf_features":
            features = np.ones(d, np.float32)
            features[rng.randrange(d)] = rng.choice([np.nan, np.inf, -np.inf])
            return self._prediction(device, features=features)
        if kind == "prediction_negative_probs":
            probs = self._softmax()
            probs[0] -= 1.0
            probs[1] += 1.0  # still sums to 1
            return self._prediction(device, probs=probs)
        if kind == "prediction_unnormalised_probs":
            return self._prediction(device, probs=self._softmax() * rng.choice([0.5, 2.0, 1e6]))
        if kind == "prediction_wrong_features_length":
            n = rng.choice([0, 1, d - 1, d + 1])
            return self._prediction(device, features=np.ones(n, np.float32))
        if kind == "prediction_huge_features":
            features = np.ones(d, np.float32)
            features[rng.randrange(d)] = rng.choice([1e7, -1e30, 3e38])
            return self._prediction(device, features=features)
        if kind == "prediction_huge_array":
            return self._prediction(device, probs=np.zeros(20_000, np.float32))
        if kind == "prediction_truncated_cdr":
            return _truncated(self._prediction(device), rng)
        if kind == "head_nan_weights":
            weight = np.zeros(k * d, np.float32)
            weight[rng.randrange(k * d)] = np.nan
            return self._head(device, weight=weight)
        if kind == "head_wrong_lengths":
            return self._head(device, weight=np.zeros(k * d - 1, np.float32))
        if kind == "head_unknown_device_id":
            return self._head(device, device_id=rng.choice([device + 6, 99, 65535]))
        if kind == "head_zero_classes":
            return self._head(device, k=0, d=d, weight=np.zeros(0, np.float32),
                              bias=np.zeros(0, np.float32))
        if kind == "head_huge_values":
            return self._head(device, bias=np.full(k, 1e30, np.float32))
        if kind == "head_other_shape":
            # Well-formed but of another shape: it is this device's vote, which the other
            # five devices' real heads outvote (only ever one other shape, see _device_for).
            return self._head(device, k=k + 1)
        if kind == "head_huge_array":
            return self._head(device, d=d, weight=np.zeros(300_000, np.float32))
        if kind == "head_truncated_cdr":
            return _truncated(self._head(device), rng)
        raise ValueError(f"unknown fuzz kind {kind!r}")


def _device_for(kind: FuzzKind, rng: random.Random, n: int) -> int:
    # A well-formed head of another shape always goes to device 0: it is that device's
    # vote on the shape, and the other devices' real heads must stay the majority.
    return 0 if kind.name == "head_other_shape" else rng.randrange(n)


def _node_counts(arrays: list[tuple[float, DiagnosticArray]],
                 since: float = 0.0) -> dict[str, dict]:
    """Latest counters per node (``camera_i``, ``fusion``) from /diagnostics arrays."""
    latest: dict[str, dict] = {}
    for received, diagnostics in arrays:
        if received < since:
            continue
        for status in diagnostics.status:
            values = {kv.key: kv.value for kv in status.values}
            node = status_node(status.name).lstrip("/")  # the nodes run in the root namespace
            what = status.name.rpartition(": ")[2]
            if what == FUSION_ASSEMBLY_STATUS or (what == CAMERA_STATUS and "accepted" in values):
                latest[node] = values
    return latest


def _ns(msg: Any) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _int_counts(values: dict) -> dict[str, int]:
    return {k: int(v) for k, v in values.items() if v.lstrip("-").isdigit()}


class _Reference:
    """What the fusion node must output for a played frame: the offline computation."""

    def __init__(self, onnx_pattern: str, n: int, data_root: Path | None) -> None:
        self.runners = [DeviceRunner.from_onnx(onnx_pattern.format(i), threads=1)
                        for i in range(n)]
        self.spec = ViewSpec.from_dict(self.runners[0].metadata["view_spec"])
        self.data = load_dataset("mnist", "test", data_root)
        weights, biases = zip(*(r.head() for r in self.runners), strict=True)
        k, d = weights[0].shape
        self.heads = ClassifierHeads.empty(n, k, d)
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            self.heads.set_head(i, w, b)
        self.n, self.k, self.d = n, k, d

    def pixels(self, index: int) -> np.ndarray:
        """Frame ``index`` as the player sends it, ``(H, W, C)``."""
        return encode(self.data.images[index])[0]

    def fused(self, index: int) -> np.ndarray:
        """The camera nodes' path (message -> array -> view -> ONNX) and the fusion."""
        pixels, encoding = encode(self.data.images[index])
        msg = array_to_image(pixels, encoding)
        probs = np.zeros((self.n, self.k), np.float32)
        features = np.zeros((self.n, self.d), np.float32)
        for i, runner in enumerate(self.runners):
            image = to_model_input(image_to_array(msg), encoding, runner.in_channels)
            view = crop_view(image, self.spec.boxes(image.shape[1], image.shape[2])[i])
            p, f = runner.run(view[None])
            # the camera sends float32 lists; the fusion node reads them back as float32
            probs[i] = np.asarray(p[0].tolist(), np.float32)
            features[i] = np.asarray(f[0].tolist(), np.float32)
        frame = Frame(0, probs, features, np.ones(self.n, bool), 0.0)
        return fuse_frame(frame, self.heads, "avg", True)[0]


def _rss_summary(samples: list[dict], names: list[str], warmup_s: float) -> dict:
    summary = {}
    for name in names:
        series = [(s["t"], s[name]) for s in samples if s.get(name) is not None]
        before = [rss for t, rss in series if t <= warmup_s]
        after = [rss for t, rss in series if t > warmup_s]
        if not before or not after:
            continue
        growth = max(after) - max(before)
        summary[name] = {"rss_at_warmup_mb": round(max(before) / 1e6, 2),
                         "rss_end_mb": round(after[-1] / 1e6, 2),
                         "rss_max_after_warmup_mb": round(max(after) / 1e6, 2),
                         "growth_after_warmup_mb": round(growth / 1e6, 2)}
    return summary


def run_fuzz(
    config: Path,
    onnx_pattern: str,
    out_dir: Path,
    messages: int = 1000,
    rate_hz: float = 100.0,
    frame_rate_hz: float = 10.0,
    seed: int = 0,
    num_cameras: int = 6,
    data_root: Path | None = None,
    rss_growth_limit_mb: float = 5.0,
    progress: bool = True,
) -> dict:
    """Fuzz the live pipeline with ``messages`` malformed messages; return the report.

    Args:
        config: params file (``config/mnist_6cam.yaml``).
        onnx_pattern: the cameras' models, ``.../device_{}.onnx``.
        out_dir: gets ``fuzz.json``, ``counts.csv``, ``rss.csv`` and ``logs/``.
        messages: malformed messages to send, kinds drawn uniformly from :data:`KINDS`.
        rate_hz: malformed messages per second.
        frame_rate_hz: the player's (valid) frames per second meanwhile.
        seed: of the kinds, devices and defects drawn.
        num_cameras: cameras (devices).
        data_root: datasets folder (None: the player's and loader's default).
        rss_growth_limit_mb: the largest RSS growth after the warm-up that counts as bounded.
        progress: show a tqdm progress bar.

    Returns:
        The report (also ``out_dir/fuzz.json``); ``report["passed"]`` says whether every
        check held, ``report["failures"]`` what did not.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    reference = _Reference(onnx_pattern, num_cameras, data_root)
    overrides: dict[str, dict] = {
        "fusion": FUSION_OVERRIDES,
        # The player starts once each camera (active) and this process's image counter
        # have subscribed: an image played before a camera's subscription matched would be
        # counted here as played but never reach that camera.
        "player": {"rate_hz": frame_rate_hz, "count": 0, "loop": True,
                   "wait_for_subscribers": 2, "wait_for_label_subscribers": 1,
                   **({"data_dir": str(data_root)} if data_root else {})},
        **{f"camera_{i}": {"max_image_bytes": CAMERA_MAX_IMAGE_BYTES}
           for i in range(num_cameras)}}
    fuzzer = _Fuzzer(rng, reference.pixels(0), reference.k, reference.d)
    expected: Counter[tuple[str, str]] = Counter()
    sent: Counter[str] = Counter()
    camera_extra = Counter()  # fuzz images a camera must accept (valid pixels, bad stamp)
    rss: list[dict] = []
    failures: list[str] = []
    with (Observer(name="fuzz_observer") as observer,
          Pipeline.from_config(config, model_path=onnx_pattern, num_cameras=num_cameras,
                               overrides=overrides, log_dir=out_dir / "logs") as pipeline):
        node = observer.node
        arrays: list[tuple[float, DiagnosticArray]] = []
        node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                 lambda m: arrays.append((time.monotonic(), m)), 100)
        labels = observer.collect(FrameLabel, LABEL_TOPIC, label_qos())
        fused = observer.collect(FusedPrediction, FUSED_TOPIC)
        played = Counter()  # the player's images per camera (frame_id camera_i)

        def count_image(data: bytes, camera: int) -> None:
            if len(data) <= CAMERA_MAX_IMAGE_BYTES:
                with contextlib.suppress(Exception):  # truncated fuzz images
                    if deserialize_message(data, Image).header.frame_id != "fuzz":
                        played[camera] += 1

        for i in range(num_cameras):
            node.create_subscription(Image, IMAGE_TOPIC_FORMAT.format(i),
                                     lambda d, i=i: count_image(d, i), image_qos(), raw=True)
        publishers = {
            "image": [node.create_publisher(Image, IMAGE_TOPIC_FORMAT.format(i), image_qos())
                      for i in range(num_cameras)],
            # Offered deadline and lease as the cameras offer them: a writer offering less
            # than the fusion node requests would never be matched.
            "prediction": [node.create_publisher(
                DevicePrediction, PREDICTION_TOPIC_FORMAT.format(i), prediction_qos(0.5, 1.0))
                for i in range(num_cameras)],
            # Latched like the cameras' (the fusion node asks for TRANSIENT_LOCAL), with the
            # fusion node's reader depth as history: a writer's KEEP_LAST 1 would replace a
            # head not yet acknowledged by the next one.
            "head": [node.create_publisher(ClassifierHead, HEAD_TOPIC_FORMAT.format(i),
                                           head_qos(HEAD_QUEUE_DEPTH))
                     for i in range(num_cameras)]}
        pipeline.start_ready(observer, timeout=120.0)
        # The warm-up: every device heard and fused live before the first labelled frame.
        observer.spin_until(lambda: len(labels) >= 5 and len(fused) >= 5,
                            "the first labelled frames fused", 120.0, pipeline)
        observer.spin_for(2.5)  # fresh /diagnostics from every node: the baseline
        baseline = {name: _int_counts(v) for name, v in _node_counts(arrays).items()}
        for name in ["fusion", *(f"camera_{i}" for i in range(num_cameras))]:
            if name not in baseline:
                failures.append(f"no /diagnostics from {name} before the fuzz")
        procs = {name: psutil.Process(pipeline.pid(name)) for name in pipeline.names}
        # Every publisher matched before the first message: an unmatched one loses it.
        observer.spin_until(lambda: all(p.get_subscription_count() >= 1
                                        for ps in publishers.values() for p in ps),
                            "the fuzz publishers matched", 30.0, pipeline)
        t0 = time.monotonic()
        next_sample = 0.0
        first_label = len(labels)
        bar = tqdm(total=messages, unit="msg", desc="fuzz", disable=not progress)
        for n in range(messages):
            kind = rng.choice(KINDS)
            device = _device_for(kind, rng, num_cameras)
            publishers[kind.topic][device].publish(fuzzer.build(kind.name, device))
            sent[kind.name] += 1
            target = f"camera_{device}" if kind.node == "camera" else "fusion"
            expected[(target, kind.reason)] += 1
            if kind.topic == "image" and kind.node == "fusion":
                camera_extra[device] += 1
            bar.update()
            # Paced by the clock, spinning meanwhile (the observer's queues must drain).
            if not observer.context.ok():  # rclpy's SIGINT handler shut it down
                raise KeyboardInterrupt
            while (t := time.monotonic() - t0) < (n + 1) / rate_hz:
                observer.executor.spin_once(timeout_sec=min(0.005, (n + 1) / rate_hz - t))
            if t >= next_sample:
                rss.append({"t": round(t, 2), **{
                    name: (p.memory_info().rss if pipeline.running(name) else None)
                    for name, p in procs.items()}})
                next_sample += 1.0
                pipeline.check()
        bar.close()
        fuzz_seconds = time.monotonic() - t0
        labelled_during = len(labels) - first_label
        observer.spin_for(1.0)
        down = [name for name in pipeline.names if not pipeline.running(name)]
        if down:
            failures.append(f"nodes not running after the fuzz: {down}")
        pipeline.interrupt("player")
        with contextlib.suppress(TimeoutError):  # what is still missing is reported below
            observer.spin_until(lambda: {_ns(m) for m in labels} <= {_ns(m) for m in fused},
                                "every labelled frame fused", 15.0, pipeline)
        drained = time.monotonic()
        observer.spin_until(lambda: len(_node_counts(arrays, drained + 0.1)) >= num_cameras + 1,
                            "fresh /diagnostics of every node", 10.0, pipeline)
        final = {name: _int_counts(v) for name, v in _node_counts(arrays, drained + 0.1).items()}
        pipeline.check()

    # -- the checks --------------------------------------------------------------------------
    rows = []
    for name in sorted(final):
        reasons = set(final[name]) | set(baseline.get(name, {}))
        for reason in sorted(reasons):
            if reason in ("received", "accepted", "rejected", "fused", "pending", "heads_known",
                          "heads_of_other_shapes", "own_stalls", "deadlines_doubted",
                          "image_publishers"):
                continue
            got = final[name].get(reason, 0) - baseline.get(name, {}).get(reason, 0)
            want = expected.get((name, reason), 0)
            rows.append({"node": name, "reason": reason, "sent": want, "counted": got})
            if got != want:
                failures.append(f"{name}: {reason} counted {got}, sent {want}")
    for (name, reason), want in expected.items():
        if not any(r["node"] == name and r["reason"] == reason for r in rows):
            rows.append({"node": name, "reason": reason, "sent": want, "counted": 0})
            failures.append(f"{name}: no {reason} counter, sent {want}")
    for i in range(num_cameras):
        name = f"camera_{i}"
        got = final.get(name, {}).get("accepted")
        want = played[i] + camera_extra[i]
        rows.append({"node": name, "reason": "accepted", "sent": want, "counted": got})
        if got != want:
            failures.append(f"{name}: accepted {got}, expected {played[i]} played + "
                            f"{camera_extra[i]} fuzz images with bad stamps")

    by_stamp: dict[int, list[FusedPrediction]] = {}
    for msg in fused:
        by_stamp.setdefault(_ns(msg), []).append(msg)
    identical = wrong = missing = duplicated = 0
    max_diff = 0.0
    for label in labels:
        out = by_stamp.get(_ns(label), [])
        if not out:
            missing += 1
            continue
        duplicated += len(out) > 1
        got = np.asarray(out[0].probabilities, np.float32)
        want = reference.fused(int(label.frame_index))
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        max_diff = max(max_diff, diff)
        complete = list(out[0].live_devices) == list(range(num_cameras)) and not list(
            out[0].surrogate_devices)
        if complete and np.array_equal(got, want):
            identical += 1
        else:
            wrong += 1
    frames = {"labelled": len(labels), "labelled_during_fuzz": labelled_during,
              "identical_to_offline": identical, "different": wrong, "missing": missing,
              "duplicated": duplicated, "max_abs_difference": max_diff}
    if identical != len(labels):
        failures.append(f"{identical} of {len(labels)} labelled frames fused identically "
                        f"({wrong} different, {missing} missing; max |diff| {max_diff:g})")
    if duplicated:
        failures.append(f"{duplicated} labelled frames fused more than once")
    warmup_s = min(60.0, fuzz_seconds / 2)
    memory = _rss_summary(rss, list(procs), warmup_s)
    for name, m in memory.items():
        if m["growth_after_warmup_mb"] > rss_growth_limit_mb:
            failures.append(f"{name}: RSS grew {m['growth_after_warmup_mb']} MB after the "
                            f"first {warmup_s:.0f} s")
    report = {
        "messages": messages, "rate_hz": rate_hz, "frame_rate_hz": frame_rate_hz,
        "seed": seed, "num_cameras": num_cameras, "fuzz_seconds": round(fuzz_seconds, 1),
        "fusion_overrides": FUSION_OVERRIDES, "camera_max_image_bytes": CAMERA_MAX_IMAGE_BYTES,
        "sent_per_kind": dict(sorted(sent.items())),
        "kinds": [vars(k) for k in KINDS],
        "counts": rows, "frames": frames,
        "rss_warmup_s": warmup_s, "rss_growth_limit_mb": rss_growth_limit_mb,
        "rss": memory, "nodes_exit_codes_after_stop": pipeline.stop(),
        "failures": failures, "passed": not failures,
    }
    _write(out_dir, report, rows, rss)
    return report


def _write(out_dir: Path, report: dict, rows: list[dict], rss: list[dict]) -> None:
    (out_dir / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out_dir / "counts.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["node", "reason", "sent", "counted"])
        writer.writeheader()
        writer.writerows(rows)
    if rss:
        with (out_dir / "rss.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rss[0]))
            writer.writeheader()
            writer.writerows(rss)


def markdown_report(report: dict, emit: Callable[[str], None] | None = None) -> str:
    """A short Markdown summary of :func:`run_fuzz`'s report."""
    f = report["frames"]
    lines = [
        f"{report['messages']} malformed messages in {report['fuzz_seconds']} s "
        f"({len(report['sent_per_kind'])} kinds), {f['labelled']} labelled frames "
        f"({f['labelled_during_fuzz']} during the fuzz): {f['identical_to_offline']} fused "
        f"identically to the offline computation, {f['different']} different, "
        f"{f['missing']} missing, {f['duplicated']} duplicated.",
        "",
        "| node | reason | sent | counted |", "|---|---|---:|---:|",
        *(f"| {r['node']} | {r['reason']} | {r['sent']} | {r['counted']} |"
          for r in report["counts"] if r["sent"] or r["counted"]),
        "",
        "| process | RSS at warm-up (MB) | end (MB) | growth after warm-up (MB) |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {m['rss_at_warmup_mb']} | {m['rss_end_mb']} | "
          f"{m['growth_after_warmup_mb']} |" for name, m in report["rss"].items()),
        "",
        "passed" if report["passed"] else "FAILED: " + "; ".join(report["failures"]),
    ]
    text = "\n".join(lines) + "\n"
    if emit is not None:
        emit(text)
    return text
