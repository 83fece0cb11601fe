"""rosbag2 bags without rosbag2_py: camera-frame bags of datasets, reading, validation, outputs.

Everything here uses the pure-Python ``rosbags`` library and no rclpy, so the CLI records,
checks and scores bags on machines without ROS; the replay and recorder nodes add the rclpy
side. Message bytes are CDR exactly as rclpy serialises them, so a node publishes what it
reads from a bag without deserialising it.

Layout of a **camera bag** (the topics, types and stamps the dataset player publishes, so a
bag replay is a drop-in replacement for it):

* ``/camera_<i>/image_raw`` (``sensor_msgs/msg/Image``), one message per camera and frame;
  all cameras of a frame share ``header.stamp`` and ``header.frame_id`` is ``camera_<i>``.
  Single-view datasets (MNIST, CIFAR-10) give every camera the full image (each camera node
  crops its own view); MVMC gives camera ``i`` its own view and skips views it lacks.
* ``/perception/label`` (``resilient_perception/msg/FrameLabel``), one per frame, same stamp.
* The bag (log) time of every message equals its stamp; frames are ``1 / rate`` apart.
* ``custom_data`` in the metadata: ``dataset``, ``split``, ``cameras``, ``rate_hz`` and
  ``first_frame_index``, so a reader knows how many camera topics to expect.

Bags of real cameras (``ros2 bag record`` of free-running drivers) are read and played too:
each camera's messages have their own log (receive) times and header stamps, a few
milliseconds apart from the other cameras', a camera may be recorded as
``camera_<i>/image_raw/compressed`` (``sensor_msgs/msg/CompressedImage``, JPEG or PNG)
instead of ``camera_<i>/image_raw``, there may be no labels, and the metadata has no custom
data. :func:`read_frames` groups the images of one frame by stamps within a tolerance (half
the frame period by default), as the fusion node's ``sync_tolerance`` does; a label, where
there is one, is stamped with its frame's earliest image stamp (the stamp the fusion node
gives the fused frame).

What ``ros2 bag play`` on Jazzy and Kilted needs, and this module writes: metadata version 9
(offered QoS profiles as YAML lists with policy names, infinite durations as rosbag2 writes
them, ``{sec: 9223372036, nsec: 854775807}``), ``cdr`` serialisation, and each topic's RIHS01
type description hash computed from the message definitions (the same hash rosidl generates;
``test/test_bags.py`` compares them). MCAP files use the ``ros2`` profile with ``ros2msg``
schemas and carry the metadata record rosbag2's MCAP plugin reads.

Problems with a bag (missing, truncated or corrupt files, missing camera topics, unknown
types) raise :class:`BagError` with a message that names the bag and says what is wrong.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from resilient_perception.perception.frame_assembly import nearest_fitting
from resilient_perception.ros.image_conversion import (
    ENCODINGS,
    ImageConversionError,
    camera_images,
    decode_compressed,
    encode,
    image_to_array,
)
from resilient_perception.ros.topics import (
    DIAGNOSTICS_TOPIC,
    FUSED_TOPIC,
    FUSION_ASSEMBLY_STATUS,
    IMAGE_TOPIC_FORMAT,
    LABEL_TOPIC,
)

__all__ = [
    "COMPRESSED_IMAGE_TYPE",
    "IMAGE_TYPE",
    "LABEL_TOPIC",
    "LABEL_TYPE",
    "STORAGES",
    "BagError",
    "BagSummary",
    "BagWriter",
    "CameraFrame",
    "TopicSummary",
    "camera_topic",
    "camera_topics",
    "count_labelled",
    "dataset_frames",
    "has_header",
    "header_stamp",
    "iter_messages",
    "make_qos",
    "read_frames",
    "read_messages",
    "restamp",
    "score_bag",
    "summarize",
    "typestore",
    "write_frames",
]

PACKAGE = "resilient_perception"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
LABEL_TYPE = f"{PACKAGE}/msg/FrameLabel"
STORAGES = ("mcap", "sqlite3")
METADATA_VERSION = 9  # what rosbag2 writes since Jazzy (QoS as YAML lists, policy names)

# A camera's raw images, or image_transport's compressed ones beside (or instead of) them.
_CAMERA_TOPIC = re.compile(r"^/?camera_(\d+)/image_raw(/compressed)?$")
# rmw's RMW_DURATION_INFINITE (INT64_MAX ns as sec + nsec): rosbag2 records default
# deadlines, lifespans and lease durations this way.
_INFINITE = QosTime(9223372036, 854775807)


class BagError(ValueError):
    """A bag is missing, truncated, corrupt or lacks what the caller needs; says which."""


def camera_topic(camera: int) -> str:
    """Image topic of camera ``camera``, relative (a namespace or remapping applies)."""
    return IMAGE_TOPIC_FORMAT.format(camera)


def _absolute(topic: str) -> str:
    """rosbag2 stores fully qualified topic names."""
    return "/" + topic.lstrip("/")


def make_qos(
    reliable: bool = True,
    transient_local: bool = False,
    depth: int = 10,
    deadline_ns: int = 0,
    lease_ns: int = 0,
) -> Qos:
    """An offered QoS profile as rosbag2 records it: KEEP_LAST ``depth``, AUTOMATIC liveliness.

    A ``deadline_ns`` or ``lease_ns`` of 0 means "not set" and is stored as infinite, which
    is what rmw reports for a publisher that sets neither.
    """
    def duration(ns: int) -> QosTime:
        return QosTime(*divmod(int(ns), 1_000_000_000)) if ns > 0 else _INFINITE

    return Qos(
        QosHistory.KEEP_LAST, depth,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        duration(deadline_ns), _INFINITE, QosLiveliness.AUTOMATIC, duration(lease_ns), False,
    )


# What the dataset player offers: ros/qos.image_qos (RELIABLE, depth 30, VOLATILE) for
# images and player_node.label_qos (RELIABLE, depth 100) for labels. Written out rather
# than imported: this module does not need rclpy.
IMAGE_QOS = make_qos(depth=30)
LABEL_QOS = make_qos(depth=100)


# -- message types ---------------------------------------------------------------------------
def _message_dirs() -> list[Path]:
    """Folders that may hold the package's .msg files: installed share/ trees, then source."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)  # a venv build installs into the venv (scripts/setup.sh)
    dirs = [Path(prefix) / "share" / PACKAGE / "msg" for prefix in prefixes]
    dirs.append(Path(__file__).resolve().parents[2] / "msg")  # the source tree
    return dirs


