"""ONNX export of device CNNs and one inference interface over ONNX Runtime and torch.

Exporter: torch 2.13's default ``torch.onnx.export`` is the ``torch.export``-based one,
which needs ``onnxscript`` (not a dependency here); the classic TorchScript exporter
(``dynamo=False``) works offline and is used. It warns that it is deprecated, so moving to
the new exporter means adding ``onnxscript``; the graph contract below stays the same.

Graph contract (one device): input ``views`` float32 ``(B, C, h, w)`` in ``[0, 1]`` with a
dynamic batch axis and the fixed view size the device was trained on; outputs ``logits``
``(B, K)`` and ``features`` ``(B, D)``. The model's ``metadata_props`` hold one key,
``"resilient_perception"``, whose value is JSON: ``format_version``, ``kind``,
``device_id``, ``classes``, ``view_spec``, ``input_hw``, ``model`` (DeviceCNN kwargs) and
``head`` (the classifier's weight and bias as base64 little-endian float32 with shapes).

The head is stored in the metadata rather than dug out of the graph because the graph's
layout is the exporter's choice (Gemm with ``transB`` today, MatMul+Add with the new
exporter, initializer names that change between torch versions); the metadata is written
from the same tensors that were exported, so the two agree exactly.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ..datasets import IMAGE_SIZE
from .checkpoint import load_checkpoint
from .model import DeviceCNN, views_to_float
from .views import ViewSpec

__all__ = [
    "CPU_PROVIDER",
    "DeviceRunner",
    "ExportError",
    "export_checkpoint",
    "export_onnx",
    "view_hw",
]

FORMAT_VERSION = 1
META_KEY = "resilient_perception"
KIND = "device_cnn_onnx"
CPU_PROVIDER = "CPUExecutionProvider"
# Full image size of each built-in dataset; a device's view size follows from its ViewSpec.
DATASET_IMAGE_HW = {"mnist": (28, 28), "cifar10": IMAGE_SIZE, "mvmc": IMAGE_SIZE}

_log = logging.getLogger(__name__)
Forward = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


class ExportError(ValueError):
    """A model cannot be exported, or a file is not a loadable exported device model."""


def _encode_array(array: np.ndarray) -> dict:
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return {"shape": list(array.shape), "float32_le_base64": base64.b64encode(data).decode()}


def _decode_array(entry: dict) -> np.ndarray:
    data = base64.b64decode(entry["float32_le_base64"], validate=True)
    return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(entry["shape"])


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
) -> Path:
    """Export one device CNN to ONNX at ``path`` (atomically) and return the path.

    ``input_hw`` is the device's view size ``(h, w)``; ``device_id``, ``classes`` and
    ``view_spec`` (``ViewSpec.to_dict()``) are stored in the metadata for the camera node.
    The caller's module is not modified (a copy is exported in eval mode).
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
        "model": device.kwargs(),
        "head": {"weight": _encode_array(device.classifier.weight.detach().numpy()),
                 "bias": _encode_array(device.classifier.bias.detach().numpy())},
    }
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    _write_atomic(path, model.SerializeToString())
    return path


