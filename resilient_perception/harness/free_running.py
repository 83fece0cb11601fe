"""Free-running cameras in front of the pipeline, and the score of what it fused from them.

What a user's own cameras give the pipeline, as processes: one
``free_running_camera_node`` per camera (YUYV at 640x480, one camera JPEG-compressed, each on
its own timer with its own phase and jitter, BEST_EFFORT; see
:mod:`~resilient_perception.ros.free_running_camera_node`), and the camera nodes set up for
them (``image_reliability: best_effort``, ``image_transport: compressed`` for the compressed
one) with a fusion node that groups stamps within ``sync_tolerance``. The test of foreign
cameras and ``bench-pipeline --free-running`` both build their run from here::

    schedule = SceneSchedule.at_rate(time.time_ns() + 5_000_000_000, 30.0, 5, 60, 15.0)
    drivers = Pipeline(camera_drivers(schedule, 6, seed=1), log_dir=..., domain_id=...)
    ...
    score = score_fused(fused_messages, schedule, labels)

The scenes are scored by the schedule, not a label topic: every stamp of a frame maps to
its scene (:meth:`SceneSchedule.scene_of`). :func:`camera_probabilities` computes offline
what the camera nodes compute from the drivers' images, so a fused frame can be compared
with the model exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..perception.runtime import DeviceRunner
from ..ros.free_running_camera_node import SceneSchedule, driver_image
from ..ros.image_conversion import (
    DeviceInput,
    array_to_image,
    decode_compressed,
    decode_image,
    encode,
)
from ..ros.topics import IMAGE_TOPIC_FORMAT
from .pipeline import NodeSpec, pipeline_nodes

__all__ = ["FREE_RUNNING_SYNC_TOLERANCE_S", "LARGE_IMAGES_PROFILE", "SceneSchedule",
           "camera_drivers", "camera_probabilities", "free_running_pipeline_nodes",
           "score_fused"]

LARGE_IMAGES_PROFILE = "fastdds_large_images.xml"
"""Fast DDS profile in ``config/`` for images over 512 KB: without it six 640x480 YUYV
BEST_EFFORT streams lose most images on a loaded machine (the file says why)."""

FREE_RUNNING_SYNC_TOLERANCE_S = 0.025
"""The fusion node's ``sync_tolerance`` for cameras up to 15 ms apart with +-3 ms jitter at
30 Hz: a scene's stamps spread up to 21 ms, and a camera's next image comes at least
33.3 - 6 ms after its last, so at most 27 ms after the frame's earliest stamp."""


def camera_drivers(
    schedule: SceneSchedule,
    num_cameras: int = 6,
    *,
    seed: int = 0,
    compressed: Iterable[int] = (),
    jitter_ms: float = 3.0,
    start_index: int = 0,
    size: tuple[int, int] = (640, 480),
    image_topic_format: str = IMAGE_TOPIC_FORMAT,
    dds_profile: str | os.PathLike[str] | None = None,
    stamp_clock: str = "host",
) -> list[NodeSpec]:
    """One ``free_running_camera_node`` per camera (node ``driver_i``) for ``schedule``.

    Camera ``i`` publishes on ``image_topic_format.format(i)`` (plus ``/compressed`` for the
    cameras in ``compressed``), with a phase drawn uniformly from ``0 ..
    schedule.max_phase_ns`` (``seed``) and its own jitter seed. ``dds_profile`` is a Fast
    DDS XML profile for the drivers' processes (e.g. :data:`LARGE_IMAGES_PROFILE`).
    ``stamp_clock`` is the drivers' (``STAMP_CLOCKS``): with ``camera`` each camera's clock
    reads 10 .. 1000 s at the epoch and runs -50 .. +50 ppm fast (``seed``), as the crystals
    of cameras that stamp with their own clock do.
    """
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0.0, schedule.max_phase_ns * 1e-6, num_cameras)
    clocks_at_epoch = rng.uniform(10.0, 1000.0, num_cameras)
    drifts_ppm = rng.uniform(-50.0, 50.0, num_cameras)
    compressed = set(compressed)
    rate_hz = 1e9 / schedule.period_ns
    nodes = []
    for i in range(num_cameras):
        topic = image_topic_format.format(i)
        nodes.append(NodeSpec(f"driver_{i}", "free_running_camera_node", {
            "start_index": start_index, "scenes": schedule.scenes,
            "hold_frames": schedule.hold_frames, "epoch_ns": schedule.epoch_ns,
            "rate_hz": rate_hz, "phase_ms": float(phases[i]),
            "max_phase_ms": schedule.max_phase_ns * 1e-6, "jitter_ms": jitter_ms,
            "seed": seed * 1000 + i, "width": size[0], "height": size[1],
            "transport": "compressed" if i in compressed else "raw",
            "frame_id": f"camera_{i}", "stamp_clock": stamp_clock,
            "camera_clock_at_epoch_s": float(clocks_at_epoch[i]),
            "camera_clock_drift_ppm": float(drifts_ppm[i])},
            (("image_raw", topic), ("image_raw/compressed", f"{topic}/compressed")),
            env=_profile_env(dds_profile)))
    return nodes


def _profile_env(dds_profile: str | os.PathLike[str] | None) -> dict[str, str]:
    return {} if dds_profile is None else {
        "FASTDDS_DEFAULT_PROFILES_FILE": os.path.abspath(dds_profile)}


