"""Fast DDS shared-memory segments left half-made by a killed process, found and defused.

Fast DDS keeps each participant's shared-memory ports as boost.interprocess segments in
``/dev/shm``, and all ROS 2 processes on a machine share their numbering, whatever their
domain (a participant's unique-flow ports, for one, are 7000 and up). A process killed
while it creates or recreates a segment leaves it marked "initializing", and boost makes
every process that opens it wait for its creator forever: from then on a node that starts,
on any domain, can hang inside rclpy's ``Node()`` until ``/dev/shm`` is cleared
(eProsima/Fast-DDS#1144). With ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` rmw_fastrtps
always adds the shared-memory transport, so no profile avoids it.

Marking such a segment corrupted, the state boost checks, makes a process waiting on it
give up that port and take the next one, and a later one skip it: one port number is lost,
not the machine.

A process that dies without closing its participant (killed, crashed) leaves its segments
behind whole, and nothing removes them: a participant's data segment (``fastdds_`` and 16
hex digits, up to several MB) has a name no later process takes, so ``/dev/shm``, which is
memory, fills up (9.5 GB on a machine after a day of test runs; eProsima/Fast-DDS#2790),
and a port left mid-write can crash the next participant that reopens it
(eProsima/Fast-DDS#6501). Fast DDS's own ``fastdds shm clean`` tells them by their lock
files (``_el``, ``_sl``), which a live owner holds locked: :func:`remove_zombie_segments`
removes the segments whose every lock file nobody holds, as that command does, and only
those older than a few seconds (a lock file just made may not be locked yet).

The nodes do both before they join DDS (:func:`run_node
<resilient_perception.ros.node_utils.run_nodes>`); ``python -m
resilient_perception.ros.shm_ports`` does it by hand, and ``--watch`` keeps doing it (the
test suite runs one beside its nodes, which it kills mid-stream).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import sys
import time
from pathlib import Path

__all__ = ["SHM_DIR", "STALLED_AFTER_S", "clear_dead_segments", "defuse_stalled_segments",
           "remove_zombie_segments", "removal_summary", "stalled_segments"]

SHM_DIR = Path("/dev/shm")
"""Where Fast DDS (through boost.interprocess) keeps its shared-memory segments."""

STALLED_AFTER_S = 5.0
"""A segment still being made this long after its file last changed has lost its creator:
making one takes well under a millisecond, and the limit outlasts a creator frozen for a
few seconds (the test suite's freezes last up to 2 s), which would finish it when resumed."""

# boost.interprocess's managed segment starts with its state: 0 uninitialized,
# 1 initializing, 2 initialized, 3 corrupted (an opener that reads 3 throws).
_INITIALIZED, _CORRUPTED = 2, 3
_STATE_BYTES = 4
# Ports ("fastdds_port7411") and participants' data segments ("fastdds_" and 16 hex digits);
# not their lock files ("_el", "_sl") or named mutexes ("sem.fastdds_..._mutex").
_SEGMENT_NAME = re.compile(r"fastdds_(port\d+|[0-9a-f]{16})")
_LOCK_SUFFIXES = ("_el", "_sl")  # held exclusively / shared by the segment's live users


def _state(path: Path) -> int | None:
    """The segment's state word; 0 for a file its creator never sized; None if unreadable."""
    try:
        with open(path, "rb") as segment:
            head = segment.read(_STATE_BYTES)
    except OSError:
        return None
    return int.from_bytes(head, sys.byteorder) if len(head) == _STATE_BYTES else 0


def stalled_segments(shm_dir: Path = SHM_DIR,
                     stalled_after_s: float = STALLED_AFTER_S) -> list[Path]:
    """Fast DDS segments still being made ``stalled_after_s`` after their file last changed."""
    now = time.time()
    stalled = []
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:  # no /dev/shm: nothing Fast DDS could have left there
        return []
    for entry in entries:
        if not _SEGMENT_NAME.fullmatch(entry.name):
            continue
        try:
            changed = entry.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        if now - changed < stalled_after_s:
            continue
        state = _state(Path(entry.path))
        if state is not None and state not in (_INITIALIZED, _CORRUPTED):
            stalled.append(Path(entry.path))
    return sorted(stalled)


def defuse_stalled_segments(shm_dir: Path = SHM_DIR,
                            stalled_after_s: float = STALLED_AFTER_S) -> list[str]:
    """Mark every stalled segment (:func:`stalled_segments`) corrupted; their names.

    A segment this process may not write (another user's) is left as it is.
    """
    defused = []
    for path in stalled_segments(shm_dir, stalled_after_s):
        try:
            descriptor = os.open(path, os.O_WRONLY)
        except OSError:
            continue
        try:
            os.pwrite(descriptor, _CORRUPTED.to_bytes(_STATE_BYTES, sys.byteorder), 0)
        finally:
            os.close(descriptor)
        defused.append(path.name)
    return defused


def remove_zombie_segments(shm_dir: Path = SHM_DIR,
                           older_than_s: float = STALLED_AFTER_S) -> list[tuple[str, int]]:
    """Remove the Fast DDS segments whose owners are gone; their names and sizes (bytes).

    A segment is a zombie when it has a lock file older than ``older_than_s`` and no process
    holds any of its lock files. Each is removed with its lock files (and a port's named
    mutex) while this process holds them all, so no participant takes it up meanwhile.
    """
    removed = []
    now = time.time()
    try:
        names = {entry.name for entry in os.scandir(shm_dir)}
    except OSError:  # no /dev/shm: nothing Fast DDS could have left there
        return []
    for name in sorted(names):
        if not _SEGMENT_NAME.fullmatch(name):
            continue
        locks = [shm_dir / (name + suffix) for suffix in _LOCK_SUFFIXES
                 if name + suffix in names]
        if not locks:
            continue  # a port only ever opened for writing: no owner to judge by
        held = []
        try:
            for lock in locks:
                if now - lock.stat().st_mtime < older_than_s:
                    break
                descriptor = os.open(lock, os.O_RDONLY)
                held.append(descriptor)
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                segment = shm_dir / name
                size = segment.stat().st_size if segment.exists() else 0
                mutex = shm_dir / f"sem.{name}_mutex"
                for path in (segment, *locks, mutex):
                    path.unlink(missing_ok=True)
                removed.append((name, size))
        except OSError:  # a lock held (its owner lives), or files gone meanwhile
            pass
        finally:
            for descriptor in held:
                os.close(descriptor)
    return removed


def removal_summary(removed: list[tuple[str, int]]) -> str:
    """What :func:`remove_zombie_segments` removed, in words."""
    return (f"{len(removed)} Fast DDS segments whose processes are gone "
            f"({sum(size for _, size in removed) / 1e6:.1f} MB)")


def clear_dead_segments(shm_dir: Path = SHM_DIR) -> tuple[list[str], list[tuple[str, int]]]:
    """Defuse the stalled segments and remove the zombies; what each did.

    What a process does before it joins DDS: a stalled segment would hang it there, a
    zombie port can crash it (see the module's text).
    """
    return defuse_stalled_segments(shm_dir), remove_zombie_segments(shm_dir)


def main(argv: list[str] | None = None) -> int:
    """Defuse stalled segments and remove zombies, once or every ``--watch`` seconds."""
    parser = argparse.ArgumentParser(
        prog="python -m resilient_perception.ros.shm_ports", description=__doc__.split("\n")[0])
    parser.add_argument("--shm-dir", type=Path, default=SHM_DIR, help="default: %(default)s")
    parser.add_argument("--watch", type=float, metavar="SECONDS",
                        help="keep checking, every SECONDS (> 0)")
    parser.add_argument("--parent", type=int, metavar="PID",
                        help="with --watch: stop when this process has ended")
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch takes a period > 0 seconds")
    while True:
        defused, removed = clear_dead_segments(args.shm_dir)
        for name in defused:
            print(f"defused {args.shm_dir / name}: a half-made Fast DDS segment whose "
                  "creator is gone", flush=True)
        if removed and args.watch is None:  # routine while watching: every kill leaves some
            print(f"removed {removal_summary(removed)}", flush=True)
        if args.watch is None:
            return 0
        if args.parent is not None and not _alive(args.parent):
            return 0
        time.sleep(args.watch)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


if __name__ == "__main__":
    raise SystemExit(main())