def view_hw(metadata: dict, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """The device view size ``(h, w)`` of a checkpoint, from its view spec and image size.

    ``image_hw`` is the full image size; by default it is looked up from the checkpoint's
    dataset (mnist 28x28, cifar10 and mvmc 32x32). Other datasets need it given.
    """
    if image_hw is None:
        dataset = metadata.get("dataset")
        if dataset not in DATASET_IMAGE_HW:
            raise ExportError(f"image size of dataset {dataset!r} is unknown; give it "
                              "explicitly (--image-size HxW)")
        image_hw = DATASET_IMAGE_HW[dataset]
    spec = ViewSpec.from_dict(metadata["view_spec"])
    if spec.kind != "grid":
        return tuple(image_hw)
    box = spec.boxes(*image_hw)[0]  # grid boxes all have one size
    return box.height, box.width


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
    hw = view_hw(meta, image_hw)
    return [
        export_onnx(model.device(i), Path(out_dir) / f"device_{i}.onnx", hw, opset,
                    device_id=i, classes=meta.get("classes", ()),
                    view_spec=meta["view_spec"])
        for i in ids
    ]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # avoids overflow in exp
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _choose_providers(preferred: Sequence[str] | None) -> list[str]:
    """Keep the available preferred providers, in order, and always end with CPU."""
    available = set(ort.get_available_providers())
    wanted = list(preferred or [])
    chosen = [p for p in wanted if p in available and p != CPU_PROVIDER]
    missing = [p for p in wanted if p not in available]
    if missing:
        _log.warning("ONNX Runtime providers %s are not available here (available: %s); "
                     "falling back", missing, sorted(available))
    return [*chosen, CPU_PROVIDER]


def _read_onnx_metadata(session: ort.InferenceSession, path: Path) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ExportError(f"{path}: no '{META_KEY}' metadata; not exported by export_onnx")
    try:
        meta = json.loads(props[META_KEY])
        head = (_decode_array(meta["head"]["weight"]), _decode_array(meta["head"]["bias"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: unreadable '{META_KEY}' metadata ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != KIND:
        raise ExportError(f"{path}: format {meta.get('format_version')!r} kind "
                          f"{meta.get('kind')!r}, expected {FORMAT_VERSION} {KIND!r}")
    meta["head"] = head
    return meta


class DeviceRunner:
    """One device CNN behind one interface, whichever backend runs it.

    Build with :meth:`from_onnx` (ONNX Runtime) or :meth:`from_torch`. Attributes:
    ``provider`` (the ONNX Runtime execution provider actually used, or ``"torch"``),
    ``in_channels``, ``input_hw`` (``None`` when any view size is accepted) and
    ``metadata`` (device id, classes, view spec, ... as exported; ``{}`` for torch).
    """

    def __init__(
        self,
        forward: Forward,
        head: tuple[np.ndarray, np.ndarray],
        provider: str,
        in_channels: int,
        input_hw: tuple[int, int] | None,
        metadata: dict,
    ) -> None:
        """Use :meth:`from_onnx` or :meth:`from_torch` rather than this constructor."""
        self._forward, self._head = forward, head
        self.provider, self.in_channels, self.input_hw = provider, in_channels, input_hw
        self.metadata = metadata

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> DeviceRunner:
        """Load a model written by :func:`export_onnx` into ONNX Runtime.

        ``providers`` is a preference list such as ``["TensorrtExecutionProvider",
        "CUDAExecutionProvider", "CPUExecutionProvider"]``; providers this ONNX Runtime
        lacks are dropped (with a warning) and CPU is always the last resort. ``threads``
        caps intra-op threads (several camera nodes often share one board).
        """
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: no such model file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options,
                                           providers=_choose_providers(providers))
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise ExportError(f"{path}: not a loadable ONNX model ({exc})") from exc
        meta = _read_onnx_metadata(session, path)
        head = meta.pop("head")

        def forward(views: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            logits, features = session.run(["logits", "features"], {"views": views.numpy()})
            return logits, features

        return cls(forward, head, session.get_providers()[0], meta["model"]["in_channels"],
                   tuple(meta["input_hw"]), meta)

    @classmethod
    def from_torch(cls, device: DeviceCNN) -> DeviceRunner:
        """Run a (copied, eval-mode) :class:`DeviceCNN` with torch on the CPU."""
        device = copy.deepcopy(device).eval()
        head = (device.classifier.weight.detach().numpy().copy(),
                device.classifier.bias.detach().numpy().copy())

        @torch.inference_mode()
        def forward(views: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            logits, features = device(views)
            return logits.numpy(), features.numpy()

        return cls(forward, head, "torch", device.in_channels, None, {})

    def run(self, views: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``views`` uint8 or float ``(B, C, h, w)`` -> ``(probs (B, K), features (B, D))``.

        uint8 is scaled to ``[0, 1]`` exactly as in training (``views_to_float``); both
        outputs are float32 numpy arrays.
        """
        x = views_to_float(views)
        h, w = self.input_hw or ("h", "w")
        if x.ndim != 4 or x.shape[1] != self.in_channels or (
            self.input_hw is not None and tuple(x.shape[2:]) != self.input_hw
        ):
            raise ValueError(f"views must be (B, {self.in_channels}, {h}, {w}), "
                             f"got {tuple(x.shape)}")
        logits, features = self._forward(x.contiguous())
        return _softmax(logits), np.asarray(features, dtype=np.float32)

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The classifier head ``(weight (K, D), bias (K,))`` as float32 copies."""
        return self._head[0].copy(), self._head[1].copy()
