"""A Fast DDS shared-memory segment that a killed process left half-made no longer hangs nodes.

Such a segment (state "initializing", its creator gone) made every later DDS participant
that opened it wait forever, on any domain: the nodes of a whole CI run hung in rclpy's
``Node()``. The unit tests check which segments are defused; the ROS test plants half-made
ports where the next participant looks for free ones and starts a real node past them.
Whole segments of a killed process are removed (they filled ``/dev/shm``): the unit test
checks which by their lock files, the ROS test kills a real node and restarts it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from resilient_perception.ros.shm_ports import (
    SHM_DIR,
    defuse_stalled_segments,
    main,
    remove_zombie_segments,
)
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


def held(lock: Path) -> bool:
    """Whether a live process holds the lock file ``lock`` (False if there is none)."""
    try:
        descriptor = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # and with it the lock, if taken
    return False


def ports_a_new_participant_tries(count: int) -> list[Path]:
    """The first ``count`` port segments from 7000 up that no live participant listens on.

    Participants take shared-memory ports from 7000 up, whatever their domain, skipping
    those whose listener lock (``<port>_el``) a live process holds.
    """
    found = []
    for number in range(7000, 7200):
        if held(SHM_DIR / f"fastdds_port{number}_el"):
            continue  # a live listener's
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


def test_the_command_says_what_it_defused_and_removed_and_a_bad_period_exits_2(tmp_path, capsys):
    segment(tmp_path / "fastdds_port7002", INITIALIZING, age_s=10)
    segment(tmp_path / "fastdds_port7004_el", None, age_s=10)
    segment(tmp_path / "fastdds_port7004", INITIALIZED, age_s=10, size=2_000_000)
    assert main(["--shm-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fastdds_port7002: a half-made Fast DDS segment" in out
    assert "removed 1 Fast DDS segments whose processes are gone (2.0 MB)" in out
    with pytest.raises(SystemExit) as exited:
        main(["--watch", "0"])
    assert exited.value.code == 2
    assert "--watch takes a period > 0 seconds" in capsys.readouterr().err


def test_segments_whose_every_lock_is_free_are_removed_with_their_files(tmp_path):
    def made(name: str, locks: tuple[str, ...] = ("_el",), age_s: float = 10) -> Path:
        for suffix in locks:
            segment(tmp_path / (name + suffix), None, age_s)
        return segment(tmp_path / name, INITIALIZED, age_s)

    zombie_port = made("fastdds_port7411")
    zombie_mutex = segment(tmp_path / "sem.fastdds_port7411_mutex", None, 10)
    zombie_data = made("fastdds_0123456789abcdef", ("_el", "_sl"))
    live = made("fastdds_port7413")
    shared_live = made("fastdds_port7415", ("_el", "_sl"))
    just_made = made("fastdds_port7417", age_s=0)
    writers_only = made("fastdds_port7419", ())
    held = []
    for lock in (tmp_path / "fastdds_port7413_el", tmp_path / "fastdds_port7415_sl"):
        held.append(os.open(lock, os.O_RDONLY))  # as a live owner holds them
        fcntl.flock(held[-1], fcntl.LOCK_SH)
    try:
        removed = remove_zombie_segments(tmp_path)
    finally:
        for descriptor in held:
            os.close(descriptor)
    assert removed == [("fastdds_0123456789abcdef", SEGMENT_BYTES),
                       ("fastdds_port7411", SEGMENT_BYTES)]
    for path in (zombie_port, zombie_mutex, zombie_data, tmp_path / "fastdds_port7411_el",
                 tmp_path / "fastdds_0123456789abcdef_sl"):
        assert not path.exists(), path
    for path in (live, shared_live, just_made, writers_only, tmp_path / "fastdds_port7415_el"):
        assert path.exists(), path
    assert remove_zombie_segments(tmp_path) == [  # their owners gone
        ("fastdds_port7413", SEGMENT_BYTES), ("fastdds_port7415", SEGMENT_BYTES)]


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


@pytest.mark.ros
@pytest.mark.timeout(90)
def test_a_killed_nodes_segments_are_removed_and_a_live_ones_kept(tmp_path,
                                                                  suite_watcher_paused):
    from test.conftest import require_ros

    require_ros()
    from diagnostic_msgs.msg import DiagnosticArray

    from resilient_perception.harness.pipeline import NodeSpec, Observer, Pipeline
    from resilient_perception.ros.topics import DIAGNOSTICS_TOPIC, status_node

    def lock_files() -> set[str]:
        return {p.name for p in SHM_DIR.glob("fastdds_*_[es]l")}

    domain = domain_id()
    with Observer("shm_zombie_test", domain_id=domain) as observer:
        before = lock_files()
        observers = {name for name in before if held(SHM_DIR / name)}
        assert observers  # this process's participant
        arrays = observer.collect(DiagnosticArray, DIAGNOSTICS_TOPIC)
        with Pipeline([NodeSpec("fusion", "fusion_node")], ROOT / "config" / "mnist_6cam.yaml",
                      log_dir=tmp_path, domain_id=domain) as pipeline:
            pipeline.start()

            def reported() -> bool:
                return any(status_node(status.name) == "/fusion" for array in arrays
                           for status in array.status)

            observer.spin_until(reported, "the fusion node's diagnostics", 60.0, pipeline)
            node_segments = {name[:-3] for name in lock_files() - before}
            assert node_segments  # its port and data segments
            pipeline.kill("fusion")  # SIGKILL: Fast DDS closes nothing
            left = {name for name in node_segments if (SHM_DIR / name).exists()}
            assert left == node_segments
            removed = {name for name, _ in remove_zombie_segments(older_than_s=0)}
            assert node_segments <= removed
            assert not any((SHM_DIR / name).exists() for name in node_segments)
            # This process's own segments (held by its live participant) are kept, and a
            # node started now joins DDS as before.
            assert all((SHM_DIR / name[:-3]).exists() for name in observers)
            arrays.clear()
            pipeline.start("fusion")
            observer.spin_until(reported, "the restarted fusion node's diagnostics", 60.0,
                                pipeline)
