"""Who writes on a node's input topics: the graph's publishers and the writers heard.

DDS security is not available with the PyPI wheels (Fast DDS is built without it), so any
process on the domain can publish on a device's topic. :class:`WriterWatch` lets a node say
so: each :meth:`~WriterWatch.check` counts the publishers the ROS graph shows on every
watched topic (``get_publishers_info_by_topic``) and the distinct writers whose messages
arrived since the previous check (the ``publisher_gid`` of rclpy's ``MessageInfo``, fed
through :meth:`~WriterWatch.heard`), and names each writer by its node when the graph knows
the gid. A topic is *contested* when either count exceeds one.

The graph count alone is not proof: a process killed with ``kill -9`` leaves its endpoints
in the graph until DDS's participant lease runs out, so a crashed and restarted camera shows
two publishers for a while (both with the camera's node name). Two writers *heard* in one
period is the stronger sign: the old writer is dead and cannot send.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TopicWriters", "WriterWatch"]


@dataclass(frozen=True)
class TopicWriters:
    """One watched topic at one check."""

    topic: str
    publishers: tuple[str, ...]  # node of each publisher in the graph (one entry each)
    heard: tuple[str, ...]  # node (or gid) of each distinct writer heard since the last check

    @property
    def contested(self) -> bool:
        """More than one publisher in the graph, or more than one writer heard."""
        return len(self.publishers) > 1 or len(self.heard) > 1

    def describe(self) -> str:
        """E.g. ``"2 publishers on perception/device_2/prediction: /camera_2, /intruder"``."""
        parts = []
        if len(self.publishers) > 1:
            parts.append(f"{len(self.publishers)} publishers on {self.topic}: "
                         + ", ".join(self.publishers))
        if len(self.heard) > 1:
            parts.append(f"messages from {len(self.heard)} writers on {self.topic}: "
                         + ", ".join(self.heard))
        return "; ".join(parts)


def _node(info: Any) -> str:
    namespace = info.node_namespace.rstrip("/")
    return f"{namespace}/{info.node_name}" if info.node_name else "(no node)"


class WriterWatch:
    """Publishers and heard writers of ``topics`` (key -> topic name) of ``node``."""

    MAX_GIDS = 16  # distinct writers remembered per topic and period: bounded whatever comes

    def __init__(self, node: Any, topics: Mapping[Hashable, str]) -> None:
        """Watch ``topics`` from ``node`` (its graph queries); nothing heard yet."""
        self.node = node
        self.topics = dict(topics)
        self._heard: dict[Hashable, set[bytes]] = {key: set() for key in self.topics}

    def heard(self, key: Hashable, info: Mapping[str, Any]) -> None:
        """A message on ``key``'s topic arrived with this ``MessageInfo``."""
        gid = (info.get("publisher_gid") or {}).get("data")
        seen = self._heard[key]
        if gid is not None and len(seen) < self.MAX_GIDS:
            seen.add(bytes(gid))

    def check(self) -> dict[Hashable, TopicWriters]:
        """Every topic's publishers and the writers heard since the previous check."""
        out = {}
        for key, topic in self.topics.items():
            infos = self.node.get_publishers_info_by_topic(topic)
            names = {bytes(info.endpoint_gid): _node(info) for info in infos}
            heard = sorted(names.get(gid, f"gid {gid.hex()}") for gid in self._heard[key])
            self._heard[key] = set()
            out[key] = TopicWriters(topic, tuple(sorted(_node(i) for i in infos)), tuple(heard))
        return out
