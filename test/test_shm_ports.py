"""A Fast DDS shared-memory segment that a killed process left half-made no longer hangs nodes.

Such a segment (state "initializing", its creator gone) made every later DDS participant
that opened it wait forever, on any domain: the nodes of a whole CI run hung in rclpy's
``Node()``. The unit tests check which segments are defused; the ROS test plants half-made
ports where the next participant looks for free ones and starts a real node past them.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from resilient_perception.ros.shm_ports import SHM_DIR, defuse_stalled_segments, main
from test.conftest import ROOT, SHM_WATCH, domain_id

SEGMENT_BYTES = 52_400  # a Fast DDS port's size
INITIALIZING, INITIALIZED, CORRUPTED = 1, 2, 3


def segment(path: Path, state: int | None, age_s: float, size: int = SEGMENT_BYTES) -> Path:
    """A segment file in ``state`` (None: never sized) last changed ``age_s`` ago."""
    payload = b"" if state is None else state.to_bytes(4, sys.byteorder).ljust(size, b"\0")
    path.write_bytes(payload)
    changed = time.time() - age_s
    os.utime(path, (changed, changed))
    return path


def state_of(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:4], sys.byteorder)


def ports_a_new_participant_tries(count: int) -> list[Path]:
    """The first ``count`` port segments from 7000 up that no live participant listens on.

    Participants take shared-memory ports from 7000 up, whatever their domain, skipping
    those whose listener lock (``<port>_el``) a live process holds.
    """
    found = []
    for number in range(7000, 7200):
        lock = SHM_DIR / f"fastdds_port{number}_el"
        if lock.exists():
            descriptor = os.open(lock, os.O_RDONLY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live listener's
            finally:
                os.close(descriptor)  # and with it the lock, if taken
        found.append(SHM_DIR / f"fastdds_port{number}")
        if len(found) == count:
            break
    return found


def test_only_segments_stalled_past_the_limit_are_marked_corrupted(tmp_path):
    stalled_port = segment(tmp_path / "fastdds_port7002", INITIALIZING, age_s=10)
    never_sized = segment(tmp_path / "fastdds_port7003", None, age_s=10)
    stalled_data = segment(tmp_path / "fastdds_0123456789abcdef", INITIALIZING, age_s=10)
    being_made = segment(tmp_path / "fastdds_port7004", INITIALIZING, age_s=0)
    ready = segment(tmp_path / "fastdds_port7411", INITIALIZED, age_s=10)
    lock = segment(tmp_path / "fastdds_port7005_el", INITIALIZING, age_s=10)
    mutex = segment(tmp_path / "sem.fastdds_port7006_mutex", INITIALIZING, age_s=10)

    assert defuse_stalled_segments(tmp_path) == [
        "fastdds_0123456789abcdef", "fastdds_port7002", "fastdds_port7003"]
    for path in (stalled_port, never_sized, stalled_data):
        assert state_of(path) == CORRUPTED
    assert stalled_port.stat().st_size == SEGMENT_BYTES  # the rest of it untouched
    for path, state in ((being_made, INITIALIZING), (ready, INITIALIZED),
                        (lock, INITIALIZING), (mutex, INITIALIZING)):
        assert state_of(path) == state, path
    assert defuse_stalled_segments(tmp_path) == []  # once is enough


def test_the_command_says_what_it_defused_and_a_bad_period_exits_2(tmp_path, capsys):
    segment(tmp_path / "fastdds_port7002", INITIALIZING, age_s=10)
    assert main(["--shm-dir", str(tmp_path)]) == 0
    assert "fastdds_port7002: a half-made Fast DDS segment" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["--watch", "0"])
    assert exited.value.code == 2
    assert "--watch takes a period > 0 seconds" in capsys.readouterr().err


@pytest.fixture
def suite_watcher_paused(request):
    """The suite's own watcher (conftest) stopped, so a node has to defuse by itself."""
    watcher = request.config.stash[SHM_WATCH]
    watcher.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        watcher.send_signal(signal.SIGCONT)


@pytest.mark.ros
@pytest.mark.timeout(90)
def test_a_node_starts_past_half_made_ports_that_hung_every_participant(
        tmp_path, suite_watcher_paused):
    from test.conftest import require_ros

    require_ros()
    from diagnostic_msgs.msg import DiagnosticArray

    from resilient_perception.harness.pipeline import NodeSpec, Observer, Pipeline
    from resilient_perception.ros.topics import DIAGNOSTICS_TOPIC, status_node

    domain = domain_id()
    with Observer("shm_test", domain_id=domain) as observer:
        planted = [segment(path, INITIALIZING, age_s=10)
                   for path in ports_a_new_participant_tries(3)]
        try:
            arrays = observer.collect(DiagnosticArray, DIAGNOSTICS_TOPIC)
            with Pipeline([NodeSpec("fusion", "fusion_node")],
                          ROOT / "config" / "mnist_6cam.yaml", log_dir=tmp_path,
                          domain_id=domain) as pipeline:
                pipeline.start()
                observer.spin_until(lambda: any(
                    status_node(status.name) == "/fusion" for array in arrays
                    for status in array.status), "the fusion node's diagnostics", 60.0,
                    pipeline)
        finally:
            for path in planted:
                path.unlink(missing_ok=True)
    log = (tmp_path / "fusion.log").read_text()
    assert f"{planted[0]}: a Fast DDS shared-memory segment left half-made" in log
