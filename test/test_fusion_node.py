"""The installed fusion_node executable, as its own process, fed by this test over DDS.

The test plays three camera devices: it publishes their classifier heads (transient local)
and DevicePredictions at ~10 Hz, with probabilities ``softmax(W_i f + b_i)`` of a small
fixed head, so the Modifier surrogate is computable, then stops device 1 and sends
malformed predictions.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from test.conftest import UDP_ONLY_ENV, domain_id, require_ros

msgs = require_ros()

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.event_handler import PublisherEventCallbacks  # noqa: E402
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
# A test with its own fusion node: the module's test writers (transient local) stay away.
OWN_DOMAIN_ID = domain_id()
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


def fusion_pipeline(log_dir: Path, domain_id: int = DOMAIN_ID, env: dict[str, str] | None = None,
                    **parameters) -> Pipeline:
    return Pipeline([NodeSpec(NAME, "fusion_node", parameters, env=env or {})],
                    log_dir=log_dir, domain_id=domain_id)


class Fleet(Observer):
    """This test's three fake camera devices, feeding the fusion node of ``pipeline``."""

    def __init__(self, pipeline: Pipeline, deadline: float = DEADLINE) -> None:
        """Devices offering ``deadline`` (s; at most what the node requests)."""
        super().__init__("fusion_node_test", domain_id=pipeline.domain_id)
        self.pipeline, self.log = pipeline, pipeline.log_path(NAME)
        self.heads, self.preds = [], []
        for i in range(N):
            self.heads.append(self.node.create_publisher(
                msgs.ClassifierHead, f"perception/device_{i}/head", head_qos()))
            # Offered deadline/lease equal to the node's requested ones: compatible.
            self.preds.append(self.node.create_publisher(
                msgs.DevicePrediction, f"perception/device_{i}/prediction",
                prediction_qos(deadline, 1.0)))
        self.publish_heads()
        self.fused: list = []  # (message, monotonic time received)
        self.node.create_subscription(msgs.FusedPrediction, FUSED_TOPIC,
                                      lambda m: self.fused.append((m, time.monotonic())),
                                      QoSProfile(depth=100))
        self.diagnostics = self.collect(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.sent: dict[int, dict] = {}  # stamp_ns -> {device: (features, probs)}
        self.sent_at: dict[int, float] = {}
        self.k = 0

    def publish_heads(self) -> None:
        """Publish every device's classifier head (latched), as a camera does."""
        for i, publisher in enumerate(self.heads):
            publisher.publish(msgs.ClassifierHead(device_id=i, num_classes=K, feature_dim=D,
                                                  weight=WEIGHTS[i].ravel().tolist(),
                                                  bias=BIASES[i].tolist()))

    def wait_for(self, condition, what: str, timeout: float = WAIT_S):
        return self.spin_until(condition, what, timeout, self.pipeline)

    def wait_until_matched(self) -> None:
        """Until the node has every head (sizes known) and subscribes every prediction topic."""
        self.wait_for(lambda: self.latest_diagnostics().get(
            "/fusion_node: frame assembly", {}).get("heads_known") == str(N),
            f"the node to receive the {N} heads")
        self.wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.preds),
                      "the node's prediction subscriptions")

    def stamp_now(self):
        return self.node.get_clock().now().to_msg()

    def publish_frames(self, count: int, devices: list[int], first=None,
                       period: float = PERIOD) -> list[int]:
        """Publish ``count`` frames ``period`` s apart from ``devices``; return their stamps.

        Stamps are in ns. ``first(stamp)``, if given, runs before the devices publish each
        frame. With ``period`` 0 the frames go out at once, nothing processed in between.
        """
        stamps = []
        for _ in range(count):
            stamp = self.stamp_now()
            stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
            if first is not None:
                first(stamp)
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
            if period:
                self.spin_for(period)
        return stamps

    def fused_by_stamp(self) -> dict[int, list]:
        out: dict[int, list] = {}
        for msg, t in self.fused:
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            out.setdefault(stamp_ns, []).append((msg, t))
        return out

    def assembly_counts(self) -> dict[str, int]:
        """The fusion node's newest integer counters (frame assembly status)."""
        values = self.latest_diagnostics().get("/fusion_node: frame assembly", {})
        return {k: int(v) for k, v in values.items() if isinstance(v, str) and v.isdigit()}

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
        f.wait_until_matched()
        yield f


def expected(fleet: Fleet, stamp_ns: int, present: list[int]) -> np.ndarray:
    return fused_outputs(stamp_ns, {device: fleet.sent[stamp_ns][device] for device in present})


