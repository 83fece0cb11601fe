"""The live demo: schedule parsing, its node set, and a short live run with one kill."""

from __future__ import annotations

import json
import time

import pytest

from test.conftest import ROOT, domain_id, require_ros

require_ros()

from resilient_perception.bench.live_demo import (  # noqa: E402
    FailureEvent,
    demo_nodes,
    parse_schedule,
    run_live_demo,
)
from resilient_perception.cli import main  # noqa: E402
from resilient_perception.harness.pipeline import package_prefix  # noqa: E402

MNIST_CONFIG = ROOT / "config" / "mnist_6cam.yaml"
LIB = package_prefix() / "lib" / "resilient_perception"


def test_parse_schedule_sorts_and_validates():
    assert parse_schedule("12:kill:camera_4, 6:kill:camera_1,18:restart:camera_1") == (
        FailureEvent(6.0, "kill", "camera_1"), FailureEvent(12.0, "kill", "camera_4"),
        FailureEvent(18.0, "restart", "camera_1"))
    for bad in ("6:kill", "x:kill:camera_1", "6:pause:camera_1", "-1:kill:camera_1",
                "6:kill:camera_1:extra"):
        with pytest.raises(ValueError, match="SECONDS:kill\\|restart:NODE"):
            parse_schedule(bad)


def test_bad_schedule_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--schedule", "soon:kill:camera_1"])
    assert exc.value.code == 2
    assert "SECONDS:kill|restart:NODE" in capsys.readouterr().err


def test_demo_runs_a_second_fusion_node_without_the_modifier():
    nodes = {n.name: n for n in demo_nodes(MNIST_CONFIG, "m/device_{}.onnx", 6, 15.0, 99)}
    assert set(nodes) == {"fusion", "fusion_no_modifier", "player",
                          *(f"camera_{i}" for i in range(6))}
    plain = nodes["fusion_no_modifier"].parameters
    assert plain["use_modifier"] is False
    assert plain["output_topic"] != nodes["fusion"].parameters["output_topic"]
    assert plain["frame_timeout"] == 0.1 and plain["num_devices"] == 6  # config + pipeline
    assert nodes["player"].parameters["rate_hz"] == 15.0
    assert nodes["camera_3"].parameters["model_path"] == "m/device_3.onnx"


live = pytest.mark.skipif(not (LIB / "player_node").is_file(),
                          reason="nodes not installed: run scripts/setup.sh")


@pytest.fixture
def onnx_models(briefly_trained_onnx, monkeypatch) -> str:
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id()))
    return briefly_trained_onnx


@pytest.mark.ros
@pytest.mark.timeout(180)
@live
def test_short_live_run_with_one_kill(onnx_models, tmp_path):
    lines: list[str] = []
    report = run_live_demo(MNIST_CONFIG, onnx_models, tmp_path / "live", duration=5.0,
                           rate_hz=30.0, schedule=(FailureEvent(2.0, "kill", "camera_3"),),
                           emit=lines.append)
    assert any(line.strip().startswith("time") for line in lines)
    assert json.loads((tmp_path / "live" / "report.json").read_text()) == report
    assert "| 3 |" in (tmp_path / "live" / "report.md").read_text()
    mod, plain = report["streams"]["modifier"], report["streams"]["no_modifier"]
    assert mod["missing"] == 0 and plain["missing"] == 0
    assert mod["device_surrogate_frames"][3] > 0 and plain["frames_with_surrogate"] == 0
    assert report["events"][0]["reaction_s"] is not None


@pytest.mark.ros
@pytest.mark.timeout(180)
@live
def test_the_demo_runs_from_a_bag_and_counts_what_came_while_it_stalled(onnx_models, tmp_path):
    from resilient_perception.datasets import load_mnist
    from resilient_perception.ros.bags import dataset_frames, write_frames

    frames = dataset_frames(load_mnist(ROOT / ".." / "shared" / "datasets", "test"), range(60),
                            6, 30.0, 1_000_000_000)
    write_frames(tmp_path / "bag", frames, 6)

    def stall_after_the_kill(line: str) -> None:
        # The scoring loop blocked past the end (a slow kill, a stalled machine): what the
        # pipeline sent meanwhile waits in the observer's readers.
        if line.lstrip().startswith("2.0"):
            time.sleep(3.5)

    report = run_live_demo(MNIST_CONFIG, onnx_models, tmp_path / "live", duration=5.0,
                           schedule=(FailureEvent(1.5, "kill", "camera_0"),),
                           emit=stall_after_the_kill, bag=tmp_path / "bag")
    mod = report["streams"]["modifier"]
    assert report["source"].startswith("bag")
    # The replay keeps its 30 Hz schedule: about 165 labelled frames in the 5.5 s, 60 to 70
    # of them read before the stall. Counting stops only once the streams are drained.
    assert mod["scored_frames"] >= 90 and mod["missing"] == 0, mod  # and looped past 60
    assert mod["device_surrogate_frames"][0] > 0
