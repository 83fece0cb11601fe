"""The installed fusion_node executable, as its own process, fed by this test over DDS.

The test plays three camera devices: it publishes their classifier heads (transient local)
and DevicePredictions at ~10 Hz, with probabilities ``softmax(W_i f + b_i)`` of a small
fixed head, so the Modifier surrogate is computable, then stops device 1 and sends
malformed predictions.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from test.conftest import domain_id, require_ros

msgs = require_ros()

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from resilient_perception.harness.pipeline import (  # noqa: E402
    NodeSpec,
    Observer,
    Pipeline,
    package_prefix,
)
from resilient_perception.perception.frame_assembly import (  # noqa: E402
    ClassifierHeads,
    Frame,
    fuse_frame,
)
from resilient_perception.ros.topics import DIAGNOSTICS_TOPIC, FUSED_TOPIC, head_qos, prediction_qos  # noqa: E402  # noqa: E402

NAME = "fusion_node"
DOMAIN_ID = domain_id()
N, K, D = 3, 4, 5
DEADLINE, FRAME_TIMEOUT, WATCHDOG = 0.5, 0.2, 1.0
PERIOD = 0.1
WAIT_S = 15.0  # upper bound of any single wait; a healthy run needs well under 1 s each

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not (package_prefix() / "lib/resilient_perception/fusion_node").is_file(),
                       reason="fusion_node not installed: scripts/setup.sh"),
]

_RNG = np.random.default_rng(3)
WEIGHTS = _RNG.normal(size=(N, K, D)).astype(np.float32)
BIASES = _RNG.normal(size=(N, K)).astype(np.float32)
HEADS = ClassifierHeads(WEIGHTS, BIASES, np.ones(N, bool))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def device_output(device: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and probabilities of ``device`` for frame ``k`` (deterministic)."""
    features = np.random.default_rng(1000 * k + device).normal(size=D).astype(np.float32)
    probs = softmax(WEIGHTS[device] @ features + BIASES[device]).astype(np.float32)
    return features, probs


def fusion_pipeline(log_dir: Path, **parameters) -> Pipeline:
    return Pipeline([NodeSpec(NAME, "fusion_node", parameters)], log_dir=log_dir,
                    domain_id=DOMAIN_ID)


