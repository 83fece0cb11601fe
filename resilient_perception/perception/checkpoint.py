"""The device CNNs' checkpoint kinds: a trained model, one device, a run between epochs.

Files are in the shared format of :mod:`..checkpoints` (safetensors + JSON metadata, no
pickle): ``multi_device_cnn`` holds a :class:`.model.MultiDeviceCNN` (what ``train`` writes),
``device_cnn`` one :class:`.model.DeviceCNN`. :func:`save_training_state` stores a device run
between epochs as a ``multi_device_cnn`` with the optimiser buffers and random states as
extra tensors and metadata (:class:`.training.TrainState`).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import CheckpointError, load_module, save_module
from .model import DeviceCNN, MultiDeviceCNN
from .training import TrainState

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_device_checkpoint",
    "load_training_state",
    "save_checkpoint",
    "save_device_checkpoint",
    "save_training_state",
]

TORCH_RNG = "torch_rng"  # the extra tensor holding torch's RNG state in a training state


def save_checkpoint(path, model: MultiDeviceCNN, metadata: dict | None = None) -> Path:
    """Atomically save ``model`` and JSON-safe ``metadata`` to ``path`` (.safetensors)."""
    return save_module(path, model, "multi_device_cnn", metadata)


def load_checkpoint(path) -> tuple[MultiDeviceCNN, dict]:
    """Load ``(model in eval mode, metadata)``; raises :class:`CheckpointError` on bad files."""
    return load_module(path, "multi_device_cnn", MultiDeviceCNN)[:2]


def save_device_checkpoint(path, device: DeviceCNN, metadata: dict | None = None) -> Path:
    """Atomically save one :class:`DeviceCNN` (e.g. ``model.device(i)``) with metadata."""
    return save_module(path, device, "device_cnn", metadata)


def load_device_checkpoint(path) -> tuple[DeviceCNN, dict]:
    """Load ``(DeviceCNN in eval mode, metadata)``; raises :class:`CheckpointError`."""
    return load_module(path, "device_cnn", DeviceCNN)[:2]


def save_training_state(path, model: MultiDeviceCNN, state: TrainState,
                        metadata: dict | None = None) -> Path:
    """Atomically save a device run between epochs: weights, ``state`` and ``metadata``."""
    meta = {**(metadata or {}), "history": state.history, "numpy_rng": state.numpy_rng}
    extra = {**state.momentum, TORCH_RNG: state.torch_rng}
    return save_module(path, model, "multi_device_cnn", meta, extra)


def load_training_state(path) -> tuple[MultiDeviceCNN, TrainState, dict]:
    """Load ``(model, state, metadata)`` saved by :func:`save_training_state`."""
    model, meta, extra = load_module(path, "multi_device_cnn", MultiDeviceCNN)
    if TORCH_RNG not in extra or "numpy_rng" not in meta or "history" not in meta:
        raise CheckpointError(f"{path}: a model checkpoint, not a training state")
    torch_rng = extra.pop(TORCH_RNG)
    return model, TrainState(meta["history"], extra, meta["numpy_rng"], torch_rng), meta
