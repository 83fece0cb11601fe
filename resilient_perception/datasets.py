"""Offline dataset loaders: MNIST and any IDX pair, CIFAR-10 (JPEG tar), MVMC multi-view.

Everything here is numpy + Pillow + stdlib, so the ML workflow and the ROS nodes share it.
The data files live in ``../shared/datasets`` relative to the project root (see that folder's
README); they are read in place, never copied into the repository.

Layout conventions:

* Single-view datasets become :class:`LabeledImages` with images ``uint8 (M, C, H, W)``.
* Multi-camera datasets become :class:`MultiViewImages` with views ``uint8 (M, V, C, H, W)``
  and an ``available`` mask; a view that has no file for a frame is all zeros.
* Every problem with a data file raises :class:`DatasetError` with one message that names the
  file and says what was expected.

Decoding the JPEG archives takes seconds, so decoded arrays are cached as ``.npz`` files in
:func:`cache_dir`, keyed by the archive's size and modification time.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DATA_ROOT = Path("../shared/datasets")
"""Dataset folder relative to the project root; ``RESILIENT_PERCEPTION_DATA`` overrides it."""

DATA_ROOT_ENV = "RESILIENT_PERCEPTION_DATA"
CACHE_DIR_ENV = "RESILIENT_PERCEPTION_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/resilient_perception")

DATASET_NAMES = ("mnist", "cifar10", "mvmc")
IDX_PREFIX = "idx:"

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

CIFAR10_ARCHIVE = "cifar10-jpeg.tar.gz"
CIFAR10_SPLITS = ("train", "test")

MVMC_ARCHIVE = "mvmc-multiview.tar.gz"
MVMC_SPLITS = ("train", "test", "holdout")
MVMC_CLASSES = ("car", "person", "bus")
"""MVMC label order: the order the dataset's README and the DDNN/ResiliNet papers list."""
MVMC_CAMERAS = 6
"""The archive names cameras ``c0``..``c5``; camera ``cK`` is view index ``K``."""

IMAGE_SIZE = (32, 32)
"""Height and width of every CIFAR-10 and MVMC image."""

# Bumping this invalidates every cache file written by an older layout.
_CACHE_VERSION = 1

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MVMC_MEMBER = re.compile(
    r"multiview-dataset/(?P<split>[a-z]+)_dir/(?P<cls>[a-z]+)_images/"
    r"c(?P<cam>\d+)_(?P<seq>\d+)_(?P<frame>\d+)\.jpg"
)


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names the file."""


@dataclass(frozen=True)
class LabeledImages:
    """Single-view labelled images.

    ``images`` is ``uint8 (M, C, H, W)``; ``labels`` is ``int64 (M,)`` with values in
    ``[0, len(classes))``; ``classes[k]`` is the name of label ``k``.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        """Reject arrays whose shapes or dtypes break the documented layout."""
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (M, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        _check_labels(self.labels, len(self.images), len(self.classes))


@dataclass(frozen=True)
class MultiViewImages:
    """Synchronised camera views of labelled frames.

    ``views`` is ``uint8 (M, V, C, H, W)``; ``available`` is ``bool (M, V)``, False where a
    camera has no image for that frame (its view is then all zeros); ``labels`` is
    ``int64 (M,)`` with values in ``[0, len(classes))``; ``classes[k]`` is the name of label
    ``k``; ``frame_ids`` has one identifier per frame (MVMC: ``"<class>/<seq>_<frame>"``).
    """

    views: np.ndarray
    available: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    frame_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        """Reject arrays whose shapes or dtypes break the documented layout."""
        if self.views.dtype != np.uint8 or self.views.ndim != 5:
            raise ValueError(
                f"views must be uint8 (M, V, C, H, W), got {self.views.dtype} {self.views.shape}"
            )
        if self.available.dtype != np.bool_ or self.available.shape != self.views.shape[:2]:
            raise ValueError(
                f"available must be bool {self.views.shape[:2]}, "
                f"got {self.available.dtype} {self.available.shape}"
            )
        if len(self.frame_ids) != len(self.views):
            raise ValueError(f"{len(self.frame_ids)} frame_ids for {len(self.views)} frames")
        _check_labels(self.labels, len(self.views), len(self.classes))


Dataset = LabeledImages | MultiViewImages


def _check_labels(labels: np.ndarray, n_samples: int, n_classes: int) -> None:
    if labels.dtype != np.int64 or labels.shape != (n_samples,):
        raise ValueError(f"labels must be int64 ({n_samples},), got {labels.dtype} {labels.shape}")
    if n_samples and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
        )


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the number of samples of each class as ``int64 (n_classes,)``."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    return np.bincount(labels.ravel(), minlength=n_classes).astype(np.int64)