class Fleet(Observer):
    """This test's three fake camera devices, feeding the fusion node of ``pipeline``."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__("fusion_node_test", domain_id=DOMAIN_ID)
        self.pipeline, self.log = pipeline, pipeline.log_path(NAME)
        self.heads, self.preds = [], []
        for i in range(N):
            self.heads.append(self.node.create_publisher(
                msgs.ClassifierHead, f"perception/device_{i}/head", head_qos()))
            # Offered deadline/lease equal to the node's requested ones: compatible.
            self.preds.append(self.node.create_publisher(
                msgs.DevicePrediction, f"perception/device_{i}/prediction",
                prediction_qos(DEADLINE, 1.0)))
            head = msgs.ClassifierHead(device_id=i, num_classes=K, feature_dim=D,
                                       weight=WEIGHTS[i].ravel().tolist(),
                                       bias=BIASES[i].tolist())
            self.heads[i].publish(head)
        self.fused: list = []  # (message, monotonic time received)
        self.node.create_subscription(msgs.FusedPrediction, FUSED_TOPIC,
                                      lambda m: self.fused.append((m, time.monotonic())),
                                      QoSProfile(depth=100))
        self.diagnostics = self.collect(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.sent: dict[int, dict] = {}  # stamp_ns -> {device: (features, probs)}
        self.sent_at: dict[int, float] = {}
        self.k = 0

    def wait_for(self, condition, what: str, timeout: float = WAIT_S):
        return self.spin_until(condition, what, timeout, self.pipeline)

    def stamp_now(self):
        return self.node.get_clock().now().to_msg()

    def publish_frames(self, count: int, devices: list[int]) -> list[int]:
        """Publish ``count`` frames at ~10 Hz from ``devices``; return their stamps (ns)."""
        stamps = []
        for _ in range(count):
            stamp = self.stamp_now()
            stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
            outputs = {}
            for device in devices:
                features, probs = device_output(device, self.k)
                outputs[device] = (features, probs)
                self.preds[device].publish(msgs.DevicePrediction(
                    header=Header(stamp=stamp),
                    device_id=device, probabilities=probs.tolist(),
                    features=features.tolist()))
            self.sent[stamp_ns] = outputs
            self.sent_at[stamp_ns] = time.monotonic()
            stamps.append(stamp_ns)
            self.k += 1
            self.spin_for(PERIOD)
        return stamps

    def fused_by_stamp(self) -> dict[int, list]:
        out: dict[int, list] = {}
        for msg, t in self.fused:
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            out.setdefault(stamp_ns, []).append((msg, t))
        return out

    def latest_diagnostics(self) -> dict[str, dict[str, str]]:
        if not self.diagnostics:
            return {}
        return {s.name: {kv.key: kv.value for kv in s.values} | {"_level": s.level}
                for s in self.diagnostics[-1].status}



@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with fusion_pipeline(tmp_path_factory.mktemp("fusion_run"), num_devices=N,
                         frame_timeout=FRAME_TIMEOUT, watchdog_timeout=WATCHDOG,
                         deadline=DEADLINE, diagnostics_period=0.25) as pipeline, \
            Fleet(pipeline) as f:
        pipeline.start()
        # All heads received (sizes known) and every prediction topic matched.
        f.wait_for(lambda: f.latest_diagnostics().get("fusion_node: frame assembly", {})
                   .get("heads_known") == str(N), "the node to receive the 3 heads")
        f.wait_for(lambda: all(p.get_subscription_count() > 0 for p in f.preds),
                   "the node's prediction subscriptions")
        yield f


def expected(fleet: Fleet, stamp_ns: int, present: list[int]) -> np.ndarray:
    frame = Frame(stamp_ns, np.zeros((N, K), np.float32), np.zeros((N, D), np.float32),
                  np.zeros(N, bool), 0.0)
    for device in present:
        frame.features[device], frame.probs[device] = fleet.sent[stamp_ns][device]
        frame.present[device] = True
    return fuse_frame(frame, HEADS, "avg")[0]


def test_every_frame_fused_and_a_stopped_device_gets_a_surrogate(fleet):
    full = fleet.publish_frames(15, [0, 1, 2])
    fleet.node.destroy_publisher(fleet.preds[1])  # device 1 stops (its writer goes away)
    stopped_at = time.monotonic()
    after = fleet.publish_frames(15, [0, 2])
    fleet.wait_for(lambda: set(full + after) <= set(fleet.fused_by_stamp()),
                     "every published frame to be fused", timeout=5.0)
    fleet.spin_for(0.3)  # any duplicate would arrive by now
    by_stamp = fleet.fused_by_stamp()
    counts = Counter({s: len(v) for s, v in by_stamp.items()})
    assert all(counts[s] == 1 for s in full + after), counts
    assert set(by_stamp) == set(full + after)  # nothing the test did not send

    # Before the stop: full frames (the very first may precede the devices' first arrival,
    # when UNKNOWN devices are not waited for), fused exactly as fuse_frame does.
    complete = [s for s in full if list(by_stamp[s][0][0].live_devices) == [0, 1, 2]]
    assert len(complete) >= len(full) - 2, [by_stamp[s][0][0].live_devices for s in full]
    for s in complete:
        msg = by_stamp[s][0][0]
        assert list(msg.surrogate_devices) == [] and msg.fusion_mode == "avg"
        np.testing.assert_allclose(msg.probabilities, expected(fleet, s, [0, 1, 2]), atol=1e-6)
        assert msg.label == int(np.argmax(msg.probabilities))
        assert 0.0 <= msg.latency < 1.0

    # After the stop: device 1 is replaced by its Modifier surrogate, on time.
    bound = DEADLINE + FRAME_TIMEOUT + 0.2
    for s in after:
        msg, received = by_stamp[s][0]
        assert list(msg.live_devices) == [0, 2] and list(msg.surrogate_devices) == [1]
        np.testing.assert_allclose(msg.probabilities, expected(fleet, s, [0, 2]), atol=1e-6)
        assert received - max(fleet.sent_at[s], stopped_at) <= bound

    fleet.wait_for(lambda: fleet.latest_diagnostics().get("fusion_node: device 1", {})
                     .get("health") == "dead", "device 1 reported dead in /diagnostics")
    diag = fleet.latest_diagnostics()
    assert diag["fusion_node: device 1"]["_level"] == DiagnosticStatus.ERROR
    assert diag["fusion_node: device 1"]["reason"] in ("liveliness", "deadline", "watchdog")
    assert diag["fusion_node: device 0"]["_level"] == DiagnosticStatus.OK
    assert float(diag["fusion_node: device 0"]["rate_hz"]) >= 0.0  # messages/s since last


def test_malformed_predictions_are_rejected_and_good_frames_keep_flowing(fleet):
    earlier = fleet.publish_frames(2, [0, 2])
    fleet.wait_for(lambda: set(earlier) <= set(fleet.fused_by_stamp()), "two frames")
    bad_stamps = []
    # Too long, NaN, and a valid one claiming to be device 2 on device 0's topic.
    for device_id, values in ((0, [0.5] * (K + 1)), (0, [float("nan")] + [0.5] * (K - 1)),
                              (2, [0.25] * K)):
        stamp = fleet.stamp_now()
        bad_stamps.append(stamp.sec * 1_000_000_000 + stamp.nanosec)
        fleet.preds[0].publish(msgs.DevicePrediction(
            header=Header(stamp=stamp), device_id=device_id,
            probabilities=values, features=[0.0] * D))
        fleet.spin_for(0.02)
    # Inf features, a stale stamp (a frame fused long ago), and a head of the wrong shape.
    stamp = fleet.stamp_now()
    bad_stamps.append(stamp.sec * 1_000_000_000 + stamp.nanosec)
    fleet.preds[0].publish(msgs.DevicePrediction(
        header=Header(stamp=stamp), device_id=0, probabilities=[0.1] * K,
        features=[float("inf")] + [0.0] * (D - 1)))
    oldest = earlier[0]
    fleet.preds[2].publish(msgs.DevicePrediction(
        header=Header(stamp=Time(sec=oldest // 1_000_000_000, nanosec=oldest % 1_000_000_000)),
        device_id=2, probabilities=[0.1] * K, features=[0.0] * D))
    fleet.heads[0].publish(msgs.ClassifierHead(device_id=0, num_classes=K, feature_dim=D + 1,
                                               weight=[0.0] * (K * (D + 1)), bias=[0.0] * K))
    good = fleet.publish_frames(4, [0, 2])
    # A duplicate: device 0 reports twice for one frame; the first report counts.
    stamp = fleet.stamp_now()
    dup = stamp.sec * 1_000_000_000 + stamp.nanosec
    first, second = device_output(0, 999), device_output(0, 998)
    for features, probs in (first, second):
        fleet.preds[0].publish(msgs.DevicePrediction(
            header=Header(stamp=stamp), device_id=0, probabilities=probs.tolist(),
            features=features.tolist()))
    fleet.spin_for(0.02)
    features2, probs2 = device_output(2, 999)
    fleet.preds[2].publish(msgs.DevicePrediction(
        header=Header(stamp=stamp), device_id=2, probabilities=probs2.tolist(),
        features=features2.tolist()))
    fleet.sent[dup] = {0: first, 2: (features2, probs2)}
    good += [dup, *fleet.publish_frames(4, [0, 2])]
    fleet.wait_for(lambda: set(good) <= set(fleet.fused_by_stamp()),
                     "the good frames after the bad ones", timeout=5.0)
    assert not set(bad_stamps) & set(fleet.fused_by_stamp())
    assert fleet.pipeline.running(NAME)
    # The good frames' output is exactly what it would be without the bad messages (the
    # heads are unchanged: the malformed head was rejected).
    by_stamp = fleet.fused_by_stamp()
    # (A frame whose device 2 came after the frame timeout on a loaded machine is fused
    # from device 0 alone; it must still be exactly that.)
    for s in good:
        (msg, _), = by_stamp[s]
        live = list(msg.live_devices)
        assert 0 in live and set(live) <= {0, 2}, live
        np.testing.assert_allclose(msg.probabilities, expected(fleet, s, live), atol=1e-6)

    def counted():
        diag = fleet.latest_diagnostics()
        assembly = diag.get("fusion_node: frame assembly", {})
        return (int(assembly.get("bad_probs_length", 0)) >= 1
                and int(assembly.get("non_finite", 0)) >= 1
                and int(assembly.get("device_id_mismatch", 0)) >= 1
                and int(assembly.get("stale", 0)) >= 1
                and int(assembly.get("duplicate", 0)) >= 1
                and int(assembly.get("bad_head", 0)) >= 1
                and int(diag.get("fusion_node: device 0", {}).get("rejected", 0)) >= 3
                and diag)

    fleet.wait_for(counted, "the rejections in /diagnostics")
    assert "Traceback" not in fleet.log.read_text()


def test_sigint_exits_cleanly(fleet):
    assert fleet.pipeline.interrupt(NAME) == 0, fleet.log.read_text()


@pytest.mark.parametrize("parameters", [
    {"num_devices": 0}, {"fusion_mode": "median"}, {"frame_timeout": -1.0},
    {"stall_threshold": 0.05}],  # under the watchdog's tick (0.1 s): every idle gap a stall
    ids=["devices", "mode", "timeout", "stall"])
def test_invalid_parameters_exit_with_code_2(tmp_path, parameters):
    with fusion_pipeline(tmp_path, **parameters) as pipeline:
        pipeline.start()
        assert pipeline.wait(NAME, timeout=30) == 2
        log = pipeline.log_path(NAME).read_text()
    assert "invalid parameter" in log and "Traceback" not in log
