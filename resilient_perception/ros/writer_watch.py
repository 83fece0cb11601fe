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

The same two sources say when the node is not receiving at all. A publisher the graph has
shown for ``unheard_after_s`` (and whose QoS matches the node's reader), from which not one
message has arrived, is *unheard*. On a topic every writer sends to at once, such as a
camera's classifier head (transient local, sent when the camera starts and every
``head_period``), that means the node is deaf to that writer: Fast DDS's shared-memory
transport can stop delivering to one reader after its peers crash-loop while other readers
of the same writer still receive (docs/results.md, "Soak with chaos"). A writer that was
heard once and then fell silent (a camera killed with ``kill -9``, whose endpoints linger in
the graph) is not unheard: that is the device's death, which the node detects otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from rclpy.qos import QoSCompatibility, qos_check_compatible

__all__ = ["TopicWriters", "WriterWatch"]


@dataclass(frozen=True)
class TopicWriters:
    """One watched topic at one check."""

    topic: str
    publishers: tuple[str, ...]  # node of each publisher in the graph (one entry each)
    heard: tuple[str, ...]  # node (or gid) of each distinct writer heard since the last check
    # node of each matching publisher in the graph for at least unheard_after_s, never heard
    unheard: tuple[str, ...] = ()

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
    """Publishers, heard writers and unheard publishers of ``subscriptions``' topics."""

    MAX_GIDS = 16  # distinct writers remembered per topic and period: bounded whatever comes
    MAX_EVER_HEARD = 256  # writers remembered per topic as ever heard (oldest forgotten)

    def __init__(self, node: Any, subscriptions: Mapping[Hashable, Any],
                 unheard_after_s: float = 0.0) -> None:
        """Watch the topics of ``subscriptions`` (key -> rclpy subscription of ``node``).

        ``unheard_after_s`` > 0 reports publishers that long in the graph and never heard
        (:attr:`TopicWriters.unheard`); 0 reports none.
        """
        self.node = node
        self.topics = {key: sub.topic_name for key, sub in subscriptions.items()}
        self._reader_qos = {key: sub.qos_profile for key, sub in subscriptions.items()}
        self.unheard_after_s = unheard_after_s
        self._heard: dict[Hashable, set[bytes]] = {key: set() for key in self.topics}
        self._ever_heard: dict[Hashable, dict[bytes, None]] = {key: {} for key in self.topics}
        self._first_seen: dict[Hashable, dict[bytes, float]] = {key: {} for key in self.topics}

    def heard(self, key: Hashable, info: Mapping[str, Any]) -> None:
        """A message on ``key``'s topic arrived with this ``MessageInfo``."""
        gid = (info.get("publisher_gid") or {}).get("data")
        if gid is None:
            return
        gid = bytes(gid)
        seen = self._heard[key]
        if len(seen) < self.MAX_GIDS:
            seen.add(gid)
        ever = self._ever_heard[key]
        if gid not in ever:
            ever[gid] = None
            if len(ever) > self.MAX_EVER_HEARD:
                del ever[next(iter(ever))]

    def check(self) -> dict[Hashable, TopicWriters]:
        """Every topic's publishers, writers heard since the last check, unheard publishers."""
        now = time.monotonic()  # dates the publishers seen for the first time
        out = {}
        for key, topic in self.topics.items():
            infos = {bytes(info.endpoint_gid): info
                     for info in self.node.get_publishers_info_by_topic(topic)}
            names = {gid: _node(info) for gid, info in infos.items()}
            heard = sorted(names.get(gid, f"gid {gid.hex()}") for gid in self._heard[key])
            self._heard[key] = set()
            # Publishers that left the graph are forgotten: a gid is never reused.
            first_seen = {gid: self._first_seen[key].get(gid, now) for gid in infos}
            self._first_seen[key] = first_seen
            unheard = sorted(
                names[gid] for gid, since in first_seen.items()
                if self.unheard_after_s > 0 and now - since >= self.unheard_after_s
                and gid not in self._ever_heard[key]
                and self._matches(key, infos[gid]))
            out[key] = TopicWriters(topic, tuple(sorted(names.values())), tuple(heard),
                                    tuple(unheard))
        return out

    def _matches(self, key: Hashable, info: Any) -> bool:
        """Whether the publisher's QoS lets DDS match it with the node's reader at all."""
        compatibility, _ = qos_check_compatible(info.qos_profile, self._reader_qos[key])
        return compatibility != QoSCompatibility.ERROR