def fused_outputs(stamp_ns: int, outputs: dict[int, tuple[np.ndarray, np.ndarray]],
                  mode: str = "avg", use_modifier: bool = True) -> np.ndarray:
    """What the node must publish for devices' (features, probs), fused offline."""
    frame = Frame(stamp_ns, np.zeros((N, K), np.float32), np.zeros((N, D), np.float32),
                  np.zeros(N, bool), 0.0)
    for device, (features, probs) in outputs.items():
        frame.features[device], frame.probs[device] = features, probs
        frame.present[device] = True
    return fuse_frame(frame, HEADS, mode, use_modifier)[0]


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
    system_minus_monotonic = time.time() - time.monotonic()
    for s in complete:
        msg, received = by_stamp[s][0]
        assert list(msg.surrogate_devices) == [] and msg.fusion_mode == "avg"
        np.testing.assert_allclose(msg.probabilities, expected(fleet, s, [0, 1, 2]), atol=1e-6)
        assert msg.label == int(np.argmax(msg.probabilities))
        # Stamp to the node's publish, on the system clock: after the stamp, before this
        # test received it (1 ms for reading the two clocks apart).
        assert 0.0 <= msg.latency <= received + system_minus_monotonic - s * 1e-9 + 1e-3

    # After the stop: device 1 is replaced by its Modifier surrogate, on time.
    bound = DEADLINE + FRAME_TIMEOUT + 0.2
    for s in after:
        msg, received = by_stamp[s][0]
        assert list(msg.live_devices) == [0, 2] and list(msg.surrogate_devices) == [1]
        np.testing.assert_allclose(msg.probabilities, expected(fleet, s, [0, 2]), atol=1e-6)
        assert received - max(fleet.sent_at[s], stopped_at) <= bound

    fleet.wait_for(lambda: fleet.latest_diagnostics().get("/fusion_node: device 1", {})
                     .get("health") == "dead", "device 1 reported dead in /diagnostics")
    diag = fleet.latest_diagnostics()
    assert diag["/fusion_node: device 1"]["_level"] == DiagnosticStatus.ERROR
    assert diag["/fusion_node: device 1"]["reason"] in ("liveliness", "deadline", "watchdog")
    assert diag["/fusion_node: device 0"]["_level"] == DiagnosticStatus.OK
    assert float(diag["/fusion_node: device 0"]["rate_hz"]) >= 0.0  # messages/s since last


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
    # Inf features, a stale stamp (a frame fused long ago), and a head of another shape than
    # the other devices' (it does not replace device 0's head).
    stamp = fleet.stamp_now()
    bad_stamps.append(stamp.sec * 1_000_000_000 + stamp.nanosec)
    fleet.preds[0].publish(msgs.DevicePrediction(
        header=Header(stamp=stamp), device_id=0, probabilities=[1 / K] * K,
        features=[float("inf")] + [0.0] * (D - 1)))
    oldest = earlier[0]
    fleet.preds[2].publish(msgs.DevicePrediction(
        header=Header(stamp=Time(sec=oldest // 1_000_000_000, nanosec=oldest % 1_000_000_000)),
        device_id=2, probabilities=[1 / K] * K, features=[0.0] * D))
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
        assembly = diag.get("/fusion_node: frame assembly", {})
        return (int(assembly.get("bad_probs_length", 0)) >= 1
                and int(assembly.get("non_finite", 0)) >= 1
                and int(assembly.get("device_id_mismatch", 0)) >= 1
                and int(assembly.get("stale", 0)) >= 1
                and int(assembly.get("duplicate", 0)) >= 1
                and int(assembly.get("head_shape_mismatch", 0)) >= 1
                and int(diag.get("/fusion_node: device 0", {}).get("rejected", 0)) >= 3
                and diag)

    fleet.wait_for(counted, "the rejections in /diagnostics")
    assert "Traceback" not in fleet.log.read_text()


def _prediction(stamp: Time, device: int, probs, features) -> msgs.DevicePrediction:
    return msgs.DevicePrediction(header=Header(stamp=stamp), device_id=device,
                                 probabilities=list(probs), features=list(features))


def _shifted(stamp: Time, seconds: int) -> Time:
    return Time(sec=stamp.sec + seconds, nanosec=stamp.nanosec)


def test_outside_messages_never_poison_frames_or_displace_real_predictions(fleet):
    """The issue's cases, from another writer on the devices' topics, between valid frames.

    A prediction stamped +60 s (which used to make every later frame stale), one an hour
    old, garbage that arrives *before* the device's real prediction for the same frame
    (negative, unnormalised, huge features), a prediction and a head over the size caps,
    and a truncated serialised prediction: each counted once under its reason, and every
    valid frame fused exactly as from the valid predictions alone.
    """
    from rclpy.serialization import serialize_message

    node = fleet.node
    rogue = node.create_publisher(msgs.DevicePrediction, "perception/device_0/prediction",
                                  prediction_qos(DEADLINE, 1.0))
    rogue_head = node.create_publisher(msgs.ClassifierHead, "perception/device_2/head",
                                       head_qos())
    fleet.wait_for(lambda: rogue.get_subscription_count() and
                   rogue_head.get_subscription_count(), "the rogue writers to match")
    # Devices 0 and 2 alive (silent since the last test, they may be dead: their next
    # frame revives them, and may count a stale prediction), and their frames counted.
    fleet.publish_frames(2, [0, 2])
    fleet.spin_for(0.3)  # > diagnostics_period, < the deadline
    before = fleet.wait_for(fleet.assembly_counts, "the fusion node's counters")
    features, probs = device_output(0, 0)
    uniform = np.full(K, 1 / K)
    garbage = {  # sent first for a frame, on device 0's topic: reason -> (probs, features)
        "bad_probabilities": [(-uniform, features), (uniform * 3, features)],
        "value_out_of_range": [(probs, np.full(D, 1e30))],
        "non_finite": [(np.full(K, np.nan), features)],
    }
    firsts = [(reason, *values) for reason, cases in garbage.items() for values in cases]
    sent = Counter(reason for reason, *_ in firsts)
    good = []
    for _, bad_probs, bad_features in firsts:
        good += fleet.publish_frames(1, [0, 2], first=lambda stamp, p=bad_probs,
                                     f=bad_features: rogue.publish(_prediction(stamp, 0, p, f)))
        stamp = fleet.stamp_now()
        rogue.publish(_prediction(_shifted(stamp, 60), 0, probs, features))
        rogue.publish(_prediction(_shifted(stamp, -3600), 0, probs, features))
        sent.update(["stamp_ahead", "stamp_too_old"])
    stamp = fleet.stamp_now()
    rogue.publish(_prediction(stamp, 0, probs, np.zeros(20_000)))  # 80 kB > 64 KiB
    rogue.publish(serialize_message(_prediction(stamp, 0, probs, features))[:30])
    rogue_head.publish(msgs.ClassifierHead(  # 4 MB
        device_id=2, num_classes=K, feature_dim=250_000, weight=np.zeros(K * 250_000),
        bias=[0.0] * K))
    sent.update(["oversize", "malformed", "head_oversize"])
    good += fleet.publish_frames(10, [0, 2])

    def counted():
        counts = fleet.assembly_counts()
        return all(counts.get(r, 0) - before.get(r, 0) >= n for r, n in sent.items()) and counts

    fleet.wait_for(lambda: set(good) <= set(fleet.fused_by_stamp()), "every valid frame")
    fleet.wait_for(counted, "the rejections on /diagnostics")
    fleet.spin_for(0.6)  # any other count or output would be there by now
    after = fleet.assembly_counts()
    rejected = {r: after[r] - before.get(r, 0) for r in after
                if r not in ("accepted", "rejected", "fused", "pending", "heads_known",
                             "heads_of_other_shapes", "own_stalls", "deadlines_doubted")
                and after[r] != before.get(r, 0)}
    assert rejected == dict(sent)
    assert after["rejected"] - before["rejected"] == sum(sent.values())
    assert after["accepted"] - before["accepted"] == 2 * len(good)
    by_stamp = fleet.fused_by_stamp()
    for s in good:
        (msg, _), = by_stamp[s]
        live = list(msg.live_devices)
        assert 0 in live and set(live) <= {0, 2}, live
        np.testing.assert_allclose(msg.probabilities, expected(fleet, s, live), atol=1e-6)
    assert fleet.pipeline.running(NAME)
    log = fleet.log.read_text()
    assert "Traceback" not in log
    assert max(len(line) for line in log.splitlines()) < 600


def test_setting_a_parameter_at_run_time_is_refused_as_read_only(fleet):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = fleet.node.create_client(SetParameters, f"/{NAME}/set_parameters")
    fleet.wait_for(lambda: client.service_is_ready(), "the parameter service")
    future = client.call_async(SetParameters.Request(parameters=[
        Parameter("fusion_mode", Parameter.Type.STRING, "max").to_parameter_msg(),
        Parameter("use_modifier", Parameter.Type.BOOL, False).to_parameter_msg()]))
    results = fleet.wait_for(lambda: future.done() and future.result().results,
                             "the answer")
    assert [r.successful for r in results] == [False, False]
    assert all("read-only" in r.reason for r in results), results
    stamps = fleet.publish_frames(3, [0, 2])  # device 1 stopped in an earlier test
    fleet.wait_for(lambda: set(stamps) <= set(fleet.fused_by_stamp()), "three frames")
    assert {fleet.fused_by_stamp()[s][0][0].fusion_mode for s in stamps} == {"avg"}


def test_sigint_exits_cleanly(fleet):
    assert fleet.pipeline.interrupt(NAME) == 0, fleet.log.read_text()


@pytest.mark.parametrize("parameters", [
    {"num_devices": 0}, {"fusion_mode": "median"}, {"frame_timeout": -1.0},
    {"stall_threshold": 0.05},  # under the watchdog's tick (0.1 s): every idle gap a stall
    {"surrogate_gate": "no-such-gated.json"}],
    ids=["devices", "mode", "timeout", "stall", "gate"])
def test_invalid_parameters_exit_with_code_2(tmp_path, parameters):
    with fusion_pipeline(tmp_path, **parameters) as pipeline:
        pipeline.start()
        assert pipeline.wait(NAME, timeout=30) == 2
        log = pipeline.log_path(NAME).read_text()
    assert "invalid parameter" in log and "Traceback" not in log


def test_a_camera_the_node_does_not_hear_is_reported_and_ends_the_node(tmp_path):
    """A head publisher in the graph that never reaches the node: ERROR, then exit 3.

    A camera sends its head at once (transient local), so one that DDS shows but the node
    never hears means the node is not receiving from it. Here the silent publisher stands
    in for that; a camera heard once and silent since (as one killed) is not unheard.
    """
    with fusion_pipeline(tmp_path, OWN_DOMAIN_ID, num_devices=N, diagnostics_period=0.25,
                         unheard_timeout=1.0, exit_when_unheard=True) as pipeline, \
            Observer("cameras", domain_id=OWN_DOMAIN_ID) as cameras:
        pipeline.start()
        diagnostics = cameras.collect(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)

        def statuses() -> dict[str, dict[str, str]]:
            return {status.name: {kv.key: kv.value for kv in status.values}
                    | {"_level": status.level, "_message": status.message}
                    for status in diagnostics[-1].status} if diagnostics else {}

        heads = [cameras.node.create_publisher(msgs.ClassifierHead,
                                               f"perception/device_{i}/head", head_qos())
                 for i in range(2)]
        for i, publisher in enumerate(heads):  # devices 0 and 1: heard once, then silent
            publisher.publish(msgs.ClassifierHead(device_id=i, num_classes=K, feature_dim=D,
                                                  weight=WEIGHTS[i].ravel().tolist(),
                                                  bias=BIASES[i].tolist()))
        cameras.spin_until(lambda: statuses().get("/fusion_node: frame assembly", {})
                           .get("heads_known") == "2", "both heads heard", WAIT_S, pipeline)
        # A volatile head writer cannot match the node's transient-local reader: DDS never
        # pairs them, so the node cannot hear it and does not blame itself.
        cameras.node.create_publisher(
            msgs.ClassifierHead, "perception/device_2/head", QoSProfile(depth=1),
            event_callbacks=PublisherEventCallbacks(incompatible_qos=lambda _event: None))
        heard_at = time.monotonic()
        # Three unheard_timeouts of silence from all three: none is unheard.
        cameras.spin_until(lambda: time.monotonic() - heard_at > 3.0, "3 s", WAIT_S, pipeline)
        count = len(diagnostics)
        cameras.spin_until(lambda: len(diagnostics) > count, "diagnostics", WAIT_S, pipeline)
        assert statuses()["/fusion_node: frame assembly"]["devices_unheard"] == ""
        assert statuses()["/fusion_node: device 2"]["head_publishers"] == "1"
        assert pipeline.running(NAME)

        cameras.node.create_publisher(msgs.ClassifierHead, "perception/device_2/head",
                                      head_qos())  # in the graph, never sends
        cameras.spin_until(lambda: statuses().get("/fusion_node: frame assembly", {})
                           .get("devices_unheard") == "2", "device 2 reported unheard",
                           WAIT_S, pipeline)
        device_2 = statuses()["/fusion_node: device 2"]
        assert device_2["_level"] == DiagnosticStatus.ERROR
        assert device_2["unheard_publishers"] == "1"
        assert "not heard from /cameras on /perception/device_2/head" in device_2["_message"]
        assert statuses()["/fusion_node: device 0"]["unheard_publishers"] == "0"
        assert pipeline.wait(NAME, timeout=WAIT_S) == 3
    log = pipeline.log_path(NAME).read_text()
    assert "exiting with code 3 (exit_when_unheard)" in log and "Traceback" not in log


def test_an_early_bad_head_is_outvoted_by_the_real_heads(tmp_path):
    """An 11-class head published before the real ones no longer decides the class count."""
    with fusion_pipeline(tmp_path, OWN_DOMAIN_ID, num_devices=N, frame_timeout=FRAME_TIMEOUT,
                         watchdog_timeout=WATCHDOG, deadline=DEADLINE,
                         diagnostics_period=0.25) as pipeline, \
            Observer("rogue", domain_id=OWN_DOMAIN_ID) as rogue:
        pipeline.start()
        diagnostics = rogue.collect(DiagnosticArray, "/diagnostics", 10)

        def assembly(key: str) -> str | None:
            return next((kv.value for array in diagnostics[-1:] for status in array.status
                         if status.name.endswith("frame assembly") for kv in status.values
                         if kv.key == key), None)

        bad = rogue.node.create_publisher(msgs.ClassifierHead, "perception/device_0/head",
                                          head_qos())
        rogue.spin_until(lambda: bad.get_subscription_count(), "the fusion node", WAIT_S,
                         pipeline)
        bad.publish(msgs.ClassifierHead(device_id=0, num_classes=11, feature_dim=D,
                                        weight=[0.1] * (11 * D), bias=[0.0] * 11))
        rogue.spin_until(lambda: assembly("head_shape") == f"11x{D}", "the bad head in use",
                         WAIT_S, pipeline)
        with Fleet(pipeline) as fleet:  # the three real heads (device 0's replaces the bad)
            fleet.wait_until_matched()
            stamps = fleet.publish_frames(8, [0, 1, 2])
            fleet.wait_for(lambda: set(stamps) <= set(fleet.fused_by_stamp()),
                           "every frame fused")
            assert fleet.latest_diagnostics()["/fusion_node: frame assembly"][
                "head_shape"] == f"{K}x{D}"
            by_stamp = fleet.fused_by_stamp()
            full = [s for s in stamps if list(by_stamp[s][0][0].live_devices) == [0, 1, 2]]
            assert len(full) >= len(stamps) - 2
            for s in full:
                np.testing.assert_allclose(by_stamp[s][0][0].probabilities,
                                           expected(fleet, s, [0, 1, 2]), atol=1e-6)


FREE_RUNNING_PHASES_MS = (0.0, 14.0, 9.0)


@contextlib.contextmanager
def own_fleet(tmp_path: Path, env: dict[str, str] | None = None, deadline: float = DEADLINE,
              **parameters):
    """A fusion node of the test's own, started and matched with this test's devices.

    ``parameters`` go to the node on top of the module's; ``env`` to its process.
    """
    with fusion_pipeline(tmp_path, OWN_DOMAIN_ID, env, **{
            "num_devices": N, "frame_timeout": FRAME_TIMEOUT, "watchdog_timeout": WATCHDOG,
            "deadline": deadline, "diagnostics_period": 0.25, **parameters}) as pipeline, \
            Fleet(pipeline, deadline) as fleet:
        pipeline.start()
        fleet.wait_until_matched()
        yield fleet


def free_running_fleet(tmp_path: Path, **parameters):
    """A fusion node grouping stamps within 25 ms, fed by this test's devices."""
    return own_fleet(tmp_path, sync_tolerance=0.025, **parameters)


def publish_scenes(fleet: Fleet, count: int, rng: np.random.Generator, period: float = PERIOD,
                   reports=lambda device, k: True) -> list[tuple[int, dict]]:
    """``count`` scenes, each device stamping it :data:`FREE_RUNNING_PHASES_MS` apart (+-3
    ms), as free-running cameras do; device ``d`` reports scene ``k`` if ``reports(d, k)``.
    Returns each scene's (earliest stamp, {device: (features, probs)}) once all are fused."""
    scenes = []
    for k in range(count):
        now = fleet.stamp_now()
        # Captured before they are sent, as a camera's images are: every stamp in the past
        # (a stamp from the future would shorten the frame's measured wait).
        base = (now.sec * 1_000_000_000 + now.nanosec
                - round((max(FREE_RUNNING_PHASES_MS) + 3) * 1e6))
        outputs, stamps = {}, []
        for device in range(N):
            stamp_ns = base + round((FREE_RUNNING_PHASES_MS[device] + rng.uniform(-3, 3)) * 1e6)
            if not reports(device, k):
                continue
            outputs[device] = device_output(device, fleet.k)
            sec, nanosec = divmod(stamp_ns, 1_000_000_000)
            fleet.preds[device].publish(msgs.DevicePrediction(
                header=Header(stamp=Time(sec=sec, nanosec=nanosec)),
                device_id=device, probabilities=outputs[device][1].tolist(),
                features=outputs[device][0].tolist()))
            stamps.append(stamp_ns)
        scenes.append((min(stamps), outputs))
        fleet.k += 1
        fleet.spin_for(period)
    fleet.wait_for(lambda: {s for s, _ in scenes} <= set(fleet.fused_by_stamp()),
                   "every scene fused")
    return scenes


def test_free_running_devices_within_the_sync_tolerance_fuse_as_one_frame(tmp_path):
    """Devices that stamp each scene 0, 14 and 9 ms apart (+-3 ms), as free-running cameras
    do, fuse into one complete frame per scene, stamped with its earliest stamp."""
    with free_running_fleet(tmp_path) as fleet:
        rng = np.random.default_rng(5)
        publish_scenes(fleet, 3, rng)  # until every device is known alive (frames wait)
        fused_before = len(fleet.fused)
        scenes = publish_scenes(fleet, 20, rng)
        fleet.spin_for(0.3)  # a frame split in two would have arrived by now
        assert len(fleet.fused) - fused_before == len(scenes)
        by_stamp = fleet.fused_by_stamp()
        # The first two may precede a device that a deadline missed while this test waited
        # declared dead (revived by its next prediction), as in the tests above.
        for stamp_ns, outputs in scenes[2:]:
            (msg, _), = by_stamp[stamp_ns]
            assert list(msg.live_devices) == [0, 1, 2] and list(msg.surrogate_devices) == []
            np.testing.assert_allclose(msg.probabilities, fused_outputs(stamp_ns, outputs),
                                       atol=1e-6)


def test_free_running_devices_with_the_tolerance_left_at_0_are_reported_split(tmp_path):
    """The same devices with ``sync_tolerance`` 0: every scene is fused as one frame per
    device, each with surrogates, and the node says so: counted, WARN on /diagnostics, and
    logged with the spread the tolerance must cover."""
    with own_fleet(tmp_path) as fleet:
        rng = np.random.default_rng(6)
        publish_scenes(fleet, 3, rng)
        publish_scenes(fleet, 10, rng)

        def reported():
            status = fleet.latest_diagnostics().get("/fusion_node: frame assembly", {})
            return status if int(status.get("split_frames", 0)) >= 10 else None

        status = fleet.wait_for(reported, "split frames on /diagnostics")
        # Phases 0, 9 and 14 ms, +-3 ms each: the widest scene spread up to 20 ms.
        assert 6.0 <= float(status["widest_split_ms"]) <= 20.0, status
        assert any(s.level == DiagnosticStatus.WARN and "raise sync_tolerance" in s.message
                   for array in fleet.diagnostics for s in array.status)
        assert "frames split" in fleet.log.read_text()


def test_a_camera_at_half_the_rate_gets_a_surrogate_in_the_frames_it_misses(tmp_path):
    """Devices 0 and 1 at 30 Hz, device 2 at 15 Hz (every other scene), free-running stamps.

    The rule: a frame waits for every live device, so a frame without the slow device is
    released at its ``frame_timeout`` with that device's surrogate (its older prediction is
    not reused); the frames it reports in are complete. It stays alive (heard every 67 ms),
    and no frame is lost or split. Pooled by geometric mean: a mode other than the default,
    with surrogates, fused as offline.
    """
    with free_running_fleet(tmp_path, fusion_mode="geo") as fleet:
        rng = np.random.default_rng(6)
        publish_scenes(fleet, 3, rng)  # every device alive
        fused_before = len(fleet.fused)
        scenes = publish_scenes(fleet, 30, rng, period=1 / 30,
                                reports=lambda device, k: device != 2 or k % 2 == 0)
        fleet.spin_for(0.3)
        assert len(fleet.fused) - fused_before == len(scenes)
        by_stamp = fleet.fused_by_stamp()
        for stamp_ns, outputs in scenes[2:]:
            (msg, _), = by_stamp[stamp_ns]
            if 2 in outputs:
                assert list(msg.live_devices) == [0, 1, 2], list(msg.live_devices)
                assert list(msg.surrogate_devices) == []
            else:
                assert list(msg.live_devices) == [0, 1] and list(msg.surrogate_devices) == [2]
                assert msg.latency >= FRAME_TIMEOUT  # it waited for device 2
            assert msg.fusion_mode == "geo"
            np.testing.assert_allclose(msg.probabilities,
                                       fused_outputs(stamp_ns, outputs, "geo"), atol=1e-6)
        assert fleet.latest_diagnostics()["/fusion_node: device 2"]["health"] == "alive"


def test_a_surrogate_gate_withholds_the_surrogates_that_did_not_help(tmp_path):
    """The gate of `evaluate --gated` allows device 1's surrogate and withholds device 2's.

    Device 1 misses every third scene, device 2 the scenes after those: frames without
    device 1 get its surrogate, frames without device 2 are fused from the live devices
    alone (as offline with the Modifier off), and /diagnostics counts them.
    """
    gate = tmp_path / "gated.json"
    gate.write_text(json.dumps({"surrogate_gate": {
        "mode": "avg", "n_devices": N, "failed_sets": {"1": True, "2": False}}}))
    with free_running_fleet(tmp_path, surrogate_gate=str(gate)) as fleet:
        rng = np.random.default_rng(7)
        publish_scenes(fleet, 3, rng)  # every device alive
        scenes = publish_scenes(fleet, 30, rng, period=1 / 30,
                                reports=lambda device, k: (device, k % 3) not in ((1, 1), (2, 2)))
        fleet.spin_for(0.3)
        by_stamp = fleet.fused_by_stamp()
        withheld = 0
        for stamp_ns, outputs in scenes[2:]:
            (msg, _), = by_stamp[stamp_ns]
            assert list(msg.live_devices) == sorted(outputs)
            assert list(msg.surrogate_devices) == ([1] if 1 not in outputs else [])
            np.testing.assert_allclose(msg.probabilities, fused_outputs(
                stamp_ns, outputs, use_modifier=2 in outputs), atol=1e-6)
            withheld += 2 not in outputs
        assert withheld >= 9
        fleet.wait_for(lambda: fleet.assembly_counts().get("surrogates_withheld", 0)
                       >= withheld, "the withheld surrogates counted in /diagnostics")


def test_a_backlog_that_outlasts_the_deadline_is_fused_whole(tmp_path):
    """Predictions queued before the devices fell silent are fused with every device, though
    the node reads them more than a deadline after they arrived.

    The devices send 95 frames while the node is frozen, then nothing. Once it runs again,
    the middleware's deadline (30 ms) runs from the burst's arrival, so it passes while the
    node is still reading the 285 predictions (about 0.1 s here and in CI). Had the node
    believed those deadline events, every device would have been dead with most of the burst
    unread, and each later frame fused from the one device read first. A pause of the node
    longer than 12 ms counts as its own stall (added to the silences), so a device it is
    reading never looks silent for half a deadline. (Sent without the freeze, the burst
    was read as fast as this test could publish it, in CI: no backlog.) The freeze lasts as
    long as the burst's publishing, about 40 ms: shared memory holds its samples (over UDP
    the stopped node's socket overflowed, and the rest came seconds later, repaired).
    """
    deadline = 0.03
    with own_fleet(tmp_path, deadline=deadline, watchdog_timeout=0.1,
                   stall_threshold=0.012) as fleet:
        warm_up = []
        diagnostics = fleet.latest_diagnostics
        while not all(diagnostics().get(f"/fusion_node: device {i}", {}).get("health")
                      == "alive" for i in range(N)):
            warm_up += fleet.publish_frames(1, [0, 1, 2], period=deadline / 5)
            assert len(warm_up) < 500, "the devices never became alive"
        fleet.pipeline.signal(NAME, signal.SIGSTOP, timeout=None)
        try:
            burst = fleet.publish_frames(95, [0, 1, 2], period=0.0)
        finally:
            fleet.pipeline.signal(NAME, signal.SIGCONT, timeout=None)
        fleet.wait_for(lambda: set(burst) <= set(fleet.fused_by_stamp()), "the burst fused")
        fleet.wait_for(lambda: "dead (deadline)" in fleet.log.read_text(),
                       "the silent devices declared dead")
        # The first two may follow a deadline the devices really missed between two warm-up
        # frames (this test's own pauses), as in the tests above.
        live = [list(fleet.fused_by_stamp()[s][0][0].live_devices) for s in burst[2:]]
        assert all(devices == [0, 1, 2] for devices in live), (live, fleet.log.read_text()[-3000:])


def test_a_device_held_up_by_the_nodes_own_stall_is_waited_for(tmp_path):
    """Frames stamped while the node was frozen wait the stall's length longer for a device.

    A frozen reader can block its writers' ``publish()`` for as long as it is frozen, so a
    camera may start on the stall's frames only when the node runs again, and report them
    after the others. Here devices 0 and 1 publish during a 0.8 s freeze, device 2 only
    0.3 s after it ends (longer than the 0.2 s frame timeout): every frame has all three.
    The node takes its samples over UDP: over shared memory, 1 of 10 runs lost the freeze's
    samples for seconds (``UDP_ONLY_ENV``), which is the transport, not the node.
    """
    with own_fleet(tmp_path, UDP_ONLY_ENV) as fleet:
        pipeline = fleet.pipeline
        before = fleet.publish_frames(5, [0, 1, 2])
        fleet.wait_for(lambda: set(before) <= set(fleet.fused_by_stamp()), "the first frames")
        pipeline.signal(NAME, signal.SIGSTOP, timeout=None)
        try:
            first_k = fleet.k
            during = fleet.publish_frames(8, [0, 1])  # 0.8 s
        finally:
            pipeline.signal(NAME, signal.SIGCONT, timeout=None)
        fleet.spin_for(FRAME_TIMEOUT + 0.1)
        for k, stamp_ns in enumerate(during, start=first_k):
            features, probs = device_output(2, k)
            fleet.sent[stamp_ns][2] = (features, probs)
            sec, nanosec = divmod(stamp_ns, 1_000_000_000)
            fleet.preds[2].publish(msgs.DevicePrediction(
                header=Header(stamp=Time(sec=sec, nanosec=nanosec)), device_id=2,
                probabilities=probs.tolist(), features=features.tolist()))
        fleet.wait_for(lambda: set(during) <= set(fleet.fused_by_stamp()), "the stall's frames")
        by_stamp = fleet.fused_by_stamp()
        for stamp_ns in during:
            (msg, _), = by_stamp[stamp_ns]
            assert list(msg.live_devices) == [0, 1, 2], (list(msg.live_devices),
                                                         fleet.log.read_text()[-2000:])
            np.testing.assert_allclose(msg.probabilities, expected(fleet, stamp_ns, [0, 1, 2]),
                                       atol=1e-6)
        assert "this node stalled" in fleet.log.read_text()


def test_a_jump_of_the_simulated_clock_is_not_silence(tmp_path):
    """Under use_sim_time the first /clock message, and a jump of 500 s later (a reset or a
    looped bag), kill no device and cost no frame."""
    from rosgraph_msgs.msg import Clock

    with fusion_pipeline(tmp_path, OWN_DOMAIN_ID, num_devices=N, frame_timeout=FRAME_TIMEOUT,
                         watchdog_timeout=WATCHDOG, deadline=DEADLINE, diagnostics_period=0.25,
                         use_sim_time=True) as pipeline, Fleet(pipeline) as fleet:
        clock = fleet.node.create_publisher(Clock, "/clock", 10)
        start, offset_ns = time.monotonic_ns(), [1000 * 1_000_000_000]

        def sim_ns() -> int:  # simulated time runs with the wall clock, from 1000 s
            return time.monotonic_ns() - start + offset_ns[0]

        fleet.node.create_timer(0.02, lambda: clock.publish(
            Clock(clock=Time(sec=sim_ns() // 1_000_000_000, nanosec=sim_ns() % 1_000_000_000))))
        pipeline.start()
        fleet.wait_until_matched()

        def publish_frames(count: int) -> list[int]:
            stamps = []
            for _ in range(count):
                stamp_ns = sim_ns()
                sec, nanosec = divmod(stamp_ns, 1_000_000_000)
                for device in range(N):
                    features, probs = device_output(device, fleet.k)
                    fleet.preds[device].publish(msgs.DevicePrediction(
                        header=Header(stamp=Time(sec=sec, nanosec=nanosec)), device_id=device,
                        probabilities=probs.tolist(), features=features.tolist()))
                stamps.append(stamp_ns)
                fleet.k += 1
                fleet.spin_for(PERIOD)
            fleet.wait_for(lambda: set(stamps) <= set(fleet.fused_by_stamp()), "the frames")
            return stamps

        publish_frames(10)  # every device heard: alive
        offset_ns[0] += 500 * 1_000_000_000
        # Frames stamped after the jump are checked against the node's clock: it must have
        # the new time first (a simulator's /clock leads the images it stamps).
        fleet.wait_for(lambda: "jumped +500" in fleet.log.read_text(), "the jump")
        after = publish_frames(10)
        by_stamp = fleet.fused_by_stamp()
        # While this test waits, the devices are silent in wall time and a missed QoS
        # deadline may declare them dead until their next prediction (the first frames); the
        # jump itself must not (the watchdog would, for 500 s of "silence").
        assert all(list(by_stamp[s][0][0].live_devices) == [0, 1, 2] for s in after[2:])
        log = fleet.log.read_text()
        assert "dead (watchdog)" not in log, log[-3000:]


def test_qos_overrides_apply_to_the_fusion_and_recorder_subscriptions(tmp_path):
    """``qos_overrides.<topic>.subscription.*`` parameters (e.g. best effort to record a
    camera driver's topic) reach the subscriptions; the others keep their profiles."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import ReliabilityPolicy

    from resilient_perception.ros.fusion_node import FusionNode
    from resilient_perception.ros.recorder_node import RecorderNode
    from resilient_perception.ros.topics import PREDICTION_QUEUE_DEPTH

    overrides = [
        Parameter("qos_overrides./perception/device_1/prediction.subscription.depth",
                  value=7),
        Parameter("qos_overrides./perception/device_1/prediction.subscription.reliability",
                  value="best_effort")]
    context = rclpy.Context()
    context.init(domain_id=OWN_DOMAIN_ID)
    try:
        for node in (FusionNode("fusion_qos", context=context, parameter_overrides=overrides),
                     RecorderNode("recorder_qos", context=context, parameter_overrides=[
                         *overrides, Parameter("bag_path", value=str(tmp_path / "bag"))])):
            subs = {s.topic_name: s.qos_profile for s in node.subscriptions}
            changed, kept = (subs[f"/perception/device_{i}/prediction"] for i in (1, 0))
            assert (changed.depth, changed.reliability) == (7, ReliabilityPolicy.BEST_EFFORT)
            assert kept.reliability == ReliabilityPolicy.RELIABLE and kept.depth != 7
            if isinstance(node, FusionNode):
                assert kept.depth == PREDICTION_QUEUE_DEPTH
            node.destroy_node()
    finally:
        context.try_shutdown()
