"""Distributed ResNet inference: link math, stage logic, and the planner + stages + probes live.

Unit tests cover the pure parts (burst rates, windows, stage work, live-robot problems,
tensor coding). The live tests start real node processes talking over DDS:

* loopback: planner + 3 stages + request node on localhost; the distributed output equals
  the single-process model's with the same skipped blocks (1e-5), and killing a stage that
  the plan uses leads to a new plan without it and inference continuing;
* network namespaces: 3 robots, each a namespace behind its own ``tc tbf``-shaped veth
  link, with link probes; measured rates are within 10% of the shaped rate (median over
  the links; each link within 25%), and throttling
  one robot's link moves every unit off that robot in the next plan. Skipped (with the
  reason) only where ``ip netns add`` is not allowed.

The model is a tiny seeded ResNet (untrained; its BatchNorm scales are randomised so that
every residual branch matters) profiled with the real drop study on 200 CIFAR-10 images.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from resilient_perception.placement.distributed import (
    StageWork,
    decode_tensor,
    encode_tensor,
    fleet_plan,
    live_problem,
    run_units,
    stage_work,
)
from resilient_perception.placement.link_estimation import (
    SampleWindow,
    burst_count,
    burst_rate_bps,
    relative_change,
    round_trip_s,
)
from resilient_perception.placement.problem import DROPPED, Fleet, Network, Plan, Problem
from test.conftest import DATA_ROOT, domain_id

DOMAIN_ID = domain_id()
ROBOTS = ["robot0", "robot1", "robot2"]


# -- pure functions ------------------------------------------------------------------------
def test_burst_rate_counts_the_messages_after_the_first():
    # 5 messages of 1000 bytes, one every 1 ms: 4 x 8000 bits in 4 ms = 8 Mbit/s.
    arrivals = [0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]
    assert burst_rate_bps(arrivals, 1000) == pytest.approx(8e6)
    assert burst_rate_bps(arrivals[::-1], 1000) == pytest.approx(8e6)
    assert burst_rate_bps([5], 1000) is None
    assert burst_rate_bps([5, 5], 1000) is None


def test_burst_timer_times_bursts_from_their_part_outside_other_peers_bursts():
    from resilient_perception.placement.link_estimation import BurstSample, BurstTimer

    timer = BurstTimer()

    def arrive(*bursts):
        """Feed (peer, burst number, count, arrival ms...) bursts in order of arrival."""
        events = sorted((time, peer, number, index, count)
                        for peer, number, count, *times in bursts
                        for index, time in enumerate(times))
        return [sample for time, peer, number, index, count in events
                for sample in timer.add(peer, number, index, count, round(time * 1e6), 1000)]

    # Alone: 4 x 8000 bits in 4 ms = 8 Mbit/s.
    assert arrive(("robot1", 1, 5, 0, 1, 2, 3, 4)) == [BurstSample("robot1", 8e6, False)]
    # robot2's burst starts at 12 ms, in the middle of robot1's, and ends after it: robot1
    # is timed from its 5 arrivals before 12 ms, robot2 from its 5 after robot1's last.
    assert arrive(("robot1", 2, 8, 10, 10.5, 11, 11.5, 11.9, 13, 15, 17),
                  ("robot2", 7, 9, 12, 14, 16, 18, 18.5, 19, 19.5, 20, 20.5)) == [
        BurstSample("robot1", pytest.approx(4 * 8000 / 1.9e-3), False),
        BurstSample("robot2", pytest.approx(4 * 8000 / 2e-3), False)]
    # Interleaved message by message, no part arrived alone: contended, timed as a whole.
    assert arrive(("robot2", 8, 6, 30.5, 31.5, 32.5, 33.5, 34.5, 40),
                  ("robot1", 3, 5, 31, 32, 33, 34, 35))[0] == BurstSample("robot1", 8e6, True)
    # A burst whose tail was lost is timed when the peer's next burst starts; so is another
    # peer's burst that arrived alone meanwhile; a lone first message has nothing to time.
    assert arrive(("robot1", 4, 5, 50, 51, 52), ("robot2", 9, 9, 60, 61, 62, 63),
                  ("robot1", 5, 3, 70)) == [BurstSample("robot1", 8e6, False)]
    assert arrive(("robot2", 10, 3, 80)) == [BurstSample("robot2", 8e6, False)]
    # A sizing burst's sample says so.
    assert timer.add("robot1", 6, 0, 2, 90_000_000, 1000, sizing=True) == []
    assert timer.add("robot1", 6, 1, 2, 91_000_000, 1000, sizing=True) == [
        BurstSample("robot1", 8e6, False, sizing=True)]


def test_burst_count_lasts_the_target_time_within_bounds():
    # 20 Mbit/s for 0.1 s = 250 kB = 15.6 messages of 16 kB.
    assert burst_count(20e6, 16000, 0.1, 4, 64) == 16
    assert burst_count(1e6, 16000, 0.1, 4, 64) == 4
    assert burst_count(1e9, 16000, 0.1, 4, 64) == 64
    assert burst_count(None, 16000, 0.1, 4, 64) == 4


def test_default_burst_messages_fit_one_ethernet_frame():
    # A burst message split into IP fragments is lost whole when a slowed link drops any
    # fragment, and the rest fill the receiver's reassembly memory (see link_estimation).
    pytest.importorskip("rclpy")
    from rclpy.serialization import serialize_message
    from resilient_perception.msg import LinkProbe

    from resilient_perception.placement.link_estimation import fits_one_frame
    from resilient_perception.ros.link_probe_node import LinkProbeNode

    default_bytes = LinkProbeNode.DEFAULT_BURST_BYTES
    names = {"from_robot": "robot_with_a_long_name_0", "to_robot": "robot_with_a_long_name_1"}
    probe = LinkProbe(kind=LinkProbe.BURST, payload=bytes(default_bytes), **names)
    assert fits_one_frame(len(serialize_message(probe)))
    # The probes of earlier versions (16 kB) did not.
    assert not fits_one_frame(len(serialize_message(LinkProbe(payload=bytes(16000), **names))))


def test_round_trip_and_relative_change():
    assert round_trip_s(1_000_000, 3_500_000) == pytest.approx(0.0025)
    assert round_trip_s(2, 1) is None
    assert relative_change(10.0, 13.0) == pytest.approx(0.3)
    assert relative_change(0.0, 1.0) == float("inf")


def test_burst_period_backs_off_while_rates_hold_and_resets_on_a_change():
    from resilient_perception.placement.link_estimation import next_burst_period

    steady = {"robot1": 20e6, "robot2": 5e6}
    assert next_burst_period(1.0, 1.0, 8.0, steady, {"robot1": 19e6, "robot2": 5.2e6},
                             0.1) == 2.0
    assert next_burst_period(4.0, 1.0, 8.0, steady, steady, 0.1) == 8.0
    assert next_burst_period(8.0, 1.0, 8.0, steady, steady, 0.1) == 8.0  # capped
    assert next_burst_period(8.0, 1.0, 8.0, steady, {"robot1": 10e6, "robot2": 5e6},
                             0.1) == 1.0  # a link slowed down
    assert next_burst_period(8.0, 1.0, 8.0, {"robot1": 20e6}, steady, 0.1) == 1.0  # new link
    assert next_burst_period(1.0, 1.0, 8.0, {}, {}, 0.1) == 1.0  # nothing measured yet
    assert next_burst_period(1.0, 1.0, 0.0, steady, steady, 0.1) == 1.0  # back-off off


def test_sample_window_is_a_median_of_the_last_samples():
    window = SampleWindow(3)
    assert window.value is None
    for sample in (10.0, 1000.0, 12.0, 11.0):  # 1000 is an outlier, then forgotten
        window.add(sample)
    assert window.value == 12.0  # median of 1000, 12, 11
    window.add(13.0)
    assert window.value == 12.0 and window.count == 5
    with pytest.raises(ValueError):
        SampleWindow(0)


def test_a_stale_measurement_sizes_bursts_for_less_and_less():
    from resilient_perception.placement.link_estimation import sizing_rate

    assert sizing_rate(None, 0.0, 2.0) is None
    assert sizing_rate(20e6, 0.4, 2.0) == 20e6  # fresh: as measured
    assert sizing_rate(20e6, 2.5, 2.0) == 10e6
    assert sizing_rate(20e6, 7.9, 2.0) == 2.5e6  # three timeouts old: an eighth


def test_provisional_samples_stand_in_only_until_the_first_firm_one():
    # Sizing bursts (a few ms on a fast link) are timed 20-30% off; three of them filled the
    # window of a slow-to-discover fleet and its median came out a third too low.
    window = SampleWindow(5)
    for sample in (26.0, 15.0, 14.0):
        window.add(sample, provisional=True)
    assert window.value == 15.0 and window.count == 0
    window.add(20.0)
    assert window.value == 20.0 and window.count == 1
    window.add(13.0, provisional=True)  # a late sizing burst never outvotes a sized one
    assert window.value == 20.0


def test_stage_work_runs_own_and_skipped_units_then_hands_over():
    row = [0, 0, DROPPED, 2, DROPPED, 1, 1]
    assert stage_work(row, 0, 0) == StageWork((0, 1, 2), 3, 2)
    assert stage_work(row, 2, 3) == StageWork((3, 4), 5, 1)
    assert stage_work(row, 1, 5) == StageWork((5, 6), None, None)
    with pytest.raises(ValueError, match="assigned to robot 2"):
        stage_work(row, 1, 3)
    with pytest.raises(ValueError, match="not in"):
        stage_work(row, 1, 7)


def test_tensor_coding_round_trips_and_rejects_bad_tensors():
    array = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    shape, dtype, data = encode_tensor(array)
    np.testing.assert_array_equal(decode_tensor(shape, dtype, data), array)
    with pytest.raises(ValueError, match="needs 96 bytes"):
        decode_tensor(shape, dtype, data[:-4])
    with pytest.raises(ValueError, match="dtype"):
        decode_tensor(shape, "complex64", data)
    with pytest.raises(ValueError, match="NaN"):
        decode_tensor([1], "float32", np.array([np.nan], np.float32).tobytes())


def _tiny_model(seed: int = 0):
    from resilient_perception.placement.resnet import ResNet

    torch.manual_seed(seed)
    model = ResNet(base_width=4, stage_blocks=(2, 2, 1, 1))
    with torch.no_grad():
        # Untrained blocks start as their shortcut (zero-init residual); random BatchNorm
        # scales and statistics make every branch, and so every skip decision, matter.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_units_split_over_stages_equal_the_whole_model():
    model = _tiny_model()
    x = torch.rand(1, 3, 32, 32)
    dropped = {2, 4}  # the two identity blocks (units 2, 4 = blocks 1, 3)
    expected = model(x, drop_dc=[u - 1 for u in dropped])
    y = run_units(model, x, [0, 1, 2, 3], dropped)
    y = run_units(model, y, [4, 5], dropped)
    y = run_units(model, y, [6, 7], dropped)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, model(x), atol=1e-4)  # the skips changed something


def test_live_problem_leaves_out_dead_robots_and_their_requests():
    from resilient_perception.placement.solvers import solve

    network = Network(names=("stem", "b0", "head"), param_bytes=np.array([10, 10, 10]),
                      macs=np.array([100, 100, 100]), output_bytes=np.array([40, 40, 4]),
                      input_bytes=40, droppable=np.array([False, True, False]),
                      clean_accuracy=0.9, drop_accuracy={(1,): 0.8})
    fleet = Fleet(("a", "b", "c"), np.array([100.0, 100, 100]), np.array([1e3, 1e4, 1e4]),
                  np.array([1e3, 1e3, 1e3]))
    rates = np.array([[0, 1e3, 2e3], [3e3, 0, 4e3], [5e3, 6e3, 0]])
    problem = Problem(network, fleet, rates, np.array([0, 1]))
    live, robots, requests = live_problem(problem, [True, False, True])
    assert live.fleet.names == ("a", "c") and robots.tolist() == [0, 2]
    assert requests.tolist() == [0] and live.sources.tolist() == [0]
    assert live.rates_bps[0, 1] == 2e3 and live.rates_bps[1, 0] == 5e3
    plan = solve(live, "cpsat", 5.0).plan
    full = fleet_plan(plan, robots)
    assert set(full.reshape(-1).tolist()) <= {0, 2, DROPPED}
    assert fleet_plan(Plan(np.array([[1, -1, 0]])), robots).tolist() == [[2, -1, 0]]
    with pytest.raises(ValueError, match="no live robot holds"):
        live_problem(problem, [False, False, True])


def test_star_link_rates_recovers_each_robots_link_and_rejects_other_matrices():
    from resilient_perception.placement.distributed import star_link_rates

    rates = np.array([[0, 20, 5], [20, 0, 5], [5, 5, 0]], dtype=float)
    assert star_link_rates(rates).tolist() == [20, 20, 5]
    fleet_file = Path(__file__).parents[1] / "config" / "fleet_distributed.yaml"
    matrix = np.array(yaml.safe_load(fleet_file.read_text())["rates_mbps"], dtype=float)
    own = star_link_rates(matrix)
    assert np.array_equal(np.minimum.outer(own, own)[~np.eye(3, dtype=bool)],
                          matrix[~np.eye(3, dtype=bool)])
    with pytest.raises(ValueError, match="one switch"):
        star_link_rates(np.array([[0, 20, 5], [20, 0, 10], [5, 5, 0]], dtype=float))


# -- live runs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model's checkpoint and its drop-study profile (200 CIFAR-10 test images)."""
    from resilient_perception.datasets import load_cifar10
    from resilient_perception.placement.block_profile import save_profile
    from resilient_perception.placement.drop_study import (
        build_profile,
        run_drop_study,
        spread_subset,
    )
    from resilient_perception.placement.resnet import save_resnet_checkpoint

    if not DATA_ROOT.is_dir():
        pytest.skip("../shared/datasets not present")
    folder = tmp_path_factory.mktemp("tiny_resnet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = _tiny_model()
    images = load_cifar10(DATA_ROOT, "test").images
    labels = load_cifar10(DATA_ROOT, "test").labels
    study = run_drop_study(model, *spread_subset(images, labels, 200), progress=False)
    torch.set_num_threads(threads)
    return {
        "model": model, "images": images,
        "model_path": save_resnet_checkpoint(folder / "model.safetensors", model, {}),
        "profile": save_profile(folder / "profile.json", build_profile(model, study, "tiny", 0)),
    }


def _fleet_file(path: Path, robot2_memory_mb: float, rate_mbps: float = 20.0) -> Path:
    """Robot0 holds the images and can store the stem only; robot2 computes twice as fast
    as robot1 (and holds ``robot2_memory_mb``); every link ``rate_mbps``."""
    path.write_text(yaml.safe_dump({
        "alpha": 0.5, "accuracy_threshold": 0.0, "requests": ["robot0"],
        "devices": [
            {"name": "robot0", "memory_mb": 0.0006, "compute_gmacs": 0.05, "energy_j": 1000},
            {"name": "robot1", "memory_mb": 1.0, "compute_gmacs": 0.1, "energy_j": 1000},
            {"name": "robot2", "memory_mb": robot2_memory_mb, "compute_gmacs": 0.2,
             "energy_j": 1000},
        ],
        "rates_mbps": [[0 if i == k else rate_mbps for k in range(3)] for i in range(3)],
    }))
    return path


def _reference(tiny, request_id: int, unit_robots: list[int]) -> np.ndarray:
    """The single-process model's probabilities for a request under a plan row."""
    from resilient_perception.ros.request_node import request_image

    x = torch.from_numpy(request_image(tiny["images"], request_id))
    dropped = [u - 1 for u, robot in enumerate(unit_robots) if robot == DROPPED]
    with torch.inference_mode():
        return torch.softmax(tiny["model"](x, drop_dc=dropped).double(), 1)[0].numpy()


def _wait_for(what: str, condition, timeout: float, pipeline):
    return pipeline.wait_until(condition, what, timeout)


def _plans(records: Path) -> list[dict]:
    from resilient_perception.harness.distributed_run import read_records

    return read_records(records, "plan")


def _predictions(records: Path, version: int | None = None) -> list[dict]:
    from resilient_perception.harness.distributed_run import read_records

    return [p for p in read_records(records, "prediction")
            if version is None or p["plan_version"] == version]


def _check_outputs(tiny, predictions: list[dict]) -> None:
    for prediction in predictions:
        expected = _reference(tiny, prediction["id"], prediction["unit_robots"])
        np.testing.assert_allclose(prediction["probabilities"], expected, rtol=0, atol=1e-5)
        assert prediction["label"] == int(np.argmax(expected))


def _counters(arrays, node: str) -> dict[str, str] | None:
    """The newest counters a node put on /diagnostics (:func:`publish_counters`)."""
    from resilient_perception.ros.topics import status_node

    for array in reversed(arrays):
        for status in array.status:
            if status_node(status.name) == f"/{node}":
                return {v.key: v.value for v in status.values}
    return None


def _send_bad_messages(pipeline, domain_id: int, robot: str) -> tuple[int, int]:
    """Send bad messages until the stage's and planner's counters show them rejected.

    A truncated tensor, an unknown plan version and a NaN tensor go to the robot's stage, a
    measurement of an unknown robot's link to the planner; returns (stage, planner)
    rejections as counted on /diagnostics.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from resilient_perception.msg import ActivationTensor, LinkMeasurement

    from resilient_perception.harness.pipeline import Observer
    from resilient_perception.ros.topics import ACTIVATION_TOPIC_FORMAT, activation_qos

    good = np.zeros((1, 4, 32, 32), np.float32)
    bad = [
        ActivationTensor(plan_version=1, next_unit=1, shape=[1, 4, 32, 32], dtype="float32",
                         data=good.tobytes()[:100]),
        ActivationTensor(plan_version=999, next_unit=1, shape=[1, 4, 32, 32],
                         dtype="float32", data=good.tobytes()),
        ActivationTensor(plan_version=1, next_unit=1, shape=[1], dtype="float32",
                         data=np.array([np.nan], np.float32).tobytes()),
    ]
    stage = f"stage_{robot}"
    with Observer("bad_sender", domain_id=domain_id) as observer:
        diagnostics = observer.collect(DiagnosticArray, "/diagnostics")
        publisher = observer.node.create_publisher(
            ActivationTensor, ACTIVATION_TOPIC_FORMAT.format(robot), activation_qos())
        links = observer.node.create_publisher(LinkMeasurement, "link_measurements", 10)
        before = observer.spin_until(lambda: _counters(diagnostics, stage), stage, 10.0,
                                     pipeline)
        stage_before = int(before["rejected"])

        def rejected() -> tuple[int, int] | None:
            # A writer may match before the reader does, and a volatile reader misses what
            # came first: send again until the counts show the messages arrived.
            for msg in bad:
                publisher.publish(msg)
            links.publish(LinkMeasurement(from_robot="robot9", to_robot=robot,
                                          throughput_bps=1e6))
            observer.spin_for(0.3)
            counts = _counters(diagnostics, stage), _counters(diagnostics, "planner")
            if None in counts:
                return None
            stage_rejected = int(counts[0]["rejected"]) - stage_before
            planner_rejected = int(counts[1]["rejected"])
            return ((stage_rejected, planner_rejected)
                    if stage_rejected >= len(bad) and planner_rejected >= 1 else None)

        return observer.spin_until(rejected, "the stage and planner to count the bad messages",
                                   20.0, pipeline)


@pytest.mark.parametrize(("executable", "parameters"), [
    ("stage_node", ["-p", "robot:=robot0"]),  # no model_path
    ("planner_node", ["-p", "solver:=simplex"]),
    ("link_probe_node", ["-p", "robot:=robot0", "-p", "peers:=[robot0]"]),
])
def test_nodes_exit_2_on_invalid_parameters(executable, parameters):
    from resilient_perception.harness.pipeline import PACKAGE, package_prefix

    command = [str(package_prefix() / "lib" / PACKAGE / executable), "--ros-args", *parameters]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "invalid parameter or configuration" in result.stderr


def test_loopback_distributed_output_and_a_killed_stage(tiny, tmp_path):
    from resilient_perception.harness.distributed_run import distributed_nodes
    from resilient_perception.harness.pipeline import Pipeline

    records = tmp_path / "records.jsonl"
    nodes = distributed_nodes(
        ROBOTS, model_path=tiny["model_path"], profile=tiny["profile"],
        fleet=_fleet_file(tmp_path / "fleet.yaml", robot2_memory_mb=0.1), records=records,
        source="robot0", planner={"robot_timeout_s": 0.5, "use_measured_rates": False},
        requests={"rate_hz": 10.0, "data_root": str(DATA_ROOT)})
    with Pipeline(nodes, log_dir=tmp_path / "logs", domain_id=DOMAIN_ID) as pipeline:
        pipeline.start()
        # robot2 is fast but cannot hold stage4.block0: the plan needs all three robots.
        plan = _wait_for("a plan on all three robots", lambda: next(
            (p for p in _plans(records) if all(p["alive"])), None), 60.0, pipeline)
        used = {d for d in plan["devices"] if d != DROPPED}
        assert used >= {1, 2}, plan
        assert DROPPED in plan["devices"]  # the drop study made skipping worth it
        # The planner may publish an equal plan again (a robot heard late): requests are
        # pinned to the newest, so count predictions under any plan of all three robots.
        def under_full_plans() -> list[dict]:
            full = {p["version"] for p in _plans(records) if all(p["alive"])}
            return [p for p in _predictions(records) if p["plan_version"] in full]

        first = _wait_for("8 predictions under a plan of all three robots",
                          lambda: len(under_full_plans()) >= 8 and under_full_plans(), 30.0,
                          pipeline)
        _check_outputs(tiny, first)
        assert all(p["bytes_sent"] > 0 for p in first)
        _send_bad_messages(pipeline, DOMAIN_ID, "robot1")
        pipeline.check()  # both nodes still running
        done = len(_predictions(records))
        _wait_for("predictions after the bad messages", lambda: len(
            _predictions(records)) >= done + 3, 10.0, pipeline)

        killed_at = time.monotonic()
        pipeline.kill("stage_robot2")
        lost = _wait_for("a plan without robot2", lambda: next(
            (p for p in _plans(records) if p["reason"] == "robot lost"), None), 10.0, pipeline)
        assert lost["alive"] == [True, True, False]
        assert 2 not in lost["devices"]
        after = _wait_for("5 predictions under the new plan", lambda: len(
            _predictions(records, lost["version"])) >= 5 and _predictions(
            records, lost["version"]), 20.0, pipeline)
        _check_outputs(tiny, after)
        print(f"robot2 killed: new plan after {lost['t'] - killed_at:.2f} s, first request "
              f"under it done after {after[0]['t'] - killed_at:.2f} s")


# -- robots in network namespaces ------------------------------------------------------------
SHAPED_MBIT = 20.0
THROTTLED_MBIT = 2.0
RATE_TOLERANCE = 0.10
LINK_TOLERANCE = 0.25


def _reassembly(namespace: str) -> dict[str, int]:
    """The namespace's IPv4 reassembly counters and the memory its fragments hold now."""
    def read(path: str) -> list[str]:
        return subprocess.run(["ip", "netns", "exec", namespace, "cat", path],
                              capture_output=True, text=True, check=True).stdout.splitlines()

    names, values = (line.split()[1:] for line in read("/proc/net/snmp")
                     if line.startswith("Ip:"))
    ip = dict(zip(names, map(int, values), strict=True))
    frag = next(line.split() for line in read("/proc/net/sockstat") if line.startswith("FRAG:"))
    return {**{k: ip[k] for k in ("ReasmReqds", "ReasmOKs", "ReasmFails")},
            "fragment_bytes": int(frag[frag.index("memory") + 1])}


@pytest.fixture
def namespaces():
    """Three robot namespaces behind 20 Mbit/s links; removed afterwards, pass or fail."""
    from resilient_perception.harness.distributed_run import NamespaceFleet, NetworkSetupError

    probe = subprocess.run(["ip", "netns", "add", f"rp{os.getpid()}-probe"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here (`ip netns add`: "
                    f"{probe.stderr.strip() or probe.returncode})")
    subprocess.run(["ip", "netns", "del", f"rp{os.getpid()}-probe"], capture_output=True)
    fleet = NamespaceFleet(ROBOTS, SHAPED_MBIT)
    try:
        with fleet:
            yield fleet
    except NetworkSetupError as exc:
        pytest.fail(f"namespaces were allowed but the links failed: {exc}")
    finally:
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert fleet.tag not in left, f"namespaces left behind: {left}"


def test_namespaces_measured_rates_and_a_throttled_link(tiny, tmp_path, namespaces):
    from resilient_perception.harness.distributed_run import distributed_nodes, read_records
    from resilient_perception.harness.pipeline import Pipeline

    # A tenth of the kernel's default IP reassembly memory on robot2: probes that leave as IP
    # fragments fill it within seconds of the throttle (the fragments of messages that the
    # slowed link dropped wait 30 s for the rest), after which no burst into robot2
    # completes and the throttle is never seen. With the default 4 MB, 16 kB probes did
    # that in about one run in six; with 400 kB in every run.
    subprocess.run(["ip", "netns", "exec", namespaces.namespace("robot2"), "sysctl", "-q",
                    "-w", "net.ipv4.ipfrag_low_thresh=307200",
                    "net.ipv4.ipfrag_high_thresh=409600"], check=True)
    records = tmp_path / "records.jsonl"
    nodes = distributed_nodes(
        ROBOTS, model_path=tiny["model_path"], profile=tiny["profile"],
        fleet=_fleet_file(tmp_path / "fleet.yaml", robot2_memory_mb=1.0), records=records,
        source="robot0", probes=True,
        planner={"robot_timeout_s": 1.0, "rate_change_threshold": 0.3},
        # 0.2 s bursts: a receiver stalled for a few ms mis-times them by less. A median of 5
        # outlasts a disturbed sample or two (the probes time two peers' bursts that reach
        # one robot together from their parts that arrived alone, see BurstTimer).
        probe={"burst_s": 0.2, "window": 5},
        requests={"rate_hz": 2.0, "data_root": str(DATA_ROOT)},
        placement={robot: namespaces.node_options(robot) for robot in ROBOTS})
    with Pipeline(nodes, log_dir=tmp_path / "logs", domain_id=DOMAIN_ID) as pipeline:
        pipeline.start()

        def latest_links() -> dict[tuple[str, str], dict]:
            links = {}
            for link in read_records(records, "link"):
                if link["samples"] >= 5:
                    links[link["source"], link["target"]] = link
            return links

        links = _wait_for("every link measured 5 times", lambda: len(latest_links()) == 6 and
                          latest_links(), 40.0, pipeline)
        rates = {k: v["throughput_bps"] / 1e6 for k, v in links.items()}
        print("measured Mbit/s at 20 Mbit/s shaping:", rates)
        # The target: within 10% of the shaped rate (the median over the links);
        # every single link within 25%: DDS/UDP/IP headers take ~5%, and a receiver on this
        # shared 2-core machine stalls now and then. Before the probes told contended
        # bursts apart, a robot's links in were now and then all measured 30-40% low.
        median = float(np.median(list(rates.values())))
        assert abs(median - SHAPED_MBIT) <= RATE_TOLERANCE * SHAPED_MBIT, rates
        for link, rate in rates.items():
            assert abs(rate - SHAPED_MBIT) <= LINK_TOLERANCE * SHAPED_MBIT, (link, rates)
        # robot2 computes fastest and holds the whole network: the plan uses it.
        plan = _wait_for("a plan on all robots", lambda: next(
            (p for p in reversed(_plans(records)) if all(p["alive"])), None), 20.0, pipeline)
        assert 2 in plan["devices"], plan
        _check_outputs(tiny, _wait_for("predictions", lambda: _predictions(
            records, plan["version"])[:3], 20.0, pipeline))

        namespaces.shape("robot2", THROTTLED_MBIT)
        throttled = _wait_for("a plan after throttling robot2's link", lambda: next(
            (p for p in _plans(records) if p["version"] > plan["version"]
             and p["reason"] == "rate change" and 2 not in p["devices"]), None), 60.0, pipeline)
        assert any(d == 1 for d in throttled["devices"]), throttled
        # Rate changes may re-plan again right away; any later plan off robot2 counts.
        _check_outputs(tiny, _wait_for("predictions under a plan off robot2", lambda: [
            p for p in _predictions(records) if p["plan_version"] >= throttled["version"]
            and 2 not in p["unit_robots"]][:3], 20.0, pipeline))
        slow = {k: v["throughput_bps"] / 1e6 for k, v in latest_links().items()
                if "robot2" in k}
        print("measured Mbit/s on robot2's links after throttling to 2 Mbit/s:", slow)
        print("robot2's IP reassembly:", _reassembly(namespaces.namespace("robot2")))
        pipeline.stop()
        for name in pipeline.names:
            assert pipeline.returncode(name) in (0, -signal.SIGINT), (
                name, pipeline.log_path(name).read_text()[-6000:])
