"""ONNX export of device CNNs (torch and onnx); running the exports is :mod:`.runtime`'s job.

Exporter: torch 2.13's default ``torch.onnx.export`` is the ``torch.export``-based one,
which needs ``onnxscript`` (not a dependency here); the classic TorchScript exporter
(``dynamo=False``) works offline and is used. It warns that it is deprecated, so moving to
the new exporter means adding ``onnxscript``; the graph contract below stays the same.

Graph contract (one device): input ``views`` float32 ``(B, C, h, w)`` in ``[0, 1]`` with a
dynamic batch axis and the fixed view size the device was trained on; outputs ``logits``
``(B, K)`` and ``features`` ``(B, D)``. The model's ``metadata_props`` hold one key,
``"resilient_perception"``, whose value is JSON: ``format_version``, ``kind``,
``device_id``, ``classes``, ``view_spec``, ``input_hw``, ``image_hw`` (the training images'
size, or null), ``model`` (DeviceCNN kwargs) and ``head`` (the classifier's weight and bias
as base64 little-endian float32 with shapes).

The head is stored in the metadata rather than dug out of the graph because the graph's
layout is the exporter's choice (Gemm with ``transB`` today, MatMul+Add with the new
exporter, initializer names that change between torch versions); the metadata is written
from the same tensors that were exported, so the two agree exactly.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from .checkpoint import load_checkpoint
from .model import DeviceCNN
from .runtime import (
    CPU_PROVIDER,
    FORMAT_VERSION,
    KIND,
    META_KEY,
    DeviceRunner,
    ExportError,
    encode_array,
    training_image_hw,
    view_hw,
)

# DeviceRunner, ExportError, view_hw and CPU_PROVIDER live in the torch-free .runtime and
# are re-exported here for the callers that export and run in one place (tests, benchmarks).
__all__ = [
    "CPU_PROVIDER",
    "DeviceRunner",
    "ExportError",
    "export_checkpoint",
    "export_onnx",
    "view_hw",
]


def _trace_to_onnx(device: DeviceCNN, input_hw: tuple[int, int], opset: int) -> onnx.ModelProto:
    """Run the classic exporter into memory (eval mode: BN uses running statistics)."""
    example = torch.zeros(1, device.in_channels, *input_hw)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Known, harmless noise of the classic exporter: its deprecation notice and the
        # constant-folding note about the zero-padding shortcut's strided Slice.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=".*feature will be removed")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            device, (example,), buffer, input_names=["views"],
            output_names=["logits", "features"], dynamic_axes={"views": {0: "batch"},
            "logits": {0: "batch"}, "features": {0: "batch"}}, opset_version=opset,
            training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    device: DeviceCNN,
    path: str | os.PathLike[str],
    input_hw: tuple[int, int],
    opset: int = 17,
    *,
    device_id: int = 0,
    classes: Sequence[str] = (),
    view_spec: dict | None = None,
    image_hw: tuple[int, int] | None = None,
) -> Path:
    """Export one device CNN to ONNX at ``path`` (atomically) and return the path.

    ``input_hw`` is the device's view size ``(h, w)``; ``device_id``, ``classes``,
    ``view_spec`` (``ViewSpec.to_dict()``) and ``image_hw`` (the training images' size: a
    camera of another resolution is resized to it before its view is cut) are stored in the
    metadata for the camera node. The caller's module is not modified (a copy is exported
    in eval mode).
    """
    h, w = (int(x) for x in input_hw)
    if h < 1 or w < 1:
        raise ExportError(f"input_hw must be positive, got {tuple(input_hw)}")
    if classes and len(classes) != device.n_classes:
        raise ExportError(f"{len(classes)} class names for a {device.n_classes}-class device")
    device = copy.deepcopy(device).eval()
    model = _trace_to_onnx(device, (h, w), opset)
    meta = {
        "format_version": FORMAT_VERSION, "kind": KIND, "device_id": int(device_id),
        "classes": list(classes), "view_spec": view_spec, "input_hw": [h, w],
        "image_hw": None if image_hw is None else [int(x) for x in image_hw],
        "model": device.kwargs(),
        "head": {"weight": encode_array(device.classifier.weight.detach().numpy()),
                 "bias": encode_array(device.classifier.bias.detach().numpy())},
    }
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    _write_atomic(path, model.SerializeToString())
    return path


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    devices: Sequence[int] | None = None,
    image_hw: tuple[int, int] | None = None,
    opset: int = 17,
) -> list[Path]:
    """Export devices of a training checkpoint (default all) to ``out_dir/device_<i>.onnx``."""
    model, meta = load_checkpoint(checkpoint)
    ids = list(range(model.n_devices)) if devices is None else list(devices)
    bad = [i for i in ids if not 0 <= i < model.n_devices]
    if bad:
        raise ExportError(f"devices {bad} out of range: {checkpoint} has devices "
                          f"0..{model.n_devices - 1}")
    image_hw = training_image_hw(meta) if image_hw is None else image_hw
    hw = view_hw(meta, image_hw)
    return [
        export_onnx(model.device(i), Path(out_dir) / f"device_{i}.onnx", hw, opset,
                    device_id=i, classes=meta.get("classes", ()),
                    view_spec=meta["view_spec"], image_hw=image_hw)
        for i in ids
    ]
