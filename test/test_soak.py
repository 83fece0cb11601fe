"""The soak with chaos: its schedule, and the CI run of 2 minutes (the one long test).

The live run is the whole pipeline (player looping MNIST at 30 Hz, six ONNX camera
processes, fusion, recorder) under the default schedule's first two cycles: the fusion node
killed -9 and restarted, two cameras killed and restarted, two frozen for 2 s, the fusion
node frozen twice for 1 s. The soak command also runs as a real CLI process once, to be
stopped with SIGTERM: no node process may outlive it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psutil
import pytest

from test.conftest import CLI, ROOT, domain_id, needs_cli, require_ros

require_ros()

from resilient_perception.bench.live_demo import FailureEvent  # noqa: E402
from resilient_perception.bench.soak import (  # noqa: E402
    SOAK_ACTIONS,
    _fd_targets,
    _growth,
    _windows,
    parse_soak_schedule,
    run_soak,
    soak_nodes,
    soak_schedule,
    stalled_between,
    warmup_s,
)
from resilient_perception.cli import main  # noqa: E402
from resilient_perception.commands import soak as soak_command  # noqa: E402
from resilient_perception.harness.pipeline import package_prefix, transport_env  # noqa: E402

MNIST_CONFIG = ROOT / "config" / "mnist_6cam.yaml"
LIB = package_prefix() / "lib" / "resilient_perception"


def test_the_schedule_uses_the_demo_format_with_stop_and_cont():
    assert parse_soak_schedule("3:cont:fusion,2:stop:fusion") == (
        FailureEvent(2.0, "stop", "fusion"), FailureEvent(3.0, "cont", "fusion"))
    with pytest.raises(ValueError, match="SECONDS:kill\\|restart\\|stop\\|cont:NODE"):
        parse_soak_schedule("2:pause:fusion")
    assert soak_command.ACTIONS == SOAK_ACTIONS  # the CLI's copy (its parser imports no ROS)


def test_the_default_schedule_spares_one_camera_and_ends_settled():
    events = soak_schedule(30)
    fusion_kills = [e.at for e in events if e.node == "fusion" and e.action == "kill"]
    assert fusion_kills == [2.0, 602.0, 1202.0]  # every 10th cycle: its last process lives
    assert {e.node for e in events} == {"fusion", *(f"camera_{i}" for i in range(5))}
    assert max(e.at for e in events) < 30 * 60 - 10
    assert {e.action for e in soak_schedule(2)} == {"kill", "restart", "stop", "cont"}
    assert (warmup_s(30), warmup_s(2)) == (300.0, 60.0)


def test_a_descriptor_open_for_a_moment_is_a_peak_and_one_left_open_is_growth(tmp_path):
    """FD growth is the steady count (medians), so one sample's extra descriptor is no leak."""
    log = tmp_path / "leaked.log"
    with open(log, "w"):
        held = _fd_targets(os.getpid())
    assert str(log) in held and str(log) not in _fd_targets(os.getpid())

    def rows(pid: int, extra_at: set[int]) -> list[dict]:
        return [{"t": float(t), "node": f"node_{pid}", "pid": pid, "rss_mb": 100.0,
                 "cpu_percent": 1.0, "fds": 18 + (t in extra_at)} for t in range(121)]

    base = frozenset({"/dev/null", "socket:[1]"})
    targets = {1: [(0.0, base), (110.0, base | {"/usr/lib/x.so"}), (111.0, base)],
               2: [(0.0, base), (100.0, base | {str(log)})]}
    grown = _growth(rows(1, {110}) + rows(2, set(range(100, 121))), 0.0, targets)
    assert (grown["node_1"]["fd_growth"], grown["node_1"]["fds_peak"]) == (0, 19)
    assert grown["node_1"]["fds_opened"] == []
    assert grown["node_2"]["fd_growth"] == 1 and grown["node_2"]["fds_opened"] == [str(log)]


