"""The torch-free runtime of a device CNN: load an exported model and run it.

What a camera node needs on an edge board, with numpy and ONNX Runtime only (DESIGN.md:
the runtime path of a node imports neither torch nor onnx): the exported file's metadata
format (:data:`META_KEY`, the classifier head as base64 float32), :func:`view_hw`,
:class:`DeviceRunner` over an ONNX Runtime session, and the numpy pre- and
post-processing (:func:`views_to_float32`, :func:`softmax`) that every backend shares.
Writing those files needs torch and onnx and is :mod:`.export`'s job; the fusion side of
the runtime is :mod:`.frame_assembly`.

``onnxruntime`` is imported only when a model is loaded, so importing this module for
:func:`view_hw` or the metadata format costs nothing. :meth:`DeviceRunner.from_torch` (the
camera node's ``torch`` backend, the benchmarks' reference) imports torch when called: a
caller that has a torch module has imported torch already.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import IMAGE_SIZE
from .views import ViewSpec

__all__ = [
    "CPU_PROVIDER",
    "DATASET_IMAGE_HW",
    "FORMAT_VERSION",
    "KIND",
    "META_KEY",
    "DeviceRunner",
    "ExportError",
    "decode_array",
    "encode_array",
    "parse_provider_options",
    "softmax",
    "training_image_hw",
    "view_hw",
    "views_to_float32",
]

FORMAT_VERSION = 1
META_KEY = "resilient_perception"
KIND = "device_cnn_onnx"
CPU_PROVIDER = "CPUExecutionProvider"
# Full image size of each built-in dataset; a device's view size follows from its ViewSpec.
DATASET_IMAGE_HW = {"mnist": (28, 28), "cifar10": IMAGE_SIZE, "mvmc": IMAGE_SIZE}

_log = logging.getLogger(__name__)
Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class ExportError(ValueError):
    """A model cannot be exported, or a file is not a loadable exported device model."""


def encode_array(array: np.ndarray) -> dict:
    """An array as JSON: its shape and its little-endian float32 bytes in base64."""
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return {"shape": list(array.shape), "float32_le_base64": base64.b64encode(data).decode()}


def decode_array(entry: dict) -> np.ndarray:
    """The float32 array of an :func:`encode_array` entry."""
    data = base64.b64decode(entry["float32_le_base64"], validate=True)
    return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(entry["shape"])


def views_to_float32(views: np.ndarray) -> np.ndarray:
    """uint8 views (any shape) as float32 in ``[0, 1]``; float views as float32 unchanged.

    The one scaling of pixels, shared by training (:func:`.model.views_to_float` hands numpy
    input to it) and every inference backend.
    """
    views = np.asarray(views)
    if views.dtype == np.uint8:
        # float32 / float32 rounds exactly as torch's ``div_(255.0)`` on float32 does
        return views.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(views.dtype, np.floating):
        return views.astype(np.float32, copy=False)
    raise TypeError(f"views must be uint8 or floating point, got {views.dtype}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (B, K) as float32."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # avoids overflow in exp
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def training_image_hw(metadata: dict) -> tuple[int, int]:
    """The full image size ``(h, w)`` a model was trained on, from its metadata.

    An ONNX export states it (``image_hw``); a checkpoint's dataset implies it (mnist
    28x28, cifar10 and mvmc 32x32).

    Raises:
        ExportError: If neither tells it.
    """
    if metadata.get("image_hw"):
        return tuple(int(x) for x in metadata["image_hw"])
    dataset = metadata.get("dataset")
    if dataset not in DATASET_IMAGE_HW:
        raise ExportError(f"image size of dataset {dataset!r} is unknown; give it "
                          "explicitly (--image-size HxW)")
    return DATASET_IMAGE_HW[dataset]


def view_hw(metadata: dict, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """The device view size ``(h, w)`` of a checkpoint, from its view spec and image size.

    ``image_hw`` is the full image size; by default :func:`training_image_hw`. Other
    datasets need it given.
    """
    if image_hw is None:
        image_hw = training_image_hw(metadata)
    spec = ViewSpec.from_dict(metadata["view_spec"])
    if spec.kind != "grid":
        return tuple(image_hw)
    box = spec.boxes(*image_hw)[0]  # grid boxes all have one size
    return box.height, box.width


def parse_provider_options(entries: Sequence[str],
                           providers: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per-provider ONNX Runtime options from ``PROVIDER:OPTION=VALUE`` entries.

    For example ``["TensorrtExecutionProvider:trt_fp16_enable=True",
    "TensorrtExecutionProvider:trt_engine_cache_path=/var/cache/trt"]``; each provider must
    be one of ``providers``, and empty entries are skipped (a ROS string array parameter
    cannot be empty, so ``[""]`` means none). Values stay strings, as ONNX Runtime takes
    them. Raises ValueError naming the entry to fix.
    """
    options: dict[str, dict[str, str]] = {}
    for entry in entries:
        if not entry.strip():
            continue
        provider, _, setting = entry.partition(":")
        key, equals, value = setting.partition("=")
        if not (provider.strip() and key.strip() and equals):
            raise ValueError(f"provider option {entry!r} is not PROVIDER:OPTION=VALUE")
        if provider.strip() not in providers:
            raise ValueError(f"provider option {entry!r} is for {provider.strip()}, which is "
                             f"not in providers {list(providers)}")
        options.setdefault(provider.strip(), {})[key.strip()] = value.strip()
    return options


