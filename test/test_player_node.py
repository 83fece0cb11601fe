"""The installed player_node executable, as its own process, on the real datasets over DDS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test.conftest import DATA_ROOT, domain_id, needs_data, require_ros

msgs = require_ros()

from sensor_msgs.msg import Image  # noqa: E402

from resilient_perception.datasets import load_mnist, load_mvmc  # noqa: E402
from resilient_perception.harness.pipeline import (  # noqa: E402
    NodeSpec,
    Observer,
    Pipeline,
    package_prefix,
)
from resilient_perception.ros.image_conversion import image_to_array  # noqa: E402
from resilient_perception.ros.topics import (  # noqa: E402
    FUSED_TOPIC,
    LABEL_TOPIC,
    image_qos,
    label_qos,
)

DOMAIN_ID = domain_id()
WAIT_S = 30.0  # upper bound of any single wait; a healthy run needs a few seconds

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(60),
    needs_data,
    pytest.mark.skipif(not (package_prefix() / "lib/resilient_perception/player_node").is_file(),
                       reason="player_node not installed: run scripts/setup.sh"),
]


def player(tmp_path: Path, **parameters) -> Pipeline:
    """A pipeline of the player alone (plus the test's Observer, on the same domain)."""
    return Pipeline([NodeSpec("player", "player_node", parameters)], log_dir=tmp_path,
                    domain_id=DOMAIN_ID)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class Recorder:
    """The test's subscriptions: each camera's images and the labels."""

    def __init__(self, observer: Observer, num_cameras: int) -> None:
        self.images = [observer.collect(Image, f"camera_{i}/image_raw", image_qos())
                       for i in range(num_cameras)]
        self.labels = observer.collect(msgs.FrameLabel, LABEL_TOPIC, label_qos())


def test_frames_are_synchronised_across_cameras_and_labelled(tmp_path):
    mnist = load_mnist(DATA_ROOT, "test")
    with Observer(domain_id=DOMAIN_ID) as observer, player(
            tmp_path, num_cameras=3, start_index=5, count=4, warmup_frames=2,
            wait_for_subscribers=1, rate_hz=50.0, on_end="shutdown") as pipeline:
        got = Recorder(observer, 3)
        pipeline.start()
        observer.spin_until(lambda: len(got.labels) == 4 and all(
            len(images) == 6 for images in got.images), "4 labelled frames", WAIT_S, pipeline)
        assert pipeline.wait("player", WAIT_S) == 0  # on_end: shutdown
        observer.spin_for(0.2)  # anything extra would arrive by now

    assert [m.frame_index for m in got.labels] == [5, 6, 7, 8]
    assert [m.label for m in got.labels] == mnist.labels[5:9].tolist()
    assert [m.class_name for m in got.labels] == [str(k) for k in mnist.labels[5:9]]
    stamps = [stamp_ns(m) for m in got.images[0]]
    assert stamps == sorted(set(stamps))  # one new stamp per frame
    for camera, images in enumerate(got.images):
        assert [stamp_ns(m) for m in images] == stamps  # the same stamps on every camera
        # Two unlabelled warm-up frames of the first image, then the labelled frames.
        for msg, index in zip(images, [5, 5, 5, 6, 7, 8], strict=True):
            assert msg.header.frame_id == f"camera_{camera}" and msg.encoding == "mono8"
            np.testing.assert_array_equal(image_to_array(msg)[:, :, 0], mnist.images[index, 0])
    assert [stamp_ns(m) for m in got.labels] == stamps[2:]


def test_loop_replays_the_range_until_interrupted(tmp_path):
    with Observer(domain_id=DOMAIN_ID) as observer, player(
            tmp_path, num_cameras=1, count=3, loop=True, wait_for_subscribers=1,
            rate_hz=50.0) as pipeline:
        got = Recorder(observer, 1)
        pipeline.start()
        observer.spin_until(lambda: len(got.labels) >= 7, "7 labels", WAIT_S, pipeline)
        assert pipeline.interrupt("player") == 0
    assert [m.frame_index for m in got.labels[:7]] == [0, 1, 2, 0, 1, 2, 0]
    assert len({stamp_ns(m) for m in got.labels}) == len(got.labels)


def test_mvmc_cameras_get_their_own_images_and_a_missing_one_sends_nothing(tmp_path):
    mvmc = load_mvmc(DATA_ROOT, "test")
    # Frame 104 has all six views; camera 2 has no image of frame 105.
    assert mvmc.available[104].all() and not mvmc.available[105, 2]
    with Observer(domain_id=DOMAIN_ID) as observer, player(
            tmp_path, dataset="mvmc", start_index=104, count=2, encoding="bgr8",
            wait_for_subscribers=1, rate_hz=50.0, on_end="shutdown") as pipeline:
        got = Recorder(observer, 6)
        pipeline.start()
        observer.spin_until(lambda: len(got.labels) == 2, "2 labels", WAIT_S, pipeline)
        assert pipeline.wait("player", WAIT_S) == 0
        observer.spin_for(0.2)

    assert [m.label for m in got.labels] == mvmc.labels[104:106].tolist()
    assert [m.class_name for m in got.labels] == [mvmc.classes[k] for k in mvmc.labels[104:106]]
    label_stamps = [stamp_ns(m) for m in got.labels]
    for camera, images in enumerate(got.images):
        frames = [104] if camera == 2 else [104, 105]
        assert [stamp_ns(m) for m in images] == label_stamps[:len(frames)]
        for msg, index in zip(images, frames, strict=True):
            assert msg.encoding == "bgr8"
            rgb = mvmc.views[index, camera].transpose(1, 2, 0)
            np.testing.assert_array_equal(image_to_array(msg), rgb[:, :, ::-1])


@pytest.mark.parametrize(("parameters", "code", "message"), [
    ({"rate_hz": 0.0}, 2, "rate_hz out of range"),
    ({"encoding": "yuv422"}, 2, "must be one of"),
    ({"image_topic_format": "camera/image_raw"}, 2, "needs a '{}' field"),
    ({"start_index": 10000}, 2, "has frames 0..9999"),
    ({"start_index": 9990, "count": 20}, 2, "only 10 frames"),
    ({"dataset": "mvmc", "num_cameras": 7}, 2, "has 6 cameras, not 7"),
    ({"dataset": "imagenet"}, 1, "unknown dataset 'imagenet'"),
], ids=["rate", "encoding", "topic_format", "start", "count", "cameras", "dataset"])
def test_bad_parameters_exit_with_a_clear_error(tmp_path, parameters, code, message):
    with player(tmp_path, **parameters) as pipeline:
        pipeline.start()
        assert pipeline.wait("player", WAIT_S) == code
    log = pipeline.log_path("player").read_text()
    assert message in log and "Traceback" not in log, log


def test_warmup_lasts_until_a_fused_prediction_has_every_camera_live(tmp_path):
    live = [0, 1]  # the live devices of the fused predictions the test publishes
    with Observer(domain_id=DOMAIN_ID) as observer, player(
            tmp_path, num_cameras=3, count=2, warmup_frames=2,
            warmup_fused_topic=FUSED_TOPIC, wait_for_subscribers=1, rate_hz=50.0,
            on_end="shutdown") as pipeline:
        got = Recorder(observer, 3)
        fused = observer.node.create_publisher(msgs.FusedPrediction, FUSED_TOPIC, 10)
        # Published again and again: the player's subscription matches at some point.
        observer.node.create_timer(0.05, lambda: fused.publish(
            msgs.FusedPrediction(live_devices=live)))
        pipeline.start()
        # Two of three cameras live: the warm-up goes on well past its 2 frames.
        observer.spin_until(lambda: len(got.images[0]) >= 30, "30 warm-up frames", WAIT_S,
                            pipeline)
        assert got.labels == []
        live.append(2)
        observer.spin_until(lambda: len(got.labels) == 2, "2 labels", WAIT_S, pipeline)
        assert pipeline.wait("player", WAIT_S) == 0
        observer.spin_for(0.2)
    assert "warm-up done after" in pipeline.log_path("player").read_text()
    warmup = len(got.images[0]) - 2
    assert warmup >= 30 and [stamp_ns(m) for m in got.labels] == [
        stamp_ns(m) for m in got.images[0][warmup:]]


def test_warmup_without_a_fused_answer_gives_up_after_its_timeout(tmp_path):
    with Observer(domain_id=DOMAIN_ID) as observer, player(
            tmp_path, num_cameras=1, count=2, warmup_fused_topic=FUSED_TOPIC,
            warmup_timeout_s=0.5, wait_for_subscribers=1, rate_hz=50.0,
            on_end="shutdown") as pipeline:
        got = Recorder(observer, 1)
        pipeline.start()
        observer.spin_until(lambda: len(got.labels) == 2, "2 labels", WAIT_S, pipeline)
        assert pipeline.wait("player", WAIT_S) == 0
    assert "starting the labelled frames anyway" in pipeline.log_path("player").read_text()