@functools.cache
def typestore():
    """The rosbags type store: ROS 2 Kilted's standard messages plus this package's ``msg/``.

    Raises:
        BagError: If the package's .msg files cannot be found.
    """
    store = get_typestore(Stores.ROS2_KILTED)
    folder = next((d for d in _message_dirs() if any(d.glob("*.msg"))), None)
    if folder is None:
        raise BagError(f"cannot find {PACKAGE}'s .msg files in any of "
                       f"{[str(d) for d in _message_dirs()]}: run scripts/setup.sh")
    types = {}
    for path in sorted(folder.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def has_header(msgtype: str) -> bool:
    """Whether messages of ``msgtype`` start with a ``std_msgs/Header`` (see :func:`restamp`)."""
    fields = typestore().fielddefs[msgtype][1]
    return bool(fields) and fields[0][1][1] == "std_msgs/msg/Header"


def restamp(data: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of a CDR message that starts with a Header, with ``header.stamp`` replaced.

    The stamp (int32 sec, uint32 nanosec) is the first thing after the 4-byte encapsulation
    header, in the byte order that header names, so no deserialisation is needed.
    """
    out = bytearray(data)
    order = "<" if out[1] & 1 else ">"  # encapsulation kind: CDR_LE = 1, CDR_BE = 0
    struct.pack_into(f"{order}iI", out, 4, *divmod(int(stamp_ns), 1_000_000_000))
    return bytes(out)


def header_stamp(data: bytes | memoryview) -> int:
    """``header.stamp`` (ns) of a CDR message that starts with a Header (see :func:`restamp`)."""
    order = "<" if data[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(f"{order}iI", data, 4)
    return sec * 1_000_000_000 + nanosec


def _check_type(msgtype: str, topic: str, path: Path) -> None:
    if msgtype not in typestore().fielddefs:
        raise BagError(f"bag {path}: topic {topic} has type {msgtype!r}, which is neither a "
                       f"ROS 2 Kilted standard message nor one of {PACKAGE}'s")


# -- writing ---------------------------------------------------------------------------------
class BagWriter:
    """Writes a rosbag2 bag (metadata version 9) topic by topic; use it as a context manager.

    Topics are added with :meth:`add_topic` (the message definition and type hash come from
    :func:`typestore`), then messages are written as CDR bytes with :meth:`write`. Closing
    writes the index and ``metadata.yaml``; a bag that is never closed (the process was
    killed) is reported as truncated by :func:`summarize`.
    """

    def __init__(self, path: str | Path, storage: str = "mcap",
                 custom_data: dict[str, str] | None = None) -> None:
        """Create the bag folder ``path`` (it must not exist) for ``storage`` mcap|sqlite3."""
        if storage not in STORAGES:
            raise BagError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; choose a new bag folder")
        self._writer = Writer(self.path, version=METADATA_VERSION,
                              storage_plugin=StoragePlugin[storage.upper()])
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(key, str(value))
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def has_topic(self, topic: str) -> bool:
        """Whether ``topic`` was added."""
        return _absolute(topic) in self._connections

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] = ()) -> None:
        """Add a topic of ``msgtype`` with the QoS profiles its publishers offered."""
        name = _absolute(topic)
        _check_type(msgtype, name, self.path)
        self._connections[name] = self._writer.add_connection(
            name, msgtype, typestore=typestore(), offered_qos_profiles=list(qos))
        self.counts[name] = 0

    def write(self, topic: str, log_ns: int, data: bytes | memoryview) -> None:
        """Write one CDR-serialised message received (or due) at ``log_ns``."""
        name = _absolute(topic)
        self._writer.write(self._connections[name], int(log_ns), data)
        self.counts[name] += 1

    def close(self) -> None:
        """Finish the storage file and write ``metadata.yaml``."""
        if self._writer.storage is not None:
            self._writer.close()

    def __enter__(self) -> BagWriter:
        """Return the open writer."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the bag, also after an error, so what was written stays readable."""
        self.close()


@dataclass(frozen=True)
class CameraFrame:
    """One frame of N cameras: ``images[i]`` is camera i's ``(H, W, C)`` image or None.

    ``stamp_ns`` is the earliest of the frame's stamps and ``spread_ns`` how far the latest
    is from it (0 for one shared stamp). ``label`` and ``frame_index`` are -1 in a bag
    without labels; ``encoding`` is the images' encoding (comma-separated when cameras
    differ, e.g. a decoded JPEG camera's ``bgr8`` beside ``rgb8``).
    """

    stamp_ns: int
    images: tuple[np.ndarray | None, ...]
    encoding: str
    label: int
    frame_index: int
    class_name: str = ""
    spread_ns: int = 0


def _header(stamp_ns: int, frame_id: str):
    types = typestore().types
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return types["std_msgs/msg/Header"](types["builtin_interfaces/msg/Time"](sec, nanosec),
                                        frame_id)


def _image_bytes(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> memoryview:
    enc = ENCODINGS[encoding]
    if image.ndim != 3 or image.shape[2] != enc.channels or image.dtype != enc.dtype:
        raise ImageConversionError(f"{encoding} needs an (H, W, {enc.channels}) {enc.dtype} "
                                   f"array, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    data = np.ascontiguousarray(image, dtype=enc.dtype.newbyteorder("<")).reshape(-1)
    msg = typestore().types[IMAGE_TYPE](
        _header(stamp_ns, frame_id), height, width, encoding, 0,
        width * enc.channels * enc.dtype.itemsize, data.view(np.uint8))
    return typestore().serialize_cdr(msg, IMAGE_TYPE)


def _label_bytes(frame: CameraFrame) -> memoryview:
    msg = typestore().types[LABEL_TYPE](_header(frame.stamp_ns, ""), frame.frame_index,
                                        frame.label, frame.class_name)
    return typestore().serialize_cdr(msg, LABEL_TYPE)


@dataclass
class WriteStats:
    """What :func:`write_frames` wrote."""

    frames: int = 0
    messages: int = 0
    bytes: int = 0  # size of the bag folder after closing
    seconds: float = 0.0


def dataset_frames(data: Any, indices: Iterable[int], n_cameras: int, rate_hz: float,
                   start_ns: int) -> Iterator[CameraFrame]:
    """The frames the dataset player would publish for ``indices`` of a loaded dataset.

    Frame ``k`` is stamped ``start_ns + k / rate_hz``. Images are cut and encoded by the
    functions the player uses (:func:`~resilient_perception.ros.image_conversion.encode`),
    so a bag holds exactly what the player publishes.

    Args:
        data: A dataset from :func:`~resilient_perception.datasets.load_dataset`.
        indices: Frame indices in the split, in play order.
        n_cameras: Number of camera topics.
        rate_hz: Frames per second.
        start_ns: Stamp of the first frame.
    """
    if not rate_hz > 0:
        raise BagError(f"rate must be > 0 frames per second, got {rate_hz}")
    for k, index in enumerate(indices):
        images, encoding = [], ""
        for image in camera_images(data, index, n_cameras):
            if image is not None:
                image, encoding = encode(image)
            images.append(image)
        label = int(data.labels[index])
        yield CameraFrame(start_ns + round(k * 1e9 / rate_hz), tuple(images), encoding, label,
                          index, data.classes[label])


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def write_frames(path: str | Path, frames: Iterable[CameraFrame], n_cameras: int,
                 storage: str = "mcap", custom_data: dict[str, str] | None = None) -> WriteStats:
    """Write camera frames as a camera bag (layout in the module docstring).

    Args:
        path: New bag folder.
        frames: The frames, in stamp order, each with ``n_cameras`` images (None = skipped).
        n_cameras: Number of camera topics.
        storage: ``"mcap"`` or ``"sqlite3"``.
        custom_data: Extra metadata; ``cameras`` is always set to ``n_cameras``.

    Returns:
        Counts, bag size and time taken.
    """
    start = time.perf_counter()
    stats = WriteStats()
    custom = {**(custom_data or {}), "cameras": str(n_cameras)}
    with BagWriter(path, storage, custom) as bag:
        for camera in range(n_cameras):
            bag.add_topic(camera_topic(camera), IMAGE_TYPE, [IMAGE_QOS])
        bag.add_topic(LABEL_TOPIC, LABEL_TYPE, [LABEL_QOS])
        for frame in frames:
            if len(frame.images) != n_cameras:
                raise BagError(f"frame {frame.frame_index} has {len(frame.images)} images for "
                               f"{n_cameras} cameras")
            for camera, image in enumerate(frame.images):
                if image is not None:
                    bag.write(camera_topic(camera), frame.stamp_ns, _image_bytes(
                        image, frame.encoding, frame.stamp_ns, f"camera_{camera}"))
                    stats.messages += 1
            bag.write(LABEL_TOPIC, frame.stamp_ns, _label_bytes(frame))
            stats.messages += 1
            stats.frames += 1
    stats.seconds = time.perf_counter() - start
    stats.bytes = _folder_bytes(Path(path))
    return stats


# -- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag as its metadata describes it."""

    name: str
    msgtype: str
    count: int
    qos: tuple[Qos, ...]
    type_hash: str


@dataclass(frozen=True)
class BagSummary:
    """A bag's metadata: storage, version, time span, topics and custom data."""

    path: Path
    storage: str
    version: int
    start_ns: int
    duration_ns: int
    message_count: int
    topics: dict[str, TopicSummary]
    custom: dict[str, str] = field(default_factory=dict)

    def frame_period_ns(self) -> int:
        """Time between frames: from ``rate_hz`` when recorded, else estimated (0 if unknown)."""
        rate = float(self.custom.get("rate_hz") or 0)
        if rate > 0:
            return round(1e9 / rate)
        most = max((t.count for t in self.topics.values()), default=0)
        return self.duration_ns // (most - 1) if most > 1 else 0

    def sync_tolerance_ns(self) -> int:
        """Default spread of one frame's stamps (or log times): half the frame period.

        One shared stamp per frame groups exactly, and so do free-running cameras' stamps a
        few milliseconds apart, as long as they spread less than half a period.
        """
        return self.frame_period_ns() // 2


def _corrupt(path: Path, exc: BaseException) -> BagError:
    return BagError(f"bag {path} is truncated or corrupt ({type(exc).__name__}: {exc}); a bag "
                    "whose writer was killed before closing it cannot be read")


def _open(path: Path) -> Reader:
    if not path.is_dir():
        raise BagError(f"bag {path} does not exist or is not a folder (a rosbag2 bag is a "
                       "folder with metadata.yaml and a .mcap or .db3 file)")
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"bag {path} has no metadata.yaml: it is not a rosbag2 bag, or its "
                       "recording was not closed cleanly")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises many kinds for damaged files
        raise _corrupt(path, exc) from exc
    return reader


def summarize(path: str | Path) -> BagSummary:
    """Read and check a bag's metadata and storage index.

    Raises:
        BagError: For a missing folder or metadata, a truncated or corrupt storage file, a
            storage file whose message count disagrees with the metadata, or a topic of a
            type that is not known.
    """
    path = Path(path)
    reader = _open(path)
    try:
        topics = {}
        for name, info in reader.topics.items():
            conn = info.connections[0]
            _check_type(info.msgtype or "(mixed types)", name, path)
            topics[name] = TopicSummary(name, info.msgtype, info.msgcount,
                                        tuple(conn.ext.offered_qos_profiles), conn.digest)
        storage = reader.storage
        indexed = sum(c.msgcount for s in storage.storages for c in s.connections)
        if indexed != reader.message_count:
            raise BagError(f"bag {path}: its storage holds {indexed} messages but metadata.yaml "
                           f"says {reader.message_count}: the bag is truncated or was edited")
        # rosbags checked this file already; two fields it does not expose.
        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        summary = BagSummary(
            path, info["storage_identifier"], info["version"],
            reader.start_time if reader.message_count else 0, max(0, reader.duration - 1),
            reader.message_count, topics, dict(storage.metadata.custom or {}))
    finally:
        reader.close()
    return summary


def camera_topics(summary: BagSummary, cameras: int | None = None) -> list[str]:
    """The bag's camera topics for cameras i = 0..N-1, checked.

    Camera ``i``'s topic is ``/camera_<i>/image_raw`` (``sensor_msgs/msg/Image``), or
    ``/camera_<i>/image_raw/compressed`` (``sensor_msgs/msg/CompressedImage``) for a camera
    recorded only compressed. N is ``cameras`` if given, else the ``cameras`` entry of the
    bag's custom data, else one more than the highest camera index present.

    Raises:
        BagError: If a camera topic is missing or is not of its image type.
    """
    present: dict[int, str] = {}
    for name in sorted(summary.topics):  # a camera's raw topic sorts before its compressed
        if m := _CAMERA_TOPIC.match(name):
            present.setdefault(int(m.group(1)), name)
    if cameras is None:
        recorded = summary.custom.get("cameras")
        cameras = int(recorded) if recorded else (max(present) + 1 if present else 0)
    if cameras < 1:
        raise BagError(f"bag {summary.path} has no camera topics (camera_<i>/image_raw)")
    missing = [_absolute(camera_topic(i)) for i in range(cameras) if i not in present]
    if missing:
        raise BagError(f"bag {summary.path} lacks camera topics {missing} of its {cameras} "
                       f"cameras (it has {sorted(present.values())})")
    for i in range(cameras):
        expected = _image_type(present[i])
        if summary.topics[present[i]].msgtype != expected:
            raise BagError(f"bag {summary.path}: {present[i]} has type "
                           f"{summary.topics[present[i]].msgtype}, expected {expected}")
    return [present[i] for i in range(cameras)]


def _image_type(topic: str) -> str:
    return COMPRESSED_IMAGE_TYPE if topic.endswith("/compressed") else IMAGE_TYPE


def iter_messages(path: str | Path, topics: Iterable[str] | None = None,
                  start_ns: int | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield ``(topic, msgtype, log_ns, cdr_bytes)`` in log-time order.

    Args:
        path: The bag folder.
        topics: Only these topics (absolute or relative names); all when None.
        start_ns: Only messages logged at or after this time.

    Raises:
        BagError: If the bag cannot be opened or a storage file turns out damaged while read.
    """
    path = Path(path)
    reader = _open(path)
    try:
        wanted = None if topics is None else {_absolute(t) for t in topics}
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if conns:
            try:
                for conn, log_ns, data in reader.messages(conns, start=start_ns):
                    yield conn.topic, conn.msgtype, log_ns, data
            except BagError:
                raise
            except Exception as exc:
                raise _corrupt(path, exc) from exc
    finally:
        reader.close()


def read_messages(path: str | Path, topics: Iterable[str] | None = None
                  ) -> Iterator[tuple[str, int, Any]]:
    """Yield ``(topic, log_ns, message)`` deserialised with :func:`typestore`."""
    store = typestore()
    for topic, msgtype, log_ns, data in iter_messages(path, topics):
        try:
            yield topic, log_ns, store.deserialize_cdr(data, msgtype)
        except Exception as exc:
            raise BagError(f"bag {path}: a {msgtype} message on {topic} at {log_ns} does not "
                           f"deserialise ({type(exc).__name__}: {exc})") from exc


def _stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def count_labelled(path: str | Path, topics: Iterable[str]) -> dict[str, int]:
    """Messages on each of ``topics`` (absolute names) stamped like a recorded label.

    A player's unlabelled warm-up frames are left out: how many of them reach a node depends
    on when DDS matched it. Every labelled frame must be there.
    """
    labels = {_stamp_ns(msg) for _, _, msg in read_messages(path, [LABEL_TOPIC])}
    counts = {_absolute(topic): 0 for topic in topics}
    for topic, _, msg in read_messages(path, counts):
        counts[topic] += _stamp_ns(msg) in labels
    return counts


@dataclass
class _Group:
    first_ns: int
    last_ns: int
    parts: dict[Any, Any]


class _StampGroups:
    """Messages grouped into frames by stamp, as they come in log-time order.

    A message joins the pending frame that has nothing under its key yet and that
    :func:`~resilient_perception.perception.frame_assembly.nearest_fitting` picks, else it
    starts a new one: the fusion node's rule (``sync_tolerance``). Log order and stamp order
    differ by a few milliseconds between cameras, so a frame is done only once a stamp more
    than twice the tolerance past its latest one arrives.
    """

    def __init__(self, tolerance_ns: int) -> None:
        self.tolerance_ns = tolerance_ns
        self.pending: list[_Group] = []

    def add(self, stamp_ns: int, key: Any, value: Any) -> list[_Group]:
        """File ``value`` under ``key`` in its frame; return the frames done, oldest first."""
        tolerance = self.tolerance_ns
        group = nearest_fitting(((g, g.first_ns, g.last_ns) for g in self.pending
                                 if key not in g.parts), stamp_ns, tolerance)
        if group is None:
            group = _Group(stamp_ns, stamp_ns, {})
            self.pending.append(group)
        group.first_ns, group.last_ns = min(group.first_ns, stamp_ns), max(group.last_ns,
                                                                           stamp_ns)
        group.parts[key] = value
        done = [g for g in self.pending if g.last_ns + 2 * tolerance < stamp_ns]
        self.pending = [g for g in self.pending if g.last_ns + 2 * tolerance >= stamp_ns]
        return sorted(done, key=lambda g: g.first_ns)

    def flush(self) -> list[_Group]:
        """The frames still pending, oldest first."""
        done, self.pending = sorted(self.pending, key=lambda g: g.first_ns), []
        return done


def _decoded(path: Path, topic: str, stamp: int, msg: Any) -> tuple[np.ndarray, str]:
    try:
        if topic.endswith("/compressed"):
            return decode_compressed(msg)
        return image_to_array(msg), msg.encoding
    except ImageConversionError as exc:
        raise BagError(f"bag {path}: image on {topic} at stamp {stamp}: {exc}") from exc


def read_frames(path: str | Path, cameras: int | None = None,
                sync_tolerance_ns: int | None = None) -> Iterator[CameraFrame]:
    """Read a camera bag back as frames: each camera's image and the label, grouped by stamp.

    A frame holds at most one image per camera and stamps within ``sync_tolerance_ns`` of
    each other (:class:`_StampGroups`; default :meth:`BagSummary.sync_tolerance_ns`).
    Raw images are ``(H, W, C)`` arrays as :func:`~resilient_perception.ros.image_conversion.
    image_to_array` returns them, compressed ones as OpenCV decodes them
    (:func:`~resilient_perception.ros.image_conversion.decode_compressed`); a camera without
    an image for a frame gives None. A bag without a label topic gives frames labelled -1.

    Raises:
        BagError: For the problems :func:`summarize` and :func:`camera_topics` find, an
            undecodable image, or (in a bag with labels) a frame without a label.
    """
    path = Path(path)
    summary = summarize(path)
    topics = camera_topics(summary, cameras)
    index = {name: i for i, name in enumerate(topics)}
    label_topic = _absolute(LABEL_TOPIC)
    labelled = label_topic in summary.topics
    tolerance = (summary.sync_tolerance_ns() if sync_tolerance_ns is None
                 else int(sync_tolerance_ns))
    groups = _StampGroups(tolerance)

    def frame(group: _Group) -> CameraFrame:
        parts = group.parts
        if labelled and "label" not in parts:
            raise BagError(f"bag {path}: frame at stamp {group.first_ns} has no label within "
                           f"{tolerance / 1e6:.1f} ms (the sync tolerance: do its cameras' "
                           "stamps spread further?)")
        label = parts.get("label")
        images = [parts.get(i) for i in range(len(topics))]
        encodings = sorted({image[1] for image in images if image is not None})
        return CameraFrame(
            group.first_ns, tuple(None if image is None else image[0] for image in images),
            ",".join(encodings), -1 if label is None else label.label,
            -1 if label is None else label.frame_index, "" if label is None else label.class_name,
            group.last_ns - group.first_ns)

    for topic, _, msg in read_messages(path, [*topics, *([label_topic] if labelled else [])]):
        stamp = _stamp_ns(msg)
        if topic == label_topic:
            done = groups.add(stamp, "label", msg)
        else:
            done = groups.add(stamp, index[topic], _decoded(path, topic, stamp, msg))
        yield from map(frame, done)
    yield from map(frame, groups.flush())


# -- scoring a bag of pipeline outputs -------------------------------------------------------
FUSED_TYPE = f"{PACKAGE}/msg/FusedPrediction"
PREDICTION_TYPE = f"{PACKAGE}/msg/DevicePrediction"
_PREDICTION_TOPIC = re.compile(r"^/(?:.*/)?device_(\d+)/prediction$")


def _nearest(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each of ``targets``, the element of the sorted, non-empty ``values`` nearest it."""
    right = np.minimum(np.searchsorted(values, targets), len(values) - 1)
    left = np.maximum(right - 1, 0)
    closer_left = np.abs(values[left] - targets) <= np.abs(values[right] - targets)
    return np.where(closer_left, values[left], values[right])


def score_bag(path: str | Path, fused_topic: str = FUSED_TOPIC,
              sync_tolerance_ns: int | None = None) -> dict:
    """Score a bag of pipeline outputs (as ``recorder_node`` writes it) against its labels.

    Fused predictions are joined to ``FrameLabel`` messages by stamp with
    :class:`~resilient_perception.perception.stream_score.StreamScore` (accuracy, availability,
    surrogate use, latency): the nearest label stamp at most ``sync_tolerance_ns`` away (0:
    the same stamp). A fused frame carries its earliest image's stamp, and a label its
    frame's earliest image's: they differ only when that image was lost. Added: per device,
    how many labelled frames had a prediction from it (its stamp within the tolerance of
    the label's: free-running cameras' images are stamped apart), and the last
    ``/diagnostics`` status of every component. ``sync_tolerance_ns`` None takes the fusion
    node's ``sync_tolerance`` from its recorded ``/diagnostics`` (0 if none was recorded).

    Raises:
        BagError: If the bag is damaged or lacks the label or fused topic.
    """
    from resilient_perception.perception.stream_score import FusedRecord, StreamScore

    path = Path(path)
    summary = summarize(path)
    fused_name, label_name = _absolute(fused_topic), _absolute(LABEL_TOPIC)
    wanted = {fused_name: FUSED_TYPE, label_name: LABEL_TYPE}
    for name, msgtype in wanted.items():
        if name not in summary.topics:
            raise BagError(f"bag {path} has no {name} topic (it has {sorted(summary.topics)})")
        if summary.topics[name].msgtype != msgtype:
            raise BagError(f"bag {path}: {name} has type {summary.topics[name].msgtype}, "
                           f"expected {msgtype}")
    predictions = {name: int(m.group(1)) for name in summary.topics
                   if (m := _PREDICTION_TOPIC.match(name))
                   and summary.topics[name].msgtype == PREDICTION_TYPE}
    truth, fused, heard, diagnostics = [], [], {}, {}
    topics = [*wanted, *predictions]
    if DIAGNOSTICS_TOPIC in summary.topics:
        topics.append(DIAGNOSTICS_TOPIC)
    for topic, _, msg in read_messages(path, topics):
        if topic == DIAGNOSTICS_TOPIC:
            for status in msg.status:
                diagnostics[status.name] = {"level": int(status.level), "message": status.message,
                                            **{kv.key: kv.value for kv in status.values}}
        elif topic in predictions:
            heard.setdefault(predictions[topic], set()).add(_stamp_ns(msg))
        elif topic == label_name:
            truth.append((_stamp_ns(msg), msg.frame_index, msg.label))
        elif topic == fused_name:
            fused.append(FusedRecord(_stamp_ns(msg), int(msg.label),
                                     tuple(int(d) for d in msg.live_devices),
                                     tuple(int(d) for d in msg.surrogate_devices),
                                     float(msg.latency)))
    used = [d for r in fused for d in (*r.live, *r.surrogates)]
    n_devices = int(summary.custom.get("devices") or 0) or max(
        [*predictions.values(), *used, -1]) + 1
    if n_devices < 1:
        raise BagError(f"bag {path}: no device predictions and no fused frames to score")
    score = StreamScore(n_devices)
    for stamp, index, label in truth:
        score.add_truth(stamp, index, label)
    if sync_tolerance_ns is None:
        sync_tolerance_ns = round(1e9 * max(
            (float(values["sync_tolerance_s"]) for name, values in diagnostics.items()
             if name.endswith(f": {FUSION_ASSEMBLY_STATUS}") and "sync_tolerance_s" in values),
            default=0.0))
    label_stamps = np.array(sorted(score.truth), np.int64)
    for record in fused:
        if sync_tolerance_ns and label_stamps.size:
            near = int(_nearest(label_stamps, np.array([record.stamp_ns], np.int64))[0])
            if abs(near - record.stamp_ns) <= sync_tolerance_ns:
                record = replace(record, stamp_ns=near)
        score.add_fused(record)

    def labelled_frames(device: int) -> int:  # labels with a prediction of the device near
        stamps = np.array(sorted(heard.get(device, ())), np.int64)
        if not (stamps.size and label_stamps.size):
            return 0
        return int(np.sum(np.abs(_nearest(stamps, label_stamps) - label_stamps)
                          <= sync_tolerance_ns))

    return {
        "bag": str(path),
        "fused_topic": fused_name,
        "sync_tolerance_s": sync_tolerance_ns / 1e9,
        "devices": n_devices,
        "score": score.summary(),
        "device_predictions": [
            {"device": d, "messages": len(heard.get(d, ())),
             "labelled_frames": labelled_frames(d),
             "fraction_of_labelled": labelled_frames(d) / max(1, label_stamps.size)}
            for d in range(n_devices)],
        "diagnostics": diagnostics,
    }