def _choose_providers(preferred: Sequence[str] | None,
                      options: dict[str, dict[str, str]]) -> list[tuple[str, dict[str, str]]]:
    """Keep the available preferred providers, in order, and always end with CPU.

    Each comes with its options (``{}`` when none are given).
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = list(preferred or [])
    chosen = [p for p in wanted if p in available and p != CPU_PROVIDER]
    missing = [p for p in wanted if p not in available]
    if missing:
        _log.warning("ONNX Runtime providers %s are not available here (available: %s); "
                     "falling back to %s", missing, sorted(available),
                     [*chosen, CPU_PROVIDER])
    return [(p, options.get(p, {})) for p in (*chosen, CPU_PROVIDER)]


def _read_onnx_metadata(session: Any, path: Path) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ExportError(f"{path}: no '{META_KEY}' metadata; not exported by export_onnx")
    try:
        meta = json.loads(props[META_KEY])
        head = (decode_array(meta["head"]["weight"]), decode_array(meta["head"]["bias"]))
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
        provider_options: dict[str, dict[str, str]] | None = None,
    ) -> DeviceRunner:
        """Load a model written by :func:`.export.export_onnx` into ONNX Runtime.

        The fp32 export and its int8 and fp16 variants (:mod:`.reduced_precision`) all load.
        ``providers`` is a preference list such as ``["TensorrtExecutionProvider",
        "CUDAExecutionProvider", "CPUExecutionProvider"]``; providers this ONNX Runtime
        lacks are dropped (with a warning) and CPU is always the last resort.
        ``provider_options`` gives a provider its options (:func:`parse_provider_options`).
        ``threads`` caps intra-op threads (several camera nodes often share one board).
        """
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: no such model file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(
                str(path), options,
                providers=_choose_providers(providers, provider_options or {}))
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise ExportError(f"{path}: not a loadable ONNX model ({exc})") from exc
        meta = _read_onnx_metadata(session, path)
        head = meta.pop("head")

        def forward(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logits, features = session.run(["logits", "features"], {"views": views})
            return logits, features

        return cls(forward, head, session.get_providers()[0], meta["model"]["in_channels"],
                   tuple(meta["input_hw"]), meta)

    @classmethod
    def from_torch(cls, device: Any) -> DeviceRunner:
        """Run a (copied, eval-mode) :class:`~.model.DeviceCNN` with torch on the CPU.

        ``device`` is typed ``Any`` because naming the class would import :mod:`.model`,
        which imports this module for its pixel scaling.
        """
        import torch

        device = copy.deepcopy(device).eval()
        head = (device.classifier.weight.detach().numpy().copy(),
                device.classifier.bias.detach().numpy().copy())

        @torch.inference_mode()
        def forward(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logits, features = device(torch.from_numpy(views))
            return logits.numpy(), features.numpy()

        return cls(forward, head, "torch", device.in_channels, None, {})

    def run(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``views`` uint8 or float ``(B, C, h, w)`` -> ``(probs (B, K), features (B, D))``.

        uint8 is scaled to ``[0, 1]`` exactly as in training (:func:`views_to_float32`);
        both outputs are float32 numpy arrays.
        """
        x = views_to_float32(views)
        h, w = self.input_hw or ("h", "w")
        if x.ndim != 4 or x.shape[1] != self.in_channels or (
            self.input_hw is not None and tuple(x.shape[2:]) != self.input_hw
        ):
            raise ValueError(f"views must be (B, {self.in_channels}, {h}, {w}), "
                             f"got {tuple(x.shape)}")
        logits, features = self._forward(np.ascontiguousarray(x))
        return softmax(logits), np.asarray(features, dtype=np.float32)

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The classifier head ``(weight (K, D), bias (K,))`` as float32 copies."""
        return self._head[0].copy(), self._head[1].copy()
