"""Checkpoints as safetensors (tensors only, no pickle) with JSON metadata.

The safetensors header metadata holds one key, ``"resilient_perception"``, whose value is
``json.dumps`` of ``{format_version, kind, model (constructor kwargs), created, ...caller
metadata (train config, seed, dataset, view spec, classes, history)}``. Writes are atomic
(temporary file in the same directory, then ``os.replace``). Training state that is not part
of the model (optimiser buffers of a resumable run) is stored as extra tensors whose names
start with ``"extra."``; loading the model ignores them.

This module is the file format, shared by both model families; each family owns its kinds
and their save/load functions: the device CNNs in :mod:`.perception.checkpoint`
(``multi_device_cnn``, ``device_cnn``, and a device run's training state), the adaptive
ResNet in :mod:`.placement.resnet` (``resnet``).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "EXTRA_PREFIX",
    "FORMAT_VERSION",
    "META_KEY",
    "CheckpointError",
    "load_module",
    "save_module",
    "write_safetensors",
]

FORMAT_VERSION = 1
META_KEY = "resilient_perception"
EXTRA_PREFIX = "extra."


class CheckpointError(ValueError):
    """A file is not a readable resilient_perception checkpoint."""


def save_module(path, module: torch.nn.Module, kind: str, metadata: dict | None = None,
                extra: dict | None = None) -> Path:
    """Atomically save ``module`` (it has ``kwargs()``) as a checkpoint of ``kind``.

    Args:
        path: Destination ``.safetensors`` file; its folder is created.
        module: The model; ``module.kwargs()`` are its constructor arguments.
        kind: The model family's kind name, checked by :func:`load_module`.
        metadata: JSON-safe caller metadata (train config, seed, dataset, history, ...).
        extra: Tensors stored beside the model's (a training state), loaded separately.

    Returns:
        ``path``.
    """
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
    return write_safetensors(path, tensors, header)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a run killed mid-write leaves the old file.

    The file holds host copies of the tensors, wherever they were computed: a run trained
    on a GPU loads on a machine without one.
    """
    tensors = {name: tensor.cpu() for name, tensor in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_module(path, kind: str,
                model_class: type[torch.nn.Module]) -> tuple[Any, dict, dict]:
    """Load ``(model_class(**metadata["model"]) in eval mode, metadata, extra tensors)``.

    Raises:
        CheckpointError: If the file is missing, not a checkpoint, of another kind, or its
            tensors do not fit the model its metadata describes.
    """
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
    if not isinstance(meta, dict):  # valid JSON, but a list or a number (a damaged file)
        raise CheckpointError(f"{path}: metadata is a JSON {type(meta).__name__}, not an "
                              f"object; expected {expected}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r}, "
                              f"expected {FORMAT_VERSION}")
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path}: checkpoint kind {meta.get('kind')!r}, expected {kind!r}")
    extra = {k.removeprefix(EXTRA_PREFIX): tensors.pop(k)
             for k in list(tensors) if k.startswith(EXTRA_PREFIX)}
    try:
        module = model_class(**meta["model"])
        module.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: tensors do not match the model in its metadata "
                              f"({exc})") from exc
    module.eval()
    return module, meta, extra
