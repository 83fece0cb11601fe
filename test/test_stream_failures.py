"""Cameras die mid-stream: kill -9 two of six camera processes at 30 Hz, then restart one.

Player, six camera nodes (ONNX Runtime, the deployed path) and the fusion node run as
separate processes over DDS on loopback, started by
:class:`~resilient_perception.harness.pipeline.Pipeline` with ``config/mnist_6cam.yaml``. The
test kills camera 2, later camera 4, then restarts camera 2, and checks what the fusion
node promises:

* no labelled frame is lost at the fusion output and none is published twice;
* every frame stamped after a kill carries the surrogate flag for the dead device (until
  the device is back);
* a surrogate-fused frame follows each kill (how soon is printed, not asserted: after a
  peer's kill -9 Fast DDS can hold every other writer's ``publish()`` for a second or more,
  whatever the fusion node does; the soak benchmark reports the reaction times);
* the stream's predictions are those of the offline evaluation for the same frames with
  the same devices failed (torch on the checkpoint vs ONNX Runtime in the cameras: at most
  0.5% of frames may differ, from argmax ties within the 1e-4 export tolerance);
* the restarted camera is used again.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from test.conftest import ROOT, UDP_ONLY_ENV, domain_id, require_ros

require_ros()

from resilient_perception.harness.pipeline import Observer, Pipeline, package_prefix  # noqa: E402
from resilient_perception.harness.stream_monitor import StreamMonitor  # noqa: E402
from resilient_perception.perception.evaluation import device_outputs  # noqa: E402
from resilient_perception.perception.stream_score import offline_predictions  # noqa: E402
from resilient_perception.ros.topics import FUSED_TOPIC  # noqa: E402

MNIST_CONFIG = ROOT / "config" / "mnist_6cam.yaml"
LIB = package_prefix() / "lib" / "resilient_perception"
DOMAIN_ID = domain_id()
RATE_HZ = 30.0
DEADLINE_S = 0.5  # config/mnist_6cam.yaml's offered and requested deadline
MAX_FRAMES = 2000  # the player's budget; the test stops it once it has seen enough

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not (LIB / "player_node").is_file(),
                       reason="nodes not installed: run scripts/setup.sh"),
]


def test_kill_two_cameras_and_restart_one_mid_stream(briefly_trained_onnx, briefly_trained_model,
                                                     mnist_views, tmp_path):
    period = 1.0 / RATE_HZ
    overrides = {"player": {"count": MAX_FRAMES, "rate_hz": RATE_HZ,
                            "wait_for_label_subscribers": 1}}
    # The cameras take their images over UDP: over shared memory, the player's next send to
    # a camera killed with -9 can wait out Fast DDS's port health check (1 s) and hold every
    # camera's image for that long, which would be the player's stall, not the fusion
    # node's reaction (one CI run: all six devices missed their deadline at once, and the
    # surrogate frame came 1.02 s after the kill). UDP makes it rarer, not impossible (it
    # happened once since, below), so the delay is not asserted.
    cameras_over_udp = {f"camera_{i}": UDP_ONLY_ENV for i in range(6)}
    kills: dict[int, tuple[float, float]] = {}  # device -> (wall, monotonic) of the kill
    with (Observer(domain_id=DOMAIN_ID) as observer,
          Pipeline.from_config(MNIST_CONFIG, model_path=briefly_trained_onnx, overrides=overrides,
                               env=cameras_over_udp, log_dir=tmp_path,
                               domain_id=DOMAIN_ID) as pipeline):
        monitor = StreamMonitor(observer, {"fused": FUSED_TOPIC}, n_devices=6)
        score = monitor.scores["fused"]
        pipeline.start_ready(observer, timeout=90.0)

        def after_labels(n: int) -> None:
            observer.spin_until(lambda: monitor.labels() >= n, f"{n} labelled frames",
                                timeout=60.0, pipeline=pipeline)

        def kill(device: int) -> None:
            kills[device] = (time.time(), time.monotonic())
            pipeline.kill(f"camera_{device}")

        after_labels(60)
        kill(2)
        after_labels(150)
        kill(4)
        after_labels(240)
        restarted_wall = time.time()
        pipeline.restart("camera_2")

        def camera_2_used_again() -> bool:
            return sum(2 in r.live for s, r in score.fused.items()
                       if s > restarted_wall * 1e9) >= 30

        observer.spin_until(camera_2_used_again, "camera 2 used in 30 frames after restart",
                            timeout=90.0, pipeline=pipeline)
        pipeline.interrupt("player")

        def drained() -> bool:
            return not (score.truth.keys() - score.fused.keys())

        observer.spin_until(drained, "every labelled frame fused", timeout=10.0,
                            pipeline=pipeline)
        observer.spin_for(0.3)  # a duplicate would arrive by now
        pipeline.check()

    summary = score.summary()
    assert summary["missing"] == 0 and summary["duplicates"] == 0, summary
    assert summary["labelled_frames"] >= 270

    wall2, mono2 = kills[2]
    wall4, mono4 = kills[4]
    # Frames stamped after a kill: the dead camera never saw them, so each carries its
    # surrogate flag; camera 2 until its restart, camera 4 to the end.
    for stamp, record in score.fused.items():
        t = stamp * 1e-9
        if wall2 < t < restarted_wall:
            assert 2 in record.surrogates, (t - wall2, record)
        if t > wall4:
            assert 4 in record.surrogates, (t - wall4, record)
    # A surrogate frame follows each kill. Its delay is the pipeline's bound (QoS deadline +
    # one frame period) only while Fast DDS delivers: in one CI run the kill of camera 4 held
    # every camera's predictions for about 1 s (the fusion node saw every live camera
    # miss its deadline at once), and the first surrogate frame came 1.02 s after the kill.
    for device, mono in ((2, mono2), (4, mono4)):
        first = monitor.first_arrival_with_surrogate("fused", device, after=mono)
        assert first is not None, device
        print(f"camera {device} killed: first frame with its surrogate {first - mono:.3f} s "
              f"later (bound while DDS delivers: {DEADLINE_S + period:.3f} s)")

    # The stream equals the offline evaluation for the same frames and failed devices.
    views, _ = mnist_views
    rows = score.matched()
    index = [i for i, _, _ in rows]
    assert max(index) < len(views)
    probs, feats = device_outputs(briefly_trained_model, views[: max(index) + 1])
    weights, biases = briefly_trained_model.classifier_heads()
    offline = offline_predictions(probs, feats, weights.detach(), biases.detach(), index,
                                  [r.surrogates for _, _, r in rows])
    streamed = np.array([r.predicted for _, _, r in rows])
    labels = np.array([label for _, label, _ in rows])
    assert np.mean(streamed != offline) <= 0.005
    assert abs(np.mean(streamed == labels) - np.mean(offline == labels)) <= 0.005
    assert {"2", "2,4", "4"} <= set(summary["accuracy_by_failed_set"])
