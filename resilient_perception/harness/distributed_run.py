"""Run distributed ResNet inference: the node set, robots as network namespaces, the records.

:func:`distributed_nodes` lists the processes of a run for :class:`.pipeline.Pipeline`: the
planner, per robot a stage (and optionally a link probe), and the request node that feeds
images to the source robot and appends everything it sees to a JSON-lines file
(:func:`read_records`). Topics are the nodes' defaults (``placement_plan``,
``<robot>/activation``, ``<robot>/stage_alive``, ``<robot>/link_probe``,
``link_measurements``, ``distributed/prediction``).

:class:`NamespaceFleet` makes each robot a Linux network namespace behind its own veth
link to a bridge, each link shaped with ``tc tbf`` (needs root; netem is not available on
these machines, so loss and delay are not simulated). Nodes run inside with ``ip netns exec``
(:meth:`NamespaceFleet.node_options`), discover each other with
``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` over a multicast route on the link, and use Fast
DDS's UDP transport only: its shared-memory transport would otherwise carry the data
between namespaces of one machine past the shaped links. Addresses are from 192.0.2.0/24
(TEST-NET-1). Leaving the ``with`` block removes every namespace and link, whatever
happened inside.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .pipeline import NodeSpec

__all__ = ["NamespaceFleet", "NetworkSetupError", "distributed_nodes", "read_records"]


def distributed_nodes(
    robots: Sequence[str],
    *,
    model_path: str | os.PathLike[str],
    fleet: str | os.PathLike[str],
    profile: str | os.PathLike[str],
    records: str | os.PathLike[str],
    source: str,
    probes: bool = False,
    planner: dict[str, Any] | None = None,
    probe: dict[str, Any] | None = None,
    requests: dict[str, Any] | None = None,
    placement: dict[str, dict[str, Any]] | None = None,
    stages: dict[str, dict[str, Any]] | None = None,
) -> list[NodeSpec]:
    """The nodes of one run in start order: planner, stages (+ probes), request node.

    Args:
        robots: Robot names, as in the fleet file.
        model_path: The stages' ResNet checkpoint.
        fleet: Fleet YAML of the planner.
        profile: Block profile JSON of the planner.
        records: JSON-lines file of the request node.
        source: Robot whose stage receives the images.
        probes: Start a link probe on every robot.
        planner: Extra planner parameters.
        probe: Extra link probe parameters (every robot).
        requests: Extra request node parameters (``count``, ``rate_hz``).
        placement: Per robot name, extra :class:`NodeSpec` fields for its nodes (e.g.
            :meth:`NamespaceFleet.node_options`); the key ``"planner"`` places the planner
            and the request node (default: with the source robot's options).
        stages: Per robot name, extra stage parameters (e.g. ``emulate_gmacs``).

    Returns:
        Node specs named ``planner``, ``stage_<robot>``, ``probe_<robot>``, ``requests``.
    """
    placement = placement or {}
    central = placement.get("planner", placement.get(source, {}))
    nodes = [NodeSpec("planner", "planner_node", {
        "fleet": os.fspath(fleet), "profile": os.fspath(profile), **(planner or {})},
        **central)]
    for robot in robots:
        nodes.append(NodeSpec(f"stage_{robot}", "stage_node", {
            "robot": robot, "model_path": os.fspath(model_path), **(stages or {}).get(robot, {})},
            **placement.get(robot, {})))
        if probes:
            nodes.append(NodeSpec(f"probe_{robot}", "link_probe_node", {
                "robot": robot, "peers": [r for r in robots if r != robot], **(probe or {})},
                **placement.get(robot, {})))
    nodes.append(NodeSpec("requests", "request_node", {
        "robot": source, "output": os.fspath(records), **(requests or {})}, **central))
    return nodes


def read_records(path: str | os.PathLike[str], kind: str | None = None) -> list[dict]:
    """The request node's records so far, of one ``kind`` if given.

    A torn last line (the file is being written) is skipped.
    """
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record["kind"] == kind:
            records.append(record)
    return records


class NetworkSetupError(RuntimeError):
    """Network namespaces or links cannot be created here (not root, no netns support)."""


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetworkSetupError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")


class NamespaceFleet:
    """Robots as network namespaces, each linked to a bridge by its own shaped veth pair.

    Robot ``i`` is namespace ``<tag>-<robot>`` with address ``192.0.2.(10 + i)/24`` on its
    ``eth0``; the bridge lives in namespace ``<tag>-switch``. :meth:`shape` sets a link's
    rate in both directions (a ``tbf`` on each end of the veth pair).
    """

    def __init__(self, robots: Sequence[str], rate_mbit: float | Sequence[float],
                 tag: str | None = None, queue_s: float = 1.0) -> None:
        """Describe the network; it is created on ``__enter__``.

        Args:
            robots: Robot names (at most 200).
            rate_mbit: Initial rate of every robot's link, Mbit/s each way; or one rate per
                robot.
            tag: Namespace name prefix; default ``rp<pid>`` (unique per process).
            queue_s: tbf ``latency``: how long a packet may wait in the queue before it is
                dropped; bursts shorter than rate x this are not dropped.
        """
        if not 1 <= len(robots) <= 200:
            raise ValueError(f"1..200 robots, got {len(robots)}")
        self.robots = list(robots)
        self.tag = tag or f"rp{os.getpid()}"
        rates = [rate_mbit] * len(robots) if isinstance(rate_mbit, int | float) else rate_mbit
        if len(rates) != len(robots):
            raise ValueError(f"{len(rates)} link rates for {len(robots)} robots")
        self.rate_mbit = {robot: float(rate) for robot, rate in zip(robots, rates, strict=True)}
        self.queue_s = queue_s
        self._created: list[str] = []

    def namespace(self, robot: str) -> str:
        """Namespace name of ``robot``."""
        return f"{self.tag}-{robot}"

    @property
    def switch(self) -> str:
        """Namespace of the bridge."""
        return f"{self.tag}-switch"

    def address(self, robot: str) -> str:
        """IPv4 address of ``robot``."""
        return f"192.0.2.{10 + self.robots.index(robot)}"

    def node_options(self, robot: str) -> dict[str, Any]:
        """:class:`NodeSpec` fields that run a node inside ``robot``'s namespace."""
        return {"command_prefix": ("ip", "netns", "exec", self.namespace(robot)),
                "env": {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                        "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}}

    def shape(self, robot: str, rate_mbit: float) -> None:
        """Shape ``robot``'s link to ``rate_mbit`` Mbit/s in both directions."""
        i = self.robots.index(robot)
        for namespace, device in ((self.namespace(robot), "eth0"), (self.switch, f"p{i}")):
            _run("tc", "-n", namespace, "qdisc", "replace", "dev", device, "root", "tbf",
                 "rate", f"{rate_mbit}mbit", "burst", "32kbit",
                 "latency", f"{round(self.queue_s * 1000)}ms")
        self.rate_mbit[robot] = float(rate_mbit)

    def __enter__(self) -> NamespaceFleet:
        """Create namespaces, bridge, links, addresses, multicast routes and shaping.

        Raises:
            NetworkSetupError: If a command fails (everything created is removed first).
        """
        try:
            self._add_namespace(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge",
                 "mcast_snooping", "0")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for i, robot in enumerate(self.robots):
                namespace = self.namespace(robot)
                self._add_namespace(namespace)
                _run("ip", "-n", self.switch, "link", "add", f"p{i}", "type", "veth", "peer",
                     "name", "eth0", "netns", namespace)
                _run("ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
                _run("ip", "-n", namespace, "addr", "add", f"{self.address(robot)}/24",
                     "dev", "eth0")
                _run("ip", "-n", namespace, "link", "set", "eth0", "up")
                _run("ip", "-n", namespace, "link", "set", "lo", "up")
                _run("ip", "-n", namespace, "route", "add", "224.0.0.0/4", "dev", "eth0")
                self.shape(robot, self.rate_mbit[robot])
        except BaseException:
            self.remove()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._created.append(name)

    def remove(self) -> None:
        """Delete every namespace this object created (their links go with them)."""
        while self._created:
            subprocess.run(["ip", "netns", "del", self._created.pop()], capture_output=True)

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
