"""Start the perception pipeline's nodes as OS processes, as the launch file does; watch it.

``ros2 launch`` needs the ``launch`` packages, which a machine with ROS 2 from PyPI wheels
does not have. Tests, the demo and the benchmark therefore start the installed executables
(``<prefix>/lib/resilient_perception/<executable>``) themselves, each as its own process,
with exactly the command line ``launch/perception.launch.py`` gives them: both take their
nodes from :func:`pipeline_nodes`, pass the config YAML first and each node's own
parameters second (a params file keyed by the node's full name, as ``launch_ros`` writes
for a dict), and remap the same topics::

    with (Pipeline.from_config("config/mnist_6cam.yaml", model_path="runs/mnist/model.safetensors",
                               overrides={"player": {"count": 300}}) as pipeline,
          Observer(domain_id=pipeline.domain_id) as observer):
        fused = observer.collect(FusedPrediction, "perception/fused")
        pipeline.start_ready(observer)  # the player last, once the fusion node is ready
        ...
        pipeline.kill("camera_2")       # SIGKILL: a crash
        pipeline.restart("camera_2")
    # leaving the block stops every node: SIGINT, then SIGKILL after a timeout

Each process writes stdout and stderr to ``<log_dir>/<name>.log`` (appended across
restarts) and its rcl log files under ``<log_dir>/ros`` (unless ``ROS_LOG_DIR`` is set).
Children inherit the environment, ``ROS_AUTOMATIC_DISCOVERY_RANGE`` included, and the
working directory; ``domain_id`` sets ``ROS_DOMAIN_ID``. An :class:`Observer` is an rclpy
node in the calling process for watching the pipeline's topics and its readiness.

Config files: rcl merges parameters by node-name key, and a key naming the node exactly
beats ``/**`` whatever the file order, so a node's own parameters are keyed by its full
name (``/camera_2``), never ``/**``; within those, later files win.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..ros.shm_ports import clear_dead_segments
from ..ros.topics import (
    CAMERA_HEAD_TOPIC,
    CAMERA_IMAGE_TOPIC,
    CAMERA_PREDICTION_TOPIC,
    DIAGNOSTICS_TOPIC,
    FUSION_ASSEMBLY_STATUS,
    FUSION_DEVICE_STATUS_FORMAT,
    HEAD_TOPIC_FORMAT,
    IMAGE_TOPIC_FORMAT,
    PREDICTION_TOPIC_FORMAT,
)

__all__ = [
    "HEAD_TOPIC_FORMAT",
    "IMAGE_TOPIC_FORMAT",
    "PACKAGE",
    "PREDICTION_TOPIC_FORMAT",
    "NodeSpec",
    "Observer",
    "Pipeline",
    "PipelineError",
    "package_prefix",
    "pipeline_nodes",
]

PACKAGE = "resilient_perception"
_LOG_TAIL_LINES = 30
NATIVE_STACKS_AFTER_S = 3.0
"""A node still running this long after SIGINT (or SIGTERM) gets its threads' stacks
written to its log (Python's, and native ones with gdb when installed): ``run_node`` gives
its clean-up and leaving DDS 5 s and then prints only the Python stacks, which end at the
call into the middleware."""
CONTAINER_NAME = "perception"
"""Node (and process) name of ``perception_container`` in a one-process pipeline."""
T = TypeVar("T")


class PipelineError(RuntimeError):
    """A node cannot be started, or exited when it should be running."""


def _file_stem(name: str) -> str:
    """A node's log and params file name: its name with the namespace's slashes as dots."""
    return name.strip("/").replace("/", ".")


@dataclass(frozen=True)
class NodeSpec:
    """One node of a pipeline: what ``launch_ros.actions.Node`` is told about it.

    Attributes:
        name: Node name (``-r __node:=name``), also the key of its process and log file; a
            name with a namespace (``/robot_a/camera_0``) also sets the node's namespace
            (``-r __ns:=/robot_a``), so two robots' ``camera_0`` can run side by side.
        executable: Executable under ``lib/resilient_perception``.
        parameters: This node's own parameters, on top of the config file's.
        remappings: ``(from, to)`` topic remappings.
        command_prefix: Words put before the command, e.g. ``("ip", "netns", "exec",
            "robot0")`` to run the node in a network namespace (``ip netns exec`` execs
            the command, so signals still reach the node's own process).
        env: Extra environment variables of this node's process.
    """

    name: str
    executable: str
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    command_prefix: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def pipeline_nodes(
    num_cameras: int = 6,
    *,
    player: bool = True,
    model_path: str | os.PathLike[str] | None = None,
    image_topic_format: str = IMAGE_TOPIC_FORMAT,
    image_reliability: str = "reliable",
    max_image_wait: float | None = None,
    one_process: bool = False,
) -> list[NodeSpec]:
    """The perception pipeline's nodes in start order: fusion, cameras, then the player.

    Camera ``i`` is node ``camera_i`` with ``device_id`` ``i``, reading
    ``image_topic_format.format(i)`` and publishing on the fusion node's device ``i``
    topics; the fusion node fuses ``num_cameras`` devices; the player (if wanted) publishes
    ``num_cameras`` image topics of the same format and is started last.

    Args:
        num_cameras: Number of camera nodes (devices).
        player: Include the dataset player node.
        model_path: Model of the cameras (``model_path`` parameter): one .safetensors
            checkpoint, or per-device files with a ``{}`` for the device index (the
            ``.onnx`` files of ``resilient-perception export``); None keeps the config's.
        image_topic_format: Image topic of camera ``i``: ``format(i)``.
        image_reliability: The cameras' image subscription: ``"reliable"`` (the package's
            player, replay and benchmarks publish RELIABLE and every frame counts) or
            ``"best_effort"`` (matched by any camera driver; the launch files' choice when
            the cameras are the user's).
        max_image_wait: The cameras' ``max_image_wait`` (s; 0 = every image). None: 0 with
            ``"reliable"`` images (every frame of the player counts, however late), the
            node's default (skip images that waited too long) with ``"best_effort"``.
        one_process: The fusion node and the cameras in one process
            (``perception_container``, node ``perception``), with the same node names,
            topics and parameters; the player stays its own process.

    Returns:
        The node specs.
    """
    if num_cameras < 1:
        raise ValueError(f"num_cameras must be >= 1, got {num_cameras}")
    if image_topic_format.format(0) == image_topic_format.format(1):
        raise ValueError(f"image_topic_format needs a '{{}}' field, got {image_topic_format!r}")
    if max_image_wait is None and image_reliability == "reliable":
        max_image_wait = 0.0
    wait = {} if max_image_wait is None else {"max_image_wait": float(max_image_wait)}
    if one_process:
        nodes = [NodeSpec(CONTAINER_NAME, "perception_container", {
            "num_cameras": num_cameras, "fusion": True,
            "image_topic_format": image_topic_format, "image_reliability": image_reliability,
            "model_path_format": "" if model_path is None else os.fspath(model_path),
            **wait})]
    else:
        nodes = [NodeSpec("fusion", "fusion_node", {
            "num_devices": num_cameras, "prediction_topic_format": PREDICTION_TOPIC_FORMAT,
            "head_topic_format": HEAD_TOPIC_FORMAT})]
        for i in range(num_cameras):
            model = {} if model_path is None else {
                "model_path": os.fspath(model_path).replace("{}", str(i))}
            nodes.append(NodeSpec(f"camera_{i}", "camera_node", {
                "device_id": i, "image_reliability": image_reliability, **wait, **model}, (
                (CAMERA_IMAGE_TOPIC, image_topic_format.format(i)),
                (CAMERA_PREDICTION_TOPIC, PREDICTION_TOPIC_FORMAT.format(i)),
                (CAMERA_HEAD_TOPIC, HEAD_TOPIC_FORMAT.format(i)))))
    if player:
        nodes.append(NodeSpec("player", "player_node", {
            "num_cameras": num_cameras, "image_topic_format": image_topic_format}))
    return nodes


def _cameras_in(spec: NodeSpec) -> int:
    """Camera nodes the process of ``spec`` runs (a container's default is 6)."""
    if spec.executable == "perception_container":
        return int(spec.parameters.get("num_cameras", 6))
    return int(spec.executable == "camera_node")


def package_prefix() -> Path:
    """Install prefix of the package: the ament index if it knows it, else this venv.

    Without ``AMENT_PREFIX_PATH`` (a venv with the ROS wheels, nothing sourced) the package
    is where scripts/setup.sh installs it: the running interpreter's prefix.
    """
    try:
        from ament_index_python.packages import get_package_prefix

        return Path(get_package_prefix(PACKAGE))
    except (ImportError, OSError, LookupError):  # PackageNotFoundError is a KeyError
        return Path(sys.prefix)


TRANSPORTS = ("shm", "udp")
"""How a node's samples travel on one machine: Fast DDS's shared memory (its default) or UDP."""


def transport_env(transport: str) -> dict[str, str]:
    """Environment that puts a node's samples on ``transport`` (one of :data:`TRANSPORTS`).

    ``udp`` points Fast DDS at the installed ``config/fastdds_udp_only.xml`` (it says why):
    for a node that may freeze, whose writers over shared memory can block and lose its
    samples until the reliable writer repairs them. A restarted process's shared-memory port
    is reset too (a restarted subscriber of ``scripts/dds_rematch.py`` waited a median
    1.35 s from matched to its first sample over shared memory, 0.03 s over UDP), but in the
    soak UDP did not bring a restarted fusion node its peers sooner: matching under load
    dominates (docs/results.md).
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
    if transport == "shm":
        return {}
    profile = package_prefix() / "share" / PACKAGE / "config" / "fastdds_udp_only.xml"
    return {"FASTDDS_DEFAULT_PROFILES_FILE": os.fspath(profile)}


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Pipeline:
    """Named node processes: start, signal, kill -9, restart and stop them.

    Use it as a context manager (or call :meth:`stop` in a ``finally``) so no process
    outlives the caller.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        config: str | os.PathLike[str] | None = None,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        domain_id: int | None = None,
        prefix: str | os.PathLike[str] | None = None,
    ) -> None:
        """Describe the processes; nothing starts before :meth:`start`.

        Args:
            nodes: The nodes, in start order (stopped in reverse order); unique names.
            config: ROS 2 params file given to every node first (``--params-file``).
            log_dir: Folder for logs and generated params files; default a new temp folder.
            domain_id: ``ROS_DOMAIN_ID`` of the children; None inherits it.
            prefix: Install prefix holding ``lib/resilient_perception``; default
                :func:`package_prefix`.

        Raises:
            PipelineError: For duplicate node names, a missing config file or executable.
        """
        self.nodes = {spec.name: spec for spec in nodes}
        if len(self.nodes) != len(nodes):
            raise PipelineError(f"node names must be unique: {[n.name for n in nodes]}")
        self.config = None if config is None else Path(config).resolve()
        if self.config is not None and not self.config.is_file():
            raise PipelineError(f"{config}: params file not found")
        self.prefix = Path(prefix) if prefix is not None else package_prefix()
        for spec in nodes:
            if not self.executable(spec.name).is_file():
                raise PipelineError(f"{self.executable(spec.name)} not found: build the "
                                    "package (scripts/setup.sh) or pass prefix=")
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="resilient_perception_"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.domain_id = domain_id
        self._processes: dict[str, subprocess.Popen] = {}
        self._signalled: set[str] = set()  # nodes this object signalled since their start

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str],
        *,
        model_path: str | os.PathLike[str] | None = None,
        num_cameras: int = 6,
        player: bool = True,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, Mapping[str, str]] | None = None,
        image_topic_format: str = IMAGE_TOPIC_FORMAT,
        log_dir: str | os.PathLike[str] | None = None,
        domain_id: int | None = None,
        one_process: bool = False,
    ) -> Pipeline:
        """The perception pipeline of :func:`pipeline_nodes` with a config file.

        Args:
            config: Params file, e.g. ``config/mnist_6cam.yaml``.
            model_path: Model of the cameras, see :func:`pipeline_nodes`; relative paths
                are resolved against the current directory.
            num_cameras: Number of cameras (and fused devices, and player topics).
            player: Include the dataset player.
            overrides: Extra parameters per node name, e.g. ``{"player": {"count": 30}}``;
                they win over the config file and the pipeline's own.
            env: Extra environment variables per node name, e.g. a Fast DDS profile.
            image_topic_format: Image topic of camera ``i``.
            log_dir: See :class:`Pipeline`.
            domain_id: See :class:`Pipeline`.
            one_process: Fusion and cameras in one process, see :func:`pipeline_nodes`.

        Raises:
            PipelineError: For overrides or env of a node the pipeline does not have (and see
                :class:`Pipeline`).
        """
        model = None if model_path is None else Path(model_path).resolve()
        nodes = pipeline_nodes(num_cameras, player=player, model_path=model,
                               image_topic_format=image_topic_format, one_process=one_process)
        names = [spec.name for spec in nodes]
        for what, per_node in (("overrides", overrides), ("env", env)):
            unknown = sorted(set(per_node or {}) - set(names))
            if unknown:
                raise PipelineError(f"{what} for unknown nodes {unknown}; nodes are {names}")
        nodes = [replace(spec, parameters={**spec.parameters, **(overrides or {}).get(
            spec.name, {})}, env={**spec.env, **(env or {}).get(spec.name, {})})
            for spec in nodes]
        return cls(nodes, config, log_dir=log_dir, domain_id=domain_id)

    # -- paths and command lines -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Node names in start order."""
        return list(self.nodes)

    def executable(self, name: str) -> Path:
        """Path of the node's installed executable."""
        return self.prefix / "lib" / PACKAGE / self.nodes[name].executable

    def log_path(self, name: str) -> Path:
        """The node's stdout + stderr log file."""
        self._spec(name)  # an unknown name is an error, not a path
        return self.log_dir / f"{_file_stem(name)}.log"

    def params_path(self, name: str) -> Path:
        """The node's own params file (written by :meth:`start`)."""
        self._spec(name)
        return self.log_dir / f"{_file_stem(name)}.params.yaml"

    def command(self, name: str) -> list[str]:
        """The node's command line, as ``launch_ros`` builds it for the launch file."""
        spec = self._spec(name)
        namespace, _, node = spec.name.rpartition("/")
        cmd = [*spec.command_prefix, str(self.executable(name)), "--ros-args", "-r",
               f"__node:={node}"]
        if namespace:
            cmd += ["-r", f"__ns:={namespace}"]
        if self.config is not None:
            cmd += ["--params-file", str(self.config)]
        if spec.parameters:
            cmd += ["--params-file", str(self.params_path(name))]
        for source, target in spec.remappings:
            cmd += ["-r", f"{source}:={target}"]
        return cmd

    def _spec(self, name: str) -> NodeSpec:
        try:
            return self.nodes[name]
        except KeyError:
            raise PipelineError(f"no node {name!r}; nodes are {self.names}") from None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.domain_id is not None:
            env["ROS_DOMAIN_ID"] = str(self.domain_id)
        env.setdefault("ROS_LOG_DIR", str(self.log_dir / "ros"))
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file as they happen
        return env

    # -- processes -------------------------------------------------------------------------
    def start(self, *names: str) -> Pipeline:
        """Start the given nodes (default: all) that are not running, in pipeline order."""
        for name in names or self.names:
            if not self.running(name):
                self._start(name)
        return self

    def _start(self, name: str) -> None:
        spec = self._spec(name)
        if spec.parameters:
            # Keyed by the node's full name, like launch_ros: beats the config's /** and
            # its plain `name:` section (an earlier file).
            params = {k: os.fspath(v) if isinstance(v, os.PathLike) else v
                      for k, v in spec.parameters.items()}
            self.params_path(name).write_text(yaml.safe_dump(
                {f"/{name.lstrip('/')}": {"ros__parameters": params}}, sort_keys=False))
        cmd = self.command(name)
        with open(self.log_path(name), "a") as log:  # the child keeps its own copy of the fd
            log.write(f"[pipeline] {time.strftime('%H:%M:%S')} $ {' '.join(cmd)}\n")
            log.flush()
            self._processes[name] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**self._env(), **spec.env})
        self._signalled.discard(name)

    def start_ready(self, observer: Observer, timeout: float = 60.0) -> Pipeline:
        """Start every node, the players last, once the fusion node can fuse.

        Players are ``player_node`` and its stand-in ``replay_node`` (a bag replay). Starts
        all nodes but the players, waits (through ``observer``) until the fusion
        node reports every camera's classifier head (until then it rejects predictions: it
        does not know their sizes), then starts the players, so no played frame is lost to
        start-up. Processes start in seconds each (importing torch), so this is what tests,
        the demo and the benchmark want; :meth:`start` is for starting nodes on their own.

        Raises:
            TimeoutError: If the fusion node is not ready after ``timeout`` s.
            PipelineError: If a node exits with an error meanwhile.
        """
        players = [name for name, spec in self.nodes.items()
                   if spec.executable in ("player_node", "replay_node")]
        self.start(*(name for name in self.names if name not in players))
        cameras = sum(_cameras_in(spec) for spec in self.nodes.values())
        observer.wait_for_fusion(cameras, timeout, self)
        return self.start(*players) if players else self

    def running(self, name: str) -> bool:
        """Whether the node's process is alive."""
        process = self._processes.get(self._spec(name).name)
        return process is not None and process.poll() is None

    def pid(self, name: str) -> int | None:
        """Process id of the node's last start, or None if never started."""
        process = self._processes.get(self._spec(name).name)
        return None if process is None else process.pid

    def returncode(self, name: str) -> int | None:
        """Exit code of the node's process (negative: killed by that signal), or None."""
        process = self._processes.get(self._spec(name).name)
        return None if process is None else process.poll()

    def wait(self, name: str, timeout: float) -> int:
        """Wait until the node's process exits and return its exit code.

        Raises:
            PipelineError: If it was never started or is still running after ``timeout`` s.
        """
        process = self._processes.get(self._spec(name).name)
        if process is None:
            raise PipelineError(f"{name} was never started")
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"{name} still running after {timeout} s; log tail:\n"
                                f"{_tail(self.log_path(name))}") from None

    def signal(self, name: str, sig: int, timeout: float | None = 10.0) -> int | None:
        """Send ``sig`` to the node's process and, unless ``timeout`` is None, wait for it.

        Returns:
            The exit code, or None when not waiting (or it was not running).
        """
        if not self.running(name):
            return self.returncode(name)
        self._signalled.add(name)
        self._processes[name].send_signal(sig)
        if timeout is None:
            return None
        if sig in (signal.SIGINT, signal.SIGTERM) and timeout > NATIVE_STACKS_AFTER_S:
            # A node that does not leave on a stop request: keep where it hangs in its log.
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self._processes[name].wait(timeout=NATIVE_STACKS_AFTER_S)
            self._log_stacks(name)
            timeout -= NATIVE_STACKS_AFTER_S
        return self.wait(name, timeout)

    def kill(self, name: str, timeout: float | None = 10.0) -> int | None:
        """``kill -9`` the node (a crash: no cleanup, DDS learns it from lost liveliness).

        Waits up to ``timeout`` s for the exit (None: does not wait; the process is reaped
        by a later :meth:`check`, :meth:`wait` or the pipeline's exit).
        """
        return self.signal(name, signal.SIGKILL, timeout)

    def interrupt(self, name: str, timeout: float = 10.0) -> int | None:
        """SIGINT the node (a clean shutdown) and wait for it to exit."""
        return self.signal(name, signal.SIGINT, timeout)

    def restart(self, name: str, timeout: float = 10.0) -> Pipeline:
        """Stop the node if it runs (SIGINT, then SIGKILL after ``timeout``) and start it."""
        self._stop([name], timeout)
        self._start(name)
        return self

    def wait_until(self, condition: Callable[[], T], what: str, timeout: float,
                   period: float = 0.05) -> T:
        """Poll ``condition()`` (e.g. files the nodes write) until truthy; return its value.

        Raises:
            TimeoutError: After ``timeout`` s, with the nodes' log tails.
            PipelineError: If a node exited with an error meanwhile (:meth:`check`).
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = condition()
            if value:
                return value
            self.check()
            time.sleep(period)
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}\n"
                           f"{self.log_tails()}")

    def check(self) -> None:
        """Raise if a node exited with an error that this object did not cause.

        Raises:
            PipelineError: Naming each such node, its exit code and its log's tail.
        """
        failed = [name for name, process in self._processes.items()
                  if process.poll() not in (None, 0) and name not in self._signalled]
        if failed:
            raise PipelineError("\n".join(
                f"{name} exited with code {self.returncode(name)}; log tail "
                f"({self.log_path(name)}):\n{_tail(self.log_path(name))}" for name in failed))

    def log_tails(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of every started node's log, for failure messages."""
        return "\n".join(f"--- {name} ({self.log_path(name)}):\n{_tail(self.log_path(name), lines)}"
                         for name in self._processes)

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGINT the running nodes one at a time (reverse start order); SIGKILL laggards.

        A node still running ``timeout`` s after its SIGINT is killed.

        One at a time: a node destroying its DDS participant while its peers leave too can
        deadlock inside Fast DDS 3.2 (the participant's ``set_listener(nullptr)`` waits for
        a discovery callback about a leaving peer, which waits for a lock it holds; native
        stacks in the three-robot test's log, about one run in 30); ``run_node`` then ends it
        after 5 s with exit 1. Stopped in turn, a node leaves while its peers still run.

        Returns:
            Each started node's exit code.
        """
        for name in reversed(self._processes):
            self._stop([name], timeout)
        return {name: self.returncode(name) for name in self._processes}

    def _stop(self, names: list[str], timeout: float) -> None:
        waiting = [name for name in names if self.running(name)]
        for name in waiting:
            self.signal(name, signal.SIGINT, timeout=None)
        start = time.monotonic()
        traced = False
        while waiting and time.monotonic() - start < timeout:
            for name in [name for name in waiting if not self.running(name)]:
                waiting.remove(name)
                self._log_line(name, f"exited with code {self.returncode(name)} "
                               f"{time.monotonic() - start:.1f} s after SIGINT")
            if not traced and waiting and time.monotonic() - start >= NATIVE_STACKS_AFTER_S:
                traced = True
                for name in waiting:
                    self._log_native_stacks(name)
            time.sleep(0.02)
        for name in waiting:
            process = self._processes[name]
            process.send_signal(signal.SIGUSR1)  # run_node's faulthandler prints the stacks
            time.sleep(1.0)
            self._log_line(name, f"still running {timeout:g} s after SIGINT (thread stacks "
                           "above): SIGKILL")
            process.kill()
            process.wait()

    def _log_stacks(self, name: str) -> None:
        """Python stacks (``run_node``'s SIGUSR1 handler) and native stacks into the log."""
        self.log_python_stacks([name], f"still running {NATIVE_STACKS_AFTER_S:g} s after a "
                               "stop request")
        self._log_native_stacks(name)

    def log_python_stacks(self, names: Iterable[str] | None = None,
                          reason: str = "asked") -> None:
        """Write the running nodes' Python thread stacks into their logs (all by default).

        ``run_node``'s SIGUSR1 handler prints them, even while the node's main thread waits
        in native code; a test that times out asks for them, so its failure message (the
        log tails) says whether a node was stuck in a callback or idle in its executor.
        """
        running = [n for n in (self._processes if names is None else names) if self.running(n)]
        for name in running:
            self._log_line(name, f"{reason}; its threads' Python stacks:")
            self._processes[name].send_signal(signal.SIGUSR1)
        if running:
            time.sleep(0.2)  # for the handlers to finish writing

    def _log_native_stacks(self, name: str) -> None:
        gdb = shutil.which("gdb")
        if gdb is None or not self.running(name):
            return
        self._log_line(name, f"still running {NATIVE_STACKS_AFTER_S:g} s after a stop "
                       "request; its threads' native stacks (gdb):")
        with open(self.log_path(name), "a") as log:
            subprocess.run([gdb, "-batch", "-p", str(self._processes[name].pid), "-ex",
                            "thread apply all bt"], stdout=log, stderr=subprocess.STDOUT,
                           timeout=60, check=False)

    def _log_line(self, name: str, text: str) -> None:
        with open(self.log_path(name), "a") as log:
            log.write(f"[pipeline] {time.strftime('%H:%M:%S')} {text}\n")

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Observer:
    """An rclpy node in its own context in this process, to watch a pipeline's topics.

    Example::

        with Observer(domain_id=pipeline.domain_id) as observer:
            fused = observer.collect(FusedPrediction, "perception/fused")
            pipeline.start()
            observer.spin_until(lambda: len(fused) >= 30, "30 fused frames", 20.0, pipeline)
    """

    def __init__(self, name: str = "pipeline_observer", domain_id: int | None = None) -> None:
        """Create the context (on ``domain_id``, default ``ROS_DOMAIN_ID``) and the node."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        clear_dead_segments()  # a stalled one would hang this process in DDS (see run_nodes)
        self.context = rclpy.Context()
        self.context.init(domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def collect(self, msg_type: type[T], topic: str, qos: Any = None) -> list[T]:
        """Subscribe ``topic`` and return the list its messages are appended to.

        ``qos`` defaults to RELIABLE, VOLATILE, KEEP_LAST 1000 (nothing is lost to depth).
        """
        from rclpy.qos import QoSProfile

        received: list[T] = []
        self.node.create_subscription(msg_type, topic, received.append,
                                      qos if qos is not None else QoSProfile(depth=1000))
        return received

    def spin_for(self, seconds: float) -> None:
        """Process callbacks for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def spin_until(self, condition: Callable[[], T], what: str | Callable[[], str],
                   timeout: float, pipeline: Pipeline | None = None) -> T:
        """Process callbacks until ``condition()`` is truthy; return its value.

        With ``pipeline``, its nodes are checked as well (:meth:`Pipeline.check`). ``what``
        names the condition in the timeout's message; a callable is asked at the timeout,
        so it can say what was still missing then.

        Raises:
            TimeoutError: After ``timeout`` s, with the pipeline's log tails if given.
            PipelineError: If a node of ``pipeline`` exited with an error.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = condition()
            if value:
                return value
            if pipeline is not None:
                pipeline.check()
            self.executor.spin_once(timeout_sec=0.02)
        logs = ""
        if pipeline is not None:
            pipeline.log_python_stacks(reason=f"a wait of {timeout:g} s timed out")
            logs = f"\n{pipeline.log_tails()}"
        waited_for = what() if callable(what) else what
        raise TimeoutError(f"timed out after {timeout} s waiting for {waited_for}{logs}")

    def wait_for_fusion(self, num_devices: int, timeout: float,
                        pipeline: Pipeline | None = None) -> None:
        """Wait until a fusion node's ``/diagnostics`` report ``num_devices`` known heads.

        Raises:
            TimeoutError: After ``timeout`` s (see :meth:`spin_until`).
            PipelineError: If a node of ``pipeline`` exited with an error.
        """
        from diagnostic_msgs.msg import DiagnosticArray

        arrays: list[DiagnosticArray] = []
        subscription = self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                                     arrays.append, 10)

        def heads_known() -> bool:
            return any(status.name.endswith(f": {FUSION_ASSEMBLY_STATUS}") and any(
                kv.key == "heads_known" and kv.value == str(num_devices) for kv in status.values)
                for array in arrays for status in array.status)

        def missing_heads() -> str:
            # Per device without a head, whether the fusion node has discovered its writer:
            # none is a discovery failure, one is a sample the middleware did not deliver.
            latest = {status.name.rsplit(": ", 1)[-1]: {kv.key: kv.value for kv in status.values}
                      for array in arrays for status in array.status}
            lacking = [f"device {d} (head writers discovered: "
                       f"{values.get('head_publishers', '?')})"
                       for d in range(num_devices)
                       if (values := latest.get(FUSION_DEVICE_STATUS_FORMAT.format(d), {}))
                       .get("head_known") != "True"]
            return (f"the fusion node to know {num_devices} classifier heads; without one: "
                    + (", ".join(lacking) if arrays else "no fusion /diagnostics heard"))

        try:
            self.spin_until(heads_known, missing_heads, timeout, pipeline)
        finally:
            self.node.destroy_subscription(subscription)

    def close(self) -> None:
        """Destroy the node and shut the context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
