"""Shared pytest set-up and helpers: DDS on loopback, the data root, one ROS domain-id
allocator, the ROS skip, CLI runners, and small cuts of the real MNIST test set.

Test modules import the helpers with ``from test.conftest import ...`` (pytest loads this
file under that name before any test module).
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from resilient_perception.datasets import load_mnist
from resilient_perception.harness.pipeline import transport_env
from resilient_perception.perception.views import ViewSpec, make_views

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT / ".." / "shared" / "datasets"
needs_data = pytest.mark.skipif(not DATA_ROOT.is_dir(), reason="../shared/datasets not present")
# A node's samples over UDP, not shared memory (config/fastdds_udp_only.xml says why): for
# nodes a test freezes or restarts. Fast DDS resets a shared-memory port whose reader it has
# not seen for about a second, and the samples sent to it are then lost until the reliable
# writer repairs them, seconds later (a writer's publish() may block until then too).
UDP_ONLY_ENV = transport_env("udp")

CLI = shutil.which("resilient-perception", path=os.path.dirname(sys.executable))
"""The installed ``resilient-perception`` executable of this venv, or None."""
needs_cli = pytest.mark.skipif(CLI is None, reason="CLI not installed: run scripts/setup.sh")

# DDS stays on loopback in every test and in every node process a test starts (they inherit
# the environment), whatever the shell that runs pytest has set.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

# ROS domains 110-199: away from the default 0 and from other DDS users on the machine.
# Starting at this process's pid keeps two pytest runs on one machine (mostly) apart.
_DOMAINS = itertools.count(os.getpid())


# How long after its own timeout a test that pytest-timeout could not stop ends the run.
HANG_BACKSTOP_S = 120.0
_TERMINAL_STDERR = pytest.StashKey[int]()


SHM_WATCH = pytest.StashKey[subprocess.Popen]()


def pytest_configure(config: pytest.Config) -> None:
    """Keep the terminal's stderr (tests run with fd 2 captured); watch Fast DDS's segments.

    The tests kill node processes with -9 mid-stream; one killed while it (re)makes a
    shared-memory segment would hang every later DDS participant on the machine that
    opens it, running nodes included. The watcher defuses such a segment within seconds
    (:mod:`resilient_perception.ros.shm_ports`) and says so on the terminal.
    """
    config.stash[_TERMINAL_STDERR] = os.dup(sys.stderr.fileno())
    config.stash[SHM_WATCH] = subprocess.Popen(
        [sys.executable, "-m", "resilient_perception.ros.shm_ports", "--watch", "0.5",
         "--parent", str(os.getpid())], stdout=config.stash[_TERMINAL_STDERR])


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the segment watcher."""
    watcher = config.stash.get(SHM_WATCH, None)
    if watcher is not None:
        watcher.terminate()
        watcher.wait()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    """End the session, with every thread's stack on stderr, if a test hangs in native code.

    pytest-timeout interrupts a test with SIGALRM, whose Python handler runs only when the
    main thread returns to the interpreter; a test process stuck inside a DDS call (Fast DDS
    can deadlock deleting a participant while a peer leaves) never does, and one such test
    would use up the whole CI run. faulthandler's watchdog is a native thread: it prints
    where each thread waits and exits, so the run fails within minutes and says where.
    """
    marker = item.get_closest_marker("timeout")
    timeout = marker.args[0] if marker and marker.args else item.config.getini("timeout")
    faulthandler.dump_traceback_later(float(timeout or 300) + HANG_BACKSTOP_S, exit=True,
                                      file=item.config.stash[_TERMINAL_STDERR])
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


def domain_id() -> int:
    """A ROS_DOMAIN_ID no other caller in this test session gets (until 90 are handed out).

    A test module takes one at import (``DOMAIN_ID = domain_id()``), so node processes of
    two modules never see each other's topics.
    """
    return next(_DOMAINS) % 90 + 110


def require_ros() -> ModuleType:
    """Skip the calling test module unless rclpy and the built messages import; the messages.

    Call it at module level, before importing anything that needs rclpy.
    """
    pytest.importorskip("rclpy", reason="rclpy not installed: run scripts/setup.sh")
    return pytest.importorskip("resilient_perception.msg",
                               reason="messages not built: run scripts/setup.sh")


def run_cli_process(*args: str, cwd: Path, timeout: float = 600,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``resilient-perception ARGS`` as its own process in ``cwd`` (see :data:`needs_cli`)."""
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cli(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """Run ``resilient-perception ARGS`` in this process: ``cli(*args, cwd=None)``.

    Returns ``(exit status, stdout, stderr)``; an option argparse rejects gives status 2.
    The datasets are read from :data:`DATA_ROOT`. In-process runs save the seconds a new
    process spends importing torch.
    """
    from resilient_perception.cli import main

    def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setenv("RESILIENT_PERCEPTION_DATA", str(DATA_ROOT))
        capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse rejects an option
            status = exc.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def mnist_views():
    """First 2,000 MNIST test images cut 3x2: (views (2000, 6, 1, 10, 14), labels)."""
    if not DATA_ROOT.is_dir():
        pytest.skip("../shared/datasets not present")
    data = load_mnist(DATA_ROOT, "test")
    views, _ = make_views(ViewSpec(kind="grid", rows=3, cols=2), data)
    return np.ascontiguousarray(views[:2000]), data.labels[:2000].copy()


@pytest.fixture(scope="session")
def briefly_trained_model(mnist_views):
    """Six devices after 8 SGD steps on 256 real MNIST views: BN statistics are not defaults.

    For tests that compare backends or processes on one model; not for accuracy.
    """
    import torch
    import torch.nn.functional as F

    from resilient_perception.perception.model import MultiDeviceCNN, views_to_float

    views, labels = mnist_views
    x, y = views_to_float(views[:256]), torch.from_numpy(labels[:256])
    torch.manual_seed(7)
    net = MultiDeviceCNN(6, 1, 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    # One thread: for a model this small thread hand-offs cost more than they save, and on a
    # loaded 2-core machine they made these 8 steps take 13 s instead of 0.6 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for step in range(8):
        batch = slice(32 * step, 32 * (step + 1))
        logits, _ = net(x[batch])
        loss = F.cross_entropy(logits.reshape(-1, 10), y[batch].repeat_interleave(6))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return net.eval()


@pytest.fixture(scope="session")
def briefly_trained_checkpoint(briefly_trained_model, tmp_path_factory):
    """:func:`briefly_trained_model` saved as a training checkpoint (MNIST 3x2 grid)."""
    from resilient_perception.perception.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("briefly_trained")
    return save_checkpoint(folder / "model.safetensors", briefly_trained_model, {
        "view_spec": ViewSpec(kind="grid").to_dict(), "classes": [str(k) for k in range(10)],
        "dataset": "mnist"})


@pytest.fixture(scope="session")
def briefly_trained_onnx(briefly_trained_checkpoint) -> str:
    """The checkpoint's six devices exported to ONNX: the path pattern ``.../device_{}.onnx``."""
    from resilient_perception.perception.export import export_checkpoint

    folder = briefly_trained_checkpoint.parent / "onnx"
    export_checkpoint(briefly_trained_checkpoint, folder)
    return str(folder / "device_{}.onnx")