def test_the_fusion_node_takes_its_samples_over_the_transport_asked_for(tmp_path):
    profile = transport_env("udp")["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert profile.endswith("fastdds_udp_only.xml") and os.path.isfile(profile)
    for transport, fusion_env in (("udp", transport_env("udp")), ("shm", {})):
        nodes = {n.name: n for n in soak_nodes("m_{}.onnx", 6, 30.0, tmp_path, transport)}
        assert nodes["fusion"].env == fusion_env
        assert all(n.env == {} for name, n in nodes.items() if name != "fusion")
    default = {n.name: n for n in soak_nodes("m_{}.onnx", 6, 30.0, tmp_path)}
    assert default["fusion"].env == {}  # shared memory, as the pipeline runs it
    with pytest.raises(ValueError, match="use one of shm, udp"):
        transport_env("tcp")


def test_the_fusion_nodes_own_stall_is_counted_from_its_reports_around_a_reaction():
    totals = [(1.0, 0.0), (2.0, 0.0), (3.0, 1.0), (4.0, 1.0), (5.0, 0.2), (6.0, 0.5)]
    assert stalled_between(totals, 2.5, 2.9) == 1.0  # reported at 3.0, after the reaction
    assert stalled_between(totals, 3.5, 3.9) == 0.0
    assert stalled_between(totals, 4.5, 5.5) == 0.5  # restarted at 5 and stalled since
    assert stalled_between(totals, 0.5, 1.5) is None  # nothing reported before
    assert stalled_between(totals, 5.5, 6.5) is None  # nor after


@pytest.mark.parametrize(("complete", "window_end"), [(13.0, 14.0), (16.5, 16.5), (None, 14.0)])
def test_a_fusion_kill_window_lasts_until_complete_frames_and_at_least_the_bound(
        complete, window_end):
    """A slow restart is the restart target's miss; its frames are not also lost outside."""
    events = [{"node": "fusion", "action": "kill", "monotonic": 10.0},
              {"node": "fusion", "action": "restart", "monotonic": 11.0,
               "active_monotonic": 12.0, "complete_monotonic": complete},
              {"node": "camera_0", "action": "kill", "monotonic": 20.0}]
    _windows(events, ended=30.0)
    assert [e["window"] for e in events] == [(9.5, window_end), (10.5, window_end), (19.5, 21.0)]


def test_a_bad_schedule_option_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")  # so the option is what is wrong
    with pytest.raises(SystemExit) as exc:
        main(["soak", "model.safetensors", "--schedule", "2:pause:fusion"])
    assert exc.value.code == 2
    assert "SECONDS:kill|restart|stop|cont:NODE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["soak", "model.safetensors", "--fusion-transport", "tcp"])
    assert exc.value.code == 2 and "--fusion-transport" in capsys.readouterr().err


@pytest.mark.ros
@pytest.mark.timeout(420)
@pytest.mark.skipif(not (LIB / "recorder_node").is_file(),
                    reason="nodes not installed: run scripts/setup.sh")
def test_two_minutes_of_chaos_lose_nothing_outside_the_reaction_windows(
        briefly_trained_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id()))
    lines: list[str] = []
    report = run_soak(MNIST_CONFIG, briefly_trained_onnx, tmp_path / "report",
                      tmp_path / "logs", minutes=2.0, emit=lines.append, progress_every=20.0)
    print("\n".join(lines))
    print((tmp_path / "report" / "report.md").read_text())
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    for name in ("samples.csv", "latency.csv", "soak.png", "report.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert sum("labelled" in line for line in lines) >= 5  # progress lines
    assert report["aborted"] is None
    frames = report["frames"]
    assert frames["labelled"] > 3000 and frames["lost_outside_windows"] == 0
    assert frames["duplicated_outside_windows"] == 0
    restart, = (e for e in report["events"] if e["node"] == "fusion"
                and e["action"] == "restart")
    # The restarted fusion node fuses complete frames again. How soon is the soak report's
    # target, not this test's: it includes Fast DDS matching the new process with the six
    # cameras after a crash, which takes from a few ms to over 3 s for any pair of rclpy
    # nodes (scripts/dds_rematch.py), whatever the package does.
    assert restart["heads_known_after_s"] is not None and restart["reaction_s"] is not None
    # A killed camera is replaced in every frame stamped while it is down. How soon the
    # first replacement arrives is the report's number, not this test's: after a peer's
    # kill -9, Fast DDS at times holds a writer's publish() for up to a second (the player's
    # images, the fusion node's own output), and the frames come that much later however
    # the fusion node reacts (docs/results.md, "Soak with chaos").
    kills = [e for e in report["events"] if e["action"] == "kill" and e["node"] != "fusion"]
    assert kills and all(e["reaction_s"] is not None for e in kills)
    assert all(0 < e["with_its_surrogate"] == e["frames_while_down"] for e in kills), kills
    grown = {node: p["rss_growth"] for node, p in report["processes"].items()}
    assert grown["camera_5"] is not None and grown["player"] is not None  # measured
    assert report["criteria"]["max_fd_growth"]["passed"], report["processes"]
    # Memory: the soak's 5% criterion, on a run this short and a loaded machine, is the target the
    # report checks; the test asserts the looser bound that catches a leak of a frame per
    # frame (a 2-minute run cannot tell a slow one from allocator warm-up).
    assert all(g is None or g < 0.10 for g in grown.values()), grown


@pytest.mark.ros
@pytest.mark.timeout(120)
@needs_cli
@pytest.mark.skipif(not (LIB / "recorder_node").is_file(),
                    reason="nodes not installed: run scripts/setup.sh")
def test_sigterm_stops_the_command_and_every_node_it_started(briefly_trained_checkpoint,
                                                             tmp_path):
    """``kill`` or ``timeout`` on a long command leaves no node processes behind."""
    logs = tmp_path / "logs"
    command = subprocess.Popen(
        [CLI, "soak", str(briefly_trained_checkpoint), "--minutes", "1",
         "--out", str(tmp_path / "report"), "--log-dir", str(logs)],
        cwd=ROOT, env={**os.environ, "ROS_DOMAIN_ID": str(domain_id())},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in command.stdout:
            if line.startswith("soaking"):  # every node is up and the schedule has begun
                break
        command.send_signal(signal.SIGTERM)
        _, err = command.communicate(timeout=60)
    finally:
        command.kill()
    assert command.returncode == 143 and "terminated" in err, err
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if any(str(logs) in part for part in p.info["cmdline"] or [])]
    assert left == []
