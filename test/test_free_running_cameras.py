"""Foreign cameras: six free-running camera drivers (not the player) in front of the pipeline.

Each driver is its own process (``free_running_camera_node``: plain rclpy and OpenCV, none of
the player's code) on its own 30 Hz timer with its own phase (0-15 ms) and +-3 ms jitter,
publishing 640x480 YUYV BEST_EFFORT, one of them JPEG on ``image_raw/compressed``; each test
digit holds for several frames. The camera nodes take them with their defaults for drivers
(best effort, the compressed transport for that one), the fusion node groups the stamps
within ``sync_tolerance``. A frame fused from its six cameras carries what the model computes
offline from the drivers' images (``test_pipeline`` checks the same for the player pipeline
and the dataset's pixels).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from test.conftest import DATA_ROOT, ROOT, domain_id, needs_data, require_ros

msgs = require_ros()

from resilient_perception.datasets import load_mnist  # noqa: E402
from resilient_perception.harness.free_running import (  # noqa: E402
    LARGE_IMAGES_PROFILE,
    SceneSchedule,
    camera_drivers,
    camera_probabilities,
    free_running_pipeline_nodes,
    score_fused,
)
from resilient_perception.harness.pipeline import Observer, Pipeline, package_prefix  # noqa: E402
from resilient_perception.ros.topics import (  # noqa: E402
    FUSED_TOPIC,
    PREDICTION_TOPIC_FORMAT,
    prediction_qos,
)

DOMAIN_ID = domain_id()
CONFIG = ROOT / "config" / "mnist_6cam.yaml"
DDS_PROFILE = ROOT / "config" / LARGE_IMAGES_PROFILE  # 600 KB BEST_EFFORT images arrive
SCENES, HOLD, RATE_HZ = 60, 5, 30.0  # 300 frames, 10 s
WARMUP_S = 8.0  # drivers start, cameras match them, every device is heard once
COMPRESSED = (5,)
KILLED = 2
DEADLINE_S = 0.5  # config/mnist_6cam.yaml
ON_TIME_S = DEADLINE_S / 2  # a frame's six predictions this close here reach fusion in time
MAX_SPREAD_S = 0.021  # a frame's stamps: phases 0-15 ms, +-3 ms jitter
LIB = package_prefix() / "lib" / "resilient_perception"

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not (LIB / "free_running_camera_node").is_file(),
                       reason="nodes not installed: run scripts/setup.sh"),
]


def stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@needs_data
def test_free_running_foreign_cameras_fuse_complete_frames_and_a_dead_one_is_replaced(
        briefly_trained_onnx, tmp_path):
    data = load_mnist(DATA_ROOT, "test")
    images, labels = data.images[:SCENES], data.labels[:SCENES]
    # Frames wait for a late device up to its deadline (the config's 0.1 s is for a machine
    # with time to spare), and the cameras skip images that waited longer than that.
    nodes = free_running_pipeline_nodes(briefly_trained_onnx, compressed=COMPRESSED,
                                        frame_timeout=DEADLINE_S, dds_profile=DDS_PROFILE)
    arrivals: list[tuple[int, int, int]] = []  # (device, stamp, arrival here) of predictions
    with (Observer(domain_id=DOMAIN_ID) as observer,
          Pipeline(nodes, CONFIG, log_dir=tmp_path, domain_id=DOMAIN_ID) as pipeline):
        fused = observer.collect(msgs.FusedPrediction, FUSED_TOPIC)
        for device in range(6):
            observer.node.create_subscription(
                msgs.DevicePrediction, PREDICTION_TOPIC_FORMAT.format(device),
                # The middleware's reception time: this process's Python may lag behind it.
                lambda m, info: arrivals.append((m.device_id, stamp(m),
                                                 info["received_timestamp"])),
                prediction_qos(2 * DEADLINE_S, 2 * DEADLINE_S))
        pipeline.start_ready(observer, timeout=120.0)
        schedule = SceneSchedule.at_rate(time.time_ns() + round(WARMUP_S * 1e9), RATE_HZ,
                                         HOLD, SCENES, max_phase_ms=15.0)
        with Pipeline(camera_drivers(schedule, seed=DOMAIN_ID, compressed=COMPRESSED,
                                     dds_profile=DDS_PROFILE),
                      log_dir=tmp_path / "drivers", domain_id=DOMAIN_ID) as drivers:
            drivers.start()
            observer.spin_until(lambda: time.time_ns() > schedule.end_ns + 300_000_000,
                                "the end of the schedule", WARMUP_S + SCENES * HOLD / RATE_HZ
                                + 30.0, pipeline)
            drivers.check()
            score = score_fused(fused, schedule, labels)
            drivers.kill(f"driver_{KILLED}")  # the driver crashes; its camera node runs on
            killed = time.time_ns()
            observer.spin_for(1.5)
        pipeline.check()

    # Grouping is judged on the frames whose six predictions all came in time (here, within
    # ON_TIME_S of each other) with the stamps the schedule promises (within MAX_SPREAD_S: a
    # driver short of CPU captures late): each of those must be fused complete, once. The
    # others say how much CPU the drivers and cameras got here, not how the fusion node groups.
    seen: dict[int, dict[int, tuple[int, int]]] = {}
    for device, stamp_ns, arrived in arrivals:
        seen.setdefault(schedule.frame_of(stamp_ns), {}).setdefault(device, (stamp_ns, arrived))

    def lateness(devices: dict[int, tuple[int, int]]) -> str:
        """Why a frame is not in time here ("" if it is)."""
        stamps, arrived = zip(*devices.values(), strict=True)
        if len(devices) < 6:
            return "predictions missing"
        if max(stamps) - min(stamps) > MAX_SPREAD_S * 1e9:
            return "stamps spread"
        return "arrivals spread" if max(arrived) - min(arrived) > ON_TIME_S * 1e9 else ""

    why = Counter(lateness(devices) for frame, devices in seen.items()
                  if 0 <= frame < schedule.frames)
    on_time = {frame for frame, devices in seen.items()
               if 0 <= frame < schedule.frames and not lateness(devices)}
    records = {}
    for frame, _, _, complete in score["records"]:
        records.setdefault(frame, []).append(complete)
    summary = {k: v for k, v in score.items() if k not in ("records", "latency_s")} | {
        "on_time": len(on_time), "not in time, why": dict(why),
        "predictions per device": dict(Counter(device for device, _, _ in arrivals)),
        "without a reception time": sum(not arrived for _, _, arrived in arrivals)}
    split = sorted(f for f in on_time if records.get(f) != [True])
    assert not split, str((summary, split[:20], [records.get(f) for f in split[:20]]))
    assert len(on_time) >= 0.5 * schedule.frames, str(summary)  # else nothing was tested
    print(f"{len(on_time)} of {schedule.frames} frames on time, all fused complete; "
          f"{score['complete']} complete in all")

    # Each of those frames fused exactly what the six camera nodes compute from the
    # drivers' images of its scene, computed here offline through the same decoding, view
    # cut and ONNX exports.
    offline = camera_probabilities(briefly_trained_onnx, images, compressed=COMPRESSED)
    by_frame = {schedule.frame_of(stamp(m)): m for m in fused}
    for frame in sorted(on_time):
        np.testing.assert_allclose(by_frame[frame].probabilities,
                                   offline[frame // HOLD].mean(axis=0), atol=1e-5,
                                   err_msg=f"frame {frame}")

    # The dead camera's device gets a surrogate in every frame once the deadline passed,
    # and the other five keep being fused at the camera rate.
    after = [m for m in fused if stamp(m) > killed + round((DEADLINE_S + 0.1) * 1e9)]
    assert len(after) >= 15, len(after)
    others = [d for d in range(6) if d != KILLED]
    assert all(list(m.live_devices) == others and list(m.surrogate_devices) == [KILLED]
               for m in after), [(list(m.live_devices), list(m.surrogate_devices))
                                 for m in after]
