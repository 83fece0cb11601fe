"""Checkpoints as safetensors (tensors only, no pickle) with JSON metadata.

The safetensors header metadata holds one key, ``"resilient_perception"``, whose value is
``json.dumps`` of ``{format_version, kind, model (constructor kwargs), created, ...caller
metadata (train config, seed, dataset, view spec, classes, history)}``. Writes are atomic
(temporary file in the same directory, then ``os.replace``). Training state that is not part
of the model (optimiser buffers of a resumable run) is stored as extra tensors whose names
start with ``"extra."``; loading the model ignores them. :func:`save_training_state`
stores a device run between epochs that way (:class:`.training.TrainState`).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .perception.model import DeviceCNN, MultiDeviceCNN
from .perception.training import TrainState
from .placement.resnet import ResNet

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "load_device_checkpoint",
    "load_resnet_checkpoint",
    "load_training_state",
    "save_checkpoint",
    "save_device_checkpoint",
    "save_resnet_checkpoint",
    "save_training_state",
]

FORMAT_VERSION = 1
META_KEY = "resilient_perception"
_KINDS = {"multi_device_cnn": MultiDeviceCNN, "device_cnn": DeviceCNN, "resnet": ResNet}
EXTRA_PREFIX = "extra."
TORCH_RNG = "torch_rng"  # the extra tensor holding torch's RNG state in a training state


class CheckpointError(ValueError):
    """A file is not a readable resilient_perception checkpoint."""


def _save(path, module, kind: str, metadata: dict | None, extra: dict | None = None) -> Path:
    path = Path(path)
    meta = dict(metadata or {})
    meta.setdefault("created", datetime.now(UTC).isoformat())
    meta.update({"format_version": FORMAT_VERSION, "kind": kind, "model": module.kwargs()})
    try:
        header = {META_KEY: json.dumps(meta)}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    tensors.update({EXTRA_PREFIX + k: v.detach().contiguous().clone()
                    for k, v in (extra or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _load(path, kind: str):
    path = Path(path)
    expected = f"a safetensors file with '{META_KEY}' metadata of kind '{kind}'"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected {expected})")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for bad files
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc}); "
                              f"expected {expected}") from exc
    if META_KEY not in header:
        raise CheckpointError(f"{path}: missing '{META_KEY}' metadata; expected {expected}")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r}, "
                              f"expected {FORMAT_VERSION}")
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path}: checkpoint kind {meta.get('kind')!r}, expected {kind!r}")
    extra = {k.removeprefix(EXTRA_PREFIX): tensors.pop(k)
             for k in list(tensors) if k.startswith(EXTRA_PREFIX)}
    try:
        module = _KINDS[kind](**meta["model"])
        module.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: tensors do not match the model in its metadata "
                              f"({exc})") from exc
    module.eval()
    return module, meta, extra


def save_checkpoint(path, model: MultiDeviceCNN, metadata: dict | None = None) -> Path:
    """Atomically save ``model`` and JSON-safe ``metadata`` to ``path`` (.safetensors)."""
    return _save(path, model, "multi_device_cnn", metadata)


def load_checkpoint(path) -> tuple[MultiDeviceCNN, dict]:
    """Load ``(model in eval mode, metadata)``; raises :class:`CheckpointError` on bad files."""
    return _load(path, "multi_device_cnn")[:2]


def save_device_checkpoint(path, device: DeviceCNN, metadata: dict | None = None) -> Path:
    """Atomically save one :class:`DeviceCNN` (e.g. ``model.device(i)``) with metadata."""
    return _save(path, device, "device_cnn", metadata)


def load_device_checkpoint(path) -> tuple[DeviceCNN, dict]:
    """Load ``(DeviceCNN in eval mode, metadata)``; raises :class:`CheckpointError`."""
    return _load(path, "device_cnn")[:2]


def save_resnet_checkpoint(path, model: ResNet, metadata: dict | None = None,
                           extra: dict | None = None) -> Path:
    """Atomically save a :class:`ResNet`, metadata and ``extra`` tensors (training state)."""
    return _save(path, model, "resnet", metadata, extra)


def load_resnet_checkpoint(path) -> tuple[ResNet, dict, dict]:
    """Load ``(ResNet in eval mode, metadata, extra tensors)``; raises :class:`CheckpointError`."""
    return _load(path, "resnet")


def save_training_state(path, model: MultiDeviceCNN, state: TrainState,
                        metadata: dict | None = None) -> Path:
    """Atomically save a device run between epochs: weights, ``state`` and ``metadata``."""
    meta = {**(metadata or {}), "history": state.history, "numpy_rng": state.numpy_rng}
    extra = {**state.momentum, TORCH_RNG: state.torch_rng}
    return _save(path, model, "multi_device_cnn", meta, extra)


def load_training_state(path) -> tuple[MultiDeviceCNN, TrainState, dict]:
    """Load ``(model, state, metadata)`` saved by :func:`save_training_state`."""
    model, meta, extra = _load(path, "multi_device_cnn")
    if TORCH_RNG not in extra or "numpy_rng" not in meta:
        raise CheckpointError(f"{path}: a model checkpoint, not a training state")
    torch_rng = extra.pop(TORCH_RNG)
    return model, TrainState(meta["history"], extra, meta["numpy_rng"], torch_rng), meta