def free_running_pipeline_nodes(
    model_path: str | os.PathLike[str],
    num_cameras: int = 6,
    *,
    compressed: Iterable[int] = (),
    sync_tolerance: float = FREE_RUNNING_SYNC_TOLERANCE_S,
    frame_timeout: float | None = None,
    max_image_wait: float | None = None,
    dds_profile: str | os.PathLike[str] | None = None,
    stamp_source: str = "header",
) -> list[NodeSpec]:
    """Fusion and camera nodes (no player) set up for :func:`camera_drivers`' cameras.

    ``frame_timeout`` (None: the config's) is the fusion node's, and the cameras'
    ``max_image_wait`` with it unless that is given (None: the config's): an image that
    waited longer gives a prediction its frame no longer waits for. ``dds_profile``: a Fast
    DDS XML profile for the cameras' processes, as for the drivers. ``stamp_source`` is the
    cameras' (``camera_clock`` for drivers stamping on their own clocks, ``arrival`` for
    drivers that do not stamp).
    """
    if max_image_wait is None:
        max_image_wait = frame_timeout
    compressed = set(compressed)
    nodes = []
    for spec in pipeline_nodes(num_cameras, player=False, model_path=model_path,
                               image_reliability="best_effort", max_image_wait=max_image_wait):
        extra: dict[str, Any] = {}
        env = spec.env
        if spec.executable == "fusion_node":
            extra["sync_tolerance"] = sync_tolerance
            if frame_timeout is not None:
                extra["frame_timeout"] = frame_timeout
        else:
            env = {**env, **_profile_env(dds_profile)}
            extra["stamp_source"] = stamp_source
            if spec.parameters["device_id"] in compressed:
                extra["image_transport"] = "compressed"
        nodes.append(replace(spec, parameters={**spec.parameters, **extra}, env=env))
    return nodes


def camera_probabilities(
    onnx_pattern: str,
    images: np.ndarray,
    num_cameras: int = 6,
    *,
    compressed: Iterable[int] = (),
    size: tuple[int, int] | None = (640, 480),
) -> np.ndarray:
    """What each camera node computes from its driver's image of each scene, here, offline.

    :func:`camera_drivers`' messages of ``images`` ``(scenes, C, H, W)`` (the drivers'
    :func:`driver_image` at ``size``; None: the dataset's own pixels, as the player sends
    them), decoded and cut as the camera nodes do (:class:`DeviceInput`), through the same
    ONNX exports (``onnx_pattern``: ``.../device_{}.onnx``). Returns the probabilities
    ``(scenes, cameras, classes)``; their mean over the cameras is what the fusion node
    fuses (``fusion_mode`` avg) from a complete frame of that scene. The two sizes side by
    side tell what the drivers' images (enlarged, YUYV or JPEG) cost from what the pipeline
    loses.
    """
    compressed = set(compressed)
    probabilities = []
    for camera in range(num_cameras):
        runner = DeviceRunner.from_onnx(onnx_pattern.format(camera), threads=1)
        device_input = DeviceInput.from_metadata(runner.metadata, camera, runner.in_channels,
                                                 runner.input_hw)
        jpeg = size is not None and camera in compressed
        if size is None:  # the player's messages: the dataset's pixels
            messages = [array_to_image(*encode(image)) for image in images]
        else:
            messages = [driver_image(image, size, jpeg) for image in images]
        decode = decode_compressed if jpeg else decode_image
        views = np.stack([device_input(*decode(msg)) for msg in messages])
        probabilities.append(runner.run(views)[0])
    return np.stack(probabilities, axis=1)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def score_fused(fused: Sequence[Any], schedule: SceneSchedule, labels: np.ndarray,
                num_devices: int = 6, offline: np.ndarray | None = None) -> dict:
    """Score ``FusedPrediction`` messages against the scenes they were stamped in.

    Only frames stamped within the schedule count. ``labels[s]`` is scene ``s``'s class;
    ``offline[s]`` (optional) the class the model gives scene ``s`` from the drivers'
    images (:func:`camera_probabilities`, averaged over the cameras).

    Returns:
        ``frames`` (scheduled), ``fused`` (fused messages in the schedule), ``complete``
        (of those, every device live and no surrogate), ``complete_fraction`` (complete over
        the larger of frames and fused: a frame split in two counts against it),
        ``frames_seen`` (distinct scheduled frames fused), ``accuracy`` (fused messages whose
        label is their scene's), ``latency_s`` p50 / p99, and per message ``(frame, scene,
        label, complete)`` as ``records``; with ``offline``, ``offline_accuracy`` (the fused
        messages' scenes scored by the offline classes) and ``complete_as_offline`` (the
        fraction of complete messages labelled with their scene's offline class).
    """
    all_devices = list(range(num_devices))
    records = []
    latencies = []
    for msg in fused:
        stamp = _stamp_ns(msg)
        scene = schedule.scene_of(stamp)
        if scene is None:
            continue
        complete = list(msg.live_devices) == all_devices and not list(msg.surrogate_devices)
        records.append((schedule.frame_of(stamp), scene, int(msg.label), complete))
        latencies.append(float(msg.latency))
    complete = [r for r in records if r[3]]
    score = {
        "frames": schedule.frames,
        "fused": len(records),
        "frames_seen": len({r[0] for r in records}),
        "complete": len(complete),
        "complete_fraction": len(complete) / max(schedule.frames, len(records)),
        "accuracy": _mean(label == labels[scene] for _, scene, label, _ in records),
        "latency_s": {f"p{q}": float(np.percentile(latencies, q)) if latencies else None
                      for q in (50, 99)},
    }
    if offline is not None:
        score["offline_accuracy"] = _mean(offline[scene] == labels[scene]
                                          for _, scene, _, _ in records)
        score["complete_as_offline"] = _mean(label == offline[scene]
                                             for _, scene, label, _ in complete)
    return score | {"records": records}


def _mean(flags: Iterable[bool]) -> float | None:
    flags = list(flags)
    return float(np.mean(flags)) if flags else None