# --------------------------------------------------------------------------- locations


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the dataset folder: ``root`` if given, else ``$RESILIENT_PERCEPTION_DATA``.

    Without either, ``../shared/datasets`` is taken relative to the working directory (the
    project root), falling back to the same path relative to this source tree so tests and
    scripts also work when started from another directory.
    """
    if root is not None:
        return Path(root)
    from_env = os.environ.get(DATA_ROOT_ENV)
    if from_env:
        return Path(from_env)
    if DEFAULT_DATA_ROOT.is_dir():
        return DEFAULT_DATA_ROOT
    beside_source = Path(__file__).resolve().parents[2] / DEFAULT_DATA_ROOT
    return beside_source if beside_source.is_dir() else DEFAULT_DATA_ROOT


def cache_dir() -> Path:
    """Return the decoded-dataset cache folder (``$RESILIENT_PERCEPTION_CACHE`` overrides)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(
            f"{path}: file not found (looked for {what} at {path.resolve()}). Pass --data-root "
            f"or set {DATA_ROOT_ENV} to the datasets folder; the project expects "
            f"{DEFAULT_DATA_ROOT} relative to its root."
        )
    return path


def _check_split(split: str, valid: tuple[str, ...], dataset: str) -> None:
    if split not in valid:
        raise DatasetError(f"{dataset}: unknown split {split!r}; valid splits are {valid}")


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip'd or plain, detected by its magic bytes) into a numpy array.

    Supports every IDX element type (ubyte, byte, short, int, float, double; big-endian on
    disk). The result has native byte order and is writable. Raises :class:`DatasetError`
    when the file is missing, is not IDX, or its payload length does not match its header.
    """
    path = Path(path)
    _require_file(path, "an IDX file")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetError(f"{path}: expected a complete gzip'd IDX file, got {err}") from err
    expected_magic = "0x00000803 for images, 0x00000801 for labels"
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetError(
            f"{path}: expected IDX with magic {expected_magic} (00 00 <type> <ndim>), "
            f"got 0x{raw[:4].hex()}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(f"{path}: IDX header declares {ndim} dims but the file is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_len != expected:
        raise DatasetError(
            f"{path}: IDX header {dims} of {dtype.name} needs {expected} payload bytes, "
            f"got {len(raw) - header_len} (truncated or corrupt file)"
        )
    flat = np.frombuffer(raw, dtype=dtype, offset=header_len)
    return flat.astype(dtype.newbyteorder("=")).reshape(dims)


def load_idx_dataset(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    classes: tuple[str, ...] | None = None,
) -> LabeledImages:
    """Load an IDX image file and IDX label file as :class:`LabeledImages`.

    Images must be ubyte IDX, either 3-D ``(M, H, W)`` (grayscale; a channel axis of 1 is
    added) or 4-D ``(M, H, W, C)`` with C in 1, 3 or 4: channel-last, the pixel-major order
    image files use; it is transposed to ``(M, C, H, W)``. Labels must be 1-D integers.
    Without ``classes`` the class names are ``"0" .. str(max label)``.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8:
        raise DatasetError(f"{images_path}: expected ubyte (0x08) IDX images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] in (1, 3, 4):
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    else:
        raise DatasetError(
            f"{images_path}: expected IDX images (M, H, W) or (M, H, W, C) with C in 1/3/4, "
            f"got shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{labels_path}: expected 1-D integer IDX labels, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise DatasetError(
            f"{labels_path}: has {len(labels)} labels but {images_path} has {len(images)} images"
        )
    labels = labels.astype(np.int64)
    if classes is None:
        classes = tuple(str(k) for k in range(int(labels.max(initial=-1)) + 1))
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(
            f"{labels_path}: labels span [{labels.min()}, {labels.max()}], "
            f"expected [0, {len(classes)}) for {len(classes)} classes"
        )
    return LabeledImages(images=images, labels=labels, classes=tuple(classes))


def load_mnist(root: str | os.PathLike[str] | None = None, split: str = "train") -> LabeledImages:
    """Load MNIST ``"train"`` (60,000) or ``"test"`` (10,000) from ``<root>/mnist``.

    Uses the canonical gzip'd IDX file names; uncompressed copies of the same names (without
    ``.gz``) are accepted too. Images are ``(M, 1, 28, 28)``.
    """
    _check_split(split, tuple(MNIST_FILES), "mnist")
    folder = resolve_data_root(root) / "mnist"
    paths = []
    for name in MNIST_FILES[split]:
        gz_path, plain_path = folder / name, folder / name.removesuffix(".gz")
        paths.append(plain_path if not gz_path.exists() and plain_path.exists() else gz_path)
    return load_idx_dataset(paths[0], paths[1], classes=MNIST_CLASSES)


# --------------------------------------------------------------------------- JPEG archives


def _cache_path(archive: Path, split: str) -> Path:
    stat = archive.stat()
    stem = archive.name.removesuffix(".tar.gz")
    key = f"{stem}-{split}-{stat.st_size}-{stat.st_mtime_ns}-v{_CACHE_VERSION}.npz"
    return cache_dir() / key


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        # A damaged cache is only a lost speed-up: decode again and overwrite it.
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file in the same folder, then rename: readers in other
        # processes see either no cache or a complete one.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp_path = Path(tmp.name)
            np.savez(tmp, **arrays)
        os.replace(tmp_path, path)
    except OSError as err:
        # Caching is an optimisation: a read-only or full disk must not stop training.
        warnings.warn(f"could not write dataset cache {path}: {err}", stacklevel=3)
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def _cached(
    archive: Path, split: str, decode: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    path = _cache_path(archive, split)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = decode()
        _write_cache(path, arrays)
    return arrays


def _read_members(archive: Path, wanted: re.Pattern[str], expected: str) -> dict[str, bytes]:
    """Return ``{member name: bytes}`` of the archive's files whose names match ``wanted``."""
    found: dict[str, bytes] = {}
    try:
        # Streaming mode reads the gzip once front to back; random access would re-inflate.
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and wanted.fullmatch(member.name):
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{archive}: expected a gzip'd tar of {expected}, got {err}") from err
    if not found:
        raise DatasetError(f"{archive}: expected files {expected}, found none")
    return found


def _decode_rgb(data: bytes, archive: Path, member: str) -> np.ndarray:
    """Decode one JPEG member to ``uint8 (3, H, W)``, checking its size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{archive}: member {member}: expected a JPEG image, got {err}") from err
    if rgb.shape[:2] != IMAGE_SIZE:
        raise DatasetError(
            f"{archive}: member {member}: expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} pixels, "
            f"got {rgb.shape[0]}x{rgb.shape[1]}"
        )
    return rgb.transpose(2, 0, 1)


def _decode_cifar10(archive: Path, split: str) -> dict[str, np.ndarray]:
    expected = f"{split}/<class>/NNNN.jpg"
    members = _read_members(archive, re.compile(rf"{split}/[^/]+/[^/]+\.jpg"), expected)
    names = sorted(members)
    classes = sorted({name.split("/")[1] for name in names})
    images = np.empty((len(names), 3, *IMAGE_SIZE), dtype=np.uint8)
    for i, name in enumerate(names):
        images[i] = _decode_rgb(members[name], archive, name)
    labels = np.array([classes.index(name.split("/")[1]) for name in names], dtype=np.int64)
    return {"images": images, "labels": labels, "classes": np.array(classes)}


def load_cifar10(root: str | os.PathLike[str] | None = None, split: str = "train") -> LabeledImages:
    """Load CIFAR-10 ``"train"`` (50,000) or ``"test"`` (10,000) from the JPEG tar archive.

    Reads ``<root>/cifar10-jpeg.tar.gz`` without extracting it. Classes are the folder names
    sorted alphabetically (airplane, automobile, bird, ...); samples are ordered by member
    name. Images are ``(M, 3, 32, 32)``. The first load decodes and caches the split.
    """
    _check_split(split, CIFAR10_SPLITS, "cifar10")
    archive = _require_file(resolve_data_root(root) / CIFAR10_ARCHIVE, "the CIFAR-10 JPEG tar")
    arrays = _cached(archive, split, lambda: _decode_cifar10(archive, split))
    return LabeledImages(
        images=arrays["images"],
        labels=arrays["labels"],
        classes=tuple(str(name) for name in arrays["classes"]),
    )


def _decode_mvmc(archive: Path, split: str) -> dict[str, np.ndarray]:
    expected = f"multiview-dataset/{split}_dir/<class>_images/c<cam>_<seq>_<frame>.jpg"
    members = _read_members(archive, _MVMC_MEMBER, expected)
    frames: dict[tuple[int, int, int], dict[int, str]] = {}
    padded: dict[tuple[int, int, int], str] = {}
    for name in members:
        match = _MVMC_MEMBER.fullmatch(name)
        if match["split"] != split:
            continue
        if match["cls"] not in MVMC_CLASSES:
            raise DatasetError(
                f"{archive}: member {name}: expected a class in {MVMC_CLASSES}, "
                f"got {match['cls']!r}"
            )
        camera = int(match["cam"])
        if camera >= MVMC_CAMERAS:
            raise DatasetError(
                f"{archive}: member {name}: expected camera c0..c{MVMC_CAMERAS - 1}, got c{camera}"
            )
        key = (MVMC_CLASSES.index(match["cls"]), int(match["seq"]), int(match["frame"]))
        frames.setdefault(key, {})[camera] = name
        padded[key] = f"{match['seq']}_{match['frame']}"
    if not frames:
        raise DatasetError(f"{archive}: expected files {expected}, found none")
    # Numeric sort keeps frames of one sequence in time order within each class.
    keys = sorted(frames)
    views = np.zeros((len(keys), MVMC_CAMERAS, 3, *IMAGE_SIZE), dtype=np.uint8)
    available = np.zeros((len(keys), MVMC_CAMERAS), dtype=bool)
    for i, key in enumerate(keys):
        for camera, name in frames[key].items():
            views[i, camera] = _decode_rgb(members[name], archive, name)
            available[i, camera] = True
    # One frame number can hold a car and a person (two objects), so the class is part of
    # the frame id; the zero-padded frame number is kept as in the file names.
    frame_ids = [f"{MVMC_CLASSES[key[0]]}/{padded[key]}" for key in keys]
    return {
        "views": views,
        "available": available,
        "labels": np.array([key[0] for key in keys], dtype=np.int64),
        "frame_ids": np.array(frame_ids),
    }


def load_mvmc(root: str | os.PathLike[str] | None = None, split: str = "train") -> MultiViewImages:
    """Load an MVMC split (``"train"``, ``"test"`` or ``"holdout"``) as 6-camera frames.

    Reads ``<root>/mvmc-multiview.tar.gz`` without extracting it. Camera ``cK`` in a file
    name is view ``K`` (the archive numbers cameras c0..c5). Labels follow
    :data:`MVMC_CLASSES` = (car, person, bus). Frames are ordered by class, sequence and frame
    number; ``frame_ids`` are ``"<class>/<seq>_<frame>"`` because one frame number can hold
    objects of two classes. Views are ``(M, 6, 3, 32, 32)``; a camera without a file for a
    frame has ``available`` False and zero pixels. Many present views are themselves all
    black (the object is outside that camera's field of view): those count as available,
    as in the original dataset.
    """
    _check_split(split, MVMC_SPLITS, "mvmc")
    archive = _require_file(resolve_data_root(root) / MVMC_ARCHIVE, "the MVMC multi-view tar")
    arrays = _cached(archive, split, lambda: _decode_mvmc(archive, split))
    return MultiViewImages(
        views=arrays["views"],
        available=arrays["available"],
        labels=arrays["labels"],
        classes=MVMC_CLASSES,
        frame_ids=tuple(str(frame_id) for frame_id in arrays["frame_ids"]),
    )


# --------------------------------------------------------------------------- dispatch


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike[str] | None = None
) -> Dataset:
    """Load a dataset by name: ``"mnist"``, ``"cifar10"``, ``"mvmc"`` or an IDX pair.

    ``"idx:<images_path>:<labels_path>"`` loads any IDX image/label pair by path (relative
    paths from the working directory; ``split`` and ``root`` do not apply to it).
    """
    check_dataset_name(name)
    if name.startswith(IDX_PREFIX):
        images, labels = name.removeprefix(IDX_PREFIX).split(":")
        return load_idx_dataset(images, labels)
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10, "mvmc": load_mvmc}
    return loaders[name](root, split)


def check_dataset_name(name: str) -> str:
    """``name`` if :func:`load_dataset` knows its form, else a :class:`DatasetError` saying why.

    Only the form: whether the files exist is found when they are read.
    """
    if name.startswith(IDX_PREFIX):
        paths = name.removeprefix(IDX_PREFIX).split(":")
        if len(paths) != 2 or not all(paths):
            raise DatasetError(f"dataset {name!r}: expected 'idx:<images_path>:<labels_path>'")
    elif name not in DATASET_NAMES:
        raise DatasetError(
            f"unknown dataset {name!r}; valid names are {', '.join(DATASET_NAMES)} "
            f"or 'idx:<images_path>:<labels_path>'"
        )
    return name


def evaluation_data(meta: dict, dataset: str | None, split: str) -> tuple[str, str]:
    """``(dataset, description)`` an evaluation of a checkpoint scores.

    ``dataset`` (``--dataset``) defaults to the checkpoint's own, at ``split``. An IDX pair
    has no splits: a checkpoint trained on one must be given its held-out pair, and naming
    the training pair again is refused too, because either way the score would be training
    accuracy reported as test accuracy.
    """
    trained = meta["dataset"]
    name = dataset or trained
    if name == trained and trained.startswith(IDX_PREFIX):
        raise ValueError(f"this checkpoint was trained on {trained}, which has no test split; "
                         "give the held-out pair: --dataset idx:IMAGES:LABELS")
    return name, (name if name.startswith(IDX_PREFIX) else f"{name} {split}")
